"""Comparing recipes: budgets, seeds, learning-rate grids, settings that differ, significance and
the reports. Everything `textgen compare` does beyond evaluating each model."""
