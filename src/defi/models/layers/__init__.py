"""Layers shared by the GIDM, the action adapter and the Video Former: one attention, the transformer blocks built
on it, the diffusion training target and the random-shift image augmentation."""

from defi.models.layers.attention import Attention
from defi.models.layers.augment import random_shift
from defi.models.layers.blocks import MLP, SpatioTemporalBlock, TransformerBlock
from defi.models.layers.diffusion import training_target

__all__ = ["MLP", "Attention", "SpatioTemporalBlock", "TransformerBlock", "random_shift", "training_target"]
