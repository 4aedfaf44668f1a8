"""Quality vs training compute: TextLDM and the AR baseline trained at several equal budgets, one table, two
plots and the compute multiplier.

    python bench/scaling.py --minutes 3,12,48 --reference 12 --samples 500 --out runs/scaling [k=v ...]

For every budget B (minutes of training per model) and seed:
  - TextLDM: VAE for --vae-share of B, then the DiT for the rest (the `runs` stages, preset --config);
  - the AR baseline: a causal Transformer from the same block with TextLDM's inference parameters
    (`matched.matched_ar_overrides`: width, heads, batch, learning rate, warm-up), trained for B on the same data,
    tokenizer and optimizer with the same seed.
Overrides (k=v) apply to both, so a lever that changes the data or the optimizer stays matched; --textldm
takes overrides for TextLDM alone (its levers). Every model is scored on the same benchmark items (fixed
MAUVE buckets), and every TextLDM model's prompt dependence is measured: the same-noise agreement of
--agreement-prompts continuations, and the loss gap with vs without the prompt per timestep quarter.

The compute multiplier: the training compute TextLDM needs to reach the AR baseline's mean MAUVE at the
--reference budget, over the AR baseline's compute there (FLOPs and minutes), from log-linear interpolation
between the measured budgets; a lower bound when TextLDM never reaches it.
Writes OUT/scaling.md, OUT/scaling.json, OUT/scaling_flops.png, OUT/scaling_minutes.png.
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from pathlib import Path

from textldm import load_config
from textldm.evaluation import matched
from textldm.evaluation.benchmark import benchmark
from textldm.evaluation.harness import HUMAN, Contestant, benchmark_agreement, run_eval
from textldm.export import read_model_config
from textldm.pipeline import ARPipeline, TextLDMPipeline
from textldm.training import stages
from textldm.utils import atomic_write_text, write_json

METRICS = {"mauve": "MAUVE", "gen_ppl": "gen-PPL", "rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
           "bertscore": "BERTScore", "distinct_2": "distinct-2"}  # harness.Scorer's keys
PERCENT = {"mauve", "rougeL", "rouge1", "rouge2", "bertscore"}  # shown x100


def parse_seeds(spec: str, budgets: list[float]) -> dict[float, list[int]]:
    """'12=0,1,2;48=0' -> seeds per budget; budgets not named get seed 0."""
    seeds = {b: [0] for b in budgets}
    for part in filter(None, spec.split(";")):
        budget, _, values = part.partition("=")
        if float(budget) not in seeds:
            raise SystemExit(f"--seeds names budget {budget}, which is not in --minutes {budgets}")
        seeds[float(budget)] = [int(s) for s in values.split(",")]
    return seeds


def crossing(points: list[tuple[float, float]], target: float) -> tuple[float, str]:
    """The compute at which a curve of (compute, value) points first reaches `target` (log-linear interpolation
    between neighbours): (value, "=") when it crosses, (largest compute, ">=") when it never does, (smallest
    compute, "<=") when it is already there at the first point."""
    points = sorted(points)
    if points[0][1] >= target:
        return points[0][0], "<="
    for (c0, v0), (c1, v1) in zip(points, points[1:]):
        if v1 >= target > v0:
            return math.exp(math.log(c0) + (target - v0) / (v1 - v0) * (math.log(c1) - math.log(c0))), "="
    return points[-1][0], ">="


def train_pair(args, budget: float, seed: int, data):
    """(TextLDM pipeline, its facts, AR pipeline, its facts) for one budget and seed: trained, or loaded (--reuse)."""
    tag = f"{budget:g}min-s{seed}"
    common = [*args.overrides, f"seed={seed}", "eval.rouge_samples=0", "vae_train.steps=1000000",
              "dit_train.steps=1000000", "ar_train.steps=1000000"]
    ldm_cfg = load_config(args.config, [*common, *args.textldm, f"vae_train.max_minutes={args.vae_share * budget}",
                                        f"dit_train.max_minutes={(1 - args.vae_share) * budget}",
                                        f"out_dir={args.out / tag / 'textldm'}"])
    run = Path(ldm_cfg.out_dir)
    if args.reuse:
        ldm = TextLDMPipeline.from_pretrained(run / "model")
        vae_report, dit_report = read_model_config(run / "vae")["report"], read_model_config(run / "model")["report"]
    else:
        vae_pipe, vae_report = stages.train_vae(ldm_cfg, progress=False, data=data)
        ldm, dit_report = stages.train_dit(ldm_cfg, vae_pipe=vae_pipe, progress=False, data=data)
    ar_cfg = load_config(args.config, [*common, f"ar_train.max_minutes={budget}", f"out_dir={args.out / tag / 'ar'}",
                                       *matched.matched_ar_overrides(ldm_cfg, matched.inference_params(ldm),
                                                                     len(data[0]))])
    if args.reuse:
        ar = ARPipeline.from_pretrained(args.out / tag / "ar" / "ar")
        ar_report = read_model_config(args.out / tag / "ar" / "ar")["report"]
    else:
        ar, ar_report = stages.train_ar(ar_cfg, progress=False, data=data)
    v, d, a = vae_report["vae_train"], dit_report["dit_train"], ar_report["ar_train"]
    quarters = dit_report["dit_eval"]["quarters"]
    ldm_facts = {"params": matched.inference_params(ldm), "minutes": (v["seconds"] + d["seconds"]) / 60,
                 "flops": v["flops"] + d["flops"], "steps": f"VAE {v['steps']} + DiT {d['steps']}",
                 "recon": vae_report["vae_eval"]["recon_acc"],
                 "prompt_gain": [1 - q["with_prompt"] / q["prompt_dropped"] for q in quarters]}
    ar_facts = {"params": ar_report["ar_parameters"], "minutes": a["seconds"] / 60, "flops": a["flops"],
                "steps": f"{a['steps']} (depth {ar_cfg.ar.depth})"}
    return ldm, ldm_facts, ar, ar_facts


def summarize(runs_: list[dict], key: str) -> tuple[float, float]:
    values = [r["metrics"][key] for r in runs_]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_table(rows: dict, human: dict, budgets: list[float]) -> list[str]:
    lines = ["| model | budget | seeds | params | train minutes | train FLOPs | steps | "
             + " | ".join(METRICS.values()) + " | same-noise agreement |", "|---" * (8 + len(METRICS)) + "|"]
    for model in ("TextLDM", "AR baseline"):
        for b in budgets:
            rs = rows[model][b]
            cells = []
            for key in METRICS:
                mean, sd = summarize(rs, key)
                scale, digits = (100, 1) if key in PERCENT else (1, 3 if key == "distinct_2" else 0)
                cells.append(f"{scale * mean:.{digits}f}" + (f" ± {scale * sd:.{digits}f}" if len(rs) > 1 else ""))
            agree = [r["facts"].get("agreement") for r in rs]
            agree_cell = f"{100 * statistics.fmean(agree):.1f}%" if None not in agree else "-"
            f = rs[0]["facts"]
            lines.append(f"| {model} | {b:g} min | {len(rs)} | {f['params'] / 1e6:.1f}M "
                         f"| {statistics.fmean(r['facts']['minutes'] for r in rs):.1f} "
                         f"| {statistics.fmean(r['facts']['flops'] for r in rs):.2e} | {f['steps']} | "
                         + " | ".join(cells) + f" | {agree_cell} |")
    lines.append("| human (2nd reference) | - | - | - | - | - | - | "
                 + " | ".join(f"{(100 if k in PERCENT else 1) * human[k]:.1f}" for k in METRICS)
                 + f" | {100 * human.get('agreement', float('nan')):.1f}% |")
    return lines


def multiplier(rows: dict, reference: float) -> dict:
    """TextLDM's training compute to reach the AR baseline's mean MAUVE at the reference budget, over AR's."""
    target, _ = summarize(rows["AR baseline"][reference], "mauve")
    ar = rows["AR baseline"][reference]
    out = {"ar_mauve": target}
    for axis in ("flops", "minutes"):
        curve = [(statistics.fmean(r["facts"][axis] for r in rs), summarize(rs, "mauve")[0])
                 for rs in rows["TextLDM"].values()]
        needed, relation = crossing(curve, target)
        out[axis] = (needed / statistics.fmean(r["facts"][axis] for r in ar), relation)
    return out


