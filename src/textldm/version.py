"""The package version: the one place it is written (pyproject.toml reads it; checkpoints and runs record it)."""
__version__ = "0.4.0"
