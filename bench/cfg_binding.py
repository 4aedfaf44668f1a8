"""Guidance against prompt dependence (issue 20): for trained models, continuations of the same benchmark items at
several CFG scales (and optionally a guidance interval), scored for MAUVE, gen-PPL, prompt binding (the judge's
perplexity after another item's prompt / after its own) and the same-noise agreement of 24 prompts.

    python bench/cfg_binding.py --model full=runs/scaling/full/5e+13-s0/model \
        --model block1=runs/scaling/block1/5e+13-s0/model --cfg 1,2,7 --samples 200 --out bench/results/block_mode
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from textldm import TextLDMPipeline
from textldm.config import MetricsConfig
from textldm.evaluation.benchmark import benchmark
from textldm.evaluation.harness import Contestant, Scorer, benchmark_agreement


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH (repeatable)")
    ap.add_argument("--cfg", default="1,2,7", help="CFG scales, comma-separated")
    ap.add_argument("--interval", default="", help="optional LO,HI guidance interval applied to every scale")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("bench/results/block_mode"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _, items = benchmark("embedded", args.samples, 0)
    scorer = Scorer(items, MetricsConfig(samples=args.samples), metrics=("mauve", "gen_ppl", "stats"))
    interval = dict(zip(("cfg_min_t", "cfg_max_t"), map(float, args.interval.split(",")))) if args.interval else {}
    rows = []
    for spec in args.model:
        name, _, path = spec.partition("=")
        pipe = TextLDMPipeline.from_pretrained(path)
        for scale in (float(c) for c in args.cfg.split(",")):
            sample = replace(pipe.config.sample, cfg_scale=scale, **interval)
            gens = Contestant(name, pipe).continue_items(items, sample, 32, 0, **interval)
            agreement = benchmark_agreement(_with(pipe, sample), items[:24])
            rows.append({"model": name, "cfg": scale, **interval, "agreement": agreement,
                         **{k: v for k, v in scorer(gens).items() if k in ("mauve", "gen_ppl", "prompt_binding",
                                                                            "distinct_2")}})
            print(rows[-1], flush=True)
    lines = [f"Guidance and prompt dependence, {args.samples} embedded-benchmark items" +
             (f", guidance only for t in [{args.interval}]" if args.interval else "") + ".", "",
             "| model | CFG | MAUVE | gen-PPL | prompt binding | same-noise agreement | distinct-2 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['cfg']:g} | {100 * r['mauve']:.1f} | {r['gen_ppl']:.0f} "
              f"| {r['prompt_binding']:.3f} | {100 * r['agreement']:.1f}% | {r['distinct_2']:.3f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_interval" if args.interval else ""
    (args.out / f"cfg_binding{tag}.json").write_text(json.dumps(rows, indent=2))
    (args.out / f"cfg_binding{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _with(pipe: TextLDMPipeline, sample) -> TextLDMPipeline:
    """The pipeline with other sampler defaults (a copy: the loaded one is not written)."""
    return TextLDMPipeline(replace(pipe.config, sample=sample), pipe.tokenizer, pipe.vae, pipe.dit, pipe.eot_id)


if __name__ == "__main__":
    sys.exit(main())
