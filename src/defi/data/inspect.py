"""`defi data info DIR` and `defi data preview DIR --out x.gif`: look at a store without training on it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro

from defi.config import Config
from defi.data.store import IMAGE_PREFIX, EpisodeStore
from defi.errors import DefiError


def store_summary(root: str | Path) -> dict[str, Any]:
    """Episodes, frames, tasks, success, failed expert attempts, disk size and layout of a store (or of any source
    `open_source` reads in place, e.g. a CALVIN split; its disk size is not measured)."""
    from defi.data.sources import open_source

    store = open_source(root)
    in_place = not isinstance(store, EpisodeStore)
    eps = store.episodes
    tasks = Counter(e.get("task_name") or e.get("task", "") for e in eps)
    success = [e["success"] for e in eps if e.get("success") is not None]
    info = store.info
    return {
        "path": str(root) if in_place else str(store.root),
        "source": info.source,
        "embodiment": info.embodiment,
        "episodes": len(eps),
        "frames": store.num_frames,
        "fps": info.fps,
        "cameras": list(info.cameras),
        "image_size": list(info.image_size),
        "has_actions": info.has_actions,
        "features": {k: v["shape"] for k, v in info.features.items()},
        "tasks": dict(sorted(tasks.items())),
        "episode_length": {
            "min": int(min(e["length"] for e in eps)),
            "mean": float(np.mean([e["length"] for e in eps])),
            "max": int(max(e["length"] for e in eps)),
        },
        "success_rate": (sum(map(bool, success)) / len(success)) if success else None,
        "failed_expert_attempts": int(sum(e.get("failed_attempts", 0) or 0 for e in eps)),
        "disk_mb": None if in_place else store.disk_bytes() / 2**20,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"store        {s['path']}",
        f"source       {s['source']} (embodiment {s['embodiment']}, actions: {'yes' if s['has_actions'] else 'no'})",
        f"episodes     {s['episodes']}",
        f"frames       {s['frames']} at {s['fps']:g} fps "
        f"(episode length min {s['episode_length']['min']}, mean {s['episode_length']['mean']:.1f}, "
        f"max {s['episode_length']['max']})",
        f"cameras      {', '.join(s['cameras'])} at {s['image_size'][0]}x{s['image_size'][1]}",
        "features     " + ", ".join(f"{k} {v}" for k, v in s["features"].items()),
        f"tasks        {len(s['tasks'])}: " + ", ".join(f"{k} ({v})" for k, v in s["tasks"].items()),
        "success      " + ("n/a (no success labels)" if s["success_rate"] is None else
                            f"{100 * s['success_rate']:.1f}% of kept episodes; expert succeeded in "
                            f"{s['episodes']} of {s['episodes'] + s['failed_expert_attempts']} attempts "
                            f"({s['failed_expert_attempts']} failures discarded)"),
        "disk         " + ("n/a (read in place)" if s["disk_mb"] is None else f"{s['disk_mb']:.1f} MiB"),
    ]
    return "\n".join(lines)


def write_preview(root: str | Path, out: str | Path, episodes: list[int] | None = None, max_frames: int = 200,
                  fps: float | None = None) -> Path:
    """A GIF of the chosen episodes (default: the first of each task), cameras side by side."""
    import imageio.v3 as iio

    store = EpisodeStore.open(root)
    if episodes is None:
        seen: set[str] = set()
        episodes = []
        for i, e in enumerate(store.episodes):
            name = e.get("task_name") or e.get("task", "")
            if name not in seen:
                seen.add(name)
                episodes.append(i)
            if len(episodes) >= 8:
                break
    bad = [e for e in episodes if not 0 <= e < len(store.episodes)]
    if bad:
        raise DefiError(f"episode {bad[0]}: expected 0..{len(store.episodes) - 1}")
    frames: list[np.ndarray] = []
    for ep in episodes:
        views = [store.read(ep, IMAGE_PREFIX + cam) for cam in store.info.cameras]
        frames.extend(np.concatenate(views, axis=2))  # t h (v w) c
    if not frames:
        raise DefiError(f"{root}: nothing to preview")
    stride = max(1, len(frames) // max_frames)
    frames = frames[::stride]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    duration_ms = 1000.0 * stride / (fps or store.info.fps)
    iio.imwrite(out, np.stack(frames), duration=max(duration_ms, 20), loop=0)
    return out


@dataclass
class InfoConfig(Config):
    """`defi data info`: summarise an episode store (or a source read in place, such as a CALVIN split)."""

    store: Annotated[Path, tyro.conf.Positional]
    json: bool = False
    """Print JSON instead of text."""


def info(cfg: InfoConfig) -> dict[str, Any]:
    summary = store_summary(cfg.store)
    print(json.dumps(summary, indent=2) if cfg.json else format_summary(summary))
    return summary


@dataclass
class PreviewConfig(Config):
    """`defi data preview`: write a GIF of some episodes of a store."""

    store: Annotated[Path, tyro.conf.Positional]
    out: Path = Path("preview.gif")
    episodes: tuple[int, ...] = ()
    """Episode indices to show (default: one per task)."""
    max_frames: int = 200


def preview(cfg: PreviewConfig) -> Path:
    path = write_preview(cfg.store, cfg.out, list(cfg.episodes) or None, max_frames=cfg.max_frames)
    print(f"wrote {path}")
    return path