def plot(rows: dict, human: dict, axis: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (key, label) in zip(axes.flat, METRICS.items()):
        for model, marker in (("TextLDM", "o-"), ("AR baseline", "s-")):
            xs = [statistics.fmean(r["facts"][axis] for r in rs) for rs in rows[model].values()]
            means, sds = zip(*(summarize(rs, key) for rs in rows[model].values()))
            ax.errorbar(xs, means, yerr=sds, fmt=marker, label=model, capsize=3)
        ax.axhline(human[key], color="grey", ls="--", lw=1, label="human")
        ax.set_xscale("log")
        ax.set_yscale("log" if key == "gen_ppl" else "linear")
        ax.set_title(label)
        ax.set_xlabel("training FLOPs" if axis == "flops" else "training minutes")
    axes.flat[0].legend()
    axes.flat[-1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo", help="preset (sizes, data, sampler) for both models")
    p.add_argument("--minutes", default="3,12,48", help="training budgets per model, comma-separated")
    p.add_argument("--seeds", default=None, help="seeds per budget, e.g. '12=0,1,2;48=0' (others: seed 0); "
                                                 "default: 0,1,2 at the --reference budget, 0 elsewhere; "
                                                 "'' = seed 0 only")
    p.add_argument("--reference", type=float, default=12.0, help="the budget whose AR MAUVE TextLDM must reach")
    p.add_argument("--vae-share", type=float, default=0.4, help="share of TextLDM's budget spent on the VAE")
    p.add_argument("--samples", type=int, default=500, help="benchmark items scored")
    p.add_argument("--agreement-prompts", type=int, default=24, help="prompts for the same-noise agreement")
    p.add_argument("--out", type=Path, default=Path("runs/scaling"))
    p.add_argument("--textldm", nargs="*", default=[], metavar="K=V", help="overrides for TextLDM alone (levers)")
    p.add_argument("--reuse", action="store_true", help="load the models an earlier run left in --out (re-score)")
    p.add_argument("overrides", nargs="*", metavar="K=V", help="config overrides for both models")
    return p.parse_args(argv)


def report(args, rows: dict, human: dict, facts: dict, budgets: list[float], mult: dict) -> str:
    """The markdown of the run: the table, the multiplier, the prompt gain per quarter, the plots."""
    lines = [f"# Quality vs training compute: TextLDM vs the AR baseline ({args.samples} embedded-benchmark items)", "",
             f"`python bench/scaling.py {' '.join(sys.argv[1:])}` (preset {args.config})", "",
             *format_table(rows, human, budgets), "",
             f"**Compute multiplier** (TextLDM's training compute to reach the AR baseline's MAUVE "
             f"{100 * mult['ar_mauve']:.1f} at {args.reference:g} min, over the AR baseline's): "
             f"{mult['flops'][1]} {mult['flops'][0]:.2f}x in FLOPs, {mult['minutes'][1]} {mult['minutes'][0]:.2f}x in "
             "minutes ('>=': never reached in the measured range, a lower bound).", "",
             "TextLDM's prompt gain per timestep quarter (1 - loss with the prompt / loss with it dropped; "
             "t = 0 noise):",
             "", "| model | 0-0.25 | 0.25-0.5 | 0.5-0.75 | 0.75-1 |", "|---|---|---|---|---|"]
    for name, (model, b, f) in facts.items():
        if model == "TextLDM":
            lines.append(f"| {name} | " + " | ".join(f"{100 * g:.1f}%" for g in f["prompt_gain"]) + " |")
    lines += ["", "![vs FLOPs](scaling_flops.png)", "![vs minutes](scaling_minutes.png)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    budgets = [float(m) for m in args.minutes.split(",")]
    if args.reference not in budgets:
        raise SystemExit(f"--reference {args.reference:g} must be one of --minutes {args.minutes}")
    seeds = parse_seeds(f"{args.reference:g}=0,1,2" if args.seeds is None else args.seeds, budgets)
    base = load_config(args.config, [*args.overrides, f"metrics.samples={args.samples}",
                                     f"out_dir={args.out / 'eval'}"])
    data = stages.prepare_data(base)
    _, items = benchmark("embedded", args.samples, base.seed)
    contestants, facts = [], {}
    for b in budgets:
        for seed in seeds[b]:
            ldm, ldm_facts, ar, ar_facts = train_pair(args, b, seed, data)
            ldm_facts["agreement"] = benchmark_agreement(ldm, items[:args.agreement_prompts])
            for model, pipe, kind, f in (("TextLDM", ldm, "textldm", ldm_facts), ("AR baseline", ar, "ar", ar_facts)):
                name = f"{model} {b:g}min s{seed}"
                contestants.append(Contestant(name, kind, pipe))
                facts[name] = (model, b, f)
    results = run_eval([], ["embedded"], base, args.out / "eval", contestants=contestants)
    scored = results["benchmarks"]["embedded"]["rows"]
    rows = {"TextLDM": {b: [] for b in budgets}, "AR baseline": {b: [] for b in budgets}}
    for name, (model, b, f) in facts.items():
        rows[model][b].append({"name": name, "facts": f, "metrics": scored[name]})
    human = dict(scored[HUMAN])
    from textldm.evaluation.heldout import position_agreement
    tok = data[0]
    human["agreement"] = position_agreement([tok(it["second_reference"], add_special_tokens=False)["input_ids"]
                                             [:base.sample.length] for it in items[:args.agreement_prompts]])
    mult = multiplier(rows, args.reference)
    plot(rows, human, "flops", args.out / "scaling_flops.png")
    plot(rows, human, "minutes", args.out / "scaling_minutes.png")
    text = report(args, rows, human, facts, budgets, mult)
    write_json(args.out / "scaling.json", {"rows": rows, "human": human, "multiplier": mult, "argv": sys.argv,
                                           "results": results})
    atomic_write_text(args.out / "scaling.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
