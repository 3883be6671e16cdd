"""The policies' field-keyed Normalizer: min-max to [-1, 1] and mean/std, inverse, constant dimensions, several
fields, buffers saved with a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_model, save_model

from defi.errors import DefiError
from defi.policies import Normalizer


class ActionNormalizer:
    """One "action" field of a Normalizer, with the old single-field call style for these tests."""

    def __init__(self, dim: int, mode: str = "min_max"):
        self.module = Normalizer({"action": (dim, mode)})
        self.has_stats = self.module.fields["action"].has_stats

    @classmethod
    def from_stats(cls, stats, mode: str = "min_max") -> "ActionNormalizer":
        dim = len(np.asarray(stats["mean"] if "mean" in stats else stats["min"]).reshape(-1))
        norm = cls(dim, mode)
        norm.set_stats(stats)
        return norm

    def set_stats(self, stats) -> None:
        self.module.set_stats({"action": stats})

    def normalize(self, x):
        return self.module.normalize("action", x)

    def unnormalize(self, x):
        return self.module.unnormalize("action", x)


def stats_of(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)}


def test_min_max_maps_the_data_range_onto_minus_one_one_and_back():
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(200, 4)) * [1.0, 5.0, 0.1, 2.0] + [0.0, 3.0, -1.0, 7.0]).astype(np.float32)
    norm = ActionNormalizer.from_stats(stats_of(data))
    x = torch.from_numpy(data)
    y = norm.normalize(x)
    assert torch.allclose(y.min(0).values, torch.full((4,), -1.0), atol=1e-5)
    assert torch.allclose(y.max(0).values, torch.full((4,), 1.0), atol=1e-5)
    assert torch.allclose(norm.unnormalize(y), x, atol=1e-5)


def test_mean_std_standardises_and_inverts():
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(500, 3)) * [2.0, 0.5, 4.0] + [1.0, -2.0, 0.0]).astype(np.float32)
    norm = ActionNormalizer.from_stats(stats_of(data), mode="mean_std")
    y = norm.normalize(torch.from_numpy(data))
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.std(0, unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.allclose(norm.unnormalize(y), torch.from_numpy(data), atol=1e-4)


def test_constant_dimension_maps_to_zero_without_nan():
    data = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]], dtype=np.float32)  # 2nd dim never moves
    for mode in ("min_max", "mean_std"):
        norm = ActionNormalizer.from_stats(stats_of(data), mode=mode)
        y = norm.normalize(torch.from_numpy(data))
        assert torch.isfinite(y).all() and torch.equal(y[:, 1], torch.zeros(3))
        assert torch.allclose(norm.unnormalize(y), torch.from_numpy(data))


def test_works_on_chunks_and_keeps_dtype():
    norm = ActionNormalizer.from_stats({"min": [0.0, -2.0], "max": [1.0, 2.0], "mean": [0.5, 0], "std": [1, 1]})
    chunk = torch.tensor([[[1.0, 2.0], [0.0, -2.0], [0.5, 0.0]]], dtype=torch.float64)  # [B, Ha, A]
    y = norm.normalize(chunk)
    assert y.dtype == torch.float64
    assert y.tolist() == [[[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0]]]


def test_statistics_are_saved_as_buffers(tmp_path):
    source = ActionNormalizer.from_stats({"min": [-1.0, 0.0, 2.0], "max": [1.0, 4.0, 3.0]})
    save_model(source.module, str(tmp_path / "n.safetensors"))
    target = ActionNormalizer(3)
    assert not bool(target.has_stats)
    load_model(target.module, str(tmp_path / "n.safetensors"))
    x = torch.tensor([[0.3, 1.0, 2.5]])
    assert torch.equal(target.normalize(x), source.normalize(x))


def test_bad_statistics_and_missing_statistics_are_user_errors():
    with pytest.raises(DefiError, match="no statistics"):
        ActionNormalizer(2).normalize(torch.zeros(1, 2))
    with pytest.raises(DefiError, match="'max'"):
        ActionNormalizer(2).set_stats({"min": [0.0, 0.0]})
    with pytest.raises(DefiError, match="expected 2"):
        ActionNormalizer(2).set_stats({"min": [0.0, 0.0, 0.0], "max": [1.0, 1.0, 1.0]})
    with pytest.raises(DefiError, match="below min"):
        ActionNormalizer(1).set_stats({"min": [1.0], "max": [0.0]})
    with pytest.raises(DefiError, match="NaN"):
        ActionNormalizer(1).set_stats({"min": [float("nan")], "max": [0.0]})
    with pytest.raises(DefiError, match="normalization mode"):
        ActionNormalizer(2, mode="zscore")  # type: ignore[arg-type]


def test_fields_are_keyed_and_need_their_statistics():
    norm = Normalizer({"action": (2, "min_max"), "observation.state": (3, "mean_std")})
    assert "observation.state" in norm and "reward" not in norm
    with pytest.raises(DefiError, match="'observation.state'"):
        norm.set_stats({"action": {"min": [0.0, 0.0], "max": [1.0, 1.0]}})
    norm.set_stats({"action": {"min": [0.0, 0.0], "max": [2.0, 2.0]},
                    "observation.state": {"mean": [1.0, 1.0, 1.0], "std": [2.0, 2.0, 2.0]}})
    assert norm.normalize("action", torch.tensor([2.0, 0.0])).tolist() == [1.0, -1.0]
    assert norm.normalize("observation.state", torch.tensor([3.0, 1.0, -1.0])).tolist() == [1.0, 0.0, -1.0]
    with pytest.raises(DefiError, match="no field 'reward'"):
        norm.normalize("reward", torch.zeros(1))
