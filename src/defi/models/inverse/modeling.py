"""The General Inverse Dynamics Model (GIDM, paper §3.2, appendix A.3, Algorithm 1).

Encoder (kept for the coupled policy): frozen patch tokens of e_t and e_{t+n}, instruction tokens and N
learnable action queries go through a spatial-temporal transformer with a causal temporal mask; the action
queries at the e_{t+n} step are projected and vector-quantised into the latent action.
Decoder (pretraining only, discarded later): a spatial transformer over the tokens of e_t and the quantised
latent action predicts e_{t+n}. Loss = MSE(prediction, e_{t+n}) + VQ loss.

Inputs come from the frozen encoders the config names (`frame_tokens`, `text_tokens`, process-wide shared
instances, never saved with the model). Public API used by the coupled policy:

    gidm = GIDM.from_pretrained(run_dir / "model")
    current_tokens = gidm.frame_tokens(images)          # uint8 [B, 3, h, w] of gidm.config.camera
    text_tokens, text_mask = gidm.text_tokens(instructions)
    features, codes = gidm.infer_latent_actions(current_tokens, future_tokens, text_tokens, text_mask)
    # current_tokens: [B, P, feature_dim] frozen frame-encoder patch tokens of o_t
    # future_tokens:  [B, P, feature_dim] the same for o_{t+n}, or GFDM features projected by an MLP into this
    #                 space (the GIDM does not care where they come from; shapes are checked)
    # text_tokens:    [B, L, text_dim] from defi.models.encoders.text (or None when text_dim == 0)
    # text_mask:      [B, L] bool, True on real tokens
    # features:       [B, N, dim] quantised latent action features (differentiable: straight-through)
    # codes:          [B, N] int64 code ids (vq, fsq), [B, N, code_dim] bin ids (binning), None (continuous)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from defi.errors import ShapeError
from defi.models.base import PretrainedMixin
from defi.models.encoders import shared_encoder
from defi.models.inverse.configuration import GIDMConfig
from defi.models.inverse.quantizer import build_quantizer
from defi.models.layers import SpatioTemporalBlock, TransformerBlock


class LatentActions(NamedTuple):
    features: torch.Tensor  # [B, N, dim] quantised latent action features
    codes: torch.Tensor | None
    pre_quant: torch.Tensor  # [B, N, latent_dim] encoder output before the bottleneck
    vq_loss: torch.Tensor


class GIDM(PretrainedMixin, nn.Module):
    config_class: ClassVar[type] = GIDMConfig

    def __init__(self, config: GIDMConfig):
        super().__init__()
        self.config = config
        d, p, n = config.dim, config.num_patches, config.num_action_queries
        self.frame_in = nn.Sequential(nn.LayerNorm(config.feature_dim), nn.Linear(config.feature_dim, d))
        self.patch_pos = nn.Parameter(torch.randn(1, p, d) * 0.02)
        self.action_queries = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.text_in = nn.Linear(config.text_dim, d) if config.text_dim else None
        self.text_type = nn.Parameter(torch.zeros(1, 1, d))
        # encoder
        arch = config.architecture
        if arch == "st_transformer":
            self.time_pos = nn.Parameter(torch.randn(1, 2, 1, d) * 0.02)
            self.encoder = nn.ModuleList(
                SpatioTemporalBlock(d, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)
            )
        elif arch == "transformer":
            self.time_pos = nn.Parameter(torch.randn(1, 2, 1, d) * 0.02)
            self.encoder = nn.ModuleList(
                TransformerBlock(d, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)
            )
        else:  # mlp: pooled state embeddings of both frames (and the pooled instruction) -> N latent actions
            layers: list[nn.Module] = [nn.Linear(3 * d + (d if config.text_dim else 0), d)]
            for _ in range(config.depth - 1):
                layers += [nn.GELU(), nn.Linear(d, d)]
            layers += [nn.GELU(), nn.Linear(d, n * d)]
            self.encoder = nn.Sequential(*layers)
        self.encoder_norm = nn.LayerNorm(d)
        q = config.quantizer
        self.to_code = nn.Linear(d, q.latent_dim)
        self.quantizer = build_quantizer(q)
        self.from_code = nn.Linear(q.latent_dim, d)
        # decoder
        self.decoder_action_pos = nn.Parameter(torch.randn(1, n, d) * 0.02)
        self.decoder_in = nn.Sequential(nn.LayerNorm(config.feature_dim), nn.Linear(config.feature_dim, d))
        self.decoder = nn.ModuleList(
            TransformerBlock(d, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(d)
        # predicts e_{t+n} - e_t; zero-initialised so an untrained decoder starts at the copy-e_t baseline
        self.decoder_out = nn.Linear(d, config.feature_dim)
        nn.init.zeros_(self.decoder_out.weight)
        nn.init.zeros_(self.decoder_out.bias)

    # ----------------------------------------------------------------------------------------------- inputs
    def frame_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen frame-encoder patch tokens [B, P, feature_dim] of uint8 frames [B, 3, h, w] (no gradients)."""
        encoder = shared_encoder(self.config.frame_encoder, self.patch_pos.device)
        if (encoder.num_patches, encoder.dim) != (self.config.num_patches, self.config.feature_dim):
            raise ShapeError(f"GIDM frame encoder {self.config.frame_encoder.kind!r} gives {encoder.num_patches} x "
                             f"{encoder.dim} tokens; the GIDM was built for {self.config.num_patches} x "
                             f"{self.config.feature_dim} (config keys num_patches, feature_dim)")
        return encoder(images)

    def text_tokens(self, instructions: Sequence[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Frozen text-encoder tokens [B, L, text_dim] and mask [B, L] of the instructions ((None, None) without
        an instruction input). Columns that are padding in every row are dropped (the tokenizers pad on the right),
        which changes nothing but the cost: padded keys are masked out."""
        if not self.config.text_dim:
            return None, None
        emb = shared_encoder(self.config.text_encoder, self.patch_pos.device).encode(list(instructions))
        length = max(1, int(emb.mask.sum(1).max()))
        return emb.tokens[:, :length], emb.mask[:, :length]

    # ----------------------------------------------------------------------------------------------- checks
    def _check_inputs(self, current, future, text_tokens, text_mask) -> None:
        cfg = self.config
        want = (cfg.num_patches, cfg.feature_dim)
        for name, t in (("current_tokens", current), ("future_tokens", future)):
            if t.dim() != 3 or tuple(t.shape[1:]) != want:
                raise ShapeError(f"GIDM {name}: expected [B, {want[0]}, {want[1]}], got {list(t.shape)}")
        if current.shape[0] != future.shape[0]:
            raise ShapeError(f"GIDM: batch sizes differ ({current.shape[0]} vs {future.shape[0]})")
        if cfg.text_dim:
            if text_tokens is None or text_tokens.dim() != 3 or text_tokens.shape[-1] != cfg.text_dim:
                got = None if text_tokens is None else list(text_tokens.shape)
                raise ShapeError(f"GIDM text_tokens: expected [B, L, {cfg.text_dim}], got {got}")
            if text_mask is None or tuple(text_mask.shape) != tuple(text_tokens.shape[:2]):
                got = None if text_mask is None else list(text_mask.shape)
                raise ShapeError(f"GIDM text_mask: expected [B, L] = {list(text_tokens.shape[:2])}, got {got}")

    # ---------------------------------------------------------------------------------------------- encoder
    def _text(self, text_tokens, text_mask, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_in is None or text_tokens is None:
            d = self.config.dim
            return torch.zeros(batch, 0, d, device=device), torch.zeros(batch, 0, dtype=torch.bool, device=device)
        return self.text_in(text_tokens.to(self.text_type.dtype)) + self.text_type, text_mask.bool()

    def _encode_tokens(self, current, future, text_tokens, text_mask, queries_only: bool = False) -> torch.Tensor:
        """-> [B, N, dim] action-query outputs before the bottleneck. `queries_only`: the ST-transformer's last
        block computes only what the action queries at the e_{t+n} step need (the same values, less work)."""
        cfg = self.config
        b, n = current.shape[0], cfg.num_action_queries
        frames = self.frame_in(torch.stack([current, future], 1).to(self.patch_pos.dtype)) + self.patch_pos[:, None]
        text, tmask = self._text(text_tokens, text_mask, b, current.device)
        if cfg.architecture == "mlp":
            pooled = frames.mean(2)  # [B, 2, D] state embeddings
            parts = [pooled[:, 0], pooled[:, 1], pooled[:, 1] - pooled[:, 0]]
            if self.text_in is not None:
                w = tmask.unsqueeze(-1).to(text.dtype)
                parts.append((text * w).sum(1) / w.sum(1).clamp(min=1))
            out = rearrange(self.encoder(torch.cat(parts, -1)), "b (n d) -> b n d", n=n)
            return self.encoder_norm(out)
        frames = frames + self.time_pos
        queries = self.action_queries.expand(b, -1, -1)
        p = cfg.num_patches
        ones = lambda k: torch.ones(b, k, dtype=torch.bool, device=current.device)  # noqa: E731
        if cfg.architecture == "st_transformer":
            steps = self.st_states(frames, text, tmask, queries, keep_last=n if queries_only else 0)
            out = steps[:, -1, -n:]  # queries at the e_{t+n} step (they see both steps)
        else:  # plain transformer over one sequence, no causal mask (Table 7 baseline)
            seq = torch.cat([rearrange(frames, "b t p d -> b (t p) d"), text, queries], 1)
            mask = rearrange(torch.cat([ones(2 * p), tmask, ones(n)], 1), "b s -> b 1 1 s")
            for block in self.encoder:
                seq = block(seq, mask=mask)
            out = seq[:, -n:]
        return self.encoder_norm(out)

    def token_states(self, current_tokens, future_tokens, text_tokens=None, text_mask=None) -> torch.Tensor:
        """All ST-transformer token states [B, 2, P + L + N, dim] (step 0 = e_t, step 1 = e_{t+n}); for tests."""
        b = current_tokens.shape[0]
        frames = self.frame_in(torch.stack([current_tokens, future_tokens], 1)) + self.patch_pos[:, None] + self.time_pos
        text, tmask = self._text(text_tokens, text_mask, b, current_tokens.device)
        return self.st_states(frames, text, tmask, self.action_queries.expand(b, -1, -1))

    def st_states(self, frames, text, text_mask, queries, keep_last: int = 0) -> torch.Tensor:
        """ST-transformer over per-step sequences [patches of that frame, instruction, action queries].

        frames [B, 2, P, dim] (e_t, e_{t+n}, embedded); returns all token states [B, 2, P + L + N, dim], or with
        `keep_last=k` only the last k tokens of the e_{t+n} step [B, 1, k, dim] (SpatioTemporalBlock).
        """
        b, p, n = frames.shape[0], frames.shape[2], queries.shape[1]
        steps = torch.cat(
            [frames, repeat(text, "b l d -> b t l d", t=2), repeat(queries, "b n d -> b t n d", t=2) + self.time_pos],
            dim=2,
        )
        ones = lambda k: torch.ones(b, k, dtype=torch.bool, device=frames.device)  # noqa: E731
        mask = torch.cat([ones(p), text_mask, ones(n)], 1)
        for i, block in enumerate(self.encoder):
            steps = block(steps, mask, keep_last=keep_last if i == len(self.encoder) - 1 else 0)
        return steps

    def encode(
        self,
        current_tokens: torch.Tensor,
        future_tokens: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        queries_only: bool = False,
    ) -> LatentActions:
        self._check_inputs(current_tokens, future_tokens, text_tokens, text_mask)
        pre = self.to_code(self._encode_tokens(current_tokens, future_tokens, text_tokens, text_mask, queries_only))
        q = self.quantizer(pre)
        return LatentActions(self.from_code(q.quantized), q.indices, pre, q.loss)

    def infer_latent_actions(
        self,
        current_tokens: torch.Tensor,
        future_tokens: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        queries_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latent actions for the coupled policy: (features [B, N, dim], codes). See the module docstring.
        `queries_only`: skip the last block's work that the action queries do not read (inference)."""
        out = self.encode(current_tokens, future_tokens, text_tokens, text_mask, queries_only)
        return out.features, out.codes

    # ---------------------------------------------------------------------------------------------- decoder
    def decode(self, current_tokens: torch.Tensor, action_features: torch.Tensor) -> torch.Tensor:
        """Predict e_{t+n} [B, P, feature_dim] from e_t and the latent action features [B, N, dim]."""
        p = self.config.num_patches
        x = torch.cat([self.decoder_in(current_tokens.to(self.patch_pos.dtype)) + self.patch_pos,
                       action_features + self.decoder_action_pos], 1)
        for block in self.decoder:
            x = block(x)
        delta = self.decoder_out(self.decoder_norm(x[:, :p]))
        return current_tokens.to(delta.dtype) + delta

    def predict(
        self,
        current_tokens: torch.Tensor,
        future_tokens: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LatentActions]:
        """(predicted e_{t+n} [B, P, feature_dim], latent actions)."""
        latent = self.encode(current_tokens, future_tokens, text_tokens, text_mask)
        return self.decode(current_tokens, latent.features), latent

    def forward(
        self,
        current_tokens: torch.Tensor,
        future_tokens: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        decode_pair: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Algorithm 1: loss = MSE(decoded e_{t+n}, e_{t+n}) + VQ loss; also logs the copy-e_t baseline.

        `decode_pair`: (e_t, e_{t+n}) tokens the decoder starts from and must predict, when they are not the pair
        the encoder saw (pair-shift training: the same clip under another image shift)."""
        latent = self.encode(current_tokens, future_tokens, text_tokens, text_mask)
        start, target = decode_pair if decode_pair is not None else (current_tokens, future_tokens)
        pred = self.decode(start, latent.features)
        target = target.to(pred.dtype)
        mse = F.mse_loss(pred, target)
        with torch.no_grad():
            copy_mse = F.mse_loss(start.to(pred.dtype), target)
        out = {"loss": mse + latent.vq_loss, "mse": mse.detach(), "copy_mse": copy_mse, "vq_loss": latent.vq_loss.detach()}
        num_codes = self.config.quantizer.num_codes
        if num_codes is not None:
            # codes used within this batch (a collapse shows here long before the held-out evaluation)
            counts = torch.bincount(latent.codes.reshape(-1), minlength=num_codes).float()
            probs = counts / counts.sum()
            out["batch_code_perplexity"] = (-(probs * probs.clamp(min=1e-12).log()).sum()).exp()
        return out

    # ---------------------------------------------------------------------------------------- visualisation
    @torch.no_grad()
    def query_attention(
        self,
        current_tokens: torch.Tensor,
        future_tokens: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        layer: int = -1,
    ) -> torch.Tensor:
        """Attention of the action queries over the patches of o_{t+n} (paper Fig. 12): [B, P], rows sum <= 1.

        Averaged over heads and queries, from one spatial layer (the last by default) of the ST-transformer
        (or of the plain transformer, over the o_{t+n} patches). Not defined for the MLP variant.
        """
        cfg = self.config
        if cfg.architecture == "mlp":
            raise ShapeError("query_attention: the MLP IDM has no attention")
        block = self.encoder[layer]
        attn = block.spatial if cfg.architecture == "st_transformer" else block.attn
        attn.store_attention = True
        try:
            self._check_inputs(current_tokens, future_tokens, text_tokens, text_mask)
            self._encode_tokens(current_tokens, future_tokens, text_tokens, text_mask)
            weights = attn.last_attention  # [B*, H, S, S]
        finally:
            attn.store_attention = False
            attn.last_attention = None
        b, p, n = current_tokens.shape[0], cfg.num_patches, cfg.num_action_queries
        if cfg.architecture == "st_transformer":
            weights = rearrange(weights, "(b t) h s k -> b t h s k", b=b)[:, 1]
            return weights[:, :, -n:, :p].mean((1, 2))
        return weights[:, :, -n:, p : 2 * p].mean((1, 2))
