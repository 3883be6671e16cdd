"""Training: one accelerate-based trainer and one small entry per stage."""
