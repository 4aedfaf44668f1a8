"""Quality vs network evaluations on one trained TextLDM checkpoint: ROUGE-L and MAUVE on a continuation
benchmark for the paper's sampler (Euler, 50 steps) and cheaper ones (fewer Euler steps, Heun, the AB2
multistep solver, other time grids, a CFG guidance interval). Goal (issue 5): the 50-step Euler quality
within 2% at <= 10 evaluations.

    python bench/sampling_quality.py --model runs/quality/textldm/model [--samples 500] [--out bench/results]

Every configuration continues the same prompts with the same seeds; MAUVE uses fixed buckets (see
docs/evaluation.md), so differences of a few points at 500 samples are within its noise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from textldm.config import MetricsConfig
from textldm.diffusion.sampling import evaluations
from textldm.evaluation.benchmark import benchmark
from textldm.evaluation.harness import Scorer, load_contestant

CONFIGS = [  # label, solver, steps, extra sample settings
    ("euler 50 (paper)", "euler", 50, {}),
    ("euler 10", "euler", 10, {}),
    ("euler 5", "euler", 5, {}),
    ("heun 5", "heun", 5, {}),
    ("ab2 9", "ab2", 9, {}),
    ("euler 10, uniform grid", "euler", 10, {"grid": "uniform"}),
    ("euler 10, shifted grid (3)", "euler", 10, {"grid": "shifted", "shift": 3.0}),
    ("ab2 9, CFG only for t <= 0.7", "ab2", 9, {"cfg_max_t": 0.7}),
    ("euler 10, bf16 autocast", "euler", 10, {"precision": "bf16"}),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bench", default="embedded")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--configs", help="labels to run, separated by ';' (labels contain commas; default: all)")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    args = ap.parse_args()
    wanted = [label.strip() for label in (args.configs or "").split(";") if label.strip()]
    unknown = set(wanted) - {c[0] for c in CONFIGS}
    if unknown:
        raise SystemExit(f"unknown --configs labels {sorted(unknown)}; choose from {[c[0] for c in CONFIGS]}")
    configs = [c for c in CONFIGS if not wanted or c[0] in wanted]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    contestant = load_contestant(args.model)
    pipe = contestant.model
    sample = pipe.config.sample
    base = {k: getattr(sample, k) for k in ("grid", "shift", "cfg_min_t", "cfg_max_t", "precision")}
    name, items = benchmark(args.bench, args.samples, 0)
    scorer = Scorer(items, MetricsConfig(samples=args.samples), metrics=("rouge", "mauve", "stats"))
    rows = []
    for label, solver, steps, extra in configs:
        sample = dataclasses.replace(pipe.config.sample, **{**base, **extra})
        start = time.time()
        gens = contestant.continue_items(items, sample, args.batch_size, 0, solver=solver, steps=steps,
                                         **{**base, **extra})
        seconds = time.time() - start
        scores = scorer(gens)
        guided = evaluations(solver, steps) if sample.cfg_max_t >= 1.0 and sample.cfg_min_t <= 0 else None
        rows.append({"config": label, "solver": solver, "steps": steps, **extra,
                     "evaluations": evaluations(solver, steps), "forwards_per_window": guided and 2 * guided,
                     "rouge_l": scores["rougeL"], "mauve": scores["mauve"], "distinct_2": scores["distinct_2"],
                     "generation_seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
    ref = rows[0]
    lines = [f"Benchmark `{name}`, {len(items)} items, model `{args.model}` (CFG {sample.cfg_scale}).", "",
             f"| sampler | evaluations | ROUGE-L x100 | vs {ref['config']} | MAUVE x100 | vs {ref['config']} "
             "| distinct-2 | generation s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['evaluations']} | {100 * r['rouge_l']:.2f} "
                     f"| {100 * (r['rouge_l'] / ref['rouge_l'] - 1):+.1f}% | {100 * r['mauve']:.1f} "
                     f"| {100 * (r['mauve'] / ref['mauve'] - 1):+.1f}% | {r['distinct_2']:.3f} "
                     f"| {r['generation_seconds']} |")
    text = "\n".join(lines) + "\n"
    (out / f"sampling_quality{args.tag}.md").write_text(text)
    result = {"model": args.model, "benchmark": name, "rows": rows}
    (out / f"sampling_quality{args.tag}.json").write_text(json.dumps(result,
                                                          indent=2))
    print(text)


if __name__ == "__main__":
    main()
