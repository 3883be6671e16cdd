import pytest
import torch

from defi.errors import CheckpointError
from defi.models.encoders.text import TextEncoderConfig, build_text_encoder


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder(TextEncoderConfig(kind="minilm", max_length=16))


def test_minilm_offline_shapes_and_semantics(minilm):
    emb = minilm.encode(["open the drawer", "close the drawer", "open the drawer"])
    assert emb.tokens.shape == (3, 16, 384) and emb.mask.shape == (3, 16) and emb.pooled.shape == (3, 384)
    assert emb.mask[:, 0].all() and not emb.mask[:, -1].any()
    assert torch.equal(emb.pooled[0], emb.pooled[2])  # served from the cache, identical
    # a real sentence encoder: a paraphrase is closer than an unrelated instruction
    para, other = minilm.encode(["pull the drawer open", "press the red button"]).pooled
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb.pooled[0], para, dim=0) > cos(emb.pooled[0], other, dim=0)
    assert not any(p.requires_grad for p in minilm.parameters())


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_tiny_clip_and_t5_load_through_the_real_path(tmp_path, kind, minilm):
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    vocab = minilm.tokenizer.vocab_size
    if kind == "clip":
        model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32))
    else:
        model = T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2))
    model.save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)
    enc = build_text_encoder(TextEncoderConfig(kind=kind, name_or_path=str(tmp_path), max_length=12))
    emb = enc.encode(["push the puck"])
    assert emb.tokens.shape == (1, 12, 32) and emb.pooled.shape == (1, 32) and enc.dim == 32


def test_missing_weights_error_names_the_model(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        build_text_encoder(TextEncoderConfig(kind="clip", name_or_path=str(tmp_path / "nowhere")))
    with pytest.raises(CheckpointError, match="not-a-cached/repo"):
        build_text_encoder(TextEncoderConfig(kind="t5", name_or_path="not-a-cached/repo"))
