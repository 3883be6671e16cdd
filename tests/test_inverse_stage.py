"""Stage test on an in-memory clip dataset of the data layer's contract: a square moves by the action."""

import json

import pytest
import torch
from torch.utils.data import Dataset

from defi.config import replace
from defi.models.inverse import GIDM
from defi.train.pretrain_idm import GIDMPretrainModule, PretrainIDMConfig, run


def preset_tiny() -> PretrainIDMConfig:
    return PretrainIDMConfig.preset("tiny")


def pretrain_idm(cfg, train, val):
    return run(cfg, {"train": train, "val": val})




class MovingSquareClips(Dataset):
    """Clips of `episodes` episodes x `clips_per_episode`; o_{t+n} = o_t with the square moved by n * action."""

    def __init__(self, episodes: int = 8, clips_per_episode: int = 8, size: int = 32, views: int = 2,
                 horizon: int = 4, n: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.size, self.views, self.horizon = size, views, horizon
        self.items = []
        for ep in range(episodes):
            color = torch.randint(80, 255, (3,), generator=g, dtype=torch.uint8)
            for k in range(clips_per_episode):
                pos = torch.randint(4, size - 12, (2,), generator=g)
                vel = torch.randint(-1, 2, (2,), generator=g)
                self.items.append((ep, k, color, pos, vel * n, vel))

    def __len__(self) -> int:
        return len(self.items)

    def _frame(self, color, pos) -> torch.Tensor:
        img = torch.full((3, self.size, self.size), 20, dtype=torch.uint8)
        y, x = int(pos[0]), int(pos[1])
        img[:, y : y + 6, x : x + 6] = color[:, None, None]
        return img

    def __getitem__(self, i: int) -> dict:
        ep, k, color, pos, shift, vel = self.items[i]
        cur, goal = self._frame(color, pos), self._frame(color, (pos + shift).clamp(0, self.size - 6))
        actions = torch.zeros(self.horizon, 4)
        actions[:, :2] = vel.float()
        return {
            "images": torch.stack([cur] * self.views), "goal_images": torch.stack([goal] * self.views),
            "future_images": torch.stack([goal[None]] * self.views),
            "future_mask": torch.ones(1, dtype=torch.bool),
            "actions": actions, "action_mask": torch.ones(self.horizon, dtype=torch.bool),
            "state": torch.zeros(4), "has_actions": torch.tensor(True),
            "instruction": ["push the square", "move the block"][ep % 2], "source": "synthetic",
            "episode_index": torch.tensor(ep), "frame_index": torch.tensor(k),
        }


def test_pretrain_idm_stage_end_to_end(tmp_path):
    cfg = preset_tiny()
    cfg = replace(cfg, run_dir=tmp_path / "run", trainer=replace(cfg.trainer, max_steps=12, log_every=4))
    metrics = pretrain_idm(cfg, MovingSquareClips(), MovingSquareClips(seed=1))
    run = tmp_path / "run"
    on_disk = json.loads((run / "metrics.json").read_text())
    held = on_disk["held_out"]
    for key in ("mse", "copy_mse", "codes_used_fraction", "code_perplexity", "probe_r2_latent_action",
                "probe_r2_feature_diff"):
        assert key in held and held[key] == metrics["held_out"][key], key
    assert on_disk["stage"] == "pretrain-idm" and on_disk["parameters"]["total"] > 0
    assert 0 < held["codes_used_fraction"] <= 1 and held["code_perplexity"] >= 1
    # probe fitted on the train split's clips, scored on the held-out split's
    assert held["probe_fit_clips"] == 64 and held["probe_test_clips"] == 64
    pngs = list((run / "attention").glob("step_*.png"))
    assert pngs and pngs[0].stat().st_size > 1000
    gidm = GIDM.from_pretrained(run / "model")
    assert gidm.config.feature_dim == 16 and gidm.config.text_dim == 384  # filled from the encoders
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["num_patches"] == 16
    # the saved GIDM names the encoders and camera that feed it; the encoders themselves are not in its weights
    assert gidm.config.frame_encoder == cfg.model.frame_encoder and gidm.config.camera == "corner"
    assert not any("encoder.model" in k or k.startswith(("frame_encoder", "text_encoder"))
                   for k in GIDMPretrainModule(gidm).state_dict())


def test_probe_on_one_split_holds_out_whole_episodes():
    from defi.models.inverse import GIDMConfig
    from defi.train.pretrain_idm import encode_clips, evaluate_gidm

    cfg = preset_tiny()
    gidm = GIDM(replace(GIDMConfig.preset("tiny"), text_dim=0))
    cached = encode_clips(gidm, MovingSquareClips(), 0)
    out = evaluate_gidm(GIDMPretrainModule(gidm), cached, cached, cfg.eval)
    assert out["probe_test_clips"] == 16 and out["probe_fit_clips"] == 48  # 2 of 8 episodes scored
    # the pooled feature difference of a moving square carries its displacement: a linear probe finds some of it
    assert 0.05 < out["probe_train_r2_feature_diff"] <= 1
    assert out["mse"] == pytest.approx(out["copy_mse"])  # an untrained decoder predicts e_t


def test_stage_rejects_clips_without_the_contract_keys(tmp_path):
    from defi.errors import ConfigError, DefiError

    class NoGoal(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"images": torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "instruction": "x"}

    cfg = replace(preset_tiny(), run_dir=tmp_path / "run")
    with pytest.raises(DefiError, match="goal_images"):
        pretrain_idm(cfg, NoGoal(), NoGoal())
    with pytest.raises(ConfigError, match="model"):
        pretrain_idm(replace(cfg, model=replace(cfg.model, camera="wrist")), MovingSquareClips(), MovingSquareClips())


def test_cli_reports_bad_config_keys(capsys):
    from defi.cli import main

    assert main(["pretrain-idm", "--preset", "tiny", "--model.heads", "3"]) == 2
    err = capsys.readouterr().err
    assert "model.heads" in err and "divisor of dim" in err
    assert main(["pretrain-idm", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_cli_trains_on_an_action_free_episode_store(tmp_path, capsys):
    """`defi pretrain-idm` on a store written by the data layer from captioned videos (no actions: no probe)."""
    import av
    import numpy as np

    from defi.cli import main
    from defi.data.sources.videos import ingest_videos

    rows = ["file,caption"]
    for i in range(3):
        with av.open(str(tmp_path / f"v{i}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for k in range(14):
                img = np.full((32, 32, 3), 30, np.uint8)
                img[4 + i * 6 : 12 + i * 6, k : k + 8] = 230
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        rows.append(f"v{i}.mp4,slide the block")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    ingest_videos(tmp_path / "captions.csv", tmp_path / "store", fps=10, size=32, progress=False)
    (tmp_path / "cfg.json").write_text(json.dumps({
        "data": {"sources": [[str(tmp_path / "store"), 1.0]], "cameras": ["main"], "val_fraction": 0.34},
        "model": {"camera": "main"}, "run_dir": str(tmp_path / "run"),
    }))
    code = main(["pretrain-idm", "--preset", "tiny", "--config", str(tmp_path / "cfg.json"), "--trainer.max-steps", "3"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["held_out"]
    assert metrics["copy_mse"] > 0 and "codes_used_fraction" in metrics
    assert "probe_r2_latent_action" not in metrics  # action-free: nothing to probe against
    assert GIDM.from_pretrained(tmp_path / "run" / "model").config.num_patches == 16


def test_pair_shift_encodes_one_shifted_pair_and_decodes_another():
    from defi.errors import ConfigError
    from defi.models.inverse import GIDMConfig
    from defi.train.pretrain_idm import with_encoder_dims

    with pytest.raises(ConfigError, match="pair_shift"):  # cached tokens cannot be shifted
        replace(preset_tiny(), pair_shift=2).validate()
    torch.manual_seed(0)
    gidm = GIDM(with_encoder_dims(replace(GIDMConfig.preset("tiny"), text_dim=0)))
    batch = torch.utils.data.default_collate([MovingSquareClips()[i] for i in range(6)])
    plain, shifted = GIDMPretrainModule(gidm), GIDMPretrainModule(gidm, pair_shift=3)
    gidm.eval()  # the codebook's EMA moves on every training-mode call
    current, future, _, _ = plain.inputs(batch)
    # without a decoder pair the loss is Algorithm 1's; the decoder pair is what the decoder starts from and predicts
    assert torch.equal(gidm(current, future)["loss"], gidm(current, future, decode_pair=(current, future))["loss"])
    other = (future, current)
    expected = torch.nn.functional.mse_loss(gidm.decode(future, gidm.encode(current, future).features), current)
    assert torch.allclose(gidm(current, future, decode_pair=other)["mse"], expected)
    # training: the two sides see the clip under different shifts, so their copy baselines differ from the unshifted
    reference = plain(batch)["copy_mse"]
    shifted.train()
    torch.manual_seed(1)
    assert not torch.allclose(shifted(batch)["copy_mse"], reference)
    shifted.eval()  # evaluation sees the clip as it is
    assert torch.equal(shifted(batch)["loss"], plain(batch)["loss"])


def test_pretrain_idm_stage_with_pair_shift(tmp_path):
    cfg = preset_tiny()
    cfg = replace(cfg, run_dir=tmp_path / "run", pair_shift=2, cache_features=False,
                  trainer=replace(cfg.trainer, max_steps=6, log_every=2))
    held = pretrain_idm(cfg, MovingSquareClips(), MovingSquareClips(seed=1))["held_out"]
    assert held["mse"] > 0 and 0 < held["codes_used_fraction"] <= 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pair_shift"] == 2
