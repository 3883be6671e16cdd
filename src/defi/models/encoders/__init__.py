"""Frozen frame and text encoders, shared process-wide (`shared_encoder`), never copied or saved with a model."""

from defi.models.encoders.frame import FrameEncoder, FrameEncoderConfig, build_frame_encoder
from defi.models.encoders.shared import shared_encoder, shared_encoders
from defi.models.encoders.text import TextEmbedding, TextEncoder, TextEncoderConfig, build_text_encoder

__all__ = ["FrameEncoder", "FrameEncoderConfig", "TextEmbedding", "TextEncoder", "TextEncoderConfig",
           "build_frame_encoder", "build_text_encoder", "shared_encoder", "shared_encoders"]
