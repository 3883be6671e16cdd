import pytest
import torch

from defi.config import from_dict
from defi.errors import CheckpointError, ConfigError, ShapeError
from defi.models.encoders.frame import FrameEncoderConfig, build_frame_encoder


def test_patch_encoder_shapes_determinism_and_distances():
    cfg = FrameEncoderConfig(kind="patch", image_size=32, patch_size=8, dim=256)  # 256 >= 3*8*8: isometric
    enc = build_frame_encoder(cfg)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)
    fa, fb = enc(a), enc(b)
    assert fa.shape == (2, 16, 256) and enc.num_patches == 16 and enc.grid == (4, 4) and enc.dim == 256
    assert torch.equal(fa, build_frame_encoder(cfg)(a))  # the seed alone rebuilds it
    assert not torch.equal(fa, build_frame_encoder(FrameEncoderConfig(kind="patch", image_size=32, dim=256, seed=1))(a))
    # distances between frames equal pixel distances (pixels scaled to [-1, 1])
    pix = lambda x: (x.float() / 255 * 2 - 1)  # noqa: E731
    assert torch.allclose((fa - fb).norm(), (pix(a) - pix(b)).norm(), rtol=1e-4)
    # a frame of another size is resized first; encoders are frozen
    assert enc(torch.zeros(1, 3, 64, 48, dtype=torch.uint8)).shape == (1, 16, 256)
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ShapeError, match="B, 3, h, w"):
        enc(torch.zeros(3, 32, 32, dtype=torch.uint8))


def test_dinov2_round_trip_through_a_saved_tiny_model(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    tiny = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    patch_size=4, image_size=16)).eval()
    tiny.save_pretrained(tmp_path / "dino")
    enc = build_frame_encoder(FrameEncoderConfig(kind="dinov2", name_or_path=str(tmp_path / "dino"), image_size=16))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    tokens = enc(images)
    assert tokens.shape == (2, 16, 32) and enc.grid == (4, 4) and enc.dim == 32
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = tiny(pixel_values=(images.float() / 255 - mean) / std).last_hidden_state[:, 1:]
    assert torch.allclose(tokens, ref, atol=1e-5)
    with pytest.raises(CheckpointError, match="patch size"):
        build_frame_encoder(FrameEncoderConfig(kind="dinov2", name_or_path=str(tmp_path / "dino"), image_size=18))


def test_dinov2_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="could not be loaded offline"):
        build_frame_encoder(FrameEncoderConfig(kind="dinov2", name_or_path=str(tmp_path / "nothing-here")))


def test_bad_frame_encoder_config_names_the_key():
    with pytest.raises(ConfigError, match="image_size"):
        from_dict(FrameEncoderConfig, {"kind": "patch", "image_size": 30, "patch_size": 8})
    with pytest.raises(ConfigError, match="kind"):
        from_dict(FrameEncoderConfig, {"kind": "resnet"})
