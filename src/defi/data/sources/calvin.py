"""CALVIN dataset splits read in place (no conversion of the 500 GB of frames).

A CALVIN split folder (`task_ABC_D/training`, `task_ABC_D/validation`, ...) holds one file per time step,
`episode_0000000.npz` ... (7 digits), each with `rgb_static` uint8 [200, 200, 3], `rgb_gripper` uint8 [84, 84, 3],
`actions` (absolute tcp pose + gripper), `rel_actions` (7-d, position x50 and orientation x20 then clipped to
[-1, 1], gripper close -1 / open 1), `robot_obs` (15-d), `scene_obs` (24-d) and depth/tactile arrays that defi does
not use; `ep_start_end_ids.npy` with the (start, end) frame indices, both inclusive, of each recorded play stretch;
and a language folder (`lang_annotations/`, and in the released data also one folder per precomputed text
embedding, e.g. `lang_paraphrase-MiniLM-L3-v2/`) whose pickled `auto_lang_ann.npy` holds
{"language": {"ann": [instruction, ...], "task": [task name, ...], "emb": ...}, "info": {"indx": [(start, end), ...]}}.
Sources: dataset/README.md, calvin_agent/datasets/disk_dataset.py, datasets/utils/episode_utils.py (naming
pattern), utils/automatic_lang_annotator_mp.py (how `indx` and `task` are written) in github.com/mees/calvin.

Which view of a split a `DataConfig` source path selects (the path convention):

    <split>                           the play stream: every frame of every `ep_start_end_ids.npy` range, as
                                      action-free video (one episode per range; instruction ""), for pretraining
    <split>/lang_annotations          the language-annotated windows as labeled episodes: instruction, task name,
    (any folder of the split holding  7-d relative actions (`rel_actions`) and the 15-d `robot_obs` as
     auto_lang_ann.npy, or the file)  `observation.state`, `scene_obs` as `observation.environment_state`

Cameras are named `static` and `gripper` (from `rgb_static`, `rgb_gripper`); each keeps its native size (the
features' shapes say which), and `info.image_size` is the static view's. Absolute actions instead of relative ones
are available from Python: `CalvinSource(path, actions="abs")`.

Opening reads only the small index files and one frame file: a split is never listed or scanned. Frames are read
on demand through a bounded per-process cache. Normalisation statistics come from an even sample of
`STATS_SAMPLE_FRAMES` labeled frames, since exact ones would read every file of the split.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from defi.data.store import IMAGE_PREFIX, StoreInfo
from defi.errors import DefiError

# calvin_env's PlayTableSimEnv steps its controller at control_freq=30 (calvin_env/envs/play_table_env.py)
FPS = 30.0
CAMERAS = {"static": "rgb_static", "gripper": "rgb_gripper"}
ACTION_KEYS = {"rel": "rel_actions", "abs": "actions"}
STATE_KEY = "robot_obs"
ENV_STATE_KEY = "scene_obs"
ANNOTATION_FILE = "auto_lang_ann.npy"
EPISODE_RANGES_FILE = "ep_start_end_ids.npy"
SCENE_INFO_FILE = "scene_info.npy"
# The released splits name frames episode_%07d.npz; other digit counts are found from one directory entry.
DEFAULT_PATTERN = ("episode_", 7)
STATS_SAMPLE_FRAMES = 2048
_OPEN_FILES = 64  # open npz handles kept per process (a clip touches ~20 frame files, twice)
_LOW_DIM_EPISODES = 256  # labeled windows whose low-dim arrays stay cached

Mode = Literal["lang", "play"]
# The train and val clip datasets open the same view separately: the sampled statistics are computed once.
_STATS_CACHE: dict[tuple[str, str, str, int], dict[str, dict[str, np.ndarray]]] = {}


def detect_calvin(path: Path) -> bool:
    """A CALVIN split folder, a language folder inside one, or an `auto_lang_ann.npy` file."""
    if path.is_file():
        return path.name == ANNOTATION_FILE
    return path.is_dir() and ((path / EPISODE_RANGES_FILE).is_file() or (path / ANNOTATION_FILE).is_file())


def resolve_calvin_path(path: str | Path) -> tuple[Path, Mode, Path | None]:
    """(split folder, view, annotation file or None) selected by a source path; see the module docstring."""
    path = Path(path)
    if path.is_file():
        if path.name != ANNOTATION_FILE:
            raise DefiError(f"{path}: not a CALVIN path (expected a split folder, a language folder or "
                            f"{ANNOTATION_FILE})")
        ann = path
    elif path.is_dir() and (path / EPISODE_RANGES_FILE).is_file():
        return path, "play", None
    elif path.is_dir() and (path / ANNOTATION_FILE).is_file():
        ann = path / ANNOTATION_FILE
    else:
        raise DefiError(f"{path}: not a CALVIN split (no {EPISODE_RANGES_FILE}) nor a language folder "
                        f"(no {ANNOTATION_FILE})")
    # CALVIN's loader also accepts the annotation file directly in the split folder (disk_dataset.py)
    split = ann.parent if (ann.parent / EPISODE_RANGES_FILE).is_file() else ann.parent.parent
    return split, "lang", ann


def _load_pickled(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DefiError(f"{path}: missing {what}")
    try:
        # CALVIN stores these dicts with np.save, which pickles them: there is no other way to read them.
        return np.load(path, allow_pickle=True).item()
    except Exception as err:  # numpy and pickle raise many types for a truncated or foreign file
        raise DefiError(f"{path}: unreadable {what} ({type(err).__name__}: {err})") from None


def load_episode_ranges(split: Path) -> np.ndarray:
    """int64 [N, 2] (start, end) frame ranges, end inclusive, sorted by start."""
    path = split / EPISODE_RANGES_FILE
    try:
        ranges = np.asarray(np.load(path, allow_pickle=False))
    except FileNotFoundError:
        raise DefiError(f"{path}: missing play episode ranges") from None
    except Exception as err:
        raise DefiError(f"{path}: unreadable play episode ranges ({type(err).__name__}: {err})") from None
    if ranges.ndim != 2 or ranges.shape[1] != 2 or len(ranges) == 0 or not np.issubdtype(ranges.dtype, np.integer):
        raise DefiError(f"{path}: expected a non-empty integer array of (start, end) rows, got {ranges.dtype} "
                        f"{list(ranges.shape)}")
    ranges = _ordered_pairs(path, ranges, "row")
    return ranges[np.argsort(ranges[:, 0], kind="stable")]


def _ordered_pairs(path: Path, pairs: np.ndarray, name: str) -> np.ndarray:
    """int64 (start, end) rows, each checked to end no earlier than it starts."""
    pairs = pairs.astype(np.int64)
    bad = np.nonzero(pairs[:, 1] < pairs[:, 0])[0]
    if len(bad):
        raise DefiError(f"{path}: {name} {bad[0]} ends before it starts ({pairs[bad[0]].tolist()})")
    return pairs


def load_annotations(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(instructions, task names, int64 [N, 2] (start, end) ranges) of an `auto_lang_ann.npy`."""
    data = _load_pickled(path, "CALVIN language annotations")
    try:
        ann = list(data["language"]["ann"])
        tasks = list(data["language"]["task"])
        indx = np.asarray(data["info"]["indx"])
    except (KeyError, TypeError, IndexError):
        raise DefiError(f"{path}: expected a dict with ['language']['ann'], ['language']['task'] and "
                        "['info']['indx']") from None
    if not (len(ann) == len(tasks) == len(indx)) or not ann:
        raise DefiError(f"{path}: expected as many annotations as tasks and ranges (>= 1), got {len(ann)} "
                        f"annotations, {len(tasks)} tasks, {len(indx)} ranges")
    if indx.ndim != 2 or indx.shape[1] != 2 or not np.issubdtype(indx.dtype, np.integer):
        raise DefiError(f"{path}: ['info']['indx'] must be (start, end) integer pairs, got {indx.dtype} "
                        f"{list(indx.shape)}")
    indx = _ordered_pairs(path, indx, "annotation")
    return [str(a) for a in ann], [str(t) for t in tasks], indx


