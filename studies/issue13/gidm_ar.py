"""Issue 13, GIDM data regime: the study's GIDM (same config and budget) pretrained on the corpus with temporally
correlated action noise (`corpus_ar.sh`), scored like the study's GIDM on the study's labeled demonstrations.

    ROOT=runs/issue13 python studies/issue13/gidm_ar.py                       # corpus-ar -> runs/gidm-ar
    ROOT=runs/issue13 CORPUS=corpus-ar6 python studies/issue13/gidm_ar.py     # corpus-ar6 -> runs/gidm-ar6
then gidm_context_probe.py on its model.
"""
import json
import os
from pathlib import Path

import torch

torch.set_num_threads(1)
from defi.config import from_dict, replace  # noqa: E402
from defi.experiments.study import StudyConfig  # noqa: E402
from defi.train.pretrain_idm import PretrainIDMConfig  # noqa: E402

root = Path(os.environ.get("ROOT", "runs/issue13"))
study = from_dict(StudyConfig, {k: v for k, v in json.loads((root / "study1/config.json").read_text()).items()
                                if k != "_type"})
idm: PretrainIDMConfig = study.idm
corpus = os.environ.get("CORPUS", "corpus-ar")  # a corpus_ar.sh output under $ROOT/data
run_dir = root / "runs" / ("gidm-" + corpus.removeprefix("corpus-"))
idm = replace(idm, run_dir=run_dir, data=replace(idm.data, sources=[(str(root / "data" / corpus), 1.0)]),
              resume=(run_dir / "checkpoints").is_dir())
# the study's GIDM stage, pointed at this run: same held-out demonstrations, probes and latent picture
from defi.experiments import study as study_mod  # noqa: E402

cfg = replace(study, run_dir=run_dir.with_name(run_dir.name + "-study"), idm=idm)
(cfg.run_dir / "gidm").mkdir(parents=True, exist_ok=True)
summary = study_mod._stage(cfg, "gidm")
keys = ("mse_over_copy", "codes_used_fraction", "code_perplexity", "probe_r2_latent_action", "probe_r2_feature_diff",
        "ee_motion_r2_latent_action", "ee_motion_r2_feature_diff", "distinct_code_tuples")
print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
