"""Tiny generated data shared by the data-layer tests: 2 Meta-World tasks x 2 episodes, 2 tiny videos."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

TINY_TASKS = "reach,button-press"


def tiny_gen_config(out: Path, **changes):
    from defi.data.sources.metaworld import MetaWorldGenConfig

    base = dict(out=out, tasks=TINY_TASKS, episodes_per_task=2, cameras=("corner", "gripperPOV"), seed=0,
                max_steps=150, workers=1, progress=False)
    base.update(changes)
    return MetaWorldGenConfig(**base)


@pytest.fixture(scope="session")
def mw_store(tmp_path_factory) -> Path:
    from defi.data.sources.metaworld import generate_metaworld

    out = tmp_path_factory.mktemp("mw") / "store"
    report = generate_metaworld(tiny_gen_config(out))
    assert report.kept == 4, report.summary()
    return out


def make_video(path: Path, frames: int, fps: int, width: int = 48, height: int = 36) -> None:
    """A video whose frame i has red channel 8*i (so tests can tell which frame they got)."""
    import av

    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = (8 * i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_video(folder / "a.mp4", frames=30, fps=30)  # 1.0 s
    make_video(folder / "b.webm", frames=20, fps=20)  # 1.0 s
    (folder / "captions.csv").write_text(
        "file,caption,start,end\na.mp4,wave the hand,0.0,0.8\nb.webm,open the jar,,\n"
    )
    (folder / "captions.jsonl").write_text(
        json.dumps({"file": "a.mp4", "caption": "wave the hand"}) + "\n"
        + json.dumps({"file": "b.webm", "caption": "open the jar", "start": 0.5}) + "\n"
    )
    return folder


@pytest.fixture(scope="session")
def video_store(tmp_path_factory, video_folder) -> Path:
    from defi.data.sources.videos import ingest_videos

    out = tmp_path_factory.mktemp("vs") / "store"
    report = ingest_videos(video_folder / "captions.csv", out, fps=10, size=32, progress=False)
    assert report.written == 2, report.summary()
    return out
