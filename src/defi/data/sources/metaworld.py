"""Meta-World v3 expert demonstrations: scripted policies rolled out with seeded random scenes.

Each (task, slot) is one wanted episode. A slot tries episode seeds derived from (seed, task, slot, attempt)
until the expert succeeds (at most `max_attempts` times); failed attempts are counted and reported, and only
successful episodes are kept. Slots are spread over worker processes (one per core by default); each worker
writes its episodes into the store atomically, so a killed run resumes where it stopped and keeps every
finished episode. The same seed gives the same episodes whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defi.config import Config, preset
from defi.errors import DefiError

SOURCE = "metaworld"
METAWORLD_FPS = 80.0  # Meta-World's control rate (MuJoCo timestep 0.0025 s x frame_skip 5); every worker checks it


@dataclass
class MetaWorldGenConfig(Config):
    """`defi data metaworld`: roll out Meta-World v3 scripted experts into an episode store."""

    out: Path = Path("data/metaworld")
    """Output store directory (re-running with the same directory resumes)."""
    tasks: str = "MT10"
    """MT10, MT50 or comma-separated task names (the -v3 suffix is optional)."""
    episodes_per_task: int = 50
    """Successful episodes to keep per task."""
    cameras: tuple[str, ...] = ("corner", "gripperPOV")
    """Cameras to render: corner (static), gripperPOV (wrist), corner2-4, topview, behindGripper."""
    image_size: int = 64
    seed: int = 0
    action_noise: float = 0.0
    """Std of Gaussian noise added to the expert's actions (the noisy action is executed and recorded)."""
    action_noise_correlation: float = 0.0
    """Step-to-step correlation of that noise (AR(1); its std stays `action_noise`). Independent noise (0) averages
    out within a few steps, so the expert's closed loop erases it and every clip's motion follows from its first
    frame and its task; 0.95 (a correlation time of ~20 steps, 0.25 s) makes the arm wander visibly off the
    expert's path, so the motion between o_t and o_{t+n} is not determined by o_t - what latent actions are for."""
    action_free: bool = False
    """Drop actions and states: a video-only source."""
    max_steps: int = 500
    """Episode step limit (Meta-World's max_path_length is 500)."""
    post_success_steps: int = 10
    """Steps kept after the first success so the clip shows the finished task."""
    max_attempts: int = 5
    """Seeds tried per wanted episode before reporting it as failed."""
    workers: int = 0
    """Worker processes; 0 = one per CPU core."""
    mesh_detail: float = 1.0
    """Fraction of the large robot meshes' triangles drawn (opt-in speed-up below 1: changes pixels at the
    arm's edges; 0.25 halves the render CPU time at 64x64, mean absolute pixel difference 1.6/255)."""
    progress: bool = True

    def validate(self) -> None:
        self.check(self.episodes_per_task >= 1, "episodes_per_task", ">= 1")
        self.check(len(self.cameras) >= 1, "cameras", "at least one camera")
        self.check(8 <= self.image_size <= 1024, "image_size", "between 8 and 1024")
        self.check(self.action_noise >= 0, "action_noise", ">= 0")
        self.check(0.0 <= self.action_noise_correlation < 1.0, "action_noise_correlation", "in [0, 1)")
        self.check(self.max_steps >= 1, "max_steps", ">= 1")
        self.check(self.post_success_steps >= 0, "post_success_steps", ">= 0")
        self.check(self.max_attempts >= 1, "max_attempts", ">= 1")
        self.check(self.workers >= 0, "workers", ">= 0 (0 = one per core)")
        self.check(0.0 < self.mesh_detail <= 1.0, "mesh_detail", "a fraction in (0, 1] (1 = the original meshes)")


@preset(MetaWorldGenConfig, "tiny")
def _tiny() -> MetaWorldGenConfig:
    return MetaWorldGenConfig(out=Path("data/metaworld-tiny"), tasks="reach,button-press", episodes_per_task=2,
                              cameras=("corner",), max_steps=150)


@preset(MetaWorldGenConfig, "small")
def _small() -> MetaWorldGenConfig:
    return MetaWorldGenConfig()


@preset(MetaWorldGenConfig, "paper")
def _paper() -> MetaWorldGenConfig:
    # 256x256 frames feed the paper-scale forward model (SVD at 256x256) without upsampling.
    return MetaWorldGenConfig(out=Path("data/metaworld-mt50"), tasks="MT50", episodes_per_task=100, image_size=256)



