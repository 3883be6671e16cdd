"""Issue 13, GIDM variants of the study's GIDM (same config unless an override says otherwise), scored like the
study's GIDM on the study's labeled demonstrations.

    ROOT=runs/issue13 python studies/issue13/gidm_variant.py                        # corpus-ar -> runs/gidm-ar
    ROOT=runs/issue13 CORPUS=corpus-ar6 python studies/issue13/gidm_variant.py      # corpus-ar6 -> runs/gidm-ar6
    ROOT=runs/issue13 CORPUS=study STEPS=8000 python studies/issue13/gidm_variant.py  # 4x budget -> runs/gidm-x4
    ROOT=runs/issue13 CORPUS=study NAME=fsq MODEL='{"quantizer": {"kind": "binning"}}' python studies/issue13/gidm_variant.py
CORPUS: a `corpus_ar.sh` output under $ROOT/data, or `study` for the study's own corpus. STEPS: the schedule's
length (the learning rate decays over it, so a longer run is not the short one continued). MODEL: JSON overrides
of the GIDM config (nested keys merge), STAGE: JSON overrides of the stage config (e.g. '{"pair_shift": 4,
"cache_features": false}'), NAME names that run. Then gidm_context_probe.py on its model.
"""
import json
import os
from pathlib import Path

import torch

torch.set_num_threads(1)
from defi.config import from_dict, replace  # noqa: E402
from defi.experiments.study import StudyConfig  # noqa: E402
from defi.models.inverse import GIDMConfig  # noqa: E402
from defi.train.pretrain_idm import PretrainIDMConfig  # noqa: E402

root = Path(os.environ.get("ROOT", "runs/issue13"))
study = from_dict(StudyConfig, {k: v for k, v in json.loads((root / "study1/config.json").read_text()).items()
                                if k != "_type"})
idm: PretrainIDMConfig = study.idm
corpus = os.environ.get("CORPUS", "corpus-ar")
steps = int(os.environ.get("STEPS", idm.trainer.max_steps))
name = "-".join(filter(None, ["" if corpus == "study" else corpus.removeprefix("corpus-"), os.environ.get("NAME")]))
if steps != idm.trainer.max_steps:
    name = "-".join(filter(None, [name, f"x{steps / idm.trainer.max_steps:g}"]))
run_dir = root / "runs" / f"gidm-{name or 'study'}"
data = idm.data if corpus == "study" else replace(idm.data, sources=[(str(root / "data" / corpus), 1.0)])
model = from_dict(GIDMConfig, json.loads(os.environ.get("MODEL", "{}")), base=idm.model)
idm = replace(idm, run_dir=run_dir, data=data, model=model, trainer=replace(idm.trainer, max_steps=steps, progress=True),
              resume=(run_dir / "checkpoints").is_dir())
idm = from_dict(PretrainIDMConfig, json.loads(os.environ.get("STAGE", "{}")), base=idm)
# the study's GIDM stage, pointed at this run: same held-out demonstrations, probes and latent picture
from defi.experiments import study as study_mod  # noqa: E402

cfg = replace(study, run_dir=run_dir.with_name(run_dir.name + "-study"), idm=idm)
(cfg.run_dir / "gidm").mkdir(parents=True, exist_ok=True)
summary = study_mod._stage(cfg, "gidm")
keys = ("mse_over_copy", "codes_used_fraction", "code_perplexity", "probe_r2_latent_action", "probe_r2_feature_diff",
        "ee_motion_r2_latent_action", "ee_motion_r2_feature_diff", "distinct_code_tuples")
print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
