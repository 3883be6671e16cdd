"""Tiny generated data shared by the data-layer tests: 2 Meta-World tasks x 2 episodes, 2 tiny videos."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from data_helpers import make_video, tiny_gen_config

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(scope="session")
def mw_store(tmp_path_factory) -> Path:
    from defi.data.sources.metaworld import generate_metaworld

    out = tmp_path_factory.mktemp("mw") / "store"
    report = generate_metaworld(tiny_gen_config(out))
    assert report.kept == 4, report.summary()
    return out


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
