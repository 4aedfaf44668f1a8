"""The training loop, distributed helpers, objectives, checkpoints, FLOPs, the stages."""
