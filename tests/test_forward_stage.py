"""`pretrain-fdm` stage: trains with the shared Trainer on clip-contract data, writes GIFs, metrics.json, model/."""

from __future__ import annotations

import json

import imageio.v3 as iio
import torch
from torch.utils.data import Dataset

from defi.models.forward import ForwardDynamicsModel
from defi.train import pretrain_fdm
from defi.train.pretrain_fdm import PretrainFDMConfig, evaluate_predictions


class ContractClips(Dataset):
    """In-memory clips shaped like defi.data's contract: a bright square moving right on a dark background."""

    def __init__(self, count: int, views: int, frames: int, size: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(count):
            start = int(torch.randint(0, size // 2, (1,), generator=g))
            video = torch.full((views, frames + 1, 3, size, size), 30, dtype=torch.uint8)
            for k in range(frames + 1):
                x = min(start + 3 * k, size - 6)
                video[:, k, :, 4:10, x : x + 6] = 220
            mask = torch.ones(frames, dtype=torch.bool)
            if i % 3 == 0:
                mask[-1] = False  # the episode ended: the last future frame is a clamped copy
                video[:, -1] = video[:, -2]
            self.items.append({
                "images": video[:, 0], "goal_images": video[:, -1], "future_images": video[:, 1:],
                "future_mask": mask, "actions": torch.zeros(4, 4), "action_mask": torch.ones(4, dtype=torch.bool),
                "state": torch.zeros(4), "has_actions": True, "instruction": "move the square right",
                "source": "synthetic", "episode_index": torch.tensor(i), "frame_index": torch.tensor(0),
            })

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]




def test_stage_trains_and_writes_metrics_gif_and_model(tmp_path):
    cfg = PretrainFDMConfig.preset("tiny")
    cfg.run_dir = tmp_path / "run"
    m = cfg.model
    train = ContractClips(8, views=2, frames=m.num_frames, size=m.image_size, seed=0)
    held_out = ContractClips(3, views=2, frames=m.num_frames, size=m.image_size, seed=1)
    metrics = pretrain_fdm.run(cfg, {"train": train, "val": held_out})

    run = cfg.run_dir
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics, default=str))
    assert saved["stage"] == "pretrain-fdm" and saved["data"] == {"train_clips": 8, "held_out_clips": 3}
    held = saved["held_out"]
    for name in ("model", "one_step", "copy"):
        assert held[f"{name}_mse"] > 0 and held[f"{name}_psnr"] > 0
        assert len(held[f"{name}_mse_by_frame"]) == m.num_frames
    assert held["eval_clips"] == 2 and held["step"] == cfg.trainer.max_steps
    # the ratio on the clips that move most (the copy baseline's worse half) is reported beside the overall one
    assert held["moving_mse_ratio_one_step_over_copy"] > 0 and held["moving_mse_ratio_model_over_copy"] > 0
    # every K (= eval_every) steps a GIF: (1 + F) frames, rows = clips, columns = views x (real, sampled, one-step)
    gifs = sorted(p.name for p in (run / "gifs").glob("*.gif"))
    assert gifs == ["step_0000002.gif", "step_0000004.gif"]
    frames = iio.imread(run / "gifs" / "step_0000004.gif", index=None)
    tile = m.image_size + 2
    assert frames.shape[:3] == (1 + m.num_frames, 2 * tile, 2 * 3 * tile)
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()
    model = ForwardDynamicsModel.from_pretrained(run / "model")
    assert model.config == cfg.model


def test_copy_baseline_is_exact_on_a_static_scene():
    """The copy baseline must score 0 when nothing moves, and the masked frame must not count."""
    cfg = PretrainFDMConfig.preset("tiny").model
    clips = ContractClips(2, views=1, frames=cfg.num_frames, size=cfg.image_size, seed=0)
    for item in clips.items:
        item["future_images"] = item["images"].unsqueeze(1).repeat(1, cfg.num_frames, 1, 1, 1)
    torch.manual_seed(0)
    model = ForwardDynamicsModel(cfg)
    metrics, kept = evaluate_predictions(model, clips, [0, 1], batch_size=2, sample_steps=2, keep=1)
    assert metrics["copy_mse"] == 0.0 and metrics["copy_psnr"] > 100
    assert metrics["model_mse"] > 0
    assert kept["model"].shape == (1, 1, cfg.num_frames, 3, cfg.image_size, cfg.image_size)


def test_cli_trains_on_an_episode_store(tmp_path, capsys):
    """`defi pretrain-fdm` end to end on a store written by the data layer (captioned videos, no simulator)."""
    import av
    import numpy as np

    from defi.cli import main
    from defi.data.sources.videos import ingest_videos

    rows = ["file,caption"]
    for i in range(3):
        with av.open(str(tmp_path / f"v{i}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for k in range(12):
                img = np.full((32, 32, 3), 40, np.uint8)
                img[8:16, 2 * k : 2 * k + 8] = 220
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        rows.append(f"v{i}.mp4,move the square right")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    ingest_videos(tmp_path / "captions.csv", tmp_path / "store", fps=10, size=32, progress=False)
    (tmp_path / "cfg.json").write_text(json.dumps({
        "data": {"sources": [[str(tmp_path / "store"), 1.0]], "cameras": ["main"], "val_fraction": 0.34},
        "run_dir": str(tmp_path / "run"),
    }))
    code = main(["pretrain-fdm", "--preset", "tiny", "--config", str(tmp_path / "cfg.json"), "--trainer.max-steps", "2"])
    assert code == 0
    assert "copy-current-frame" in capsys.readouterr().out
    held = json.loads((tmp_path / "run" / "metrics.json").read_text())["held_out"]
    assert held["step"] == 2 and held["copy_mse"] > 0
    # a finished run refuses to start over; --resume continues it (nothing left to do at max_steps)
    assert main(["pretrain-fdm", "--preset", "tiny", "--config", str(tmp_path / "cfg.json"),
                 "--trainer.max-steps", "2"]) == 2
    assert main(["pretrain-fdm", "--preset", "tiny", "--config", str(tmp_path / "cfg.json"),
                 "--trainer.max-steps", "3", "--resume"]) == 0
