"""One closed-loop episode of any policy in any environment (`defi.envs.base.Env`), with an optional video.

The policy returns an action chunk; the first `execute_steps` actions are executed before it is asked again
(receding horizon), until the episode succeeds or reaches its step limit. When the policy can show what it
imagines (an `imagined_frames()` method returning uint8 [F, h, w, 3]), the imagined future is drawn beside the
camera view in the video.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defi.errors import ShapeError


@dataclass
class EpisodeResult:
    task: str
    episode: int
    seed: int
    success: bool
    steps: int
    instruction: str
    policy_calls: int
    policy_ms: float
    video: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

def _side_by_side(frame: np.ndarray, imagined: np.ndarray | None) -> np.ndarray:
    if imagined is None or len(imagined) == 0:
        return frame
    h = frame.shape[0]
    tiles = [frame] + [np.asarray(f, dtype=np.uint8)[:h] for f in imagined]
    return np.concatenate(tiles, axis=1)

def write_video(path: Path, frames: Sequence[np.ndarray], fps: int) -> Path:
    """H.264 mp4 through PyAV (the FFmpeg bindings the data layer uses too)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [np.ascontiguousarray(f) for f in frames]
    h, w = frames[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2  # yuv420p needs even sizes
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f[:h2, :w2], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path

def run_episode(policy: Any, env: Any, task: str, episode: int, seed: int, instruction: str, execute_steps: int,
                video_path: Path | None = None, video_fps: int = 40) -> EpisodeResult:
    """Run one episode of `task` on the scene of `seed`; `video_path` records it (mp4)."""
    policy.reset()
    obs = env.reset(seed=seed)
    frames: list[np.ndarray] = []
    calls, policy_time = 0, 0.0
    imagined = None
    done = False
    main_cam = f"observation.images.{env.cameras[0]}"
    while not done and not env.success:
        start = time.perf_counter()
        chunk = np.asarray(policy.act(obs, instruction), dtype=np.float32)
        policy_time += time.perf_counter() - start
        calls += 1
        if chunk.ndim != 2:
            raise ShapeError(f"policy.act returned shape {list(chunk.shape)}; expected an action chunk [H, A]")
        if video_path is not None and hasattr(policy, "imagined_frames"):
            imagined = policy.imagined_frames()
        steps = chunk[:execute_steps]
        for i, action in enumerate(steps):
            if video_path is not None:
                frames.append(_side_by_side(obs[main_cam], imagined))
            # images are only needed for the video and for the next policy call
            obs, _, done, _ = env.step(action, render=video_path is not None or i == len(steps) - 1)
            if done or env.success:
                break
    video = None
    if video_path is not None and frames:
        frames.append(_side_by_side(obs[main_cam], imagined))
        video = str(write_video(video_path, frames, video_fps))
    return EpisodeResult(task, episode, seed, bool(env.success), env.steps, instruction, calls,
                         1000.0 * policy_time / max(calls, 1), video)
