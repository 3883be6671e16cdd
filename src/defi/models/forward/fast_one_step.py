"""A cheaper, numerically equivalent `pipeline.one_step` for frozen inference (the policy's `act`).

`one_step` runs the diffusers UNet as it trains; at policy time much of that does not change between calls, and
this module computes it once (FLOPs of the `small` GFDM at batch 1: 401 M -> 265 M):

- per model: the starting noise (one seeded draw shared by every sample, see `one_step`), hence the noisy latents,
  the timestep + micro-conditioning embedding, and the noisy-latent half of the first convolution. `conv_in` sees
  [noisy latents, current latent] concatenated on channels, so conv_in(cat(a, b)) = conv(a, W_a) + conv(b, W_b);
  the noisy half is a constant and the current-latent half is computed once per clip instead of once per frame
  (the current latent is the same for every predicted frame). The first convolution was 14% of the UNet's FLOPs.
- per instruction (an LRU of `cache_size` instruction tuples): the keys and values of every cross-attention to
  the text context. The UNet repeats the context for each frame (spatial blocks) and for each pixel (temporal
  blocks, 64x at 8x8 latents) before projecting it; here it is projected once per clip and all the queries of a
  clip attend to it in ONE attention call (same softmax rows, fewer and larger ops). Those projections were 18%.
- per call, the output layers run on the one frame the policy reads (`features`); the other frames are computed
  only if asked (`latents`, for the imagined future in evaluation videos). 5%.

What is left is the diffusers blocks themselves, called in the order of `UNetSpatioTemporalConditionModel.forward`,
optionally as a traced graph (`defi.models.traced`). The result equals `one_step`'s up to float rounding (the
split convolution and the merged attentions sum in another order; tests/test_forward.py compares them).

Only for the default noise (no generator) and without gradients; everything cached is rebuilt when a GFDM
parameter or buffer changes (tensor version or storage: an optimiser step, `load_state_dict`, a device move).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention as DiffusersAttention
from diffusers.models.attention_processor import AttnProcessor2_0
from einops import rearrange, repeat

from defi.errors import ConfigError, DefiError, ShapeError
from defi.models.forward.modeling import ForwardDynamicsModel
from defi.models.forward.pipeline import _one_step_scheduler
from defi.models.traced import TracedCall, inference_cache, weights_key


class ContextKVProcessor(AttnProcessor2_0):
    """diffusers' SDPA attention processor, plus a mode where the cross-attention keys/values are given.

    With `kv` unset it IS `AttnProcessor2_0` (training and `one_step` are unchanged). With `kv` = (keys, values)
    [n, heads, L, d] of n clips' contexts, the query rows of each clip (its frames, or its pixels in the temporal
    blocks, laid out clip-major as diffusers repeats the context) attend to that clip's keys in one call, and the
    `encoder_hidden_states` argument is ignored.
    """

    def __init__(self):
        super().__init__()
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if self.kv is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        keys, values = self.kv
        rows, length, _ = hidden_states.shape
        n, heads, _, head_dim = keys.shape
        query = attn.to_q(hidden_states).reshape(n, (rows // n) * length, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, keys, values)
        out = out.transpose(1, 2).reshape(rows, length, heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


def _plain_cross_attention(attn: DiffusersAttention) -> bool:
    """True when `attn` is a cross-attention that `ContextKVProcessor`'s given-keys mode computes exactly."""
    return (attn.is_cross_attention and attn.spatial_norm is None and attn.group_norm is None
            and attn.norm_cross is None and attn.norm_q is None and attn.norm_k is None
            and not attn.residual_connection and attn.rescale_output_factor == 1.0
            and isinstance(attn.processor, AttnProcessor2_0))


