"""General Inverse Dynamics Model: latent actions from frame pairs, learned without action labels."""

from defi.models.inverse.config import (
    GIDM_PRESETS,
    GIDMConfig,
    QuantizerConfig,
    gidm_paper,
    gidm_small,
    gidm_tiny,
    table7_variant,
    table8_variant,
)
from defi.models.inverse.model import GIDM, LatentActions
from defi.models.inverse.quantizer import code_usage

__all__ = [
    "GIDM", "GIDMConfig", "GIDM_PRESETS", "LatentActions", "QuantizerConfig", "code_usage", "gidm_paper",
    "gidm_small", "gidm_tiny", "table7_variant", "table8_variant",
]
