"""What every policy is: the Policy protocol, its typed metadata, the registry, the normaliser and the observation
-> tensors conversion. Training, evaluation, latency and serving code talk to policies only through this.

The protocol (LeRobot's and Diffusion Policy's habit, one method per job):

    policy.forward(batch) -> {"loss": scalar, ...}          # the trainer's contract on a clip batch
    policy.predict_action_chunk(batch) -> [B, Ha, A]         # unnormalised chunks from a batch of observations
    policy.act(observation, instruction) -> float32 [Ha, A]  # one robot observation (Policy API keys)
    policy.reset(seed=None)                                  # start an episode (seed: its sampling noise)
    policy.fork()                                            # a copy with its own episode state, sharing weights
    policy.metadata -> PolicyMetadata                         # cameras, image_size [h, w], dims, horizon, type
    policy.save_pretrained(dir) / Policy.from_pretrained(dir)

A batch holds "images" uint8 [B, V, 3, H, W] (the policy's cameras, in its order), "instruction" (B strings)
and "state" float [B, S] when the policy reads the proprio state.

Every policy type has ONE name ("defi", "image_dp", "scripted"): its config's `type_name`, written as `_type`
into the saved `config.json`, the key of `POLICY_TYPES`, and `metadata.policy_type`.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from defi.config import Config
from defi.errors import CheckpointError, DefiError, ShapeError

CONFIG_NAME = "config.json"

# policy type -> "module:Class". One line per policy type; the class is imported only when a policy is loaded.
POLICY_TYPES: dict[str, str] = {
    "defi": "defi.policies.defi.modeling_defi:DeFIPolicy",
    "image_dp": "defi.policies.image_dp.modeling_image_dp:ImageDPPolicy",
    "scripted": "defi.policies.scripted:ScriptedPolicy",
}

NormalizationMode = Literal["min_max", "mean_std"]


@dataclass
class PolicyMetadata:
    """What a robot loop (and the server) must know to drive a policy."""

    policy_type: str
    cameras: list[str]
    image_size: list[int]  # [h, w]; always a pair
    state_dim: int  # 0: the policy reads no proprio state
    action_dim: int
    action_horizon: int
    sampling_steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.image_size) != 2:
            raise ShapeError(f"PolicyMetadata.image_size: expected [h, w], got {self.image_size}")
        self.image_size = [int(s) for s in self.image_size]
        self.cameras = list(self.cameras)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        return {**out, **extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyMetadata:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        size = data.get("image_size")
        if isinstance(size, int):
            size = [size, size]
        if size is None and not data.get("cameras"):
            size = [0, 0]  # a policy without cameras has no image size
        missing = [k for k in ("policy_type", "cameras", "state_dim", "action_dim", "action_horizon") if k not in data]
        if missing or size is None:
            raise DefiError(f"policy metadata lacks {missing or ['image_size']} (got keys {sorted(data)})")
        return cls(**{k: v for k, v in data.items() if k in known and k != "image_size"}, image_size=list(size),
                   extra={k: v for k, v in data.items() if k not in known})


@dataclass
class PolicyConfig(Config):
    """Fields every policy config has: what the policy reads and writes. The data a policy trains on follows
    from them (`data_fields`), so a user never keeps a dataset config in sync with a policy by hand."""

    type_name: ClassVar[str] = ""
    cameras: tuple[str, ...] = ("corner",)
    image_size: int = 64
    state_dim: int = 4  # 0: no proprio input
    action_dim: int = 4
    action_horizon: int = 8

    def validate(self) -> None:
        self.check(len(set(self.cameras)) == len(self.cameras), "cameras", "distinct camera names")
        self.check(self.image_size >= 8, "image_size", ">= 8 pixels")
        self.check(self.state_dim >= 0, "state_dim", ">= 0 (0 = no proprio state)")
        self.check(self.action_dim >= 1, "action_dim", ">= 1")
        self.check(self.action_horizon >= 1, "action_horizon", ">= 1")

    def data_fields(self) -> dict[str, Any]:
        """The `DataConfig` fields this policy fixes (cameras, image size, action chunk, dims)."""
        out: dict[str, Any] = {"cameras": tuple(self.cameras), "image_size": self.image_size,
                               "action_horizon": self.action_horizon, "action_dim": self.action_dim}
        if self.state_dim:
            out["state_dim"] = self.state_dim
        return out


@runtime_checkable
class Policy(Protocol):
    """What the evaluation loops, the server and the robot client expect of a policy."""

    @property
    def metadata(self) -> PolicyMetadata: ...

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray: ...

    def fork(self) -> Policy: ...

    def save_pretrained(self, directory: str | Path) -> Path: ...


# ------------------------------------------------------------------------------------------------ normaliser
_EPS = 1e-6  # below this range / std a dimension is treated as constant (e.g. a gripper that never moves)


class _FieldNormalizer(nn.Module):
    """Per-dimension statistics of one field, as buffers (saved with the policy's weights)."""

    def __init__(self, dim: int, mode: NormalizationMode):
        super().__init__()
        if mode not in ("min_max", "mean_std"):
            raise DefiError(f"normalization mode {mode!r}: expected 'min_max' or 'mean_std'")
        self.dim, self.mode = dim, mode
        for key in ("mean", "min"):
            self.register_buffer(key, torch.zeros(dim))
        for key in ("std", "max"):
            self.register_buffer(key, torch.ones(dim))
        self.register_buffer("has_stats", torch.zeros((), dtype=torch.bool))

    def set_stats(self, name: str, stats: Mapping[str, Any]) -> None:
        needed = ("min", "max") if self.mode == "min_max" else ("mean", "std")
        for key in needed:
            if key not in stats:
                raise DefiError(f"normalization stats of {name!r} lack {key!r} (mode {self.mode} needs "
                                f"{', '.join(needed)})")
        for key in ("mean", "std", "min", "max"):
            if key not in stats:
                continue
            value = torch.as_tensor(np.asarray(stats[key], dtype=np.float32)).reshape(-1)
            if value.shape[0] != self.dim:
                raise DefiError(f"normalization stats {name}.{key} have {value.shape[0]} values: expected {self.dim}")
            if not torch.isfinite(value).all():
                raise DefiError(f"normalization stats {name}.{key} contain NaN or infinity: {value.tolist()}")
            getattr(self, key).copy_(value)
        if self.mode == "min_max" and bool((self.max < self.min).any()):
            raise DefiError(f"normalization stats of {name!r}: max {self.max.tolist()} is below min "
                            f"{self.min.tolist()}")
        self.has_stats.fill_(True)

    def offset_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x_normalised = (x - offset) / scale; constant dimensions get scale 1 (they map to 0)."""
        if not bool(self.has_stats):
            raise DefiError(f"Normalizer has no statistics for {name!r}: call set_stats(dataset stats) before "
                            "training")
        if self.mode == "min_max":
            half_range = (self.max - self.min) / 2
            return (self.max + self.min) / 2, torch.where(half_range > _EPS, half_range, torch.ones_like(half_range))
        return self.mean, torch.where(self.std > _EPS, self.std, torch.ones_like(self.std))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode}"


class Normalizer(nn.Module):
    """Field-keyed normalisation (Diffusion Policy's LinearNormalizer habit): one module holds the statistics of
    every low-dim field a policy reads or writes, e.g. {"action": (4, "min_max"), "observation.state": (4,
    "mean_std")}. `min_max` maps each dimension's [min, max] onto [-1, 1] (matching the action sampler's
    clipping); `mean_std` standardises; constant dimensions map to 0. Statistics are buffers, saved and restored
    with the policy's weights."""

    def __init__(self, fields: Mapping[str, tuple[int, NormalizationMode]]):
        super().__init__()
        # ModuleDict keys cannot hold dots
        self.names = {name.replace(".", "_"): name for name in fields}
        self.fields = nn.ModuleDict({name.replace(".", "_"): _FieldNormalizer(dim, mode)
                                     for name, (dim, mode) in fields.items()})

    def __contains__(self, name: str) -> bool:
        return name.replace(".", "_") in self.fields

    def _field(self, name: str) -> _FieldNormalizer:
        key = name.replace(".", "_")
        if key not in self.fields:
            raise DefiError(f"Normalizer has no field {name!r} (fields: {sorted(self.names.values())})")
        return self.fields[key]

    def set_stats(self, stats: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Statistics ({"mean", "std", "min", "max"}, each [dim]) of every field, keyed by field name."""
        for key, name in self.names.items():
            if stats.get(name) is None:
                raise DefiError(f"the policy normalises {name!r} but the dataset has no statistics for it")
            self.fields[key].set_stats(name, stats[name])

    def normalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        offset, scale = self._field(name).offset_scale(name)
        return (x - offset.to(x.dtype)) / scale.to(x.dtype)

    def unnormalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        offset, scale = self._field(name).offset_scale(name)
        return x * scale.to(x.dtype) + offset.to(x.dtype)


# ----------------------------------------------------------------------------------------- observations
def observation_to_batch(observation: Mapping[str, Any], instruction: str, metadata: PolicyMetadata,
                         device: Any = "cpu") -> dict[str, Any]:
    """A Policy API observation -> a batch of one: images uint8 [1, V, 3, H, W], instruction [str], state [1, S]
    (when the policy reads it), with errors naming the key and what was expected."""
    h, w = metadata.image_size
    views = []
    for cam in metadata.cameras:
        key = f"observation.images.{cam}"
        if key not in observation:
            raise DefiError(f"observation is missing {key!r} (this policy uses cameras {metadata.cameras})")
        img = np.asarray(observation[key])
        if img.dtype != np.uint8 or img.shape != (h, w, 3):
            raise ShapeError(f"{key}: expected uint8 [{h}, {w}, 3], got {img.dtype} {list(img.shape)}")
        views.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
    batch: dict[str, Any] = {"images": torch.stack(views).unsqueeze(0).to(device), "instruction": [instruction]}
    if metadata.state_dim:
        if "observation.state" not in observation:
            raise DefiError(f"observation is missing 'observation.state' (this policy needs {metadata.state_dim} "
                            "values)")
        raw = np.asarray(observation["observation.state"], dtype=np.float32).reshape(-1)
        if raw.shape[0] != metadata.state_dim:
            raise ShapeError(f"observation.state: expected {metadata.state_dim} values, got {raw.shape[0]}")
        batch["state"] = torch.from_numpy(raw).unsqueeze(0).to(device)
    return batch


# ------------------------------------------------------------------------------------------- torch policies
class TorchPolicyMixin:
    """The parts of the protocol that every torch policy shares: `act` through `predict_action_chunk`, `fork`,
    `reset` with a per-episode seed, the device, and building from pretrained runs (none by default)."""

    config: PolicyConfig

    def _init_episode_state(self) -> None:
        self._generator = None  # per-episode sampling noise (reset(seed=...)), else the global RNG

    @property
    def device(self) -> torch.device:
        # lazily: listing every tensor first walked the module tree twice (3-5 ms for DeFI's 680 modules, measured
        # by benchmarks/bench_step.py, and `act` asked twice)
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)  # type: ignore[attr-defined]
        return tensor.device if tensor is not None else torch.device("cpu")

    def reset(self, seed: int | None = None) -> None:
        """Start an episode. With `seed`, the sampling noise of this episode's calls is drawn from a generator
        seeded with it, so re-running an evaluation with the same seeds repeats every action exactly."""
        self._generator = None
        if seed is not None:
            self._generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def fork(self):
        """A shallow copy: its own episode state, every module and tensor shared with this policy (zero copies;
        the server gives one to each connection). Episode state lives in plain attributes, reset here."""
        clone = copy.copy(self)
        clone.reset()
        return clone

    def episode_noise(self) -> torch.Tensor:
        """The initial noise [Ha, A] of this episode's next action chunk: from the episode's generator when
        `reset(seed=...)` seeded one, else from torch's global RNG."""
        shape = (self.config.action_horizon, self.config.action_dim)
        return torch.randn(shape, generator=self._generator, device=self.device)

    def act(self, observation: Mapping[str, Any], instruction: str) -> np.ndarray:
        return act_batch([self], [observation], [instruction])[0]

    def cacheable_inputs(self) -> tuple[str, ...]:
        """Names of frozen per-clip values `forward` accepts precomputed as "cache.<name>" batch keys."""
        return ()

    @classmethod
    def from_pretrained_runs(cls, config: PolicyConfig, fdm: str | Path = "", idm: str | Path = "",
                             pretrained_weights: bool = True, random_gfdm: bool = False, random_gidm: bool = False):
        """A new policy for finetuning; policies with pretrained parts override this."""
        if fdm or idm:
            raise DefiError(f"policy type {config.type_name!r} has no pretrained forward/inverse models: drop "
                            "--fdm / --idm")
        return cls(config)  # type: ignore[call-arg]


def batchable(policy: Any) -> bool:
    """Whether several forks of `policy` can act in one batched call: its `act` is `act_batch` of one
    (TorchPolicyMixin's) and it has `predict_action_chunk`. A policy with its own `act` (the scripted experts, a
    wrapper keeping more episode state) acts one call at a time, since batching would bypass what its `act` does."""
    return getattr(type(policy), "act", None) is TorchPolicyMixin.act and hasattr(policy, "predict_action_chunk")


def act_batch(policies: Sequence[Any], observations: Sequence[Mapping[str, Any]],
              instructions: Sequence[str]) -> list[np.ndarray]:
    """`act` of several forks of ONE policy (shared weights) in one batched `predict_action_chunk` call: the
    evaluation's parallel environments and the server's connections. Each fork keeps its own episode state: its
    row's sampling noise comes from that fork's episode generator, so a seeded episode gives the same actions alone
    or in a batch. Policies without `predict_action_chunk` (e.g. the scripted experts) act one by one."""
    template = policies[0]
    if not batchable(template):
        return [p.act(o, i) for p, o, i in zip(policies, observations, instructions)]
    meta = template.metadata
    device = template.device
    rows = [observation_to_batch(o, i, meta, device) for o, i in zip(observations, instructions)]
    batch: dict[str, Any] = {"images": torch.cat([r["images"] for r in rows]),
                             "instruction": [r["instruction"][0] for r in rows]}
    if meta.state_dim:
        batch["state"] = torch.cat([r["state"] for r in rows])
    noise = torch.stack([p.episode_noise() for p in policies])
    if getattr(template, "training", True):  # `eval()` walks every module (6-8 ms for DeFI's 680): only if needed
        template.eval()
    with torch.no_grad():
        chunks = template.predict_action_chunk(batch, noise=noise)
    return list(chunks.float().cpu().numpy())


# ------------------------------------------------------------------------------------------------ registry
def register_policy(policy_type: str, target: str) -> None:
    """Register a policy type at run time (`target` is "module:Class"); prefer a line in `POLICY_TYPES`."""
    if ":" not in target:
        raise ValueError(f"policy target {target!r}: expected 'module:Class'")
    POLICY_TYPES[policy_type] = target


def policy_class(policy_type: str) -> type:
    target = POLICY_TYPES.get(policy_type)
    if target is None:
        raise CheckpointError(f"unknown policy type {policy_type!r} (registered: {sorted(POLICY_TYPES)})")
    module_name, class_name = target.split(":")
    return getattr(import_module(module_name), class_name)


def _read_type(config_path: Path) -> str | None:
    try:
        data = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path}: cannot read the policy config ({err})") from None
    return data.get("_type") if isinstance(data, dict) else None


def find_policy_dir(path: str | Path) -> tuple[Path, str]:
    """The directory holding a saved policy and its type; a run directory's `model/` is accepted too."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no saved policy here (expected a directory with {CONFIG_NAME})")
    tried = []
    for candidate in (path, path / "model"):
        config_path = candidate / CONFIG_NAME
        if not config_path.is_file():
            continue
        policy_type = _read_type(config_path)
        if policy_type in POLICY_TYPES:
            return candidate, policy_type
        tried.append(f"{config_path} has _type={policy_type!r}")
    found = "; ".join(tried) if tried else f"no {CONFIG_NAME} in {path} or {path / 'model'}"
    raise CheckpointError(f"{path}: not a saved policy ({found}); expected a `_type` among {sorted(POLICY_TYPES)}")


def load_policy(path: str | Path, device: str = "auto") -> Any:
    """Load a saved policy of any registered type onto `device` ("auto": the GPU when present) in eval mode."""
    from defi.utils.environment import resolve_device

    directory, policy_type = find_policy_dir(path)
    policy = policy_class(policy_type).from_pretrained(directory)
    to = getattr(policy, "to", None)
    if callable(to):  # torch policies: nn.Module.to returns the module itself
        policy = to(resolve_device(device)) or policy
    if callable(getattr(policy, "eval", None)):
        policy.eval()
    return policy


def policy_metadata(policy: Any) -> PolicyMetadata:
    """A policy's metadata as `PolicyMetadata` (remote policies may hand a plain mapping)."""
    meta = policy.metadata
    return meta if isinstance(meta, PolicyMetadata) else PolicyMetadata.from_dict(meta)
