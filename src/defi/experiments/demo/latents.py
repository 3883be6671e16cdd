"""The demo's latent-action picture: the pretrained GIDM's latent actions on labeled demo clips, projected to 2-D
(PCA), coloured by how the end effector really moved between o_t and o_{t+n}.

The GIDM never saw these clips nor any action; if its latent actions encode motion, neighbouring points share a
colour. The figure is backed by a number: ridge-probe R^2 from the latent actions to the true end-effector
displacement (fitted on half of the episodes, scored on the other half), next to the same probe on the raw frame
feature difference e_{t+n} - e_t.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _ee_motion(dataset: Any, indices: list[int]) -> np.ndarray:
    """End-effector displacement [M, 3] from o_t to o_{t+n} (the store's proprio state: xyz first)."""
    out = np.zeros((len(indices), 3), dtype=np.float32)
    for row, index in enumerate(indices):
        episode, t = dataset.locate(index)
        states = dataset.store.read_episode(episode, "observation.state")
        goal = min(t + dataset.goal_offset, len(states) - 1)
        out[row] = states[goal, :3] - states[t, :3]
    return out


def latent_action_picture(cfg: Any, out_path: Path) -> dict[str, Any]:
    """The demo's picture: its pretrained GIDM on its labeled demonstrations."""
    from defi.experiments.demo.config import demo_clips_for_idm

    return gidm_latent_picture(Path(cfg.idm.run_dir) / "model", demo_clips_for_idm(cfg), cfg.latent_clips, out_path)


@torch.no_grad()
def gidm_latent_picture(gidm_dir: Path, dataset: Any, clips: int, out_path: Path) -> dict[str, Any]:
    """A saved GIDM's latent actions on `clips` labeled clips of `dataset` (a clip dataset with the GIDM's camera
    and interval), the PCA picture, and the ridge probes latent action / feature difference -> end-effector
    displacement (fitted on half of the episodes, scored on the other half)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from defi.eval.probes import ridge_probe
    from defi.models.inverse import GIDM
    from defi.train.pretrain_idm import GIDMPretrainModule, encode_clips

    # the saved GIDM names its encoders and camera: nothing is read from the pretraining run's stage config
    gidm = GIDM.from_pretrained(gidm_dir).eval()
    view = list(dataset.cameras).index(gidm.config.camera)
    module = GIDMPretrainModule(gidm, view)
    count = min(clips, len(dataset))
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int)).tolist()
    cached = encode_clips(gidm, dataset, view, indices, desc="encoding demo clips")
    feats, codes, diffs = [], [], []
    for start in range(0, len(cached), 128):
        current, future, tokens, mask = module.inputs(cached.batch(slice(start, start + 128)))
        features, code = gidm.infer_latent_actions(current, future, tokens, mask)
        feats.append(features.float().flatten(1))
        diffs.append((future - current).mean(1))
        if code is not None:
            codes.append(code.reshape(code.shape[0], -1))
    latent = torch.cat(feats)
    diff = torch.cat(diffs)
    motion = _ee_motion(dataset, indices)
    episodes = cached.fields.get("episode_index", torch.zeros(len(indices)))

    # probes: fitted on half of the episodes, scored on the other half; the halves come from a seeded permutation
    # (the store lists episodes task by task, so a split by index would test on other tasks than it fits)
    order = torch.argsort(episodes, stable=True)
    uniq = episodes.unique(sorted=True)
    if len(uniq) > 1:
        held = uniq[torch.randperm(len(uniq), generator=torch.Generator().manual_seed(0))[: len(uniq) // 2]]
        test = torch.isin(episodes[order], held)
    else:
        test = torch.arange(len(order)) >= len(order) // 2
    y = torch.from_numpy(motion)[order]
    probes = {}
    for name, x in (("latent_action", latent[order]), ("feature_diff", diff[order])):
        probes[f"ee_motion_r2_{name}"] = ridge_probe(x[~test], y[~test], x[test], y[test])["r2"]

    centred = latent - latent.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    angle = np.arctan2(motion[:, 1], motion[:, 0])
    strength = np.linalg.norm(motion[:, :2], axis=1)
    size = 6 + 30 * strength / max(float(strength.max()), 1e-9)
    sc = axes[0].scatter(xy[:, 0], xy[:, 1], c=angle, cmap="hsv", vmin=-np.pi, vmax=np.pi, s=size, alpha=0.8)
    fig.colorbar(sc, ax=axes[0], label="direction of end-effector motion in x-y (rad)")
    axes[0].set_title("GIDM latent actions (PCA): x-y motion direction")
    lim = float(np.abs(motion[:, 2]).max()) or 1.0
    sc = axes[1].scatter(xy[:, 0], xy[:, 1], c=motion[:, 2], cmap="coolwarm", vmin=-lim, vmax=lim, s=10, alpha=0.8)
    fig.colorbar(sc, ax=axes[1], label="vertical end-effector motion (m)")
    axes[1].set_title("same points: vertical motion")
    for ax in axes:
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle(f"{len(indices)} demo clips the GIDM never trained on; probe R^2 (latent -> motion) "
                 f"{probes['ee_motion_r2_latent_action']:.2f} vs feature difference "
                 f"{probes['ee_motion_r2_feature_diff']:.2f}", fontsize=9)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    summary: dict[str, Any] = {"clips": len(indices), "picture": str(out_path), **probes}
    if codes:
        all_codes = torch.cat(codes)
        summary["distinct_code_tuples"] = int(torch.unique(all_codes, dim=0).shape[0])
        summary["codes_used"] = int(torch.unique(all_codes).numel())
    return summary
