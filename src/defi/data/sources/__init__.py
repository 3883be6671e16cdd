"""Episode sources: one module per external format.

A source either writes a defi episode store (`defi data metaworld`, `defi data videos`) or is read in place. A
source read in place registers a reader here; the clip sampler opens every path through `open_source`, so a
stage trains on any registered format without a conversion step.

A reader returns an object with the episode store's read interface (see `defi.data.store.EpisodeStore`):
`info` (a `StoreInfo`: fps, cameras, image_size, has_actions, source, features), `episodes` (one dict per episode
with at least "length" and "task"), `read(episode, key, frames, out=None)`, `read_episode(episode, key)` and
`stats()`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from defi.errors import DefiError

# name -> (detect(path) -> bool, "module:open_function"). The defi store is tried last.
READERS: dict[str, tuple[Callable[[Path], bool], str]] = {}


def register_reader(name: str, detect: Callable[[Path], bool], opener: str) -> None:
    """Register an in-place reader: `detect(path)` says whether `path` is in this format, `opener` is the
    "module:function" that opens it as `function(path, cache_mb=...)`."""
    if ":" not in opener:
        raise ValueError(f"reader {name!r}: opener {opener!r} must be 'module:function'")
    READERS[name] = (detect, opener)


def open_source(path: str | Path, cache_mb: float = 512) -> Any:
    """Open an episode source for reading: a registered in-place format, or a defi episode store."""
    from defi.data.store import EpisodeStore

    path = Path(path)
    if not path.exists():
        raise DefiError(f"{path}: no such episode source (expected a defi episode store directory"
                        + (f" or a {', '.join(READERS)} dataset" if READERS else "") + ")")
    for _, (detect, opener) in READERS.items():
        if detect(path):
            module, func = opener.split(":")
            return getattr(import_module(module), func)(path, cache_mb=cache_mb)
    return EpisodeStore.open(path, cache_mb=cache_mb)

# LeRobot directories are imported into a store first; the opener says how (defi.data.sources.lerobot).
register_reader("lerobot", lambda p: import_module("defi.data.sources.lerobot").is_lerobot_dataset(p),
                "defi.data.sources.lerobot:open_lerobot_in_place")

from defi.data.sources.calvin import detect_calvin  # noqa: E402  (numpy only: cheap to import here)

register_reader("calvin", detect_calvin, "defi.data.sources.calvin:open_calvin")