@dataclass
class GenerationReport:
    out: Path
    kept: int = 0
    skipped_existing: int = 0
    failed_attempts: int = 0
    failed_slots: list[str] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    first_result_s: float | None = None  # when the first episode came back (worker start-up and env build included)
    frames_after_first: int = 0
    per_task: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_frames_per_s(self) -> float:
        """Frames per second after the first episode came back, i.e. without worker start-up."""
        if self.first_result_s is None or self.seconds <= self.first_result_s:
            return 0.0
        return self.frames_after_first / (self.seconds - self.first_result_s)

    def summary(self) -> str:
        lines = [
            f"{self.out}: kept {self.kept} new episodes ({self.frames} frames, {self.frames_per_s:.0f} frames/s), "
            f"{self.skipped_existing} already there, {self.failed_attempts} failed expert attempts"
        ]
        if self.failed_slots:
            lines.append(f"gave up on {len(self.failed_slots)} episodes: {', '.join(self.failed_slots[:20])}")
        return "\n".join(lines)


def episode_key(task: str, slot: int) -> str:
    return f"{task}-{slot:05d}"


def _episode_seed(seed: int, task: str, slot: int, attempt: int) -> int:
    from defi.envs.metaworld import all_tasks

    task_id = all_tasks().index(task)
    return int(np.random.SeedSequence([seed, task_id, slot, attempt]).generate_state(1)[0])


def _store_info(cfg: MetaWorldGenConfig, fps: float) -> Any:
    from defi.data.store import StoreInfo, feature_spec
    from defi.envs.metaworld import ACTION_DIM, EMBODIMENT, ENV_STATE_DIM, STATE_DIM

    cams = list(cfg.cameras)
    size = [cfg.image_size, cfg.image_size]
    shapes: dict[str, np.ndarray] = {f"observation.images.{c}": np.zeros((1, *size, 3), np.uint8) for c in cams}
    if not cfg.action_free:
        shapes["observation.state"] = np.zeros((1, STATE_DIM), np.float32)
        shapes["observation.environment_state"] = np.zeros((1, ENV_STATE_DIM), np.float32)
        shapes["action"] = np.zeros((1, ACTION_DIM), np.float32)
        shapes["next.reward"] = np.zeros((1,), np.float32)
        shapes["next.success"] = np.zeros((1,), bool)
    generator = {"seed": cfg.seed, "action_noise": cfg.action_noise, "max_steps": cfg.max_steps,
                 "post_success_steps": cfg.post_success_steps, "max_attempts": cfg.max_attempts}
    if cfg.action_noise_correlation > 0:
        generator["action_noise_correlation"] = cfg.action_noise_correlation  # only when used: old stores resume
    if cfg.mesh_detail < 1.0:
        # Recorded only when used, so stores written with the original meshes (before this option) still resume.
        generator["mesh_detail"] = cfg.mesh_detail
    return StoreInfo(
        fps=fps, cameras=cams, image_size=size, has_actions=not cfg.action_free,
        source=SOURCE + ("-actionfree" if cfg.action_free else ""), embodiment=EMBODIMENT, robot_type="sawyer",
        features=feature_spec(cams, size, shapes),
        extra={"generator": generator},
    )


def rollout(env: Any, episode_seed: int, cfg: MetaWorldGenConfig) -> tuple[bool, dict[str, np.ndarray]]:
    """One expert episode; returns (success, arrays keyed by feature). Frame t holds o_t and the action a_t."""
    rng = np.random.default_rng(episode_seed)
    obs = env.reset(seed=episode_seed)
    frames: dict[str, list[np.ndarray]] = {}
    after_success = 0
    rho, noise = cfg.action_noise_correlation, None
    for _ in range(cfg.max_steps):
        action = env.expert_action()
        if cfg.action_noise > 0:
            fresh = rng.normal(0.0, cfg.action_noise, size=action.shape)
            # AR(1): the stationary std stays action_noise; rho = 0 draws exactly what independent noise did
            noise = fresh if noise is None else rho * noise + np.sqrt(1.0 - rho**2) * fresh
            action = np.clip(action + noise, -1.0, 1.0)
        action = action.astype(np.float32)
        step = dict(obs)
        step["action"] = action
        obs, reward, _, info = env.step(action)
        step["next.reward"] = np.float32(reward)
        step["next.success"] = np.bool_(info["success"])
        for k, v in step.items():
            frames.setdefault(k, []).append(v)
        if env.success:
            if after_success >= cfg.post_success_steps:
                break
            after_success += 1
    arrays = {k: np.stack(v) for k, v in frames.items()}
    if cfg.action_free:
        arrays = {k: v for k, v in arrays.items() if k.startswith("observation.images.")}
    return bool(env.success), arrays


# -- worker process ------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(cfg_dict: dict[str, Any], out: str, pool: bool = False) -> None:
    from defi.config import from_dict

    if pool:
        # Software GL (llvmpipe) starts one raster thread per core in every process; with one worker per core
        # those threads only contend, so each worker rasterises on its own thread (a user setting wins). At
        # 64x64 a frame is bound by vertex work on the calling thread: LP_NUM_THREADS 0, 1 or the default
        # measured alike within this shared machine's noise (benchmarks/bench_data_generation.py).
        os.environ.setdefault("LP_NUM_THREADS", "1")

    cfg = from_dict(MetaWorldGenConfig, cfg_dict)
    _WORKER.update(cfg=cfg, store=None, out=Path(out), env=None, task=None)


