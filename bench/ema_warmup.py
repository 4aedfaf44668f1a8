"""EMA warm-up at the paper preset's decay (0.9999): validation loss of the weights a short run saves.

    python bench/ema_warmup.py [--steps 40] [--seeds 0,1,2]

Trains the tiny DiT of the learning test (tests/test_learning.py: a copy task on a trained tiny VAE) with the
paper preset's DiT schedule (constant lr after warm-up) and prints the validation velocity loss of: the
untrained DiT, the run without EMA, the run with EMA 0.9999 and its warm-up min(d, (1+n)/(10+n)), and the same
with a constant decay (the code before the warm-up). The EMA rows are the weights `fit` leaves in the model,
i.e. what a checkpoint saves.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_learning import PeriodicStream, train_tiny_recipe, validation_loss  # noqa: E402
from textldm.config import TrainConfig  # noqa: E402
from textldm.families.textldm.modes import mode_of  # noqa: E402
from textldm.training.batches import dit_batches  # noqa: E402
from textldm.training.loop import EMA, fit  # noqa: E402


def run(pipe, steps: int, seed: int, ema: float, warmup: bool) -> float:
    torch.manual_seed(seed)
    spec = mode_of(pipe.dit.cfg)
    mode = spec.objective(spec.build_dit(pipe.dit.cfg, pipe.vae.cfg.latent_channels), **spec.build_parts(pipe.dit.cfg))
    dit = mode.dit
    if steps == 0:
        return validation_loss(dit, pipe.vae)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup_steps=10, min_lr_ratio=1.0, ema=ema, log_every=10**6)
    original = EMA.decay_at
    if not warmup:
        EMA.decay_at = lambda self, n: self.decay
    try:
        fit(mode, dit_batches(PeriodicStream(), pipe.vae, mode, 64, seed=seed + 2,
                              device=torch.device("cpu")), cfg, progress=False, precision="fp32")
    finally:
        EMA.decay_at = original
    return validation_loss(dit, pipe.vae)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = train_tiny_recipe()[0]
    rows = {"untrained": (0, 0.0, True), "no EMA": (args.steps, 0.0, True),
            "EMA 0.9999 with warm-up": (args.steps, 0.9999, True),
            "EMA 0.9999 without warm-up (before)": (args.steps, 0.9999, False)}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"| weights saved after {args.steps} steps | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for name, (steps, ema, warmup) in rows.items():
        losses = [run(pipe, steps, s, ema, warmup) for s in seeds]
        print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in losses) + " |", flush=True)


if __name__ == "__main__":
    main()
