"""Evaluation: closed-loop episodes (`rollout`) under a benchmark's protocol (`metaworld`), success statistics
(`stats`), per-component latency (`latency`) and representation probes (`probes`)."""
