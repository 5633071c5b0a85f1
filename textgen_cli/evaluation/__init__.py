"""Scoring a trained model on a split: metrics, input use, verdicts, and the work after a stage."""
