"""Policies as packages (LeRobot's habit): `base` (protocol, metadata, registry, normaliser), `defi/` (the coupled
DeFI policy), `image_dp/` (the image diffusion-policy baseline), `scripted` (Meta-World's scripted experts)."""

from defi.policies.base import (
    POLICY_TYPES,
    Normalizer,
    Policy,
    PolicyConfig,
    PolicyMetadata,
    find_policy_dir,
    load_policy,
    observation_to_batch,
    policy_class,
    policy_metadata,
    register_policy,
)

__all__ = ["POLICY_TYPES", "Normalizer", "Policy", "PolicyConfig", "PolicyMetadata", "find_policy_dir", "load_policy",
           "observation_to_batch", "policy_class", "policy_metadata", "register_policy"]
