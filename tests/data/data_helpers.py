"""Helpers for the data-layer tests (a uniquely named module, so no other tests' conftest can shadow it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_TASKS = "reach,button-press"


def tiny_gen_config(out: Path, **changes):
    from defi.data.sources.metaworld import MetaWorldGenConfig

    base = dict(out=out, tasks=TINY_TASKS, episodes_per_task=2, cameras=("corner", "gripperPOV"), seed=0,
                max_steps=150, workers=1, progress=False)
    base.update(changes)
    return MetaWorldGenConfig(**base)


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
