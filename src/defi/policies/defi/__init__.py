"""The coupled DeFI policy: `configuration_defi` (config + presets) and `modeling_defi` (the policy)."""

from defi.policies.defi.configuration_defi import DeFIConfig, Trainable
from defi.policies.defi.modeling_defi import DeFIPolicy

__all__ = ["DeFIConfig", "DeFIPolicy", "Trainable"]
