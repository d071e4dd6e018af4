"""Shared training parts: checkpoints, optimiser and schedule, metrics, distributed helpers, the loop."""
