"""Evaluation: exact scores on the synthetic world's held-out set, and DreamBench (specs, DINO / CLIP-I / CLIP-T
scores with bootstrap intervals, HTML reports, A/B comparison; docs/evaluation.md)."""
