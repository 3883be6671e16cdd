"""The data layer: sources -> episode store -> clip sampler -> (mixtures of) clip datasets.

Import what you need from the submodules (`defi.data.config`, `defi.data.clips`, `defi.data.store`, ...); the
names below are the ones training stages use.
"""

from defi.data.config import DataConfig, build_clip_dataset

__all__ = ["DataConfig", "build_clip_dataset"]
