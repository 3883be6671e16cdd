"""Experiments composed of the stages: `compare` (DeFI vs baselines on the same demos), `demo/` (the whole
pipeline with a report, and the ablations)."""