class FastOneStep:
    """`one_step(model, images, instruction)` for inference, with the constant work done once (module docstring).

    Kept in the model's `inference_cache` (`fast_one_step(model)`): not saved, shared by the policy's forks. One
    call at a time per model (the server runs inference on one thread): a call sets the keys/values on the
    attention processors it shares with the model.
    """

    def __init__(self, model: ForwardDynamicsModel, cache_size: int = 16):
        unet = model.unet
        self.model = model
        self.cache_size = cache_size
        self.cross: list[tuple[DiffusersAttention, ContextKVProcessor]] = []
        for name, module in unet.named_modules():
            if isinstance(module, DiffusersAttention) and module.is_cross_attention:
                if not _plain_cross_attention(module):
                    raise DefiError(f"fast one-step features: UNet attention {name!r} is not a plain SDPA "
                                    "cross-attention (set the policy's fast_gfdm = False, or use pipeline.one_step)")
                if not isinstance(module.processor, ContextKVProcessor):
                    module.set_processor(ContextKVProcessor())
                self.cross.append((module, module.processor))
        # listed once (walking the module tree costs ~1 ms per call); buffers too, as they could feed the constants
        self._tensors = list(model.parameters()) + list(model.buffers())
        self._weights: tuple | None = None
        self._constants: dict[int, dict[str, torch.Tensor]] = {}
        self._kv: OrderedDict[tuple[str, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._graphs: dict[tuple, TracedCall] = {}  # traced `_unet`, per (layers, read view/frame)
        self._const: dict[str, torch.Tensor] = {}

    # --------------------------------------------------------------------------------------- caches
    def _check_weights(self) -> None:
        # an in-place update (optimiser step, load_state_dict) bumps a tensor's version; a new tensor changes
        # the storage: either way the derived constants are stale
        key = weights_key(self._tensors)
        if key != self._weights:
            self._weights = key
            self._constants.clear()
            self._kv.clear()
            self._graphs.clear()  # the traces hold the old constants

    def _model_constants(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Per-model (and batch size) constants: noisy latents, embeddings, the noisy half of conv_in."""
        found = self._constants.get(n)
        if found is not None:
            return found
        model, cfg, unet = self.model, self.model.config, self.model.unet
        side = cfg.latent_side
        frames, channels = cfg.num_frames, cfg.latent_channels
        t_index = model.one_step_timestep
        timesteps = torch.full((n,), t_index, device=device, dtype=torch.long)
        # the same draw as `one_step` without a generator
        generator = torch.Generator(device=device).manual_seed(cfg.features.seed)
        noise = torch.randn((1, frames, channels, side, side), generator=generator, device=device)
        noisy = model.noise_scheduler.add_noise(torch.zeros_like(noise), noise, timesteps[:1])
        dtype = noisy.dtype
        # UNetSpatioTemporalConditionModel.forward, "1. time"
        emb = unet.time_embedding(unet.time_proj(timesteps[:1]).to(dtype))
        added = torch.tensor(cfg.added_time_ids, device=device, dtype=dtype)
        emb = emb + unet.add_embedding(unet.add_time_proj(added).reshape(1, -1).to(emb.dtype))
        weight = unet.conv_in.weight
        noisy_half = F.conv2d(noisy[0], weight[:, :channels].contiguous(), unet.conv_in.bias, unet.conv_in.stride,
                              unet.conv_in.padding)  # [f, C0, h, w]
        self._noisy, self._t_index = noisy, t_index  # [1 f C h w]: the same for every batch size
        found = {
            "emb": emb.expand(n * frames, -1),
            "conv_in_noisy": noisy_half,
            # contiguous: a strided slice of the weight sends the convolution to a slow, non-oneDNN kernel
            "conv_in_cond_weight": weight[:, channels:].contiguous(),
            "image_only_indicator": torch.zeros(n, frames, dtype=dtype, device=device),
            # stands in for the text context, which the blocks only pass on to the attention processors (which
            # use the cached keys/values instead); NaN so that any other use would show in the outputs
            "placeholder_context": torch.full((n * frames, 1, unet.config.cross_attention_dim), float("nan"),
                                              device=device, dtype=dtype),
        }
        self._constants[n] = found
        return found

    def _context_kv(self, instructions: Sequence[str], views: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every cross-attention's keys/values [(b v), heads, L, d] for these instructions (LRU-cached)."""
        key = (*instructions, f"views={views}")
        found = self._kv.get(key)
        if found is not None:
            self._kv.move_to_end(key)
            return found
        context = repeat(self.model.instruction_tokens(list(instructions)), "b l d -> (b v) l d", v=views)
        found = []
        for attn, _ in self.cross:
            split = "n l (h d) -> n h l d"
            found.append((rearrange(attn.to_k(context), split, h=attn.heads).contiguous(),
                          rearrange(attn.to_v(context), split, h=attn.heads).contiguous()))
        self._kv[key] = found
        if len(self._kv) > self.cache_size:
            self._kv.popitem(last=False)
        return found

    # --------------------------------------------------------------------------------------- the step
    @torch.no_grad()
    def __call__(self, images: torch.Tensor, instructions: Sequence[str],
                 layers: tuple[str, ...] | None = None, traced: bool = False) -> dict[str, torch.Tensor]:
        """As `one_step(model, images, instructions, layers)`: {layer: [n f C h w], "latents": [n f C h' w']}."""
        captured, _, hidden = self._run(images, instructions, layers, None, traced)
        return {**captured, "latents": self.latents(hidden)}

    @torch.no_grad()
    def features(self, images: torch.Tensor, instructions: Sequence[str], view: int, frame: int,
                 layers: tuple[str, ...] | None = None, traced: bool = False
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """What the policy reads: ({layer: [n f C h w]}, the one-step latents of one view's one frame [b C h' w'],
        the UNet's last activations for `latents`). The output convolution runs on that frame only (the others
        are needed only to draw the imagined future: `latents(hidden)` computes them when asked).
        `traced`: run the UNet as a TorchScript trace (`defi.models.traced`)."""
        if images.ndim != 5:
            raise ShapeError(f"images: expected [B, V, 3, H, W], got {list(images.shape)}")
        return self._run(images, instructions, layers, (view, frame), traced)

    @torch.no_grad()
    def latents(self, hidden: torch.Tensor) -> torch.Tensor:
        """The one-step estimate of every frame [n f C h' w'] from the UNet's last activations [(n f) C0 h w]."""
        estimate = self._estimate(hidden, None)
        return estimate.reshape(-1, self.model.config.num_frames, *estimate.shape[1:])

    def _estimate(self, hidden: torch.Tensor, frame: int | None) -> torch.Tensor:
        """UNet output layers + the one-step DDIM estimate of z^(0), for rows of frame `frame` (None: rows of
        every frame in (n f) order)."""
        unet, noisy = self.model.unet, self._noisy
        prediction = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        noisy = noisy[0, frame] if frame is not None else noisy[0].repeat(hidden.shape[0] // noisy.shape[1], 1, 1, 1)
        return _one_step_scheduler(self.model).step(prediction, self._t_index, noisy).pred_original_sample

    def _run(self, images: torch.Tensor, instructions: Sequence[str], layers: tuple[str, ...] | None,
             read: tuple[int, int] | None, traced: bool
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """-> ({layer: [n f C h w]}, the estimate of view/frame `read` [b C h' w'] (None without `read`), the
        UNet's activations before its output layers [(n f) C0 h w])."""
        cfg = self.model.config
        layers = tuple(cfg.features.layers if layers is None else layers)
        self._check_weights()
        views = images.shape[1] if images.ndim == 5 else 1
        n = images.shape[0] * views
        if len(instructions) * views != n or not all(isinstance(text, str) for text in instructions):
            raise ShapeError(f"expected one instruction string per clip, got {len(instructions)} for {n // views}")
        self._const = self._model_constants(n, images.device)  # read by _unet (a constant of its traces)
        kv = [t for pair in self._context_kv(instructions, views) for t in pair]
        if traced:
            key = (layers, read)
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = TracedCall(self.model, partial(self._unet, layers, read))
            out = graph(images, *kv)
        else:
            out = self._unet(layers, read, images, *kv)
        return dict(zip(layers, out[:len(layers)])), (out[-2] if read else None), out[-1]

    def _unet(self, layers: tuple[str, ...], read: tuple[int, int] | None, images: torch.Tensor,
              *kv_flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The UNet on uint8 images (keys/values given): (*features of `layers`, [the estimate of view/frame
        `read`], the activations before the output layers)."""
        model, cfg, unet, const = self.model, self.model.config, self.model.unet, self._const
        current, views = model._fold_views(images)
        condition = model.latents.encode_condition(current)  # [n C h w]
        n = condition.shape[0]
        cond_half = F.conv2d(condition, const["conv_in_cond_weight"], None, unet.conv_in.stride,
                             unet.conv_in.padding)  # [n, C0, h, w], once per clip rather than per frame
        sample = (const["conv_in_noisy"].unsqueeze(0) + cond_half.unsqueeze(1)).flatten(0, 1)
        emb, indicator, context = const["emb"], const["image_only_indicator"], const["placeholder_context"]
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str, hidden: torch.Tensor) -> None:
            if name in layers:
                captured[name] = rearrange(hidden, "(n f) c h w -> n f c h w", n=n)

        for (_, processor), i in zip(self.cross, range(0, len(kv_flat), 2)):
            processor.kv = kv_flat[i], kv_flat[i + 1]
        try:
            # UNetSpatioTemporalConditionModel.forward from "2. pre-process" on
            residuals = (sample,)
            for i, block in enumerate(unet.down_blocks):
                if getattr(block, "has_cross_attention", False):
                    sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=context,
                                        image_only_indicator=indicator)
                else:
                    sample, res = block(hidden_states=sample, temb=emb, image_only_indicator=indicator)
                keep(f"down_blocks.{i}", sample)
                residuals += res
            sample = unet.mid_block(hidden_states=sample, temb=emb, encoder_hidden_states=context,
                                    image_only_indicator=indicator)
            keep("mid_block", sample)
            for i, block in enumerate(unet.up_blocks):
                res = residuals[-len(block.resnets):]
                residuals = residuals[:-len(block.resnets)]
                if getattr(block, "has_cross_attention", False):
                    sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                                   encoder_hidden_states=context, image_only_indicator=indicator)
                else:
                    sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                                   image_only_indicator=indicator)
                keep(f"up_blocks.{i}", sample)
        finally:
            for _, processor in self.cross:
                processor.kv = None
        missing = [name for name in layers if name not in captured]
        if missing:
            raise ConfigError(f"config key features.layers: the UNet has no block {missing[0]!r}")
        out = [captured[name] for name in layers]
        if read is not None:
            view, frame = read
            rows = rearrange(sample, "(b v f) c h w -> b v f c h w", v=views, f=cfg.num_frames)[:, view, frame]
            out.append(self._estimate(rows, frame))
        return (*out, sample)


def fast_one_step(model: ForwardDynamicsModel) -> FastOneStep:
    """The model's `FastOneStep` (built on first use, kept in its `inference_cache`: not saved or copied)."""
    cache = inference_cache(model)
    runner = cache.get("fast_one_step")
    if runner is None:
        runner = cache["fast_one_step"] = FastOneStep(model)
    return runner
