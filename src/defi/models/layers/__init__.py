"""Layers shared by the GIDM, the action adapter and the Video Former: one attention, the transformer blocks built
on it, and the diffusion training target."""

from defi.models.layers.attention import Attention
from defi.models.layers.blocks import MLP, SpatioTemporalBlock, TransformerBlock
from defi.models.layers.diffusion import training_target

__all__ = ["MLP", "Attention", "SpatioTemporalBlock", "TransformerBlock", "training_target"]