def _frame_pattern(split: Path, first: int) -> tuple[str, int]:
    prefix, digits = DEFAULT_PATTERN
    if (split / f"{prefix}{first:0{digits}d}.npz").is_file():
        return prefix, digits
    # Read directory entries only until the first frame file, as CALVIN's lookup_naming_pattern does: never a
    # full listing of ~2 million entries.
    with os.scandir(split) as it:
        for entry in it:
            m = re.fullmatch(r"(.*?)(\d+)\.npz", entry.name)
            if m:
                return m.group(1), len(m.group(2))
    raise DefiError(f"{split}: no frame files (expected {prefix}{first:0{digits}d}.npz and its neighbours)")


class CalvinSource:
    """One view ("lang" or "play") of a CALVIN split, with the episode store's read interface."""

    def __init__(self, path: str | Path, actions: Literal["rel", "abs"] = "rel", cache_mb: float = 512,
                 mode: Mode | None = None) -> None:
        if actions not in ACTION_KEYS:
            raise DefiError(f"actions={actions!r}: expected 'rel' (rel_actions) or 'abs' (actions)")
        self.path = Path(path)
        split, found_mode, ann_path = resolve_calvin_path(path)
        self.mode: Mode = mode or found_mode
        if self.mode == "lang" and ann_path is None:
            ann_path = split / "lang_annotations" / ANNOTATION_FILE
        self.root = split
        self.annotation_file = ann_path
        self.action_key = ACTION_KEYS[actions]
        has_ranges = (split / EPISODE_RANGES_FILE).is_file()
        self.ranges = load_episode_ranges(split) if (self.mode == "play" or has_ranges) else None
        scenes = self._scene_ranges()
        if self.mode == "play":
            self.episodes = [self._record(i, s, e, "", "", scenes) for i, (s, e) in enumerate(self.ranges.tolist())]
        else:
            anns, tasks, indx = load_annotations(ann_path)
            self.episodes = []
            for i, ((s, e), text, task) in enumerate(zip(indx.tolist(), anns, tasks)):
                # CALVIN's training loader reads a window through its end index (disk_dataset.py); the annotator
                # writes end = start + window length, which can name the first frame after a play range, so
                # the window stops at the end of the range that holds its start.
                e = min(e, self._range_end(s, e))
                self.episodes.append(self._record(i, s, e, text, task, scenes))
        self.prefix, self.digits = _frame_pattern(split, self.episodes[0]["start"])
        self.shapes = self._probe(self.episodes[0]["start"])
        static = self.shapes[CAMERAS["static"]]
        features: dict[str, dict[str, Any]] = {
            IMAGE_PREFIX + cam: {"dtype": "image", "shape": list(self.shapes[key]),
                                 "names": ["height", "width", "channel"]}
            for cam, key in CAMERAS.items()
        }
        if self.mode == "lang":
            for name, key in (("action", self.action_key), ("observation.state", STATE_KEY),
                              ("observation.environment_state", ENV_STATE_KEY)):
                features[name] = {"dtype": "float32", "shape": list(self.shapes[key]), "names": None}
        self.info = StoreInfo(
            fps=FPS, cameras=list(CAMERAS), image_size=[int(static[0]), int(static[1])],
            has_actions=self.mode == "lang", source="calvin", embodiment="franka_panda", robot_type="panda",
            features=features, total_episodes=len(self.episodes),
            total_frames=int(sum(e["length"] for e in self.episodes)),
            total_tasks=len({e["task"] for e in self.episodes}),
            extra={"view": self.mode, "actions": self.action_key},
        )
        self.cache_bytes = int(cache_mb * 2**20)
        self._reset_caches()
        self._stats: dict[str, dict[str, np.ndarray]] | None = None

    # -- index ------------------------------------------------------------------------------------------------
    def _scene_ranges(self) -> list[tuple[str, int, int]]:
        path = self.root / SCENE_INFO_FILE
        if not path.is_file():
            return []
        # {"calvin_scene_A": [start, end], ...} with inclusive ends (utils/automatic_lang_annotator_mp.py)
        data = _load_pickled(path, "CALVIN scene ranges")
        try:
            return [(str(k), int(v[0]), int(v[1])) for k, v in dict(data).items()]
        except (TypeError, ValueError, IndexError):
            raise DefiError(f"{path}: expected a dict of scene name -> (start, end)") from None

    def _range_end(self, start: int, end: int) -> int:
        if self.ranges is None:
            return end
        i = int(np.searchsorted(self.ranges[:, 0], start, side="right")) - 1
        if i >= 0 and self.ranges[i, 0] <= start <= self.ranges[i, 1]:
            return int(self.ranges[i, 1])
        return end

    def _record(self, i: int, start: int, end: int, text: str, task: str,
                scenes: list[tuple[str, int, int]]) -> dict[str, Any]:
        scene = next((name for name, lo, hi in scenes if lo <= start <= hi), None)
        rec = {"episode_index": i, "key": f"{self.mode}-{i:06d}", "length": int(end - start + 1), "task": text,
               "task_name": task, "start": int(start), "end": int(end)}
        if scene is not None:
            rec["scene"] = scene
        return rec

    @property
    def num_frames(self) -> int:
        return int(self.info.total_frames)

    def frame_path(self, index: int) -> Path:
        return self.root / f"{self.prefix}{index:0{self.digits}d}.npz"

    # -- frame files --------------------------------------------------------------------------------------------
    def _reset_caches(self) -> None:
        self._pid = os.getpid()
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._images: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._image_bytes = 0
        self._low_dim: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def _file(self, index: int) -> Any:
        if self._pid != os.getpid():  # a forked DataLoader worker must not share open files with its parent
            self._reset_caches()
        handle = self._files.get(index)
        if handle is not None:
            self._files.move_to_end(index)
            return handle
        path = self.frame_path(index)
        try:
            handle = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DefiError(f"{path}: missing CALVIN frame file") from None
        except Exception as err:
            raise DefiError(f"{path}: unreadable CALVIN frame file ({type(err).__name__}: {err})") from None
        self._files[index] = handle
        while len(self._files) > _OPEN_FILES:
            _, old = self._files.popitem(last=False)
            old.close()
        return handle

    def _array(self, index: int, key: str) -> np.ndarray:
        handle = self._file(index)
        if key not in handle.files:
            raise DefiError(f"{self.frame_path(index)}: no array {key!r} (has {', '.join(sorted(handle.files))})")
        try:
            return handle[key]
        except Exception as err:
            raise DefiError(f"{self.frame_path(index)}: corrupt array {key!r} ({type(err).__name__}: {err})") from None

    def _probe(self, index: int) -> dict[str, tuple[int, ...]]:
        keys = list(CAMERAS.values())
        if self.mode == "lang":
            keys += [self.action_key, STATE_KEY, ENV_STATE_KEY]
        shapes = {}
        self._pid = os.getpid()
        self._files = OrderedDict()
        for key in keys:
            arr = self._array(index, key)
            if key in CAMERAS.values() and (arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3):
                raise DefiError(f"{self.frame_path(index)}: {key} is {arr.dtype} {list(arr.shape)}, "
                                "expected uint8 [h, w, 3]")
            if key not in CAMERAS.values() and arr.ndim != 1:
                raise DefiError(f"{self.frame_path(index)}: {key} has shape {list(arr.shape)}, expected a vector")
            shapes[key] = tuple(int(s) for s in arr.shape)
        for handle in self._files.values():
            handle.close()
        return shapes

    def _frame_array(self, index: int, key: str) -> np.ndarray:
        arr = self._array(index, key)
        if arr.shape != self.shapes[key]:
            raise DefiError(f"{self.frame_path(index)}: {key} has shape {list(arr.shape)}, expected "
                            f"{list(self.shapes[key])} like the split's first frame")
        return arr

    def _image(self, index: int, key: str) -> np.ndarray:
        item = self._images.get((index, key))
        if item is not None:
            self._images.move_to_end((index, key))
            return item
        item = self._frame_array(index, key)
        if item.nbytes <= self.cache_bytes:
            self._images[(index, key)] = item
            self._image_bytes += item.nbytes
            while self._image_bytes > self.cache_bytes:
                _, old = self._images.popitem(last=False)
                self._image_bytes -= old.nbytes
        return item

    # -- the store's read interface ---------------------------------------------------------------------------
    def _npz_key(self, key: str) -> str:
        if key.startswith(IMAGE_PREFIX):
            cam = key[len(IMAGE_PREFIX):]
            if cam not in CAMERAS:
                raise DefiError(f"{self.path}: has no camera {cam!r} (cameras: {', '.join(CAMERAS)})")
            return CAMERAS[cam]
        if self.mode == "lang":
            low = {"action": self.action_key, "observation.state": STATE_KEY,
                   "observation.environment_state": ENV_STATE_KEY}
            if key in low:
                return low[key]
        raise DefiError(f"{self.path}: the CALVIN {self.mode} view has no feature {key!r} "
                        f"(features: {', '.join(self.info.features)})")

    def read(self, episode: int, key: str, frames: np.ndarray | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """Frames (indices within the episode) of one feature of one episode; written into `out` when given."""
        rec = self.episodes[episode]
        frames = np.arange(rec["length"]) if frames is None else np.asarray(frames, dtype=np.int64)
        if len(frames) and (frames.min() < 0 or frames.max() >= rec["length"]):
            raise IndexError(f"episode {episode}: frames {frames.tolist()} outside [0, {rec['length']})")
        npz_key = self._npz_key(key)
        if not key.startswith(IMAGE_PREFIX):
            data = self.read_episode(episode, key)[frames]
            if out is not None:
                out[...] = data
            return data
        if out is None:
            out = np.empty((len(frames), *self.shapes[npz_key]), dtype=np.uint8)
        for i, f in enumerate(frames.tolist()):
            out[i] = self._image(rec["start"] + f, npz_key)
        return out

    def read_episode(self, episode: int, key: str) -> np.ndarray:
        """A whole low-dim feature (float32 [T, D]) of one labeled window; the window's three low-dim arrays are
        read together, since each frame file is opened once for all of them."""
        npz_key = self._npz_key(key)
        if key.startswith(IMAGE_PREFIX):
            return self.read(episode, key)
        if self._pid != os.getpid():
            self._reset_caches()
        cached = self._low_dim.get(episode)
        if cached is None:
            rec = self.episodes[episode]
            keys = (self.action_key, STATE_KEY, ENV_STATE_KEY)
            rows = {k: [] for k in keys}
            for index in range(rec["start"], rec["end"] + 1):
                for k in keys:
                    rows[k].append(self._frame_array(index, k))
            cached = {k: np.stack(v).astype(np.float32) for k, v in rows.items()}
            self._low_dim[episode] = cached
            while len(self._low_dim) > _LOW_DIM_EPISODES:
                self._low_dim.popitem(last=False)
        else:
            self._low_dim.move_to_end(episode)
        return cached[npz_key]

    def has_feature(self, key: str) -> bool:
        return key in self.info.features

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """mean, std, min, max of the actions and states over an even sample of the labeled frames."""
        if self.mode != "lang":
            return {}
        key = (str(self.root), str(self.annotation_file), self.action_key, len(self.episodes))
        self._stats = self._stats or _STATS_CACHE.get(key)
        if self._stats is None:
            starts = np.array([e["start"] for e in self.episodes], dtype=np.int64)
            lengths = np.array([e["length"] for e in self.episodes], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            count = min(STATS_SAMPLE_FRAMES, int(offsets[-1]))
            picks = np.unique(np.linspace(0, offsets[-1] - 1, count).astype(np.int64))
            ep = np.searchsorted(offsets, picks, side="right") - 1
            frames = np.unique(starts[ep] + picks - offsets[ep])  # overlapping windows share frames
            out = {}
            for name, key in (("action", self.action_key), ("observation.state", STATE_KEY)):
                x = np.stack([self._frame_array(int(f), key) for f in frames]).astype(np.float64)
                moments = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)}
                out[name] = {k: v.astype(np.float32) for k, v in moments.items()}
            self._stats = _STATS_CACHE[key] = out
        return self._stats


def open_calvin(path: str | Path, cache_mb: float = 512) -> CalvinSource:
    """The opener `defi.data.sources.open_source` calls for a CALVIN path (relative actions)."""
    return CalvinSource(path, cache_mb=cache_mb)


# -- data configs ------------------------------------------------------------------------------------------------
# Plain functions of the split root rather than `DataConfig` presets (which take no arguments and would list CALVIN
# among DataConfig's presets only once this module is imported). The stages' "calvin-paper" presets use them.
