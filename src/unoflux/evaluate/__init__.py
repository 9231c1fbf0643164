"""Evaluation: exact scores on the synthetic world's held-out set (DreamBench metrics come later)."""
