"""LeRobot datasets in and out.

In: `defi data lerobot PATH --out STORE` (`import_lerobot`) imports a local LeRobot dataset directory into an
episode store; the stages then train on the store like on any other. Layouts read (LeRobot's published formats):

    v3.0  meta/info.json           fps, features {dtype, shape, names}, data_path / video_path templates
          meta/tasks.parquet       the task strings (the pandas index) and their task_index
          meta/episodes/chunk-*/file-*.parquet   one row per episode: length, tasks, data/{chunk,file}_index and
                                   videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}
          data/chunk-*/file-*.parquet            the frames of many episodes (episode_index, frame_index,
                                   timestamp, task_index, observation.state, action, image features as PNG bytes)
          videos/<key>/chunk-*/file-*.mp4        many episodes one after the other: frame i of an episode is
                                   shown at from_timestamp + timestamp[i]
    v2.x  meta/info.json, meta/tasks.jsonl, meta/episodes.jsonl, one parquet per episode
          (data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet) and one mp4 per episode and camera
          (videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4) that starts at 0 s

Frames are decoded with PyAV at the episode's own timestamps (a frame matches when it is within 0.4 frame
periods); one decoder per camera moves forward through a file, so consecutive episodes of a v3.0 file are
decoded without seeking. `observation.state`, `action` (and `observation.environment_state`, `next.reward`,
`next.success` when present) are kept as they are (as float32 / bool); the task of an episode's first frame is
its instruction; the store keeps the dataset's fps, so the clip sampler's interval in seconds means the same
time whatever the dataset's frame rate. `camera_map` renames cameras to the policy's names (and imports only
those); `action_free` keeps only the videos (a pretraining corpus).

A missing video, an unreadable parquet, or an episode whose frame count disagrees with its metadata or its video
stops the import with an error naming the file and the episode; with `skip_bad` the episode is skipped and
counted instead. Episodes are written atomically (see `defi.data.store`): a stopped import leaves only whole
episodes, and running it again resumes.

Why import rather than train on the LeRobot directory in place (`benchmarks/bench_lerobot.py` measures both):
read in place, clips come at the store's speed only once every DataLoader worker holds the whole decoded
dataset in RAM (at the training size), and that decoding is paid again in every run and every worker; the
import decodes once, checks every episode before training starts, and fixes camera names and frame size once.
`LeRobotSource` still offers the store's read interface (used by the benchmark and by tests); pointing a stage
at a LeRobot directory stops with the import command to run.

Out: `defi data export-lerobot STORE --out DIR` (`export_lerobot`) writes a store as a LeRobot v3.0 dataset
(videos encoded like LeRobot's writer: libsvtav1 by default, yuv420p, a keyframe every 2 frames, crf 30;
stats.json with LeRobot's statistics including quantiles; per-episode statistics in the episodes parquet). It is
written into a temporary directory next to DIR and renamed at the end, so DIR is either complete or absent.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro

from defi.config import Config, validate_config
from defi.errors import DefiError

SOURCE = "lerobot"
READ_VERSIONS = ("v2.0", "v2.1", "v3.0")
WRITE_VERSION = "v3.0"
IMAGE_PREFIX = "observation.images."
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
LOW_DIM_KEYS = ("action", "observation.state", "observation.environment_state", "next.reward", "next.success")
TIME_TOLERANCE_FRAMES = 0.4
"""A decoded frame is the one asked for when its time is within this fraction of a frame period. LeRobot's own
tolerance (1e-4 s) rejects videos whose container time base rounds frame times (1 ms bases are common); any
frame closer than half a period is unambiguously the one asked for."""
SEEK_AFTER_S = 2.0
"""Seek instead of decoding forward when the next frame asked for is this far ahead of the decoder."""
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
VIDEO_CODECS = ("libsvtav1", "h264", "hevc")
STAT_FRAMES = 100
"""Frames per episode (evenly spaced) from which image statistics are computed, as LeRobot's writer samples."""


# ------------------------------------------------------------------------------------------- small readers
def _require(*modules: str) -> None:
    """A clear error when the parquet libraries (core dependencies of defi) are missing from the environment."""
    from importlib.util import find_spec

    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise DefiError(f"LeRobot datasets need {', '.join(missing)} (dependencies of defi): reinstall defi "
                        "(pip install -e .) or pip install 'pyarrow>=15,<26' 'pandas>=2,<3'")