def _worker_env(task: str) -> Any:
    from defi.envs.metaworld import MetaWorldEnv

    cfg: MetaWorldGenConfig = _WORKER["cfg"]
    if _WORKER["task"] != task:
        if _WORKER["env"] is not None:
            _WORKER["env"].close()
        _WORKER["env"] = env = MetaWorldEnv(task, seed=cfg.seed, cameras=cfg.cameras, image_size=cfg.image_size,
                                            max_episode_steps=cfg.max_steps, mesh_detail=cfg.mesh_detail)
        _WORKER["task"] = task
        if env.fps != METAWORLD_FPS:
            raise DefiError(f"Meta-World task {task} runs at {env.fps} fps here, expected {METAWORLD_FPS}")
    return _WORKER["env"]


def _run_slot(item: tuple[str, int]) -> dict[str, Any]:
    from defi.data.instructions import instruction
    from defi.data.store import EpisodeStore
    from defi.envs.metaworld import EMBODIMENT

    task, slot = item
    cfg: MetaWorldGenConfig = _WORKER["cfg"]
    env = _worker_env(task)
    if _WORKER["store"] is None:
        _WORKER["store"] = EpisodeStore(_WORKER["out"], _store_info(cfg, env.fps), [])
    store = _WORKER["store"]
    failed = 0
    for attempt in range(cfg.max_attempts):
        ep_seed = _episode_seed(cfg.seed, task, slot, attempt)
        success, arrays = rollout(env, ep_seed, cfg)
        if not success:
            failed += 1
            continue
        attrs = {
            "task": instruction(task), "task_name": task, "success": True, "seed": ep_seed, "fps": env.fps,
            "source": store.info.source, "embodiment": EMBODIMENT, "failed_attempts": failed,
            "action_noise": cfg.action_noise, "has_actions": not cfg.action_free,
            "mesh_detail": cfg.mesh_detail,
        }
        store.write_episode(episode_key(task, slot), arrays, attrs)
        length = len(next(iter(arrays.values())))
        return {"task": task, "slot": slot, "kept": True, "failed": failed, "frames": length}
    return {"task": task, "slot": slot, "kept": False, "failed": failed, "frames": 0}


def _close_worker() -> None:
    if _WORKER.get("env") is not None:
        _WORKER["env"].close()
        _WORKER["env"] = None
        _WORKER["task"] = None


def generate_metaworld(cfg: MetaWorldGenConfig) -> GenerationReport:
    """Generate (or resume) a Meta-World store; returns what happened. See the module docstring."""
    from tqdm import tqdm

    from defi.config import to_dict, validate_config
    from defi.data.store import EpisodeStore
    from defi.envs.metaworld import resolve_tasks

    validate_config(cfg)
    tasks = resolve_tasks(cfg.tasks)
    fps = METAWORLD_FPS
    store = EpisodeStore.create(cfg.out, _store_info(cfg, fps))
    report = GenerationReport(out=Path(cfg.out))
    todo: list[tuple[str, int]] = []
    for task in tasks:
        report.per_task[task] = {"kept": 0, "failed_attempts": 0}
        for slot in range(cfg.episodes_per_task):
            if store.has_episode(episode_key(task, slot)):
                report.skipped_existing += 1
            else:
                todo.append((task, slot))
    workers = min(cfg.workers or (os.cpu_count() or 1), max(len(todo), 1))
    start = time.perf_counter()
    cfg_dict = to_dict(cfg)
    bar = tqdm(total=len(todo), desc="episodes", unit="ep", disable=not cfg.progress)

    def record(result: dict[str, Any]) -> None:
        if report.first_result_s is None:
            report.first_result_s = time.perf_counter() - start
        else:
            report.frames_after_first += result["frames"]
        report.failed_attempts += result["failed"]
        report.per_task[result["task"]]["failed_attempts"] += result["failed"]
        if result["kept"]:
            report.kept += 1
            report.frames += result["frames"]
            report.per_task[result["task"]]["kept"] += 1
        else:
            report.failed_slots.append(episode_key(result["task"], result["slot"]))
        bar.update(1)
        bar.set_postfix(frames_per_s=f"{report.frames / max(time.perf_counter() - start, 1e-9):.0f}")

    try:
        if todo and workers <= 1:
            _worker_init(cfg_dict, str(cfg.out))
            try:
                for item in todo:
                    record(_run_slot(item))
            finally:
                _close_worker()
        elif todo:
            # spawn, not fork: each worker opens its own GL context, which must not be inherited half-made.
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(cfg_dict, str(cfg.out), True)) as pool:
                for result in pool.imap_unordered(_run_slot, todo, chunksize=1):
                    record(result)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
        store.finalize()
    return report


def run(cfg: MetaWorldGenConfig) -> GenerationReport:
    """`defi data metaworld`: generate (or resume) the store and print its summary."""
    report = generate_metaworld(cfg)
    print(report.summary())
    return report
