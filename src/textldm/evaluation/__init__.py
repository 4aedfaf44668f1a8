"""Held-out evaluation, benchmark building, metrics, the eval harness, ablations, plots."""
