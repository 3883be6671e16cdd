"""A tiny CALVIN split in CALVIN's published layout (dataset/README.md), shared by the reader's and the evaluation's
tests: one compressed npz per step with every array the release has, ep_start_end_ids.npy, scene_info.npy and
lang_annotations/auto_lang_ann.npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Two play stretches with a gap in the frame numbering, as the released splits have between recordings.
RANGES = [(0, 39), (100, 159)]
# (start, end, task, instruction): the second window's end is the first frame after its play stretch (the
# annotator writes start + window length), the third sits in the second stretch.
ANNOTATIONS = [
    (5, 25, "open_drawer", "pull the handle to open the drawer"),
    (30, 40, "turn_on_led", "switch on the led"),
    (110, 150, "lift_red_block_table", "grasp and lift the red block"),
]


def frame_arrays(i: int) -> dict[str, np.ndarray]:
    """Frame i's arrays; the images carry i (channel 0: i % 256, channel 1: i // 256) so reads can be checked."""
    static = np.zeros((200, 200, 3), np.uint8)
    static[..., 0], static[..., 1] = i % 256, i // 256
    gripper = np.zeros((84, 84, 3), np.uint8)
    gripper[..., 0], gripper[..., 2] = i % 256, 7
    rel = np.clip(np.array([0.01 * i, -0.02 * i, 0.5, 0.1, -0.1, 0.03 * i, 1.0 if i % 2 else -1.0]), -1, 1)
    return {
        "rgb_static": static,
        "rgb_gripper": gripper,
        "rgb_tactile": np.zeros((160, 120, 6), np.uint8),
        "depth_static": np.zeros((200, 200), np.float32),
        "depth_gripper": np.zeros((84, 84), np.float32),
        "depth_tactile": np.zeros((160, 120, 2), np.float32),
        "actions": np.array([0.1 * i, 0.2, 0.5, 3.1, 0.0, 1.5, rel[6]], np.float32),
        "rel_actions": rel.astype(np.float32),
        "robot_obs": np.arange(15, dtype=np.float32) + i,
        "scene_obs": np.full(24, -i, np.float32),
    }


def write_calvin_split(split: Path) -> Path:
    split.mkdir(parents=True)
    for start, end in RANGES:
        for i in range(start, end + 1):
            np.savez_compressed(split / f"episode_{i:07d}.npz", **frame_arrays(i))
    np.save(split / "ep_start_end_ids.npy", np.array(RANGES))
    np.save(split / "scene_info.npy", {"calvin_scene_B": [0, 59], "calvin_scene_C": [60, 159]})
    lang = split / "lang_annotations"
    lang.mkdir()
    np.save(lang / "auto_lang_ann.npy", {
        "language": {"ann": [a[3] for a in ANNOTATIONS], "task": [a[2] for a in ANNOTATIONS],
                     "emb": np.zeros((len(ANNOTATIONS), 1, 384), np.float32)},
        "info": {"episodes": [], "indx": [(a[0], a[1]) for a in ANNOTATIONS]},
    })
    return split
