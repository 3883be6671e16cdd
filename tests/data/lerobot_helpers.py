"""LeRobot datasets for the tests: written by LeRobot's own writer (`lerobot-dataset`, import name `ledataset`),
or laid out as LeRobot v2.1 by hand (LeRobot's writer only writes v3.0; its converter reads v2.1).

`ledataset` 0.4.4 imports torchvision without declaring it, and PyPI's torchvision wheels need a CUDA torch, so
it does not import next to the CPU torch. `load_ledataset` puts a stand-in `torchvision` into `sys.modules`
while `ledataset` is imported, then removes it again (ledataset keeps its references; nothing else sees it).
The stand-in raises if any of its names is used: LeRobot's writer never uses them (frames go to PNG with Pillow,
videos are encoded with PyAV), its reader uses `torchvision.transforms.ToTensor` only for image features and
`torchvision.io` / torchcodec to decode video frames; the tests replace that decoder with `pyav_decode_frames`,
a PyAV version of the same contract.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

FPS = 10
SIZE = (32, 32)  # h, w
TASKS = ["pick up the red cube", "push the cube to the left"]


def load_ledataset():
    """The `ledataset` modules the tests use (skips the test when lerobot-dataset is not installed)."""
    if importlib.util.find_spec("ledataset") is None:
        pytest.skip("lerobot-dataset (import name ledataset) is not installed: make install, or pip install --no-deps "
                    "lerobot-dataset==0.4.4 datasets==4.1.1")
    if "ledataset.datasets.lerobot_dataset" not in sys.modules:
        importlib.import_module("datasets")  # before the stand-in exists, so its torchvision check sees the truth
        names = ("torchvision", "torchvision.transforms", "torchvision.io")
        saved = {n: sys.modules.get(n) for n in names}
        if importlib.util.find_spec("torchvision") is None or _torchvision_broken():
            stand_ins = {n: _stand_in(n) for n in names}
            stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
            stand_ins["torchvision"].io = stand_ins["torchvision.io"]
            sys.modules.update(stand_ins)
        try:
            importlib.import_module("ledataset.datasets.lerobot_dataset")
            importlib.import_module("ledataset.datasets.v30.convert_dataset_v21_to_v30")
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
    from ledataset.datasets import lerobot_dataset, utils
    from ledataset.datasets.v30 import convert_dataset_v21_to_v30

    return types.SimpleNamespace(LeRobotDataset=lerobot_dataset.LeRobotDataset,
                                 LeRobotDatasetMetadata=lerobot_dataset.LeRobotDatasetMetadata,
                                 lerobot_dataset=lerobot_dataset, utils=utils, converter=convert_dataset_v21_to_v30)


def _torchvision_broken() -> bool:
    try:
        importlib.import_module("torchvision")
    except (ImportError, OSError, RuntimeError):  # a CUDA-only wheel fails while loading its libraries
        return True
    return False


def _stand_in(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec needs one

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise RuntimeError(f"{name}.{attr}: a test stand-in for torchvision (not installable next to the CPU torch)")

    module.__getattr__ = __getattr__
    return module


def pyav_decode_frames(video_path, timestamps, tolerance_s, backend=None):
    """LeRobot's `decode_video_frames` contract with PyAV: the frames nearest to `timestamps` (each within
    `tolerance_s`), float32 [N, 3, h, w] in [0, 1]."""
    import av
    import torch

    with av.open(str(video_path)) as container:
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(container.streams.video[0])]
    times = np.array([t for t, _ in decoded])
    out = []
    for query in timestamps:
        i = int(np.argmin(np.abs(times - query)))
        assert abs(times[i] - query) < tolerance_s, f"{video_path}: no frame within {tolerance_s} s of {query}"
        out.append(torch.from_numpy(decoded[i][1]).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def frame_image(episode: int, frame: int, size=SIZE) -> np.ndarray:
    """A frame that a lossy codec keeps recognisable: red = 8 * frame, green = 60 * episode, and blue 200 on the
    left half, 40 on the right (so a flip or crop would show)."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (8 * frame) % 256
    img[..., 1] = (60 * episode) % 256
    img[:, : w // 2, 2] = 200
    img[:, w // 2 :, 2] = 40
    return img


def expected_episodes(lengths: list[int], seed: int = 0, dim: int = 4) -> list[dict]:
    """Per episode: frames [T, h, w, 3], state and action float32 [T, dim], task string."""
    rng = np.random.default_rng(seed)
    return [{"frames": np.stack([frame_image(e, i) for i in range(n)]),
             "state": rng.normal(size=(n, dim)).astype(np.float32),
             "action": rng.uniform(-1, 1, size=(n, dim)).astype(np.float32),
             "task": TASKS[e % len(TASKS)]} for e, n in enumerate(lengths)]


def write_with_lerobot(le, root: Path, episodes: list[dict], fps: int = FPS) -> Path:
    """A v3.0 dataset written by LeRobot's own writer: the front camera as AV1 video, the wrist camera (the same
    frames mirrored) as PNG image features, state, action and a task per frame."""
    h, w = episodes[0]["frames"].shape[1:3]
    dim = episodes[0]["action"].shape[1]
    camera = {"shape": (h, w, 3), "names": ["height", "width", "channels"]}
    joints = {"dtype": "float32", "shape": (dim,), "names": [f"joint{i}" for i in range(dim)]}
    features = {"observation.images.front": {"dtype": "video", **camera},
                "observation.images.wrist": {"dtype": "image", **camera},
                "observation.state": joints, "action": dict(joints)}
    ds = le.LeRobotDataset.create("defi-tests/so100", fps=fps, features=features, root=root, robot_type="so100")
    for ep in episodes:
        for i in range(len(ep["frames"])):
            ds.add_frame({"observation.images.front": ep["frames"][i],
                          "observation.images.wrist": np.ascontiguousarray(ep["frames"][i][:, ::-1]),
                          "observation.state": ep["state"][i], "action": ep["action"][i], "task": ep["task"]})
        ds.save_episode()
    ds.finalize()
    return root


def encode_mp4(path: Path, frames: np.ndarray, fps: int, codec: str = "h264") -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options={"g": "2", "crf": "18"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_v21(root: Path, episodes: list[dict], fps: int = 30, video_frames: dict[int, int] | None = None) -> Path:
    """A dataset in LeRobot's v2.1 layout (info.json templates, episodes/tasks/episodes_stats jsonl, one parquet
    and one h264 mp4 per episode). `video_frames` {episode: n} writes only n frames of that episode's video."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    h, w = episodes[0]["frames"].shape[1:3]
    dim = episodes[0]["action"].shape[1]
    data_path = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    video_path = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    key = "observation.images.top"
    features = {
        key: {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
              "info": {"video.fps": fps, "video.codec": "h264", "video.pix_fmt": "yuv420p", "has_audio": False}},
        "observation.state": {"dtype": "float32", "shape": [dim], "names": None},
        "action": {"dtype": "float32", "shape": [dim], "names": None},
        **{k: {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
           for k in ("timestamp", "frame_index", "episode_index", "index", "task_index")},
    }
    tasks = list(dict.fromkeys(ep["task"] for ep in episodes))
    total = 0
    (root / "meta").mkdir(parents=True)
    ep_lines, stat_lines = [], []
    for e, ep in enumerate(episodes):
        n = len(ep["frames"])
        vec = lambda x: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
        table = pa.table({"observation.state": vec(ep["state"]), "action": vec(ep["action"]),
                          "timestamp": pa.array((np.arange(n) / fps).astype(np.float32)),
                          "frame_index": pa.array(np.arange(n)), "episode_index": pa.array(np.full(n, e)),
                          "index": pa.array(np.arange(total, total + n)),
                          "task_index": pa.array(np.full(n, tasks.index(ep["task"])))})
        path = root / data_path.format(episode_chunk=0, episode_index=e)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        keep = (video_frames or {}).get(e, n)
        frames = np.stack([frame_image(e, i, (h, w)) for i in range(keep)]) if keep > n else ep["frames"][:keep]
        encode_mp4(root / video_path.format(episode_chunk=0, video_key=key, episode_index=e), frames, fps)
        ep_lines.append({"episode_index": e, "tasks": [ep["task"]], "length": n})
        stats = {k: {"min": ep[s].min(0).tolist(), "max": ep[s].max(0).tolist(), "mean": ep[s].mean(0).tolist(),
                     "std": ep[s].std(0).tolist(), "count": [n]} for k, s in (("observation.state", "state"),
                                                                             ("action", "action"))}
        stats[key] = {s: [[[0.5]]] * 3 for s in ("min", "max", "mean", "std")} | {"count": [n]}
        for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            stats[k] = {s: [0.0] for s in ("min", "max", "mean", "std")} | {"count": [n]}
        stat_lines.append({"episode_index": e, "stats": stats})
        total += n
    info = {"codebase_version": "v2.1", "robot_type": "aloha", "total_episodes": len(episodes), "total_frames": total,
            "total_tasks": len(tasks), "total_videos": len(episodes), "total_chunks": 1, "chunks_size": 1000,
            "fps": fps, "splits": {"train": f"0:{len(episodes)}"}, "data_path": data_path, "video_path": video_path,
            "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in ep_lines))
    (root / "meta" / "episodes_stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in stat_lines))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(tasks)))
    return root
