"""The one way frozen encoders are held: a process-wide registry, one instance per (config, device).

Frozen encoders (DINOv2 / the patch projection for frames; MiniLM / CLIP / T5 for text) are large, never trained
and never saved. Models and policies do not keep them as submodules or attributes: they ask `shared_encoder(config,
device)` each time (a dictionary lookup), so
- a model's state dict and `save_pretrained` never contain them (the config that names them is saved instead),
- every model, policy copy and server connection in the process uses the same weights (a fork costs nothing),
- the GFDM, the GIDM and the adapter share one text encoder when their configs name the same one.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from defi.config import to_dict

_ENCODERS: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()  # the policy server builds forks on several threads


def _device_key(device: str | torch.device | None) -> str:
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def shared_encoder(config: Any, device: str | torch.device | None = "cpu") -> Any:
    """The frozen encoder a `FrameEncoderConfig` or `TextEncoderConfig` describes, built on first use."""
    from defi.models.encoders.frame import FrameEncoderConfig, build_frame_encoder
    from defi.models.encoders.text import TextEncoder, TextEncoderConfig, load_text_model

    key = (type(config).__name__, json.dumps(to_dict(config), sort_keys=True), _device_key(device))
    encoder = _ENCODERS.get(key)
    if encoder is not None:
        return encoder
    with _LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            if isinstance(config, FrameEncoderConfig):
                encoder = build_frame_encoder(config, key[2])
            elif isinstance(config, TextEncoderConfig):
                # one model per (kind, weights, device); configs that differ only in tokenisation (max_length)
                # get their own light wrapper around it
                model_key = ("text-model", f"{config.kind}:{config.resolved_name()}", key[2])
                if model_key not in _ENCODERS:
                    _ENCODERS[model_key] = load_text_model(config, key[2])
                tokenizer, model = _ENCODERS[model_key]
                encoder = TextEncoder(config, tokenizer, model)
            else:
                raise TypeError(f"shared_encoder: no encoder for {type(config).__name__}")
            _ENCODERS[key] = encoder
    return encoder


def shared_encoders() -> list[Any]:
    """Every encoder (and text model) built so far in this process (for tests and memory accounting)."""
    return list(_ENCODERS.values())
