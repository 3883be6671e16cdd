"""Policy server overhead: round-trip latency and throughput over loopback vs in-process `act` (a ratio), and the
server's memory per connection.

For each policy the in-process baseline is measured in the same run, then the same requests go through a
`defi serve` server running in its own process (as it would on the GPU machine) from 1 and from 8 concurrent
`PolicyClient`s (threads of this process, as several robots). Policies:

  scripted  the Meta-World scripted expert (microseconds per act): the ratio is the pure protocol cost
  conv      a small CNN over the camera images (milliseconds per act, like a compact real policy)

`--rss POLICY_DIR` instead serves a saved policy (e.g. the demo's `runs/demo/compare/defi/model`; `--rss small`
builds a DeFI policy at the `small` preset with random weights) and prints the server process's resident memory
idle and with 1, 16 and 64 open connections (each has made one request, so its per-connection copy of the policy
exists and has acted).

`--batching POLICY_DIR` (or a DeFI preset name, as for `--rss`) measures the server's request batching: two
servers of that policy in their own processes, one with batching off (`batch_window_ms` 0: one request per call,
the baseline) and one with it on, each driven by 1, 4 and 16 concurrent robots (threads of this process, each
with its own openpi `WebsocketClientPolicy`, sending one request, waiting for the actions, sending the next).
It prints requests/s, p50 and p99 round trip, the mean batch size, the server process's CPU time per request (which
other jobs on a shared machine distort far less than wall time), and the ratios batched / unbatched.

    python benchmarks/bench_serve.py                       # 2 cameras 224x224 + 39-dim state per request
    python benchmarks/bench_serve.py --image-size 64 --requests 300
    python benchmarks/bench_serve.py --rss small
    python benchmarks/bench_serve.py --batching small      # the demo's DeFI policy shape, random weights
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CAMERAS = ("corner", "gripperPOV")
STATE_DIM = 39


def build_policy(kind: str, image_size: int):
    if kind == "scripted":
        from defi.policies.scripted import ScriptedConfig, ScriptedPolicy

        return ScriptedPolicy(ScriptedConfig(task="reach-v3", cameras=CAMERAS, image_size=image_size))
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the machine is shared: one thread keeps the figures comparable

    class ConvPolicy(torch.nn.Module):
        """Two camera encoders + state -> a 16-step chunk of 4-dim actions."""

        horizon, action_dim = 16, 4

        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Sequential(
                torch.nn.Conv2d(3, 32, 8, stride=4), torch.nn.ReLU(),
                torch.nn.Conv2d(32, 64, 4, stride=2), torch.nn.ReLU(),
                torch.nn.Conv2d(64, 64, 3, stride=2), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            )
            self.head = torch.nn.Sequential(torch.nn.Linear(64 * len(CAMERAS) + STATE_DIM, 256), torch.nn.ReLU(),
                                            torch.nn.Linear(256, self.horizon * self.action_dim))

        @property
        def metadata(self):
            return {"policy_type": "BenchConvPolicy", "cameras": list(CAMERAS), "image_size": [image_size] * 2,
                    "action_dim": self.action_dim, "action_horizon": self.horizon, "state_dim": STATE_DIM}

        def reset(self):
            pass

        def fork(self):
            return self  # no episode state

        @torch.inference_mode()
        def act(self, observation, instruction):
            images = torch.stack([torch.from_numpy(observation[f"observation.images.{c}"]) for c in CAMERAS])
            images = images.permute(0, 3, 1, 2).float() / 255  # v h w c -> v c h w
            features = self.encoder(images).reshape(1, -1)
            state = torch.from_numpy(observation["observation.state"]).reshape(1, -1)
            chunk = self.head(torch.cat([features, state], dim=1))
            return chunk.reshape(self.horizon, self.action_dim).numpy()

    return ConvPolicy().eval()


def make_requests(count: int, image_size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{**{f"observation.images.{c}": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                for c in CAMERAS},
             "observation.state": rng.uniform(-0.5, 0.5, STATE_DIM).astype(np.float32)} for _ in range(count)]


def _serve(kind: str, image_size: int, port_queue, stop) -> None:
    import logging

    logging.disable(logging.INFO)
    from defi.serve import PolicyServer, ServeConfig

    with PolicyServer(build_policy(kind, image_size), ServeConfig(port=0)).start_in_thread() as thread:
        port_queue.put(thread.port)
        stop.wait()


def _summary(latencies_s: list[float], wall_s: float, timings: list[dict] | None = None) -> dict[str, float]:
    ms = sorted(x * 1e3 for x in latencies_s)
    summary = {"p50_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
               "mean_ms": statistics.fmean(ms), "throughput_hz": len(ms) / wall_s}
    if timings:  # what the server itself measured: time inside act, and time waiting for the inference thread
        summary["infer_ms"] = statistics.median(t["infer_ms"] for t in timings)
        summary["queue_ms"] = statistics.median(t["queue_ms"] for t in timings)
    return summary


def bench_in_process(policy, requests: list[dict], warmup: int) -> dict[str, float]:
    for request in requests[:warmup]:
        policy.act(request, "reach the goal")
    latencies = []
    start = time.perf_counter()
    for request in requests:
        t = time.perf_counter()
        policy.act(request, "reach the goal")
        latencies.append(time.perf_counter() - t)
    return _summary(latencies, time.perf_counter() - start)


def bench_clients(port: int, requests: list[dict], clients: int, warmup: int) -> dict[str, float]:
    from defi.serve import PolicyClient

    connections = [PolicyClient("127.0.0.1", port) for _ in range(clients)]
    for connection in connections:
        for request in requests[:warmup]:
            connection.act(request, "reach the goal")
    latencies: list[list[float]] = [[] for _ in range(clients)]
    timings: list[list[dict]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def robot(index: int) -> None:
        barrier.wait()
        for request in requests[index::clients]:  # the same requests in total, split across the clients
            t = time.perf_counter()
            reply = connections[index].infer({**request, "prompt": "reach the goal"})
            latencies[index].append(time.perf_counter() - t)
            timings[index].append(reply["server_timing"])

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return _summary([x for per_client in latencies for x in per_client], wall,
                    [x for per_client in timings for x in per_client])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc (Linux only)")


def _serve_saved(policy_dir: str, port_queue, stop, config: dict | None = None) -> None:
    import logging

    import torch

    logging.disable(logging.INFO)
    torch.set_num_threads(1)
    from defi.serve import ServeConfig
    from defi.serve.cli import build_server

    with build_server(policy_dir, ServeConfig(port=0, device="cpu", **(config or {}))).start_in_thread() as thread:
        port_queue.put(thread.port)
        stop.wait()


def saved_policy(policy: str) -> str:
    """A saved policy directory: `policy` itself, or for a DeFI preset name ("small") a DeFI policy at that preset
    with random weights and unit normalisation (the demo policy's compute, without training it)."""
    import tempfile

    if Path(policy).exists():
        return policy
    import torch

    from defi.policies.defi import DeFIConfig, DeFIPolicy

    torch.manual_seed(0)
    model = DeFIPolicy(DeFIConfig.preset(policy))
    unit = {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
    model.normalizer.set_stats({"action": unit, "observation.state": unit})
    return str(model.save_pretrained(Path(tempfile.mkdtemp(prefix="bench-serve-")) / "policy"))


def policy_request(meta, seed: int = 0, prompt: str = "push the puck to the goal") -> dict:
    h, w = meta.image_size
    rng = np.random.default_rng(seed)
    return {**{f"observation.images.{c}": rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in meta.cameras},
            "observation.state": rng.uniform(-0.5, 0.5, meta.state_dim).astype(np.float32), "prompt": prompt}


def bench_rss(policy: str, counts: tuple[int, ...] = (1, 16, 64)) -> int:
    """Server RSS idle and with `counts` open connections that have each made one request."""
    from defi.policies import load_policy
    from defi.utils.environment import describe_cpu

    policy = saved_policy(policy)
    meta = load_policy(policy, device="cpu").metadata
    request = policy_request(meta)
    ctx = mp.get_context("spawn")
    port_queue, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve_saved, args=(policy, port_queue, stop), daemon=True)
    server.start()
    from defi.serve import PolicyClient

    connections: list = []
    try:
        port = port_queue.get(timeout=300)
        warm = PolicyClient("127.0.0.1", port)
        warm.infer(request)  # the first request loads lazily built pieces (text encoder caches)
        warm.close()
        time.sleep(0.5)
        idle = _rss_mib(server.pid)
        print(f"policy {meta.policy_type} from {policy}; server process RSS (CPU: {describe_cpu(threads=1)})")
        print(f"  idle (after one request): {idle:8.1f} MiB")
        for count in counts:
            while len(connections) < count:
                client = PolicyClient("127.0.0.1", port)
                client.infer(request)
                connections.append(client)
            time.sleep(0.5)
            rss = _rss_mib(server.pid)
            print(f"  {count:3d} connections:        {rss:8.1f} MiB  (+{rss - idle:6.1f} MiB over idle, "
                  f"{(rss - idle) / count:5.2f} MiB per connection)")
    finally:
        for client in connections:
            client.close()
        stop.set()
        server.join(30)
    return 0


def _cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _robot_fleet(port: int, server_pid: int, requests: list[dict], warmup_s: float, seconds: float,
                 client: str) -> dict[str, list]:
    """len(requests) robots, each a thread with its own connection sending its request in a loop (one in flight,
    like a robot waiting for its next chunk): each starts an episode (`reset`), runs `warmup_s` unmeasured, then
    `seconds` measured. Latencies are those of requests sent in the measured span; throughput counts the replies
    received in it, and so does the server process's CPU time per request (which other jobs on a shared machine
    inflate far less than wall time)."""
    from defi.serve import PolicyClient

    def connect():
        if client == "openpi":
            from openpi_client.websocket_client_policy import WebsocketClientPolicy

            return WebsocketClientPolicy(host="127.0.0.1", port=port)
        return PolicyClient("127.0.0.1", port)

    connections = [connect() for _ in requests]
    latencies: list[list[float]] = [[] for _ in requests]
    batch_sizes: list[list[int]] = [[] for _ in requests]
    completed = [0] * len(requests)
    barrier = threading.Barrier(len(requests) + 1)
    errors: list[str] = []
    span: dict[str, float] = {}
    go = threading.Event()

    def robot(index: int) -> None:
        try:
            connections[index].infer({**requests[index], "reset": True})  # each robot starts an episode
            barrier.wait()
            go.wait()  # the span is set
            while (sent := time.perf_counter()) < span["end"]:
                reply = connections[index].infer(requests[index])
                done = time.perf_counter()
                if sent >= span["start"]:
                    latencies[index].append(done - sent)
                    batch_sizes[index].append(reply["server_timing"]["batch_size"])
                if span["start"] <= done <= span["end"]:
                    completed[index] += 1
        except threading.BrokenBarrierError:
            pass  # another robot failed before the start
        except Exception as err:  # reported below: a silently dead robot would inflate the others' figures
            errors.append(f"robot {index}: {type(err).__name__}: {err}")
            barrier.abort()

    threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in range(len(requests))]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass  # a robot failed before the start: its error is raised below
    span["start"] = time.perf_counter() + warmup_s
    span["end"] = span["start"] + seconds
    go.set()
    time.sleep(max(0.0, span["start"] - time.perf_counter()))
    cpu_start = _cpu_s(server_pid)
    time.sleep(max(0.0, span["end"] - time.perf_counter()))
    cpu_s = _cpu_s(server_pid) - cpu_start
    for t in threads:
        t.join()
    for connection in connections:
        (connection._ws if client == "openpi" else connection).close()
    if errors:
        raise RuntimeError("; ".join(errors))
    return {"latencies": [x for per in latencies for x in per], "batch_sizes": [x for per in batch_sizes for x in per],
            "completed": [sum(completed)], "seconds": [seconds], "server_cpu_s": [cpu_s]}


