"""Fixtures shared across test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread for the whole suite: the CI box is shared, and OpenMP spin-waiting between two busy
    processes made tests up to 20x slower; every model here is tiny."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def policy_store(tmp_path_factory) -> Path:
    """A tiny labeled Meta-World store at 32x32 (4 reach episodes) for the policy stages."""
    from defi.data.sources.metaworld import MetaWorldGenConfig, generate_metaworld

    out = tmp_path_factory.mktemp("policy-data") / "store"
    report = generate_metaworld(MetaWorldGenConfig(out=out, tasks="reach", episodes_per_task=4, cameras=("corner",),
                                                   image_size=32, seed=0, max_steps=120, workers=1, progress=False))
    assert report.kept == 4, report.summary()
    return out

