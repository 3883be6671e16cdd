"""Drive a `defi serve` policy with openpi's own client (`openpi_client.WebsocketClientPolicy`) on Meta-World.

    defi serve runs/demo-quick/compare/defi --port 8765
    MUJOCO_GL=egl python examples/openpi_client_metaworld.py --port 8765 --task reach-v3 --episodes 2

The robot side knows nothing of defi's client: it reads the server's metadata (cameras, image size, state size),
sends openpi-style requests (`prompt`, images, state; `reset` on an episode's first request) and executes the
first `--execute` actions of every returned chunk.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--execute", type=int, default=8, help="actions executed from each chunk")
    args = parser.parse_args(argv)

    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from defi.envs.metaworld import MetaWorldEnv

    client = WebsocketClientPolicy(host=args.host, port=args.port)
    meta = client.get_server_metadata()
    print("server metadata:", {k: meta[k] for k in ("policy_type", "cameras", "image_size", "state_dim",
                                                    "action_dim", "action_horizon")})
    height, width = meta["image_size"]
    prompt = args.task.removesuffix("-v3").replace("-", " ")
    with MetaWorldEnv(args.task, cameras=tuple(meta["cameras"]), image_size=(height, width),
                      max_episode_steps=args.max_steps) as env:
        for episode in range(args.episodes):
            obs = env.reset(seed=500 + episode)
            done, calls, round_trips = False, 0, []
            while not done and not env.success:
                request = {k: v for k, v in obs.items() if k.startswith("observation.images.")}
                request["observation.state"] = obs["observation.state"][: meta["state_dim"]]
                request["prompt"] = prompt
                if calls == 0:
                    request["reset"] = True
                start = time.perf_counter()
                actions = np.asarray(client.infer(request)["actions"])
                round_trips.append(1e3 * (time.perf_counter() - start))
                calls += 1
                if actions.shape != (meta["action_horizon"], meta["action_dim"]) or not np.isfinite(actions).all():
                    raise SystemExit(f"bad action chunk {actions.shape} from the server")
                for action in actions[: args.execute]:
                    obs, _, done, _ = env.step(action)
                    if done or env.success:
                        break
            print(f"episode {episode}: {env.steps} steps, success {env.success}, {calls} calls, "
                  f"round trip median {np.median(round_trips):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
