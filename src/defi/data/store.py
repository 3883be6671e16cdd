"""The episode store: one directory of per-episode zarr (v3) groups plus JSON metadata.

Layout (`codebase_version` "defi-store/1.0"; feature names follow LeRobot so that import/export maps 1:1):

    DIR/
      meta/info.json        codebase_version, fps, source, embodiment, robot_type, has_actions, cameras,
                            image_size [h, w], features {key: {dtype, shape (per frame), names}},
                            and after `finalize()`: total_episodes, total_frames, total_tasks
      meta/stats.json       per low-dim feature ("action", "observation.state", ...): mean, std, min, max over
                            all frames (written by `finalize()`, from per-episode moments)
      meta/episodes.jsonl   one line per finished episode in episode_index order: episode_index, key, length,
                            task (the instruction, LeRobot's meaning), task_name, success, seed, ...
      episodes/<key>.zarr/  one zarr group per episode; its attributes hold the episode's metadata (the
                            episodes.jsonl line is rebuilt from them) and per-feature moments; its arrays have
                            the episode length T as first axis:
          observation.images.<camera>  uint8   [T, h, w, 3]   chunks of `IMAGE_CHUNK_FRAMES` frames, zstd
          observation.state            float32 [T, S]         (absent in action-free sources)
          observation.environment_state float32 [T, E]        (simulator state, optional)
          action                       float32 [T, A]         a_t is taken at frame t (absent when action-free)
          next.reward                  float32 [T]            reward after a_t (optional)
          next.success                 bool    [T]            success flag after a_t (optional)

Episodes are written atomically: into `episodes/.tmp-<key>-<pid>.zarr`, then renamed to `episodes/<key>.zarr`,
so a killed writer leaves only finished episodes (and a temporary directory that the next writer removes).
Episode order (the episode_index) is the sorted order of keys, so it does not depend on which worker finished
first. Reads are lazy: arrays are opened per episode on first use and decoded chunk by chunk through a
bounded per-process LRU cache, never the whole dataset at once.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defi.errors import DefiError

CODEBASE_VERSION = "defi-store/1.0"
IMAGE_CHUNK_FRAMES = 16
IMAGE_PREFIX = "observation.images."
LOW_DIM_KEYS = ("action", "observation.state", "observation.environment_state", "next.reward", "next.success")
STATS_KEYS = ("action", "observation.state")


@dataclass
class StoreInfo:
    """What every episode of a store shares (meta/info.json)."""

    fps: float
    cameras: list[str]
    image_size: list[int]  # [h, w]
    has_actions: bool
    source: str
    embodiment: str = "unknown"
    robot_type: str = "unknown"
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    codebase_version: str = CODEBASE_VERSION
    total_episodes: int = 0
    total_frames: int = 0
    total_tasks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """Source settings that every episode must share (e.g. the generator's seed and action noise)."""

    def compatible_with(self, other: StoreInfo) -> list[str]:
        """Names of the fields that differ in a way that would mix incompatible episodes."""
        keys = ("fps", "cameras", "image_size", "has_actions", "source", "embodiment", "extra")
        return [k for k in keys if getattr(self, k) != getattr(other, k)]


def _moments(x: np.ndarray) -> dict[str, Any]:
    x = x.astype(np.float64).reshape(len(x), -1)
    return {
        "count": int(len(x)),
        "sum": x.sum(0).tolist(),
        "sumsq": (x * x).sum(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }


def _merge_moments(items: list[dict[str, Any]]) -> dict[str, list[float]]:
    count = sum(m["count"] for m in items)
    total = np.sum([m["sum"] for m in items], axis=0)
    sumsq = np.sum([m["sumsq"] for m in items], axis=0)
    mean = total / count
    std = np.sqrt(np.maximum(sumsq / count - mean * mean, 0.0))
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "min": np.min([m["min"] for m in items], axis=0).tolist(),
        "max": np.max([m["max"] for m in items], axis=0).tolist(),
        "count": int(count),
    }


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DefiError(f"{path}: missing {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DefiError(f"{path}: corrupt {what} ({err})") from None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class _ChunkCache:
    """A byte-bounded LRU of decoded chunks; one per process (DataLoader workers each get their own)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> np.ndarray | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return item

    def put(self, key: Any, value: np.ndarray) -> None:
        self.misses += 1
        if value.nbytes > self.max_bytes:
            return
        self._items[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes


class EpisodeStore:
    """Write (`create`) or read (`open`) an episode store directory."""

    def __init__(self, root: Path, info: StoreInfo, episodes: list[dict[str, Any]], cache_mb: float = 512) -> None:
        self.root = Path(root)
        self.info = info
        self.episodes = episodes
        self.cache = _ChunkCache(int(cache_mb * 2**20))
        self._arrays: dict[tuple[int, str], Any] = {}
        self._chunk_frames: dict[tuple[int, str], int] = {}  # zarr's `chunks` property is slow to ask each time
        self._pid = os.getpid()

    # -- writing ---------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, info: StoreInfo) -> EpisodeStore:
        """Create a store, or reopen an existing one for appending (resume) if its info is compatible."""
        root = Path(root)
        (root / "meta").mkdir(parents=True, exist_ok=True)
        (root / "episodes").mkdir(exist_ok=True)
        info_path = root / "meta" / "info.json"
        if info_path.exists():
            old = _info_from_dict(_read_json(info_path, "store metadata"), info_path)
            diff = old.compatible_with(info)
            if diff:
                raise DefiError(
                    f"{root}: already holds a store with different "
                    + ", ".join(f"{k} ({getattr(old, k)!r}, asked for {getattr(info, k)!r})" for k in diff)
                    + "; choose another output directory"
                )
        else:
            _write_json(info_path, asdict(info))
        for tmp in (root / "episodes").glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed writer: never a finished episode
        return cls(root, info, [])

    def episode_path(self, key: str) -> Path:
        return self.root / "episodes" / f"{key}.zarr"

    def has_episode(self, key: str) -> bool:
        return self.episode_path(key).is_dir()

    def write_episode(self, key: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> Path:
        """Write one episode atomically. `arrays` maps feature keys to [T, ...] arrays of equal length T."""
        import zarr

        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"episode {key}: features have different lengths {lengths}")
        length = next(iter(lengths.values()))
        if length == 0:
            raise ValueError(f"episode {key}: no frames")
        tmp = self.root / "episodes" / f".tmp-{key}-{os.getpid()}.zarr"
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(tmp, mode="w")
        moments = {}
        for name, value in arrays.items():
            value = np.ascontiguousarray(value)
            chunks = (IMAGE_CHUNK_FRAMES, *value.shape[1:]) if name.startswith(IMAGE_PREFIX) else value.shape
            arr = group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks)
            arr[...] = value
            if name in STATS_KEYS:
                moments[name] = _moments(value)
        group.attrs.update({**attrs, "key": key, "length": int(length), "moments": moments})
        final = self.episode_path(key)
        if final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise DefiError(f"{final}: episode already exists")
        os.rename(tmp, final)
        return final

    def finalize(self) -> None:
        """Rebuild meta/episodes.jsonl, meta/stats.json and the totals in meta/info.json from the episodes."""
        import zarr

        records = []
        moments: dict[str, list[dict[str, Any]]] = {}
        for path in sorted((self.root / "episodes").glob("*.zarr")):
            if path.name.startswith("."):
                continue
            try:
                attrs = dict(zarr.open_group(path, mode="r").attrs)
            except Exception as err:  # zarr raises several types for a broken group
                raise DefiError(f"{path}: unreadable episode metadata ({type(err).__name__}: {err})") from None
            for name, mom in attrs.pop("moments", {}).items():
                moments.setdefault(name, []).append(mom)
            attrs["episode_index"] = len(records)
            records.append(attrs)
        tmp = self.root / "meta" / f"episodes.jsonl.tmp{os.getpid()}"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, self.root / "meta" / "episodes.jsonl")
        _write_json(self.root / "meta" / "stats.json", {k: _merge_moments(v) for k, v in moments.items()})
        self.info.total_episodes = len(records)
        self.info.total_frames = int(sum(r["length"] for r in records))
        self.info.total_tasks = len({r.get("task", "") for r in records})
        _write_json(self.root / "meta" / "info.json", asdict(self.info))
        self.episodes = records

    # -- reading ---------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, cache_mb: float = 512) -> EpisodeStore:
        root = Path(root)
        if not root.is_dir():
            raise DefiError(f"{root}: no such episode store directory")
        info_path = root / "meta" / "info.json"
        info = _info_from_dict(_read_json(info_path, "store metadata (meta/info.json)"), info_path)
        index = root / "meta" / "episodes.jsonl"
        if not index.is_file():
            raise DefiError(f"{index}: missing episode index (an unfinished write? run the generator again to resume)")
        episodes = []
        for lineno, line in enumerate(index.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                record["length"] = int(record["length"])
                record["key"] = str(record["key"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise DefiError(f"{index}:{lineno}: corrupt episode record ({err})") from None
            episodes.append(record)
        if not episodes:
            raise DefiError(f"{root}: the store has no episodes")
        return cls(root, info, episodes, cache_mb=cache_mb)

    @property
    def num_frames(self) -> int:
        return int(sum(e["length"] for e in self.episodes))

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / "meta" / "stats.json"
        data = _read_json(path, "normalisation statistics (meta/stats.json)")
        return {k: {s: np.asarray(v[s], dtype=np.float32) for s in ("mean", "std", "min", "max")} for k, v in data.items()}

    def _array(self, episode: int, key: str) -> Any:
        import zarr

        if self._pid != os.getpid():  # a forked DataLoader worker: handles and cache are per process
            self._arrays.clear()
            self.cache = _ChunkCache(self.cache.max_bytes)
            self._pid = os.getpid()
        handle = self._arrays.get((episode, key))
        if handle is None:
            path = self.episode_path(self.episodes[episode]["key"])
            try:
                group = zarr.open_group(path, mode="r")
                handle = group[key]
            except KeyError:
                raise DefiError(f"{path}: episode has no feature {key!r}") from None
            except Exception as err:
                raise DefiError(f"{path}: missing or corrupt episode metadata ({type(err).__name__}: {err})") from None
            self._arrays[(episode, key)] = handle
        return handle

    def _chunk(self, episode: int, key: str, chunk: int, chunk_frames: int) -> np.ndarray:
        cache_key = (episode, key, chunk)
        data = self.cache.get(cache_key)
        if data is None:
            arr = self._array(episode, key)
            # zarr reads a missing chunk file as its fill value (zeros); a store never has one, so say so.
            chunk_file = self.episode_path(self.episodes[episode]["key"]) / key / "c" / "/".join(
                [str(chunk)] + ["0"] * (arr.ndim - 1)
            )
            if not chunk_file.is_file():
                raise DefiError(f"{chunk_file}: missing chunk of {key!r} (a damaged store: regenerate the episode)")
            try:
                data = np.asarray(arr[chunk * chunk_frames : (chunk + 1) * chunk_frames])
            except Exception as err:  # the codec raises its own types for a corrupt or truncated chunk
                path = self.episode_path(self.episodes[episode]["key"]) / key / "c" / str(chunk)
                raise DefiError(
                    f"{path}: corrupt or truncated chunk of {key!r} ({type(err).__name__}: {err})"
                ) from None
            self.cache.put(cache_key, data)
        return data

    def read(self, episode: int, key: str, frames: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Frames of one feature of one episode (all frames when `frames` is None), through the chunk cache;
        written into `out` when given."""
        length = self.episodes[episode]["length"]
        frames = np.arange(length) if frames is None else np.asarray(frames, dtype=np.int64)
        arr = self._array(episode, key)
        chunk_frames = self._chunk_frames.get((episode, key))
        if chunk_frames is None:
            chunk_frames = self._chunk_frames[(episode, key)] = int(arr.chunks[0])
        if chunk_frames >= length:  # one chunk holds the episode (low-dim features)
            data = self._chunk(episode, key, 0, chunk_frames)[frames]
            if out is not None:
                out[...] = data
            return data
        # A clip asks for ~10 frames: gathering them one by one beats vectorised masking at this size.
        if out is None:
            out = np.empty((len(frames), *arr.shape[1:]), dtype=arr.dtype)
        chunks: dict[int, np.ndarray] = {}
        for i, f in enumerate(frames.tolist()):
            c = f // chunk_frames
            data = chunks.get(c)
            if data is None:
                data = chunks[c] = self._chunk(episode, key, c, chunk_frames)
            out[i] = data[f - c * chunk_frames]
        return out

    def read_episode(self, episode: int, key: str) -> np.ndarray:
        """A whole (cached) feature of one episode; meant for small per-frame features such as actions."""
        arr = self._array(episode, key)
        chunk_frames = self._chunk_frames.get((episode, key))
        if chunk_frames is None:
            chunk_frames = self._chunk_frames[(episode, key)] = int(arr.chunks[0])
        if chunk_frames >= self.episodes[episode]["length"]:
            return self._chunk(episode, key, 0, chunk_frames)
        return self.read(episode, key)

    def has_feature(self, key: str) -> bool:
        return key in self.info.features

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def _info_from_dict(data: Any, path: Path) -> StoreInfo:
    if not isinstance(data, dict):
        raise DefiError(f"{path}: expected a JSON object of store metadata")
    missing = [k for k in ("fps", "cameras", "image_size", "has_actions", "source") if k not in data]
    if missing:
        raise DefiError(f"{path}: store metadata lacks {', '.join(missing)}")
    known = {f for f in StoreInfo.__dataclass_fields__}
    try:
        return StoreInfo(**{k: v for k, v in data.items() if k in known})
    except TypeError as err:
        raise DefiError(f"{path}: bad store metadata ({err})") from None


def feature_spec(cameras: list[str], image_size: list[int], arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """LeRobot-style feature descriptions (dtype, per-frame shape, names) of an episode's arrays."""
    spec: dict[str, dict[str, Any]] = {}
    for key, value in arrays.items():
        if key.startswith(IMAGE_PREFIX):
            spec[key] = {"dtype": "image", "shape": [*image_size, 3], "names": ["height", "width", "channel"]}
        else:
            spec[key] = {"dtype": str(value.dtype), "shape": list(value.shape[1:]) or [1], "names": None}
    return spec