def is_lerobot_dataset(path: Path) -> bool:
    """Whether `path` holds a LeRobot dataset (meta/info.json with a "vX.Y" codebase_version)."""
    info = Path(path) / "meta" / "info.json"
    if not info.is_file():
        return False
    try:
        version = json.loads(info.read_text()).get("codebase_version", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(version, str) and version.startswith("v")


def _load_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DefiError(f"{path}: missing (not a LeRobot dataset directory)")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DefiError(f"{path}: unreadable LeRobot metadata ({err})") from None
    if not isinstance(info, dict):
        raise DefiError(f"{path}: expected a JSON object")
    version = info.get("codebase_version")
    if version not in READ_VERSIONS:
        raise DefiError(f"{path}: codebase_version {version!r}; defi reads LeRobot datasets of version "
                        f"{', '.join(READ_VERSIONS)} (convert older ones with LeRobot's converter first)")
    missing = [k for k in ("fps", "features", "data_path") if k not in info]
    if missing:
        raise DefiError(f"{path}: LeRobot metadata lacks {', '.join(missing)}")
    if not isinstance(info["features"], dict) or not all(isinstance(f, dict) for f in info["features"].values()):
        raise DefiError(f"{path}: 'features' must map feature keys to {{dtype, shape, names}}")
    try:
        if float(info["fps"]) <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise DefiError(f"{path}: fps={info['fps']!r}, expected a positive number") from None
    return info


def _parquet_schema(path: Path, what: str, episode: int | None = None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"{path}" + (f" (episode {episode})" if episode is not None else "")
    if not path.is_file():
        raise DefiError(f"{where}: missing {what}")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise DefiError(f"{where}: unreadable {what} ({type(err).__name__}: {err})") from None


def _read_parquet(path: Path, what: str, columns: list[str] | None = None, episode: int | None = None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema(path, what, episode)
    where = f"{path}" + (f" (episode {episode})" if episode is not None else "")
    missing = [c for c in columns or [] if c not in schema.names]
    if missing:
        raise DefiError(f"{where}: {what} has no column {missing[0]!r} (columns: {', '.join(schema.names)})")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise DefiError(f"{where}: unreadable {what} ({type(err).__name__}: {err})") from None


def _to_numpy(column: Any, path: Path, key: str) -> np.ndarray:
    """A parquet column as numpy: scalars -> [N], lists of equal length -> [N, D]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise DefiError(f"{path}: column {key!r} has {arr.null_count} missing values")
    kind = arr.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        flat = arr.flatten()
        if not (pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type) or pa.types.is_boolean(flat.type)):
            raise DefiError(f"{path}: column {key!r} of type {kind}; defi reads scalar and 1-D numeric features")
        if len(arr) == 0:
            return np.zeros((0, 0), dtype=flat.type.to_pandas_dtype())
        lengths = pc.list_value_length(arr).to_numpy()
        if lengths.min() != lengths.max():
            raise DefiError(f"{path}: column {key!r} has rows of different lengths ({lengths.min()}..{lengths.max()})")
        return flat.to_numpy(zero_copy_only=False).reshape(len(arr), int(lengths[0]))
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DefiError(f"{path}: column {key!r} of type {kind}; defi reads scalar and 1-D numeric features")
    return arr.to_numpy(zero_copy_only=False)


def camera_name(key: str) -> str:
    """The store's camera name of a LeRobot camera key: observation.images.front -> front, observation.image -> image."""
    for prefix in (IMAGE_PREFIX, "observation."):
        if key.startswith(prefix) and len(key) > len(prefix):
            return key[len(prefix):]
    return key


def default_camera_names(keys: list[str]) -> list[str]:
    """`camera_name` of every key, or the keys themselves if two would get the same name."""
    names = [camera_name(k) for k in keys]
    return names if len(set(names)) == len(names) else list(keys)


def _image_hw(feature: dict[str, Any], key: str, where: Path) -> tuple[int, int]:
    shape, names = list(feature.get("shape") or []), list(feature.get("names") or [])
    if len(shape) != 3:
        raise DefiError(f"{where}: feature {key!r} has shape {shape}, expected [height, width, channels]")
    if "height" in names and "width" in names:
        return int(shape[names.index("height")]), int(shape[names.index("width")])
    # Datasets without axis names are channel-last in LeRobot v2+ unless the first axis is the channel one.
    if shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


@dataclass
class LeRobotEpisode:
    """Where one episode of a LeRobot dataset lives."""

    index: int
    length: int
    tasks: list[str]
    data_file: Path
    videos: dict[str, tuple[Path, float, float]] = field(default_factory=dict)
    """video key -> (file, from_timestamp, to_timestamp); a v2.x file holds one episode (0 s, infinity)."""


class _FrameMismatch(Exception):
    """The video's frames do not line up with the episode's timestamps."""


class _VideoCursor:
    """One camera's decoder. It moves forward through a file: asking for the next episode of the same v3.0 file
    goes on decoding where the last one stopped; a file change, a step back or a jump of more than
    `SEEK_AFTER_S` seeks to the keyframe before the first frame asked for."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._frames: Any = None
        self._pending: Any = None  # a decoded frame that belongs to the next request
        self._time = -np.inf  # time of the last frame taken from the decoder

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._stream = self._frames = self._pending = None
        self.path = None
        self._time = -np.inf

    def _start(self, path: Path, at: float) -> None:
        import av

        if path != self.path or self._container is None:
            self.close()
            self._container = av.open(str(path))
            if not self._container.streams.video:
                self.close()
                raise DefiError(f"{path}: no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            self.path = path
        if at > 0 or self._frames is not None:
            self._container.seek(max(0, int(at / self._stream.time_base)), stream=self._stream, backward=True)
        self._frames = self._container.decode(self._stream)
        self._pending = None
        self._time = -np.inf

    def _next(self) -> Any:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        for frame in self._frames:
            if frame.time is not None:
                self._time = frame.time
                return frame
        return None

    def read(self, path: Path, times: np.ndarray, tolerance: float, end: float, convert: Any) -> list[np.ndarray]:
        """The frames shown at `times` (increasing, seconds), converted; raises _FrameMismatch when one is
        missing or when the file has a frame before `end` after the last one asked for."""
        first = float(times[0])
        if path == self.path and self._frames is not None and self._time <= first + tolerance < self._time + SEEK_AFTER_S:
            return self._take(times, tolerance, end, convert)
        self._start(path, first)
        try:
            return self._take(times, tolerance, end, convert)
        except _FrameMismatch:
            if first <= tolerance:
                raise
        # A container index can put the seek after the frame asked for: decode from the start before giving up.
        self._start(path, 0.0)
        return self._take(times, tolerance, end, convert)

    def _take(self, times: np.ndarray, tolerance: float, end: float, convert: Any) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for target in times.tolist():
            while True:
                frame = self._next()
                if frame is None:
                    raise _FrameMismatch(f"the video ends before frame {len(out)} ({target:.3f} s)")
                if frame.time < target - tolerance:
                    continue
                if frame.time > target + tolerance:
                    self._pending = frame
                    raise _FrameMismatch(f"no video frame at {target:.3f} s (frame {len(out)}; the next one is at "
                                         f"{frame.time:.3f} s)")
                out.append(convert(frame))
                break
        following = self._next()
        if following is not None:
            self._pending = following
            if following.time < end - tolerance:
                raise _FrameMismatch(f"the video has more frames than the data: one at {following.time:.3f} s, "
                                     f"before the episode's end ({end:.3f} s)")
        return out


def _rgb(frame: Any) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _resizer(size: int, crop: bool) -> Any:
    """A frame -> uint8 [size, size, 3] conversion through PyAV's swscale (scale the short side to `size` and
    centre-crop, or stretch)."""
    from defi.data.sources.videos import _to_square

    if crop:
        return lambda frame: _to_square(frame, size)
    return lambda frame: frame.reformat(width=size, height=size, format="rgb24").to_ndarray()


class LeRobotSource:
    """A local LeRobot dataset (v3.0 or v2.x): metadata is read at open, parquet files and videos per episode.

    `frames`, `low_dim` and `frame_tasks` give one episode's data (the importer's path). It also has the store's
    read interface (`info`, `episodes`, `read`, `read_episode`, `stats`), with cameras named by `camera_name`,
    decoded episodes kept in a byte-bounded cache: the benchmark measures training on it in place."""

    def __init__(self, root: str | Path, cache_mb: float = 512, decode_size: int = 0) -> None:
        """`decode_size` > 0: the read interface serves frames scaled and centre-cropped to that square size."""
        from defi.data.store import StoreInfo, _ChunkCache

        _require("pyarrow")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DefiError(f"{self.root}: no such LeRobot dataset directory")
        self.meta = _load_info(self.root)
        self.version = str(self.meta["codebase_version"])
        self.fps = float(self.meta["fps"])
        self.features: dict[str, dict[str, Any]] = self.meta["features"]
        self.robot_type = str(self.meta.get("robot_type") or "unknown")
        self.camera_keys = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        self.video_keys = [k for k in self.camera_keys if self.features[k]["dtype"] == "video"]
        info_path = self.root / "meta" / "info.json"
        if self.video_keys and not self.meta.get("video_path"):
            raise DefiError(f"{info_path}: has video features but no video_path template")
        self.low_dim_keys = [k for k in LOW_DIM_KEYS if k in self.features]
        self.task_names = self._load_tasks()
        self.source_episodes = self._load_v30_episodes() if self.version == "v3.0" else self._load_v2_episodes()
        if not self.source_episodes:
            raise DefiError(f"{self.root}: the dataset has no episodes")
        self._tables: OrderedDict[Path, dict[str, np.ndarray]] = OrderedDict()
        self._images: OrderedDict[tuple[Path, str], Any] = OrderedDict()
        self._cursors: dict[str, _VideoCursor] = {}
        self._pid = os.getpid()

        # the episode store's read interface
        names = default_camera_names(self.camera_keys)
        self._key_of = {IMAGE_PREFIX + n: k for n, k in zip(names, self.camera_keys)}
        sizes = {_image_hw(self.features[k], k, info_path) for k in self.camera_keys}
        image_size = list(next(iter(sizes))) if len(sizes) == 1 else [0, 0]
        self._convert = _resizer(decode_size, crop=True) if decode_size else _rgb
        image_size = [decode_size, decode_size] if decode_size else image_size
        store_features = {IMAGE_PREFIX + n: {"dtype": "image", "shape": [*image_size, 3], "names": None} for n in names}
        for key in self.low_dim_keys:
            shape = list(self.features[key].get("shape") or [1])
            store_features[key] = {"dtype": "bool" if self.features[key]["dtype"] == "bool" else "float32",
                                   "shape": shape, "names": self.features[key].get("names")}
        self.info = StoreInfo(fps=self.fps, cameras=names, image_size=image_size,
                              has_actions="action" in self.low_dim_keys, source=SOURCE, embodiment=self.robot_type,
                              robot_type=self.robot_type, features=store_features,
                              total_episodes=len(self.source_episodes),
                              total_frames=sum(e.length for e in self.source_episodes))
        self.episodes = [{"episode_index": i, "key": f"episode-{e.index:06d}", "length": e.length,
                          "task": e.tasks[0] if e.tasks else "", "lerobot_episode_index": e.index}
                         for i, e in enumerate(self.source_episodes)]
        self.cache = _ChunkCache(int(cache_mb * 2**20))

    # -- metadata ------------------------------------------------------------------------------------------
    def _load_tasks(self) -> dict[int, str]:
        if self.version == "v3.0":
            path = self.root / "meta" / "tasks.parquet"
            table = _read_parquet(path, "task table")
            names = table.column_names
            text = "task" if "task" in names else None
            if text is None and table.schema.metadata and b"pandas" in table.schema.metadata:
                index_columns = json.loads(table.schema.metadata[b"pandas"]).get("index_columns", [])
                text = next((c for c in index_columns if isinstance(c, str) and c in names), None)
            if "task_index" not in names or text is None:
                raise DefiError(f"{path}: expected a task_index column and the task strings (as the pandas index or a "
                                f"'task' column); columns: {', '.join(names)}")
            return {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(), table.column(text).to_pylist())}
        rows = self._jsonl(self.root / "meta" / "tasks.jsonl", ("task_index", "task"))
        return {int(r["task_index"]): str(r["task"]) for _, r in rows}

    @staticmethod
    def _jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
        if not path.is_file():
            raise DefiError(f"{path}: missing")
        rows = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DefiError(f"{path}:{lineno}: not valid JSON ({err})") from None
            if not isinstance(row, dict) or any(k not in row for k in required):
                raise DefiError(f"{path}:{lineno}: expected an object with {', '.join(required)}")
            rows.append((lineno, row))
        return rows

    def _template(self, name: str, **values: Any) -> Path:
        try:
            return self.root / str(self.meta[name]).format(**values)
        except (KeyError, IndexError, ValueError) as err:
            raise DefiError(f"{self.root / 'meta' / 'info.json'}: {name} {self.meta[name]!r} does not format with "
                            f"{sorted(values)} ({err!r})") from None

    def _load_v30_episodes(self) -> list[LeRobotEpisode]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DefiError(f"{self.root / 'meta' / 'episodes'}: no episode metadata (chunk-*/file-*.parquet)")
        needed = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for key in self.video_keys:
            needed += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        episodes = []
        for path in files:
            schema = _parquet_schema(path, "episode metadata")
            table = _read_parquet(path, "episode metadata", needed + (["tasks"] if "tasks" in schema.names else []))
            for row in table.to_pylist():
                index = int(row["episode_index"])
                videos = {}
                for key in self.video_keys:
                    file = self._template("video_path", video_key=key, chunk_index=int(row[f"videos/{key}/chunk_index"]),
                                          file_index=int(row[f"videos/{key}/file_index"]))
                    videos[key] = (file, float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"]))
                data = self._template("data_path", chunk_index=int(row["data/chunk_index"]),
                                      file_index=int(row["data/file_index"]))
                episodes.append(LeRobotEpisode(index, int(row["length"]), [str(t) for t in row.get("tasks") or []], data, videos))
        return sorted(episodes, key=lambda e: e.index)

    def _load_v2_episodes(self) -> list[LeRobotEpisode]:
        chunks_size = int(self.meta.get("chunks_size") or 1000)
        episodes = []
        for _, row in self._jsonl(self.root / "meta" / "episodes.jsonl", ("episode_index", "length")):
            index = int(row["episode_index"])
            chunk = index // chunks_size
            data = self._template("data_path", episode_chunk=chunk, episode_index=index)
            videos = {key: (self._template("video_path", episode_chunk=chunk, video_key=key, episode_index=index), 0.0, np.inf)
                      for key in self.video_keys}
            episodes.append(LeRobotEpisode(index, int(row["length"]), [str(t) for t in row.get("tasks") or []], data, videos))
        return sorted(episodes, key=lambda e: e.index)

    # -- frames of one episode -------------------------------------------------------------------------------
    def _check_process(self) -> None:
        if self._pid != os.getpid():  # a forked DataLoader worker: decoders, tables and cache are per process
            self._cursors = {}
            self._tables.clear()
            self._images.clear()
            self.cache = type(self.cache)(self.cache.max_bytes)
            self._pid = os.getpid()

    def _table(self, ep: LeRobotEpisode) -> dict[str, np.ndarray]:
        table = self._tables.get(ep.data_file)
        if table is None:
            schema = _parquet_schema(ep.data_file, "data parquet", ep.index)
            optional = [c for c in INDEX_FEATURES if c != "episode_index" and c in schema.names]
            columns = ["episode_index", *optional, *self.low_dim_keys]
            raw = _read_parquet(ep.data_file, "data parquet", columns, ep.index)
            table = {c: _to_numpy(raw.column(c), ep.data_file, c) for c in columns}
            self._tables[ep.data_file] = table
            while len(self._tables) > 2:  # a v3.0 data file holds many episodes: keep the current ones
                self._tables.popitem(last=False)
        return table

    def _rows(self, ep: LeRobotEpisode) -> tuple[dict[str, np.ndarray], np.ndarray]:
        table = self._table(ep)
        rows = np.flatnonzero(table["episode_index"] == ep.index)
        if "frame_index" in table:
            rows = rows[np.argsort(table["frame_index"][rows], kind="stable")]
        if len(rows) != ep.length:
            raise DefiError(f"{ep.data_file}: episode {ep.index} has {len(rows)} frames in the data parquet, its "
                            f"episode metadata says {ep.length}")
        if not len(rows):
            raise DefiError(f"{ep.data_file}: episode {ep.index} has no frames")
        return table, rows

    def timestamps(self, ep: LeRobotEpisode) -> np.ndarray:
        table, rows = self._rows(ep)
        if "timestamp" in table:
            return table["timestamp"][rows].astype(np.float64)
        return np.arange(ep.length) / self.fps

    def low_dim(self, ep: LeRobotEpisode, key: str) -> np.ndarray:
        """[T, D] (or [T] for scalar features) of one episode: float32, bool kept as bool."""
        table, rows = self._rows(ep)
        if key not in table:
            raise DefiError(f"{ep.data_file}: data parquet has no column {key!r} (episode {ep.index})")
        value = table[key][rows]
        if value.ndim == 2 and list(self.features[key].get("shape") or []) == [1]:
            value = value[:, 0]  # a scalar feature written as a list of one
        return value if value.dtype == np.bool_ else value.astype(np.float32)

    def frame_tasks(self, ep: LeRobotEpisode) -> list[str]:
        """The task string of every frame (from task_index), or the episode's tasks when there is no column."""
        table, rows = self._rows(ep)
        if "task_index" not in table:
            return [ep.tasks[0] if ep.tasks else ""] * ep.length
        indices = table["task_index"][rows]
        unknown = sorted(set(indices.tolist()) - set(self.task_names))
        if unknown:
            raise DefiError(f"{ep.data_file}: episode {ep.index} uses task_index {unknown[0]}, which the task table "
                            f"does not list")
        return [self.task_names[int(i)] for i in indices]

    def frames(self, ep: LeRobotEpisode, key: str, convert: Any = None) -> np.ndarray:
        """uint8 [T, h, w, 3]: camera `key` of one episode at its timestamps (`convert` maps a PyAV frame to an
        array; default: RGB at the stored size)."""
        import av

        self._check_process()
        convert = convert or _rgb
        if key not in self.camera_keys:
            raise DefiError(f"{self.root}: no camera {key!r} (camera keys: {', '.join(self.camera_keys)})")
        if self.features[key]["dtype"] == "image":
            return self._image_frames(ep, key, convert)
        path, start, end = ep.videos[key]
        if not path.is_file():
            raise DefiError(f"{path}: missing video of {key} (episode {ep.index})")
        times = start + self.timestamps(ep)
        cursor = self._cursors.setdefault(key, _VideoCursor())
        try:
            frames = cursor.read(path, times, TIME_TOLERANCE_FRAMES / self.fps, end, convert)
        except _FrameMismatch as err:
            cursor.close()
            raise DefiError(f"{path}: episode {ep.index} ({ep.length} frames in its data) of {key}: {err}") from None
        except av.error.FFmpegError as err:
            cursor.close()
            raise DefiError(f"{path}: unreadable video of {key} (episode {ep.index}: {err})") from None
        return np.stack(frames)

    def _image_frames(self, ep: LeRobotEpisode, key: str, convert: Any) -> np.ndarray:
        import av
        from PIL import Image, UnidentifiedImageError

        _, rows = self._rows(ep)
        column = self._images.get((ep.data_file, key))
        if column is None:
            column = _read_parquet(ep.data_file, "data parquet", [key], ep.index).column(key).combine_chunks()
            self._images[(ep.data_file, key)] = column
            while len(self._images) > 2:
                self._images.popitem(last=False)
        out = []
        for frame, row in enumerate(rows.tolist()):
            item = column[row].as_py()
            data = item.get("bytes") if isinstance(item, dict) else None
            try:
                if data is None and isinstance(item, dict) and item.get("path"):
                    data = (self.root / item["path"]).read_bytes()
                if data is None:
                    raise ValueError("no image bytes or path")
                rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            except (OSError, ValueError, UnidentifiedImageError) as err:
                raise DefiError(f"{ep.data_file}: episode {ep.index} frame {frame} of {key}: unreadable image ({err})") from None
            out.append(rgb if convert is _rgb else convert(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        return np.stack(out)

    def close(self) -> None:
        for cursor in self._cursors.values():
            cursor.close()
        self._cursors = {}

    # -- the episode store's read interface --------------------------------------------------------------------
    def read_episode(self, episode: int, key: str) -> np.ndarray:
        self._check_process()
        cache_key = (episode, key)
        data = self.cache.get(cache_key)
        if data is None:
            ep = self.source_episodes[episode]
            data = self.frames(ep, self._key_of[key], self._convert) if key in self._key_of else self.low_dim(ep, key)
            self.cache.put(cache_key, data)
        return data

    def read(self, episode: int, key: str, frames: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        data = self.read_episode(episode, key)
        data = data if frames is None else data[np.asarray(frames, dtype=np.int64)]
        if out is not None:
            out[...] = data
            return out
        return data

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        from defi.data.store import STATS_KEYS

        out = {}
        for key in (k for k in STATS_KEYS if k in self.low_dim_keys):
            values = np.concatenate([self.read_episode(i, key).reshape(self.episodes[i]["length"], -1)
                                     for i in range(len(self.episodes))]).astype(np.float64)
            out[key] = {"mean": values.mean(0), "std": values.std(0), "min": values.min(0), "max": values.max(0)}
            out[key] = {k: v.astype(np.float32) for k, v in out[key].items()}
        return out


def open_lerobot_in_place(path: Path, cache_mb: float = 512) -> Any:
    """The sources registry's opener: training reads an imported store (see the module docstring)."""
    version = _load_info(Path(path)).get("codebase_version")
    raise DefiError(f"{path}: is a LeRobot {version} dataset; import it once into an episode store and train on "
                    f"that: defi data lerobot {path} --out STORE [--camera-map KEY=CAMERA ...] [--action-free]")


# --------------------------------------------------------------------------------------------------- import
@dataclass
class LeRobotImportConfig(Config):
    """`defi data lerobot PATH --out STORE`: import a local LeRobot dataset (v3.0 or v2.x) into an episode store."""

    path: Annotated[Path, tyro.conf.Positional]
    """The LeRobot dataset directory (the one holding meta/info.json)."""
    out: Path = Path("data/lerobot")
    """Output store directory (re-running with the same directory resumes)."""
    camera_map: tuple[str, ...] = ()
    """KEY=CAMERA pairs, e.g. observation.images.front=corner: import only these cameras, under these names (the
    policy's cameras). Empty: every camera, named by its key without "observation.images."."""
    size: int = 128
    """Square frame size in pixels (the short side is scaled to it, then centre-cropped); 0 keeps the dataset's
    resolution (all imported cameras must then share it)."""
    crop: bool = True
    """False: stretch frames to size x size instead of cropping."""
    action_free: bool = False
    """Import only the videos (a pretraining corpus): no actions or states."""
    skip_bad: bool = False
    """Skip (and count) episodes with a missing or unreadable file or mismatched frame counts, instead of stopping."""
    progress: bool = True

    def validate(self) -> None:
        self.check(self.size == 0 or 8 <= self.size <= 1024, "size", "0 (keep) or between 8 and 1024 pixels")
        for pair in self.camera_map:
            self.check(pair.count("=") == 1 and all(pair.split("=")), "camera_map", "KEY=CAMERA pairs")
        targets = [p.split("=")[1] for p in self.camera_map]
        self.check(len(set(targets)) == len(targets), "camera_map", "each camera name used once")


@dataclass
class ImportReport:
    out: Path
    written: int = 0
    existing: int = 0
    frames: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        text = (f"{self.out}: wrote {self.written} episodes ({self.frames} frames, {self.seconds:.1f} s, "
                f"{rate:.0f} frames/s), {self.existing} already there")
        if self.skipped:
            text += f", skipped {len(self.skipped)} bad episodes:\n  " + "\n  ".join(self.skipped)
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "written": self.written, "existing": self.existing, "frames": self.frames,
                "seconds": self.seconds, "skipped": len(self.skipped), "skipped_errors": list(self.skipped)}


def resolve_camera_map(source: LeRobotSource, camera_map: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """(dataset camera key, store camera name) pairs; a key the dataset lacks stops with the dataset's keys."""
    if not camera_map:
        return list(zip(source.camera_keys, default_camera_names(source.camera_keys)))
    pairs = []
    for pair in camera_map:
        key, name = pair.split("=")
        match = key if key in source.camera_keys else IMAGE_PREFIX + key
        if match not in source.camera_keys:
            raise DefiError(f"camera_map {pair!r}: {source.root} has no camera {key!r} (its camera keys: "
                            f"{', '.join(source.camera_keys) or 'none'}; the map gives them the policy's camera "
                            f"names: {', '.join(p.split('=')[1] for p in camera_map)})")
        pairs.append((match, name))
    return pairs


def import_lerobot(cfg: LeRobotImportConfig) -> ImportReport:
    """Import (or resume importing) a LeRobot dataset into an episode store; see the module docstring."""
    from tqdm import tqdm

    from defi.data.store import EpisodeStore, StoreInfo, feature_spec

    validate_config(cfg)
    source = LeRobotSource(cfg.path)
    cameras = resolve_camera_map(source, cfg.camera_map)
    if not cameras:
        raise DefiError(f"{source.root}: the dataset has no camera (video or image feature); defi trains on frames")
    info_path = source.root / "meta" / "info.json"
    if cfg.size:
        image_size = [cfg.size, cfg.size]
        convert = _resizer(cfg.size, cfg.crop)
    else:
        sizes = {key: _image_hw(source.features[key], key, info_path) for key, _ in cameras}
        if len(set(sizes.values())) != 1:
            raise DefiError(f"{source.root}: cameras differ in size ({', '.join(f'{k} {h}x{w}' for k, (h, w) in sizes.items())}); "
                            "a store holds one size: pass --size N")
        image_size = list(next(iter(sizes.values())))
        convert = _rgb
    low_dim = [] if cfg.action_free else list(source.low_dim_keys)
    shapes: dict[str, np.ndarray] = {IMAGE_PREFIX + name: np.zeros((1, *image_size, 3), np.uint8) for _, name in cameras}
    for key in low_dim:
        shape = [int(s) for s in source.features[key].get("shape") or [1]]
        dtype = np.bool_ if source.features[key]["dtype"] == "bool" else np.float32
        shapes[key] = np.zeros((1,) if shape == [1] else (1, *shape), dtype)
    has_actions = "action" in low_dim
    info = StoreInfo(
        fps=source.fps, cameras=[name for _, name in cameras], image_size=image_size, has_actions=has_actions,
        source=SOURCE + ("" if has_actions else "-actionfree"), embodiment=source.robot_type,
        robot_type=source.robot_type, features=feature_spec([n for _, n in cameras], image_size, shapes),
        extra={"lerobot": {"codebase_version": source.version, "cameras": {k: n for k, n in cameras},
                           "size": cfg.size, "crop": cfg.crop, "action_free": cfg.action_free}},
    )
    store = EpisodeStore.create(cfg.out, info)
    report = ImportReport(out=Path(cfg.out))
    start = time.perf_counter()
    bar = tqdm(source.source_episodes, desc="episodes", unit="ep", disable=not cfg.progress)
    try:
        for ep in bar:
            key = f"episode-{ep.index:06d}"
            if store.has_episode(key):
                report.existing += 1
                continue
            try:
                arrays = {IMAGE_PREFIX + name: source.frames(ep, k, convert) for k, name in cameras}
                for (k, _), frames in zip(cameras, arrays.values()):
                    if list(frames.shape[1:3]) != image_size:
                        where = ep.videos[k][0] if k in ep.videos else ep.data_file
                        raise DefiError(f"{where}: episode {ep.index} of {k} has {frames.shape[1]}x{frames.shape[2]} "
                                        f"frames, meta/info.json says {image_size[0]}x{image_size[1]}")
                arrays.update({k: source.low_dim(ep, k) for k in low_dim})
                tasks = source.frame_tasks(ep)
            except DefiError as err:
                if not cfg.skip_bad:
                    raise
                report.skipped.append(str(err))
                continue
            attrs = {"task": tasks[0], "tasks": sorted(set(tasks)), "task_name": None, "success": None, "seed": None,
                     "fps": source.fps, "source": info.source, "embodiment": source.robot_type,
                     "has_actions": has_actions, "lerobot_episode_index": ep.index}
            store.write_episode(key, arrays, attrs)
            report.written += 1
            report.frames += ep.length
            bar.set_postfix(frames_per_s=f"{report.frames / max(time.perf_counter() - start, 1e-9):.0f}")
    finally:
        bar.close()
        source.close()
        report.seconds = time.perf_counter() - start
        store.finalize()
    return report


def run_lerobot_import(cfg: LeRobotImportConfig) -> dict[str, Any]:
    """`defi data lerobot`: import, print the summary, return the report as a dict."""
    report = import_lerobot(cfg)
    print(report.summary())
    return report.to_dict()


# --------------------------------------------------------------------------------------------------- export
@dataclass
class LeRobotExportConfig(Config):
    """`defi data export-lerobot STORE --out DIR`: write an episode store as a LeRobot v3.0 dataset."""

    store: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="STORE")]
    """The episode store to export."""
    out: Path = Path("data/lerobot-export")
    """Output dataset directory (must not exist; it appears only once complete)."""
    vcodec: Literal["libsvtav1", "h264", "hevc"] = "libsvtav1"
    """Video codec (LeRobot's writer uses libsvtav1, AV1)."""
    robot_type: str = ""
    """robot_type written to meta/info.json; "" = the store's."""
    data_file_mb: float = 100.0
    """Start a new data parquet file when the current one reaches this many MB (of uncompressed rows), as LeRobot."""
    video_file_mb: float = 200.0
    """Start a new mp4 per camera when the current one reaches this many MB."""
    chunks_size: int = 1000
    """Files per chunk-XXX directory."""
    progress: bool = True

    def validate(self) -> None:
        self.check(self.data_file_mb > 0, "data_file_mb", "> 0")
        self.check(self.video_file_mb > 0, "video_file_mb", "> 0")
        self.check(self.chunks_size >= 1, "chunks_size", ">= 1")


def _feature_stats(values: np.ndarray, image: bool) -> dict[str, np.ndarray]:
    """LeRobot's statistics of one feature: per dimension (or per channel in [0, 1] for images, shape [3, 1, 1])."""
    if image:
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
    else:
        flat = values.reshape(len(values), -1).astype(np.float64)
    stats = {"min": flat.min(0), "max": flat.max(0), "mean": flat.mean(0), "std": flat.std(0),
             "count": np.array([len(values)])}
    stats.update({name: np.quantile(flat, q, axis=0) for name, q in QUANTILES.items()})
    if image:
        stats = {k: v if k == "count" else v.reshape(-1, 1, 1) for k, v in stats.items()}
    return stats


def _aggregate_stats(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Pooled statistics of several episodes' (count-weighted mean, pooled variance; quantiles averaged by count,
    as LeRobot aggregates)."""
    counts = np.array([float(s["count"][0]) for s in items])
    weights = (counts / counts.sum()).reshape(-1, *([1] * items[0]["mean"].ndim))
    means = np.stack([s["mean"] for s in items])
    mean = (weights * means).sum(0)
    var = (weights * (np.stack([s["std"] for s in items]) ** 2 + (means - mean) ** 2)).sum(0)
    out = {"min": np.min([s["min"] for s in items], axis=0), "max": np.max([s["max"] for s in items], axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())])}
    out.update({name: (weights * np.stack([s[name] for s in items])).sum(0) for name in QUANTILES})
    return out


def _sample_frames(frames: np.ndarray) -> np.ndarray:
    """Up to STAT_FRAMES evenly spaced frames, every k-th pixel so the long side is <= 150 (LeRobot's sampling)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), STAT_FRAMES)).round().astype(int))
    step = max(1, max(frames.shape[1:3]) // 150)
    return frames[idx, ::step, ::step]


def _whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _json_ready(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


class _FileIndex:
    """chunk-XXX/file-YYY numbering: the next file is the next index, chunks hold `chunks_size` files."""

    def __init__(self, chunks_size: int) -> None:
        self.chunks_size = chunks_size
        self.chunk = self.file = 0

    def advance(self) -> None:
        self.file += 1
        if self.file == self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0


class _VideoWriter:
    """One camera's mp4 files: episodes are encoded one after another into the current file (frame i of the
    file at i / fps); a new file starts when the current one passes the size limit."""

    def __init__(self, root: Path, key: str, fps: int, vcodec: str, limit_bytes: float, chunks_size: int) -> None:
        self.root, self.key, self.fps, self.vcodec, self.limit = root, key, fps, vcodec, limit_bytes
        self.index = _FileIndex(chunks_size)
        self._container: Any = None
        self._stream: Any = None
        self.frames = 0  # frames in the current file
        self.bytes = 0
        self.first_file: Path | None = None

    def path(self) -> Path:
        return self.root / V30_VIDEO_PATH.format(video_key=self.key, chunk_index=self.index.chunk,
                                                 file_index=self.index.file)

    def _open(self, height: int, width: int) -> None:
        import av

        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), "w")
        options = {"g": "2", "crf": "30"}
        if self.vcodec == "libsvtav1":
            options["preset"] = "12"
        self._stream = self._container.add_stream(self.vcodec, rate=self.fps, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self.frames = self.bytes = 0
        self.first_file = self.first_file or path

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self.bytes += packet.size
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is not None:
            self._mux(self._stream.encode(None))
            self._container.close()
            self._container = None

    def add(self, frames: np.ndarray) -> dict[str, Any]:
        """Encode one episode; returns its episodes-parquet columns for this camera."""
        import av

        if self._container is not None and self.bytes >= self.limit:
            self.close()
            self.index.advance()
        if self._container is None:
            self._open(*frames.shape[1:3])
        start = self.frames
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
            self._mux(self._stream.encode(frame))
            self.frames += 1
        prefix = f"videos/{self.key}/"
        return {prefix + "chunk_index": self.index.chunk, prefix + "file_index": self.index.file,
                prefix + "from_timestamp": start / self.fps, prefix + "to_timestamp": self.frames / self.fps}


def _video_info(path: Path) -> dict[str, Any]:
    """The "info" of a video feature, read back from its first file (the fields LeRobot's writer records)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {"video.height": stream.height, "video.width": stream.width,
                "video.codec": stream.codec_context.codec.canonical_name, "video.pix_fmt": stream.pix_fmt,
                "video.is_depth_map": False, "video.fps": int(stream.base_rate), "video.channels": 3,
                "has_audio": bool(container.streams.audio)}


@dataclass
class ExportReport:
    out: Path
    episodes: int = 0
    frames: int = 0
    tasks: int = 0
    seconds: float = 0.0
    files: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.out}: LeRobot {WRITE_VERSION} dataset, {self.episodes} episodes, {self.frames} frames, "
                f"{self.tasks} tasks, {self.files.get('data', 0)} data and {self.files.get('video', 0)} video files "
                f"in {self.seconds:.1f} s")

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "episodes": self.episodes, "frames": self.frames, "tasks": self.tasks,
                "seconds": self.seconds, "files": dict(self.files)}


def export_lerobot(cfg: LeRobotExportConfig) -> ExportReport:
    """Write the store `cfg.store` as a LeRobot v3.0 dataset at `cfg.out` (complete, or absent after an error)."""
    from defi.data.store import EpisodeStore

    validate_config(cfg)
    _require("pyarrow", "pandas")
    store = EpisodeStore.open(cfg.store)
    out = Path(cfg.out)
    if out.exists():
        raise DefiError(f"{out}: already exists; choose another --out (an export never overwrites a dataset)")
    fps = float(store.info.fps)
    if abs(fps - round(fps)) > 1e-6:
        raise DefiError(f"{cfg.store}: fps {fps:g} is not a whole number; LeRobot v3.0 records fps as an integer")
    h, w = (int(v) for v in store.info.image_size)
    if store.info.cameras and (h % 2 or w % 2):
        raise DefiError(f"{cfg.store}: frames are {h}x{w}; LeRobot's yuv420p videos need an even height and width")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # SVT-AV1 prints its configuration on every file; keep its warnings and errors (a user's setting wins).
    os.environ.setdefault("SVT_LOG", "2")
    try:
        report = _write_v30(store, tmp, cfg, round(fps))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.out = out
    return report


def _write_v30(store: Any, root: Path, cfg: LeRobotExportConfig, fps: int) -> ExportReport:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    start = time.perf_counter()
    info = store.info
    cameras = [IMAGE_PREFIX + c for c in info.cameras]
    low_dim = [k for k in LOW_DIM_KEYS if k in info.features]
    h, w = (int(v) for v in info.image_size)
    features: dict[str, dict[str, Any]] = {
        key: {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]} for key in cameras}
    for key in low_dim:
        spec = info.features[key]
        features[key] = {"dtype": "bool" if spec["dtype"] == "bool" else str(spec["dtype"]),
                         "shape": [int(s) for s in spec["shape"]], "names": spec.get("names")}
    for key in INDEX_FEATURES:
        features[key] = {"dtype": "float32" if key == "timestamp" else "int64", "shape": [1], "names": None}

    def column(key: str, values: np.ndarray) -> Any:
        if features[key]["shape"] == [1]:
            return pa.array(values.reshape(len(values)))
        flat = pa.array(values.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, type=pa.list_(pa.field("element", flat.type), values.shape[1]))

    videos = {key: _VideoWriter(root, key, fps, cfg.vcodec, cfg.video_file_mb * 2**20, cfg.chunks_size) for key in cameras}
    data_index = _FileIndex(cfg.chunks_size)
    data_writer: Any = None
    data_bytes = 0
    data_files = 0
    tasks: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
    low_values: dict[str, list[np.ndarray]] = {k: [] for k in (*low_dim, *INDEX_FEATURES)}
    total = 0
    try:
        for e, record in enumerate(tqdm(store.episodes, desc="export", unit="ep", disable=not cfg.progress)):
            length = int(record["length"])
            task = str(record.get("task", ""))
            task_index = tasks.setdefault(task, len(tasks))
            values = {k: np.asarray(store.read_episode(e, k)) for k in low_dim}
            values.update(timestamp=(np.arange(length) / fps).astype(np.float32), frame_index=np.arange(length),
                          episode_index=np.full(length, e), index=np.arange(total, total + length),
                          task_index=np.full(length, task_index))
            table = pa.table({k: column(k, values[k]) for k in (*low_dim, *INDEX_FEATURES)})
            if data_writer is not None and data_bytes >= cfg.data_file_mb * 2**20:
                data_writer.close()
                data_writer = None
                data_index.advance()
            if data_writer is None:
                path = root / V30_DATA_PATH.format(chunk_index=data_index.chunk, file_index=data_index.file)
                path.parent.mkdir(parents=True, exist_ok=True)
                data_writer = pq.ParquetWriter(path, table.schema, compression="snappy")
                data_bytes = 0
                data_files += 1
            data_writer.write_table(table)
            data_bytes += table.nbytes
            row: dict[str, Any] = {"episode_index": e, "tasks": [task], "length": length,
                                   "data/chunk_index": data_index.chunk, "data/file_index": data_index.file,
                                   "dataset_from_index": total, "dataset_to_index": total + length}
            stats = {k: _feature_stats(v, image=False) for k, v in values.items()}
            for key in cameras:
                frames = store.read(e, key)
                row.update(videos[key].add(frames))
                stats[key] = _feature_stats(_sample_frames(frames), image=True)
            for key, feature_stats in stats.items():
                row.update({f"stats/{key}/{name}": v.tolist() for name, v in feature_stats.items()})
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            rows.append(row)
            episode_stats.append(stats)
            for k, collected in low_values.items():
                collected.append(values[k])
            total += length
    finally:
        if data_writer is not None:
            data_writer.close()
        for writer in videos.values():
            writer.close()
    if not rows:
        raise DefiError(f"{cfg.store}: the store has no episodes to export")

    for key, writer in videos.items():
        features[key]["info"] = _video_info(writer.first_file)
    global_stats = {k: _feature_stats(np.concatenate(v), image=False) for k, v in low_values.items()}
    global_stats.update({k: _aggregate_stats([s[k] for s in episode_stats]) for k in cameras})
    episodes_path = root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), episodes_path, compression="snappy")
    # LeRobot keeps the task strings as the pandas index of tasks.parquet (it looks tasks up with .loc / .iloc).
    pd.DataFrame({"task_index": list(tasks.values())}, index=list(tasks)).to_parquet(root / "meta" / "tasks.parquet")
    (root / "meta" / "stats.json").write_text(json.dumps(_json_ready(global_stats), indent=4) + "\n")
    meta = {
        "codebase_version": WRITE_VERSION, "robot_type": cfg.robot_type or info.robot_type,
        "total_episodes": len(rows), "total_frames": total, "total_tasks": len(tasks),
        "chunks_size": cfg.chunks_size, "data_files_size_in_mb": _whole(cfg.data_file_mb),
        "video_files_size_in_mb": _whole(cfg.video_file_mb), "fps": fps, "splits": {"train": f"0:{len(rows)}"},
        "data_path": V30_DATA_PATH, "video_path": V30_VIDEO_PATH if cameras else None, "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(meta, indent=4) + "\n")
    video_files = sum(1 for _ in (root / "videos").rglob("*.mp4")) if cameras else 0
    return ExportReport(out=root, episodes=len(rows), frames=total, tasks=len(tasks),
                        seconds=time.perf_counter() - start, files={"data": data_files, "video": video_files})


def run_lerobot_export(cfg: LeRobotExportConfig) -> dict[str, Any]:
    """`defi data export-lerobot`: export, print the summary, return the report as a dict."""
    report = export_lerobot(cfg)
    print(report.summary())
    return report.to_dict()

