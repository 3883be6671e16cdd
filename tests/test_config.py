import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from defi.config import Config, from_dict, load_config, parse_cli, preset, save_config, to_dict
from defi.errors import ConfigError
from defi.train.trainer import TrainerConfig


@dataclass
class ModelCfg(Config):
    dim: int = 8
    kind: Literal["a", "b"] = "a"
    layers: tuple[int, ...] = (1, 2)

    def validate(self) -> None:
        self.check(self.dim % 2 == 0, "dim", "an even number")


@dataclass
class StageCfg(Config):
    name: str = "x"
    out: Path = Path("runs/x")
    model: ModelCfg = field(default_factory=ModelCfg)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    note: str | None = None


preset(StageCfg, "tiny")(lambda: StageCfg(model=ModelCfg(dim=4)))
preset(StageCfg, "small")(StageCfg)


def test_presets_are_per_class():
    assert StageCfg.preset_names() == ("tiny", "small") and ModelCfg.preset_names() == ()
    assert StageCfg.preset("tiny").model.dim == 4
    with pytest.raises(ConfigError, match="unknown preset 'huge' for StageCfg"):
        StageCfg.preset("huge")


def test_round_trip_through_json(tmp_path):
    cfg = StageCfg(model=ModelCfg(dim=6, kind="b", layers=(3,)), note="hi")
    path = save_config(cfg, tmp_path / "config.json")
    assert json.loads(path.read_text())["_type"] == "StageCfg"
    assert load_config(StageCfg, path) == cfg
    assert from_dict(StageCfg, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data, message", [
    ({"modle": {}}, "unknown config key modle"),
    ({"model": {"dimm": 3}}, "unknown config key model.dimm"),
    ({"model": {"dim": "8"}}, "model.dim: got '8', expected an integer"),
    ({"model": {"dim": 8.5}}, "model.dim: got 8.5, expected an integer"),
    ({"model": {"kind": "c"}}, r"model.kind: got 'c', expected one of \['a', 'b'\]"),
    ({"model": {"dim": 7}}, "model.dim=7: expected an even number"),
    ({"trainer": {"lr": -1.0}}, "trainer.lr=-1.0: expected a positive learning rate"),
    ({"trainer": {"betas": [0.9]}}, "trainer.betas: got 1 items, expected 2"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(StageCfg, data)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(StageCfg, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(StageCfg, tmp_path / "bad.json")


def test_cli_preset_file_and_overrides(tmp_path):
    partial = tmp_path / "p.json"
    partial.write_text(json.dumps({"model": {"kind": "b"}, "trainer": {"max_steps": 7}}))
    cfg = parse_cli(StageCfg, ["--preset", "tiny", "--config", str(partial), "--trainer.lr", "0.5"], "t")
    assert (cfg.model.dim, cfg.model.kind, cfg.trainer.max_steps, cfg.trainer.lr) == (4, "b", 7, 0.5)
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny, small"):
        parse_cli(StageCfg, ["--preset", "huge"], "t")
    with pytest.raises(ConfigError, match="model.dim=3: expected an even number"):
        parse_cli(StageCfg, ["--model.dim", "3"], "t")
    with pytest.raises(SystemExit):  # tyro reports unknown flags itself
        parse_cli(StageCfg, ["--model.nope", "3"], "t")
    assert parse_cli(StageCfg, [], "t") == StageCfg()  # the default preset (small)
