"""General Inverse Dynamics Model: latent actions from frame pairs, learned without action labels.

`configuration` (config + presets, with the encoders and camera that feed the model), `modeling` (encoder,
bottleneck, decoder), `quantizer` (VQ codebook and the Table 8 alternatives).
"""

from defi.models.inverse.configuration import GIDMConfig, QuantizerConfig, table7_variant, table8_variant
from defi.models.inverse.modeling import GIDM, LatentActions
from defi.models.inverse.quantizer import code_usage

__all__ = ["GIDM", "GIDMConfig", "LatentActions", "QuantizerConfig", "code_usage", "table7_variant",
           "table8_variant"]
