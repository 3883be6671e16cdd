"""The denoiser's training target, shared by the GFDM and the action adapter.

diffusers' schedulers give the noising (`add_noise`), the v-target (`get_velocity`) and, at sampling time, the x0
estimate (`step(...).pred_original_sample`), but no function that picks the target for a prediction type; this is
that one function, so the two models cannot drift apart.
"""

from __future__ import annotations

from torch import Tensor


def training_target(scheduler, prediction_type: str, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What the denoiser regresses: the noise (eq. 3), the clean sample, or the velocity (v-parameterisation)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return sample
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(sample, noise, timesteps)
    raise ValueError(f"prediction_type {prediction_type!r}: expected epsilon, sample or v_prediction")
