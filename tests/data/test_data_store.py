"""The episode store's bad inputs (corrupt/truncated chunks, missing metadata) and the data CLI commands."""

from __future__ import annotations

import shutil

import pytest

from defi.cli import main
from defi.data.inspect import store_summary
from defi.data.store import EpisodeStore
from defi.errors import DefiError


@pytest.fixture()
def store_copy(mw_store, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(mw_store, dst)
    return dst


def _chunk_file(root):
    store = EpisodeStore.open(root)
    return store, store.episode_path(store.episodes[0]["key"]) / "observation.images.corner" / "c" / "1" / "0" / "0" / "0"


def test_corrupt_and_truncated_chunks_are_named(store_copy):
    store, chunk = _chunk_file(store_copy)
    assert chunk.is_file()
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    with pytest.raises(DefiError, match=r"observation.images.corner.*corrupt or truncated chunk"):
        store.read(0, "observation.images.corner", [17])
    chunk.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DefiError, match=r"corrupt or truncated chunk"):
        EpisodeStore.open(store_copy).read(0, "observation.images.corner", [16, 20])


def test_missing_chunk_is_named(store_copy):
    store, chunk = _chunk_file(store_copy)
    chunk.unlink()
    with pytest.raises(DefiError, match=r"c/1/0/0/0: missing chunk of 'observation.images.corner'"):
        store.read(0, "observation.images.corner", [16])
    store.read(0, "observation.images.corner", [0, 15])  # other chunks still read


def test_missing_metadata(store_copy):
    (store_copy / "meta" / "episodes.jsonl").unlink()
    with pytest.raises(DefiError, match=r"episodes.jsonl: missing episode index"):
        EpisodeStore.open(store_copy)
    (store_copy / "meta" / "info.json").unlink()
    with pytest.raises(DefiError, match=r"info.json: missing store metadata"):
        EpisodeStore.open(store_copy)


def test_missing_episode_group(store_copy):
    store = EpisodeStore.open(store_copy)
    shutil.rmtree(store.episode_path(store.episodes[1]["key"]))
    with pytest.raises(DefiError, match=r"missing or corrupt episode metadata"):
        store.read(1, "action")


def test_info_and_preview_cli(mw_store, tmp_path, capsys):
    summary = store_summary(mw_store)
    assert summary["episodes"] == 4 and summary["tasks"] == {"button-press-v3": 2, "reach-v3": 2}
    assert summary["success_rate"] == 1.0 and summary["disk_mb"] > 0
    assert main(["data", "info", str(mw_store)]) == 0
    out = capsys.readouterr().out
    assert "episodes     4" in out and "reach-v3 (2)" in out
    gif = tmp_path / "p.gif"
    assert main(["data", "preview", str(mw_store), "--out", str(gif), "--episodes", "0", "2", "--max-frames", "20"]) == 0
    import imageio.v3 as iio

    frames = iio.imread(gif)
    assert frames.shape[0] >= 10 and frames.shape[1:3] == (64, 128)  # two cameras side by side
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "no such episode" in capsys.readouterr().err  # store, or source read in place
    assert main(["data", "metaworld", "--tasks", "reach,fly", "--out", str(tmp_path / "x")]) == 2
    assert "unknown Meta-World task 'fly'" in capsys.readouterr().err
