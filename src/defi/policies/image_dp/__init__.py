"""The image-conditioned diffusion-policy baseline: `configuration_image_dp`, `modeling_image_dp`, and its
`image_encoder`."""

from defi.policies.image_dp.configuration_image_dp import ImageDPConfig
from defi.policies.image_dp.image_encoder import ConvImageEncoder, ImageEncoderConfig
from defi.policies.image_dp.modeling_image_dp import ImageDPPolicy

__all__ = ["ConvImageEncoder", "ImageDPConfig", "ImageDPPolicy", "ImageEncoderConfig"]
