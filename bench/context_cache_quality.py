"""Is the cacheable-context DiT as good as the default one? Two checkpoints trained at equal budget continue
the same benchmark prompts with the same noise, at several CFG scales and noise seeds; per-item ROUGE-L
gives a paired bootstrap interval of the difference (a difference is "measurable" when the interval
excludes 0). MAUVE is reported beside it (noise-level at this model quality, see docs/performance.md).

    python bench/context_cache_quality.py --default runs/ctx-joint/model --cached runs/ctx-cached/model \
        [--cfg 3,5,7] [--seeds 0,1] [--solver euler --steps 10] [--samples 500]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from textldm.config import MetricsConfig
from textldm.evaluation.benchmark import benchmark
from textldm.evaluation.harness import Scorer, load_contestant
from textldm.evaluation.metrics import rouge_per_item


def paired_interval(a: np.ndarray, b: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a and its 95% bootstrap interval over items (the items are resampled, pairs kept)."""
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(1)
    return float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--default", required=True, help="the default (joint attention) TextLDM model folder")
    ap.add_argument("--cached", required=True, help="the dit.window.context_cache=true model folder")
    ap.add_argument("--bench", default="embedded")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--cfg", default="3,5,7", help="comma-separated CFG scales")
    ap.add_argument("--seeds", default="0,1", help="comma-separated noise seeds")
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="")
    return ap.parse_args(argv)


def format_report(args, name: str, n_items: int, seeds: list, pairs: list, best_pair: dict, rows: list) -> str:
    """The paired ROUGE-L comparison per CFG scale (and at each model's best), then every run's row."""
    lines = [f"Benchmark `{name}`, {n_items} items x seeds {seeds}, {args.solver} {args.steps} steps; "
             f"default `{args.default}`, cached `{args.cached}`.", "",
             "| CFG | default ROUGE-L x100 | cached ROUGE-L x100 | cached - default (95% paired CI) | relative |",
             "|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['cfg']:g} | {100 * p['default']:.2f} | {100 * p['cached']:.2f} | "
                     f"{100 * p['difference']:+.2f} [{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}] | "
                     f"{100 * p['relative']:+.1f}% |")
    lines.append(f"| best each ({best_pair['default_cfg']:g} / {best_pair['cached_cfg']:g}) | "
                 f"{100 * best_pair['default']:.2f} | {100 * best_pair['cached']:.2f} | "
                 f"{100 * best_pair['difference']:+.2f} [{100 * best_pair['ci95'][0]:+.2f}, "
                 f"{100 * best_pair['ci95'][1]:+.2f}] | {100 * best_pair['relative']:+.1f}% |")
    lines += ["", "| model | CFG | seed | ROUGE-L x100 | MAUVE x100 | generation s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['cfg']:g} | {r['seed']} | {100 * r['rouge_l']:.2f} | "
                     f"{100 * r['mauve']:.1f} | {r['generation_seconds']} |")
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    scales = [float(s) for s in args.cfg.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    name, items = benchmark(args.bench, args.samples, 0)
    refs = [it["reference"] for it in items]
    scorer = Scorer(items, MetricsConfig(samples=args.samples), metrics=("mauve",))
    models = {"default": load_contestant(args.default), "cached": load_contestant(args.cached)}
    per_item, rows = {}, []
    for scale in scales:
        for seed in seeds:
            for label, contestant in models.items():
                sample = dataclasses.replace(contestant.model.config.sample, cfg_scale=scale, seed=seed)
                start = time.time()
                gens = contestant.continue_items(items, sample, args.batch_size, 0, solver=args.solver,
                                                 steps=args.steps)
                seconds = time.time() - start
                per_item[label, scale, seed] = np.array(rouge_per_item(gens, refs)["rougeL"])
                rows.append({"model": label, "cfg": scale, "seed": seed,
                             "rouge_l": float(per_item[label, scale, seed].mean()),
                             "mauve": scorer(gens)["mauve"], "generation_seconds": round(seconds, 1)})
                print(rows[-1], flush=True)
    pairs = []
    for scale in scales:
        a = np.concatenate([per_item["default", scale, s] for s in seeds])
        b = np.concatenate([per_item["cached", scale, s] for s in seeds])
        mean, lo, hi = paired_interval(a, b)
        pairs.append({"cfg": scale, "default": float(a.mean()), "cached": float(b.mean()),
                      "difference": mean, "ci95": [lo, hi], "relative": mean / float(a.mean())})
    best = {m: max(scales, key=lambda c: np.mean([per_item[m, c, s].mean() for s in seeds])) for m in models}
    a = np.concatenate([per_item["default", best["default"], s] for s in seeds])
    b = np.concatenate([per_item["cached", best["cached"], s] for s in seeds])
    mean, lo, hi = paired_interval(a, b)
    best_pair = {"default_cfg": best["default"], "cached_cfg": best["cached"], "default": float(a.mean()),
                 "cached": float(b.mean()), "difference": mean, "ci95": [lo, hi], "relative": mean / float(a.mean())}

    text = format_report(args, name, len(items), seeds, pairs, best_pair, rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"context_cache_quality{args.tag}.md").write_text(text)
    (out / f"context_cache_quality{args.tag}.json").write_text(json.dumps(
        {"default": args.default, "cached": args.cached, "benchmark": name, "solver": args.solver,
         "steps": args.steps, "rows": rows, "pairs": pairs, "best": best_pair}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
