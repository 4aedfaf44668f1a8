"""Calibrate the learning tests' thresholds: the numbers each check compares, over several seeds, for the full-window
recipe, block mode (blocks of 2 on a causal VAE) and the AR baseline (tests/test_learning.py, tests/test_ar.py).

    python bench/learning_calibration.py --seeds 0,1,2,3,4 > bench/results/learning_test_calibration.txt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_learning import CHANCE, PERIOD, PeriodicStream, accuracy, train_tiny_recipe  # noqa: E402
from textldm.config import ARConfig, TrainConfig  # noqa: E402
from textldm.evaluation.heldout import same_noise_agreement  # noqa: E402
from textldm.models.ar import CausalLM, generate  # noqa: E402
from textldm.training.batches import ar_batches  # noqa: E402
from textldm.training.evaluate import evaluate_dit  # noqa: E402
from textldm.training.loop import fit  # noqa: E402
from textldm.training.objectives import ARObjective  # noqa: E402


def recipe(seed: int, block_size: int) -> dict:
    start = time.time()
    pipe, prompts, truths = train_tiny_recipe(seed=seed, block_size=block_size)
    seconds = time.time() - start
    n = 2 * PERIOD if block_size else PERIOD
    longer = [t + t for t in truths] if block_size else truths
    out = {"train_s": round(seconds, 1)}
    for steps, cfg in ((10, 1.0), (10, 2.0), (1, 1.0), (1, 2.0), (10, 0.0)):
        rows = pipe.generate_ids(prompts, length=n if cfg else PERIOD, steps=steps, cfg_scale=cfg)
        out[f"acc_{steps}x{cfg:g}"] = round(accuracy(rows, longer if cfg else truths), 3)
    out["same_noise_agreement"] = round(same_noise_agreement(pipe, prompts[:12], PERIOD, seed=3), 3)
    quarters = evaluate_dit(pipe.dit, pipe.vae, PeriodicStream(), 4, 64, 7, torch.device("cpu"))["quarters"]
    out["dropped_over_linear_t>0.5"] = [round(q["prompt_dropped"] / q["linear_gaussian"], 3) for q in quarters[2:]]
    out["with_over_linear_t>0.5"] = [round(q["with_prompt"] / q["linear_gaussian"], 3) for q in quarters[2:]]
    return out


def ar(seed: int) -> dict:
    torch.manual_seed(seed)
    model = CausalLM(ARConfig(width=64, depth=2, heads=4), 10)
    cfg = TrainConfig(steps=150, batch_size=64, lr=3e-3, warmup_steps=10, log_every=10**6)
    start = time.time()
    fit(ARObjective(model), ar_batches(PeriodicStream(), 12, 64, seed=seed, device=torch.device("cpu")), cfg,
        progress=False, precision="fp32")
    held_out = PeriodicStream().windows(48, 12, torch.Generator().manual_seed(12345))
    cut = torch.arange(48) % 4 + PERIOD
    prompts = [row[:c].tolist() for row, c in zip(held_out, cut)]
    truths = [row[c: c + 2 * PERIOD].tolist() for row, c in zip(held_out, cut)]
    rows = generate(model.eval(), prompts, 2 * PERIOD, temperature=0).tolist()
    return {"train_s": round(time.time() - start, 1), "greedy_copy_acc": round(accuracy(rows, truths), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"chance {CHANCE}; torch {torch.__version__}")
    for seed in (int(s) for s in args.seeds.split(",")):
        print(f"seed {seed} full window: {recipe(seed, 0)}", flush=True)
        print(f"seed {seed} block mode (B=2): {recipe(seed, PERIOD // 2)}", flush=True)
        print(f"seed {seed} AR baseline: {ar(seed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
