"""Human-video folder ingest: CSV/JSONL captions, start/end, fps and size resampling, bad videos."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import make_video

from defi.data.sources.videos import ingest_videos, read_captions
from defi.data.store import EpisodeStore
from defi.errors import DefiError


def test_csv_ingest_resamples_fps_and_size(video_store):
    store = EpisodeStore.open(video_store)
    assert store.info.fps == 10.0 and store.info.cameras == ["main"] and not store.info.has_actions
    assert [e["task"] for e in store.episodes] == ["wave the hand", "open the jar"]
    a = store.read(0, "observation.images.main")
    b = store.read(1, "observation.images.main")
    assert a.shape == (8, 32, 32, 3) and b.shape == (10, 32, 32, 3)  # 0.0-0.8 s and 1.0 s at 10 fps
    # frame k of the 30 fps video shows source frame 3k (red = 8 * 3k); codecs are lossy, so compare roughly
    np.testing.assert_allclose(a[:, 16, 16, 0].astype(float), 24.0 * np.arange(8), atol=6)
    np.testing.assert_allclose(b[:, 16, 16, 0].astype(float), 16.0 * np.arange(10), atol=6)


def test_jsonl_captions_with_start(video_folder, tmp_path):
    report = ingest_videos(video_folder / "captions.jsonl", tmp_path / "s", fps=5, size=16, progress=False)
    assert report.written == 2
    store = EpisodeStore.open(tmp_path / "s")
    b = store.read(1, "observation.images.main")
    assert b.shape == (3, 16, 16, 3)  # 0.5 s .. 1.0 s at 5 fps: 0.5, 0.7, 0.9
    np.testing.assert_allclose(b[:, 8, 8, 0].astype(float), 8.0 * np.array([10, 14, 18]), atol=6)


def test_bad_rows_stop_or_are_skipped_and_nothing_is_lost(video_folder, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    make_video(folder / "ok.mp4", frames=10, fps=10)
    (folder / "junk.mp4").write_bytes(b"this is not a video" * 20)
    captions = folder / "captions.csv"
    captions.write_text("file,caption\nok.mp4,first\nmissing.mp4,second\njunk.mp4,third\n")
    out = tmp_path / "store"
    with pytest.raises(DefiError, match=r"captions.csv:3: names missing file .*missing.mp4"):
        ingest_videos(captions, out, fps=10, size=16, progress=False)
    assert len(EpisodeStore.open(out).episodes) == 1  # the good row written before the error is kept
    captions.write_text("file,caption\nok.mp4,first\njunk.mp4,third\n")
    with pytest.raises(DefiError, match=r"junk.mp4: unreadable video"):
        ingest_videos(captions, out, fps=10, size=16, progress=False)
    captions.write_text("file,caption\nok.mp4,first\nmissing.mp4,second\njunk.mp4,third\n")
    report = ingest_videos(captions, out, fps=10, size=16, skip_bad=True, progress=False)
    assert report.existing == 1 and report.written == 0 and len(report.skipped) == 2
    assert "skipped 2 bad rows" in report.summary()
    assert len(EpisodeStore.open(out).episodes) == 1


def test_bad_captions_files(tmp_path):
    with pytest.raises(DefiError, match="captions file not found"):
        read_captions(tmp_path / "nope.csv")
    bad = tmp_path / "c.csv"
    bad.write_text("path,text\na.mp4,x\n")
    with pytest.raises(DefiError, match=r"c.csv: CSV header .*expected columns file, caption"):
        read_captions(bad)
    bad.write_text("file,caption,start,end\na.mp4,x,2.0,1.0\n")
    with pytest.raises(DefiError, match=r"c.csv:2: end=1.0 <= start=2.0"):
        read_captions(bad)
    bad_json = tmp_path / "c.jsonl"
    bad_json.write_text('{"file": "a.mp4", "caption": "x"}\n{not json\n')
    with pytest.raises(DefiError, match=r"c.jsonl:2: not valid JSON"):
        read_captions(bad_json)