def bench_batching(policy: str, window_ms: float, max_batch: int, fleets: tuple[int, ...], seconds: float,
                   warmup_s: float, repeats: int, client: str) -> int:
    """Throughput and tail latency of a batching server against the same server with batching off."""
    from defi.policies import load_policy
    from defi.utils.environment import describe_cpu

    policy = saved_policy(policy)
    meta = load_policy(policy, device="cpu").metadata
    prompts = ("push the puck to the goal", "open the drawer")
    requests = [policy_request(meta, seed=i, prompt=prompts[i % 2]) for i in range(max(fleets))]
    modes = {"unbatched": {"batch_window_ms": 0.0}, "batched": {"batch_window_ms": window_ms, "max_batch": max_batch}}
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    servers, ports = [], {}
    print(f"policy {meta.policy_type} from {policy}: cameras {meta.cameras} {meta.image_size[0]}x{meta.image_size[1]}, "
          f"state {meta.state_dim}, chunk {meta.action_horizon}x{meta.action_dim}, {meta.sampling_steps} sampling "
          "steps")
    print(f"CPU: {describe_cpu(threads=1)} (each server process)")
    print(f"servers in their own processes on loopback: unbatched = batch_window_ms 0; batched = batch_window_ms "
          f"{window_ms:g}, max_batch {max_batch}; robots: {client} clients, one thread each; {repeats} interleaved "
          f"repeats of {warmup_s:g} s warm-up + {seconds:g} s measured per row, figures pooled over the repeats")
    runs: dict[tuple[str, int], dict[str, list]] = {}
    try:
        for mode, config in modes.items():
            port_queue = ctx.Queue()
            server = ctx.Process(target=_serve_saved, args=(policy, port_queue, stop, config), daemon=True)
            server.start()
            servers.append(server)
            ports[mode] = (port_queue.get(timeout=300), server.pid)
        # the machine may be shared: interleave the modes so that both see the same background load
        for _ in range(repeats):
            for clients in fleets:
                for mode in modes:
                    result = _robot_fleet(*ports[mode], requests[:clients], warmup_s, seconds, client)
                    pooled = runs.setdefault((mode, clients), {})
                    for key, values in result.items():
                        pooled.setdefault(key, []).extend(values)
    finally:
        stop.set()
        for server in servers:
            server.join(30)

    def row(mode: str, clients: int) -> dict[str, float]:
        r = runs[(mode, clients)]
        ms = np.array(r["latencies"]) * 1e3
        return {"rps": sum(r["completed"]) / sum(r["seconds"]), "p50": float(np.percentile(ms, 50)),
                "cpu_ms": 1e3 * sum(r["server_cpu_s"]) / max(1, sum(r["completed"])),
                "p99": float(np.percentile(ms, 99)), "batch": float(np.mean(r["batch_sizes"])), "n": len(ms)}

    header = f"{'robots':>6s} {'mode':10s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99/p50':>8s} " \
             f"{'batch':>6s} {'samples':>8s} {'cpu ms/req':>10s} {'throughput x':>13s} {'p50 x':>6s} " \
             f"{'cpu/req x':>9s}"
    print(header)
    print("-" * len(header))
    for clients in fleets:
        base = row("unbatched", clients)
        for mode in modes:
            r = row(mode, clients)
            print(f"{clients:6d} {mode:10s} {r['rps']:7.2f} {r['p50']:8.0f} {r['p99']:8.0f} {r['p99'] / r['p50']:8.2f} "
                  f"{r['batch']:6.1f} {r['n']:8d} {r['cpu_ms']:10.1f} {r['rps'] / base['rps']:13.2f} "
                  f"{r['p50'] / base['p50']:6.2f} {base['cpu_ms'] / r['cpu_ms']:9.2f}")
    top = max(fleets)
    batched, base = row("batched", top), row("unbatched", top)
    print(f"batch = mean requests per policy call (server_timing.batch_size); cpu ms/req = server process CPU time "
          f"per reply; throughput x, p50 x: batched / unbatched, cpu/req x: unbatched / batched, at the same number "
          f"of robots\n{top} robots: throughput {batched['rps'] / base['rps']:.2f}x the unbatched server (target "
          f">= 3; server CPU per request {base['cpu_ms'] / batched['cpu_ms']:.2f}x less); batched p99 / p50 = "
          f"{batched['p99'] / batched['p50']:.2f} (target <= 2)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from defi.utils.environment import describe_cpu

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rss", default="", help="a saved policy directory or a DeFI preset name: print the "
                        "server's memory at 1, 16 and 64 connections instead of the latency table")
    parser.add_argument("--batching", default="", help="a saved policy directory or a DeFI preset name: compare a "
                        "batching server with an unbatched one at --fleets robots instead of the latency table")
    parser.add_argument("--window-ms", type=float, default=None, help="--batching: batch_window_ms of the batching "
                        "server (default: ServeConfig's)")
    parser.add_argument("--max-batch", type=int, default=None, help="--batching: max_batch (default: ServeConfig's)")
    parser.add_argument("--fleets", default="1,4,16", help="--batching: numbers of concurrent robots")
    parser.add_argument("--seconds", type=float, default=10.0, help="--batching: measured seconds per row and repeat")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="--batching: unmeasured seconds before each row")
    parser.add_argument("--client", choices=("openpi", "defi"), default="openpi",
                        help="--batching: openpi's WebsocketClientPolicy or defi's PolicyClient as the robots")
    parser.add_argument("--policies", default="scripted,conv")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per configuration")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats of every row (default 3, "
                        "median kept; --batching: default 4, samples pooled)")
    args = parser.parse_args(argv)
    if args.rss:
        return bench_rss(args.rss)
    if args.batching:
        from defi.serve import ServeConfig

        defaults = ServeConfig()
        return bench_batching(args.batching, defaults.batch_window_ms if args.window_ms is None else args.window_ms,
                              defaults.max_batch if args.max_batch is None else args.max_batch,
                              tuple(int(n) for n in args.fleets.split(",")), args.seconds, args.warmup_s,
                              args.repeats or 4, args.client)

    args.repeats = args.repeats or 3
    requests = make_requests(args.requests, args.image_size)
    payload_kb = sum(v.nbytes for v in requests[0].values()) / 1024
    print(f"request: {len(CAMERAS)} cameras {args.image_size}x{args.image_size} uint8 + {STATE_DIM}-dim state "
          f"({payload_kb:.0f} KiB); {args.requests} timed requests per row and repeat; server in its own process on "
          "loopback")
    print(f"CPU: {describe_cpu(threads=1)} (in-process baseline and server process alike)")
    header = f"{'policy':9s} {'mode':16s} {'p50 ms':>8s} {'p95 ms':>8s} {'req/s':>8s} {'act ms':>7s} " \
             f"{'wait ms':>8s} {'latency x':>10s} {'throughput x':>13s}"
    print(header)
    print("-" * len(header))
    ctx = mp.get_context("spawn")
    for kind in args.policies.split(","):
        policy = build_policy(kind, args.image_size)
        port_queue, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=_serve, args=(kind, args.image_size, port_queue, stop), daemon=True)
        server.start()
        runs: dict[str, list[dict[str, float]]] = {"in-process act": [], "loopback x1": [], "loopback x8": []}
        try:
            port = port_queue.get(timeout=120)
            # the machine is shared: interleave the baseline with the server rows and keep each metric's median
            for _ in range(args.repeats):
                runs["in-process act"].append(bench_in_process(policy, requests, args.warmup))
                for clients in (1, 8):
                    runs[f"loopback x{clients}"].append(bench_clients(port, requests, clients, args.warmup))
        finally:
            stop.set()
            server.join(30)
        rows = {mode: {k: statistics.median(r[k] for r in results) for k in results[0]}
                for mode, results in runs.items()}
        base = rows["in-process act"]
        for mode, r in rows.items():
            served = f"{r['infer_ms']:7.2f} {r['queue_ms']:8.2f}" if "infer_ms" in r else f"{'':7s} {'':8s}"
            print(f"{kind:9s} {mode:16s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['throughput_hz']:8.1f} {served} "
                  f"{r['p50_ms'] / base['p50_ms']:10.2f} {r['throughput_hz'] / base['throughput_hz']:13.2f}")
    print(f"each figure: median over {args.repeats} interleaved repeats; act ms / wait ms: the server's own "
          "server_timing (infer_ms / queue_ms) medians;\nlatency x = p50 round trip / p50 in-process act; "
          "throughput x = requests/s over loopback / in-process requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
