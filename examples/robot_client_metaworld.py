"""Drive Meta-World episodes through a policy server, exactly as a robot loop would.

The loop reads what the server's metadata asks for (cameras, image size), renders those cameras, sends them with
the 39-dim state and the instruction, executes the returned action chunk (or its first --replan-every actions),
and repeats. Nothing in it knows which policy runs on the other side.

    # a server for any saved policy; here the scripted expert, saved first
    python - <<'EOF'
    from defi.policies.scripted import ScriptedConfig, ScriptedPolicy
    ScriptedPolicy(ScriptedConfig(task="drawer-open-v3")).save_pretrained("runs/expert")
    EOF
    defi serve runs/expert --port 8000
    # the robot
    MUJOCO_GL=egl python examples/robot_client_metaworld.py --port 8000 --task drawer-open-v3 --episodes 3

    # or both in one process (saves the scripted expert to a temporary directory and serves it on a free port)
    MUJOCO_GL=egl python examples/robot_client_metaworld.py --self-serve --task reach-v3 --cameras corner
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import numpy as np


def instruction_for(task: str) -> str:
    return task.removesuffix("-v3").replace("-", " ")


def run_episode(policy: Any, task: str, seed: int, max_steps: int = 500, replan_every: int | None = None,
                instruction: str | None = None) -> dict[str, Any]:
    """One episode; `policy` is anything with `metadata`, `reset()` and `act(observation, instruction)`."""
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World/* environments)
    import mujoco

    metadata = policy.metadata
    cameras = list(metadata.get("cameras") or [])
    size = metadata.get("image_size") or 64
    height, width = (size, size) if isinstance(size, int) else size
    instruction = instruction or instruction_for(task)

    env = gym.make("Meta-World/MT1", env_name=task, seed=seed)
    renderer = mujoco.Renderer(env.unwrapped.model, height, width) if cameras else None
    try:
        obs, info = env.reset(seed=seed)
        policy.reset()
        steps, success, round_trips_ms = 0, False, []
        done = False
        while not done:
            observation = {"observation.state": np.asarray(obs, dtype=np.float32)}
            for camera in cameras:
                renderer.update_scene(env.unwrapped.data, camera=camera)
                observation[f"observation.images.{camera}"] = renderer.render().copy()
            start = time.perf_counter()
            chunk = policy.act(observation, instruction)
            round_trips_ms.append((time.perf_counter() - start) * 1e3)
            for action in chunk[: replan_every or len(chunk)]:
                obs, _, terminated, truncated, info = env.step(action)
                steps += 1
                success = success or bool(info.get("success"))
                done = success or terminated or truncated or steps >= max_steps
                if done:
                    break
    finally:
        if renderer is not None:
            renderer.close()
        env.close()
    return {
        "task": task,
        "seed": seed,
        "success": success,
        "steps": steps,
        "requests": len(round_trips_ms),
        "round_trip_ms_p50": statistics.median(round_trips_ms),
        "round_trip_ms_max": max(round_trips_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--replan-every", type=int, default=None, help="actions executed per chunk (default: all)")
    parser.add_argument("--self-serve", action="store_true", help="serve the scripted expert in this process")
    parser.add_argument("--cameras", default="corner,gripperPOV",
                        help="with --self-serve: cameras the served expert asks for (comma-separated, '' = none)")
    args = parser.parse_args(argv)

    from defi.serve import PolicyClient

    with ExitStack() as stack:
        host, port = args.host, args.port
        if args.self_serve:
            from defi.policies import load_policy
            from defi.policies.scripted import ScriptedConfig, ScriptedPolicy
            from defi.serve import PolicyServer, ServeConfig

            directory = stack.enter_context(tempfile.TemporaryDirectory())
            cameras = tuple(c for c in args.cameras.split(",") if c)
            ScriptedPolicy(ScriptedConfig(task=args.task, cameras=cameras)).save_pretrained(directory)
            server = PolicyServer(load_policy(directory, device="cpu"), ServeConfig(port=0, api_key=args.api_key))
            thread = stack.enter_context(server.start_in_thread())
            host, port = "127.0.0.1", thread.port
        client = stack.enter_context(PolicyClient(host, port, api_key=args.api_key))
        print(f"connected to {client.url}: {client.metadata.get('policy_type')} wants cameras "
              f"{client.metadata.get('cameras')} at {client.metadata.get('image_size')}")
        results = []
        for episode in range(args.episodes):
            result = run_episode(client, args.task, seed=args.seed + episode, max_steps=args.max_steps,
                                 replan_every=args.replan_every)
            results.append(result)
            print(f"episode {episode}: success={result['success']} steps={result['steps']} "
                  f"round trip p50 {result['round_trip_ms_p50']:.2f} ms (max {result['round_trip_ms_max']:.2f} ms)")
        rate = sum(r["success"] for r in results) / len(results)
        print(f"{args.task}: success rate {rate:.0%} over {len(results)} episodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
