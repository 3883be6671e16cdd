"""Config of the Diffusion-Transformer action adapter (paper §3.3, appendix A.3 and Table 10).

The architecture fields (width, depth, heads, noise schedule, sampler) are the adapter's own. The three
*interface* fields (`cond_dim`, `num_cond_tokens`, `global_cond_dim`) describe what the enclosing model feeds it;
they may stay `None` inside a policy's config, and the policy fills them in with `with_interface(...)` when it
builds the adapter, so a user never has to keep them in sync by hand. A standalone adapter needs them set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from defi.config import Config, preset, validate_config
from defi.errors import ConfigError


@dataclass
class ActionAdapterConfig(Config):
    # What is denoised: an action chunk [action_horizon, action_dim] in normalised units.
    action_dim: int = 4  # Meta-World's (dx, dy, dz, gripper); the paper's CALVIN/SimplerEnv arms use 7
    action_horizon: int = 8
    # Interface, usually set by the enclosing policy (None = "not set yet").
    cond_dim: int | None = None  # width of each condition token
    num_cond_tokens: int | None = None  # how many condition tokens (latent-action + Video Former tokens)
    global_cond_dim: int | None = None  # width of the global condition vector (instruction [+ state]); 0 = none
    # Transformer.
    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # "cross": action tokens cross-attend to the condition tokens in every block (default, see modeling.py for why);
    # "prefix": condition tokens are prepended to the action tokens and share the self-attention.
    cond_attention: Literal["cross", "prefix"] = "cross"
    # Noise schedule and sampler (diffusers schedulers).
    num_train_timesteps: int = 100
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    # v-prediction by default: it behaves like the EDM-preconditioned DiT head of VPP (the action head DeFI builds
    # on) - close to x0 prediction at high noise, to epsilon at low noise - and with the 10-step sampler it fits a
    # batch markedly better than epsilon prediction in tests/test_adapter.py's overfit setting (mean error/spread
    # 0.22 after 400 steps vs 0.25-0.35 for epsilon after 500).
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    sampler: Literal["ddim", "dpm_solver"] = "ddim"
    num_sampling_steps: int = 10
    # Clamp predicted clean actions to [-clip_sample_range, clip_sample_range]; right for min-max normalised
    # actions (the ActionNormalizer default), switch off for mean/std normalisation.
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    def validate(self) -> None:
        self.check(self.action_dim >= 1, "action_dim", "an integer >= 1")
        self.check(self.action_horizon >= 1, "action_horizon", "an integer >= 1")
        self.check(self.cond_dim is None or self.cond_dim >= 1, "cond_dim", "an integer >= 1 (or null)")
        self.check(
            self.num_cond_tokens is None or self.num_cond_tokens >= 1, "num_cond_tokens", "an integer >= 1 (or null)"
        )
        self.check(
            self.global_cond_dim is None or self.global_cond_dim >= 0, "global_cond_dim", "an integer >= 0 (or null)"
        )
        self.check(self.dim >= 1, "dim", "an integer >= 1")
        self.check(self.depth >= 1, "depth", "an integer >= 1")
        self.check(self.heads >= 1 and self.dim % self.heads == 0, "heads", f"a divisor of dim={self.dim}")
        self.check(self.mlp_ratio > 0, "mlp_ratio", "a number > 0")
        self.check(0.0 <= self.dropout < 1.0, "dropout", "a number in [0, 1)")
        self.check(self.num_train_timesteps >= 2, "num_train_timesteps", "an integer >= 2")
        self.check(
            1 <= self.num_sampling_steps <= self.num_train_timesteps,
            "num_sampling_steps",
            f"an integer in [1, num_train_timesteps={self.num_train_timesteps}]",
        )
        self.check(self.clip_sample_range > 0, "clip_sample_range", "a number > 0")

    def require_interface(self) -> None:
        """Raise ConfigError naming the first interface field that the enclosing model has not filled in."""
        for key in ("cond_dim", "num_cond_tokens", "global_cond_dim"):
            if getattr(self, key) is None:
                raise ConfigError(
                    f"config key {key}=None: expected an integer (set it, or let the enclosing policy "
                    "fill it in with ActionAdapterConfig.with_interface)"
                )

    def with_interface(self, cond_dim: int, num_cond_tokens: int, global_cond_dim: int) -> ActionAdapterConfig:
        """A validated copy with the interface fields set; a conflicting value already set is an error."""
        wanted = {"cond_dim": cond_dim, "num_cond_tokens": num_cond_tokens, "global_cond_dim": global_cond_dim}
        for key, value in wanted.items():
            current = getattr(self, key)
            if current is not None and current != value:
                raise ConfigError(
                    f"config key {key}={current!r}: expected {value} (what the enclosing model feeds the "
                    "adapter) or null"
                )
        new = dataclasses.replace(self, **wanted)
        validate_config(new)
        return new


@preset(ActionAdapterConfig, "tiny")
def _tiny() -> ActionAdapterConfig:
    """Unit tests: a few thousand parameters."""
    return ActionAdapterConfig(dim=32, depth=2, heads=2, mlp_ratio=2.0, action_horizon=4)


@preset(ActionAdapterConfig, "small")
def _small() -> ActionAdapterConfig:
    """The CPU default (Meta-World, 4-dim actions): 192 x 4 layers. At batch 1 on a CPU the per-operation overhead
    dominates, so 10 sampling steps cost about as much at width 128 as at 192 (64 ms vs 63 ms, 1 thread), while
    the earlier 256 x 6 took 122 ms; depth is what costs (benchmarks/bench_policy.py)."""
    return ActionAdapterConfig(dim=192, depth=4, heads=4)


@preset(ActionAdapterConfig, "paper")
def _paper() -> ActionAdapterConfig:
    """Appendix A.3 / Table 10: DiT with feature dimension 384, 12 layers, 10 sampling steps, 7-dim actions.

    The head count (6, head width 64) follows DiT-S, the DiT of width 384; the paper does not state it.
    """
    return ActionAdapterConfig(action_dim=7, action_horizon=10, dim=384, depth=12, heads=6)

