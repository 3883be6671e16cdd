"""The one-command demo (`defi demo`), its report and the ablation runner (`defi ablate`)."""
