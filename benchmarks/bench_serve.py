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

    python benchmarks/bench_serve.py                       # 2 cameras 224x224 + 39-dim state per request
    python benchmarks/bench_serve.py --image-size 64 --requests 300
    python benchmarks/bench_serve.py --rss small
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
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


def _serve_saved(policy_dir: str, port_queue, stop) -> None:
    import logging

    import torch

    logging.disable(logging.INFO)
    torch.set_num_threads(1)
    from defi.serve import ServeConfig
    from defi.serve.cli import build_server

    with build_server(policy_dir, ServeConfig(port=0, device="cpu")).start_in_thread() as thread:
        port_queue.put(thread.port)
        stop.wait()


def bench_rss(policy: str, counts: tuple[int, ...] = (1, 16, 64)) -> int:
    """Server RSS idle and with `counts` open connections that have each made one request."""
    import os
    import platform
    import tempfile

    from defi.policies import load_policy

    if not Path(policy).exists():  # a preset name: a DeFI policy with random weights
        import torch

        from defi.policies.defi import DeFIConfig, DeFIPolicy

        torch.manual_seed(0)
        model = DeFIPolicy(DeFIConfig.preset(policy))
        unit = {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
        model.normalizer.set_stats({"action": unit, "observation.state": unit})
        policy = str(model.save_pretrained(Path(tempfile.mkdtemp(prefix="bench-serve-")) / "policy"))
    meta = load_policy(policy, device="cpu").metadata
    h, w = meta.image_size
    rng = np.random.default_rng(0)
    request = {**{f"observation.images.{c}": rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in meta.cameras},
               "observation.state": np.zeros(meta.state_dim, np.float32), "prompt": "push the puck to the goal"}
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
        print(f"policy {meta.policy_type} from {policy}; server process RSS (one torch thread, CPU; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rss", default="", help="a saved policy directory or a DeFI preset name: print the "
                        "server's memory at 1, 16 and 64 connections instead of the latency table")
    parser.add_argument("--policies", default="scripted,conv")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per configuration")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every row (median kept)")
    args = parser.parse_args(argv)
    if args.rss:
        return bench_rss(args.rss)

    requests = make_requests(args.requests, args.image_size)
    payload_kb = sum(v.nbytes for v in requests[0].values()) / 1024
    print(f"request: {len(CAMERAS)} cameras {args.image_size}x{args.image_size} uint8 + {STATE_DIM}-dim state "
          f"({payload_kb:.0f} KiB); {args.requests} timed requests per row and repeat; server in its own process on "
          "loopback")
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
