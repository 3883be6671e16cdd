"""Instructions: every Meta-World v3 task has >= 3 training paraphrases and disjoint held-out ones."""

from __future__ import annotations

import numpy as np
import pytest

from defi.data.instructions import instruction, paraphrases, sample_instruction
from defi.envs.metaworld import all_tasks
from defi.errors import DefiError


def test_all_fifty_tasks_have_paraphrases_and_held_out_ones():
    tasks = all_tasks()
    assert len(tasks) == 50
    seen = set()
    for task in tasks:
        train, held = paraphrases(task), paraphrases(task, held_out=True)
        assert len(train) >= 3 and len(held) >= 1
        assert instruction(task) == train[0]
        assert not set(train) & set(held)
        assert len(set(train) | set(held)) == len(train) + len(held)
        seen.add(instruction(task))
    assert len(seen) == 50  # canonical instructions tell the tasks apart
    rng = np.random.default_rng(0)
    assert {sample_instruction("reach-v3", rng) for _ in range(50)} == set(paraphrases("reach"))
    with pytest.raises(DefiError, match="no instructions for task 'fly'"):
        instruction("fly")


def test_videos_cli(video_folder, tmp_path, capsys):
    from defi.cli import main

    out = tmp_path / "cli"
    assert main(["data", "videos", str(video_folder), "--out", str(out), "--fps", "5", "--size", "16",
                 "--no-progress"]) == 0
    assert "wrote 2 episodes" in capsys.readouterr().out
    assert main(["data", "videos", str(tmp_path), "--out", str(out)]) == 2
    assert "no captions.csv or captions.jsonl" in capsys.readouterr().err
