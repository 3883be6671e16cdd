"""Closed-loop episodes of any policy in any environment (`defi.envs.base.Env`), several in lockstep.

`run_episodes` keeps `batch_size` environments running side by side in one process, each driven by its own
`policy.fork()` (shared weights, own episode state). At every step the environments that need a new action chunk
are answered by ONE batched policy call (`defi.policies.base.act_batch`); the first `execute_steps` actions of a
chunk are executed before the policy is asked again (receding horizon), until the episode succeeds or reaches its
step limit. A finished environment takes the next episode from the queue. At batch 1 this is the classic loop.

Every episode seeds its policy copy with the episode's seed (`policy.reset(seed=...)`), so the sampling noise of
an episode is the same however the episodes are batched or ordered, and an evaluation run again with the same
seeds repeats its results. An episode may hold `image_override` (camera key -> image shown to the policy in place
of the real camera for the whole episode): the vision-reliance check feeds a different scene's first frame.

Videos show the real camera, with the policy's imagined future beside it when the policy has `imagined_frames()`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defi.errors import DefiError, ShapeError


@dataclass
class EpisodeSpec:
    task: str
    episode: int
    seed: int  # the scene (env.reset(seed)) and the policy's sampling noise
    instruction: str
    mode: str = "real"  # "real" camera, or e.g. "wrong_scene" (with image_override)
    image_override: dict[str, np.ndarray] | None = None
    video_path: Path | None = None


@dataclass
class EpisodeResult:
    task: str
    episode: int
    seed: int
    success: bool
    steps: int
    instruction: str
    policy_calls: int
    policy_ms: float  # this episode's share of the batched calls it took part in, per call
    mode: str = "real"
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


def _reset_policy(policy: Any, seed: int) -> None:
    # the protocol's reset takes the episode's seed; a remote or scripted policy may ignore it
    policy.reset(seed=seed)


@dataclass
class _Slot:
    spec: EpisodeSpec
    index: int
    env: Any
    obs: dict[str, np.ndarray]
    frames: list[np.ndarray] = field(default_factory=list)
    imagined: np.ndarray | None = None
    calls: int = 0
    policy_s: float = 0.0
    done: bool = False


def run_episodes(policy: Any, make_env: Callable[[str], Any], specs: Sequence[EpisodeSpec], execute_steps: int,
                 batch_size: int = 1, video_fps: int = 40,
                 on_result: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Run every episode of `specs` (results in the same order); `make_env(task)` builds an environment."""
    from defi.policies.base import act_batch

    if batch_size < 1:
        raise DefiError(f"batch_size={batch_size}: expected >= 1")
    batch_size = min(batch_size, len(specs)) or 1
    if batch_size > 1 and not callable(getattr(policy, "fork", None)):
        raise DefiError(f"{type(policy).__name__} has no fork(): it cannot drive several environments at once; "
                        "use batch_size 1")
    copies = [policy] if batch_size == 1 else [policy.fork() for _ in range(batch_size)]
    envs: list[tuple[str, Any] | None] = [None] * batch_size  # each slot's environment
    idle: dict[str, list[Any]] = {}  # environments a slot let go of, by task, for the next slot that needs one
    # Lockstep slots take the tasks in turn, so that a task's episodes run on a few environments reused from one
    # episode to the next (building one costs as much as a short episode) rather than on batch_size new ones.
    by_task: dict[str, deque] = {}
    for item in enumerate(specs):
        by_task.setdefault(item[1].task, deque()).append(item)
    queue: deque = deque()
    while by_task:
        for task in list(by_task):
            queue.append(by_task[task].popleft())
            if not by_task[task]:
                del by_task[task]
    slots: list[_Slot | None] = [None] * batch_size
    results: list[EpisodeResult | None] = [None] * len(specs)
    can_imagine = hasattr(policy, "imagined_frames")

    def start(i: int) -> None:
        if not queue:
            slots[i] = None
            return
        index, spec = queue.popleft()
        if envs[i] is None or envs[i][0] != spec.task:
            if envs[i] is not None:
                idle.setdefault(envs[i][0], []).append(envs[i][1])
            pool = idle.get(spec.task)
            envs[i] = (spec.task, pool.pop() if pool else make_env(spec.task))
        env = envs[i][1]
        _reset_policy(copies[i], spec.seed)
        slots[i] = _Slot(spec, index, env, env.reset(seed=spec.seed))

    def finish(i: int) -> None:
        slot = slots[i]
        assert slot is not None
        video = None
        if slot.spec.video_path is not None and slot.frames:
            main_cam = f"observation.images.{slot.env.cameras[0]}"
            slot.frames.append(_side_by_side(slot.obs[main_cam], slot.imagined))
            video = str(write_video(slot.spec.video_path, slot.frames, video_fps))
        result = EpisodeResult(slot.spec.task, slot.spec.episode, slot.spec.seed, bool(slot.env.success),
                               slot.env.steps, slot.spec.instruction, slot.calls,
                               1000.0 * slot.policy_s / max(slot.calls, 1), slot.spec.mode, video)
        results[slot.index] = result
        if on_result is not None:
            on_result(result)
        start(i)

    try:
        for i in range(batch_size):
            start(i)
        while any(slots):
            active = [i for i, s in enumerate(slots) if s is not None]
            observations = []
            for i in active:
                slot = slots[i]
                obs = slot.obs if slot.spec.image_override is None else {**slot.obs, **slot.spec.image_override}
                observations.append(obs)
            t0 = time.perf_counter()
            chunks = act_batch([copies[i] for i in active], observations, [slots[i].spec.instruction for i in active])
            share = (time.perf_counter() - t0) / len(active)
            for row, i in enumerate(active):
                slot = slots[i]
                chunk = np.asarray(chunks[row], dtype=np.float32)
                if chunk.ndim != 2:
                    raise ShapeError(f"the policy returned an action chunk of shape {list(chunk.shape)}; expected "
                                     "[H, A]")
                slot.calls += 1
                slot.policy_s += share
                recording = slot.spec.video_path is not None
                if recording and can_imagine:
                    slot.imagined = copies[active[0]].imagined_frames(row=row)
                main_cam = f"observation.images.{slot.env.cameras[0]}"
                steps = chunk[:execute_steps]
                for k, action in enumerate(steps):
                    if recording:
                        slot.frames.append(_side_by_side(slot.obs[main_cam], slot.imagined))
                    # images are only needed for the video and for the next policy call
                    slot.obs, _, slot.done, _ = slot.env.step(action, render=recording or k == len(steps) - 1)
                    if slot.done or slot.env.success:
                        break
                if slot.done or slot.env.success:
                    finish(i)
    finally:
        for entry in envs:
            if entry is not None:
                entry[1].close()
        for pool in idle.values():
            for env in pool:
                env.close()
    return [r for r in results if r is not None]
