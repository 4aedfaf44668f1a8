"""Quality against training compute, and the compute multiplier of each design over the AR baseline, from a fit.

    python bench/scaling.py run --design full,block8,ar --flops 2.5e12,5e12,1e13,2e13,4e13   # points
    python bench/scaling.py run --design full,block8,ar --flops 2e13 --seed 1,2               # more seeds
    python bench/scaling.py fit --reference 2e13                                              # table, fits, plots

Designs (--grid, bench/grids/scaling.yaml): config overrides on --config (the demo preset, with the paper's full
window pinned: FULL_WINDOW) for TextLDM, or `ar`:
the AR baseline with the full-window TextLDM's inference parameters and its DiT's width, heads, batch, learning
rate and warm-up (`evaluation.matched`), on the same data, tokenizer and optimizer.
A budget is total counted training FLOPs (`train.max_flops`, machine-independent): TextLDM gives --vae-share of it
to the VAE and the rest to the DiT; designs whose VAE settings agree share one VAE per (budget, seed). The frozen
teacher and the frozen encoder's forward passes are not counted (docs/results.md, "Compute accounting").
Each point is scored on the same --samples items of the embedded benchmark (MAUVE, gen-PPL, prompt binding,
ROUGE, BERTScore, distinct-2; TextLDM also same-noise agreement) and written to
OUT/points/<design>/<flops>-s<seed>.json; a point already there is not run again, so a sweep can span sessions.

`fit`: per design and metric, a line in log10(FLOPs) by least squares over every run at or above --min-flops,
of the metric itself ("linear") or of its log ("log": a power law in compute) - gen-PPL as a power law, MAUVE
both ways (far below its ceiling it grows like a power law, nearer it like a line in log compute, and the
extrapolated multiplier depends on which: both are reported, each with its R²); and the compute multiplier: the
FLOPs where a design's fit reaches the AR baseline's mean at the --reference budget, over the AR baseline's FLOPs
there, with a 68% band from the fit's parameter uncertainty. Writes OUT/scaling.md, OUT/scaling.json and
OUT/scaling.png.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from textldm import TextLDMPipeline, load_config
from textldm.config import FULL_WINDOW, to_dict
from textldm.errors import UserError
from textldm.evaluation import matched
from textldm.evaluation.benchmark import benchmark
from textldm.evaluation.harness import Contestant, Scorer, benchmark_agreement
from textldm.evaluation.heldout import position_agreement
from textldm.evaluation.metrics import prompt_binding
from textldm.families.ar import train as ar_family
from textldm.families.textldm.modes import mode_of
from textldm.families.textldm.train import train_dit, train_vae
from textldm.models.vae import TextVAE
from textldm.training.run import prepare_data
from textldm.utils import atomic_write_text, environment, param_count, write_json

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"mauve": "MAUVE", "gen_ppl": "gen-PPL", "prompt_binding": "prompt binding", "rougeL": "ROUGE-L",
           "bertscore": "BERTScore", "distinct_2": "distinct-2"}
PERCENT = {"mauve", "rougeL", "bertscore"}  # shown x100
FIT_FORMS = {"mauve": ("linear", "log"), "gen_ppl": ("log",)}  # how each metric is fitted; the rest: linear
LOG_AXIS = {"gen_ppl"}  # plotted on a log axis
LOWER_IS_BETTER = {"gen_ppl"}
FLAT = 1e-9  # a fitted series whose spread is under this fraction of its size is constant (rounding, not signal)
MULTIPLIER_METRICS = ("mauve", "gen_ppl")
AR = "ar"
BASELINES = {"masked": "train_masked", "ssd": "train_ssd"}  # a baseline family -> its training stage's function


# designs and points ------------------------------------------------------------------------------------
def load_designs(path: Path) -> dict[str, list[str] | str | dict]:
    """name -> TextLDM overrides (a list), "ar", or {"family": "masked" or "ssd", "overrides": [...]} (MDLM / BD3-LM,
    SSD-LM)."""
    designs = yaml.safe_load(Path(path).read_text())
    for name, spec in designs.items():
        baseline = isinstance(spec, dict) and spec.get("family") in BASELINES and isinstance(spec.get("overrides"),
                                                                                          list)
        if spec != AR and not isinstance(spec, list) and not baseline:
            raise SystemExit(f"design {name!r} in {path}: give a list of overrides, 'ar', or "
                             f"{{family: {' or '.join(BASELINES)}, overrides: [...]}}")
    return designs


def point_path(out: Path, design: str, flops: float, seed: int) -> Path:
    return out / "points" / design / f"{flops:.3g}-s{seed}.json"


def read_points(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "points").glob("*/*.json"))]


def preset(args, *overrides: str):
    """--config with the full window pinned (so a design means the same runs whatever the preset's defaults
    become), the command line's overrides, then these."""
    return load_config(args.config, [*FULL_WINDOW, *args.overrides, *overrides])


def textldm_config(args, overrides: list[str], flops: float, seed: int, run: Path):
    vae_flops, dit_flops = args.vae_share * flops, (1 - args.vae_share) * flops
    return preset(args, *overrides, f"seed={seed}", "eval.rouge_samples=0", "vae_train.steps=1000000",
                  "dit_train.steps=1000000", "vae_train.max_minutes=null", "dit_train.max_minutes=null",
                  "vae_train.guard_minutes=null", "dit_train.guard_minutes=null",  # a FLOPs budget, however slow
                  f"vae_train.max_flops={vae_flops}", f"dit_train.max_flops={dit_flops}", f"out_dir={run}")


def vae_folder(args, cfg, flops: float, seed: int) -> Path:
    """Where the VAE of these VAE-side settings, budget and seed lives (shared by the designs that agree)."""
    key = json.dumps([to_dict(cfg.vae), to_dict(cfg.teacher), to_dict(cfg.data), to_dict(cfg.vae_train)],
                     sort_keys=True)
    return args.runs / "vae" / f"{hashlib.sha256(key.encode()).hexdigest()[:10]}-{flops:.3g}-s{seed}"


def train_textldm(args, overrides: list[str], flops: float, seed: int, run: Path, data) -> tuple:
    cfg = textldm_config(args, overrides, flops, seed, run)
    shared = vae_folder(args, cfg, flops, seed)
    if (shared / "vae" / "config.json").exists():
        vae_pipe = TextLDMPipeline.from_pretrained(shared / "vae", require_dit=False)
        vae_report = json.loads((shared / "vae" / "config.json").read_text())["report"]
    else:
        vae_cfg = textldm_config(args, overrides, flops, seed, shared)
        vae_pipe, vae_report = train_vae(vae_cfg, progress=False, data=data)
    pipe, dit_report = train_dit(cfg, vae_pipe=vae_pipe, progress=False, data=data, vae_report=vae_report)
    v, d = vae_report["vae_train"], dit_report["dit_train"]
    quarters = dit_report["dit_eval"]["quarters"]
    facts = {"params": matched.inference_params(pipe), "flops": v["flops"] + d["flops"],
             "minutes": (v["seconds"] + d["seconds"]) / 60, "steps": {"vae": v["steps"], "dit": d["steps"]},
             "recon": vae_report["vae_eval"]["recon_acc"],
             "prompt_gain": [1 - q["with_prompt"] / q["prompt_dropped"] for q in quarters]}
    return pipe, facts


def full_window_params(args, vocab_size: int) -> int:
    """Inference parameters of the full-window TextLDM at --config (built, not trained): what the AR matches."""
    cfg = preset(args)
    dit = mode_of(cfg.dit).build_dit(cfg.dit, cfg.vae.latent_channels)
    return param_count(TextVAE(cfg.vae, vocab_size)) + param_count(dit)


def train_ar(args, flops: float, seed: int, run: Path, data) -> tuple:
    base = preset(args)
    matched_overrides = matched.matched_ar_overrides(base, full_window_params(args, len(data[0])), len(data[0]))
    cfg = preset(args, *matched_overrides, f"seed={seed}", "ar_train.steps=1000000", "ar_train.max_minutes=null",
                 f"ar_train.max_flops={flops}", f"out_dir={run}")
    pipe, report = ar_family.train_ar(cfg, progress=False, data=data)
    a = report["ar_train"]
    return pipe, {"params": report["ar_parameters"], "flops": a["flops"], "minutes": a["seconds"] / 60,
                  "steps": {"ar": a["steps"], "depth": cfg.ar.depth},
                  "heldout_nll": math.log(report["ar_eval"]["perplexity"]), "heldout_nll_exact": True}


def train_baseline(args, family: str, overrides: list[str], flops: float, seed: int, run: Path, data) -> tuple:
    """A diffusion baseline (MDLM / BD3-LM, SSD-LM) matched like the AR baseline (the DiT's width, heads, batch,
    learning rate, warm-up; the depth nearest the full-window TextLDM's inference parameters), on the same data,
    tokenizer and optimizer."""
    base = preset(args, *overrides)
    matched_overrides = matched.matched_overrides(base, full_window_params(args, len(data[0])), len(data[0]), family)
    cfg = preset(args, *matched_overrides, *overrides, f"seed={seed}", f"{family}_train.steps=1000000",
                 f"{family}_train.max_minutes=null", f"{family}_train.max_flops={flops}", f"out_dir={run}")
    train = getattr(importlib.import_module(f"textldm.families.{family}"), BASELINES[family])
    pipe, report = train(cfg, progress=False, data=data)
    m, section = report[f"{family}_train"], getattr(cfg, family)
    facts = {"params": report[f"{family}_parameters"], "flops": m["flops"], "minutes": m["seconds"] / 60,
             "steps": {family: m["steps"], "depth": section.depth, "block": section.block_size}}
    if "nelbo" in report[f"{family}_eval"]:  # the masked baselines' bound (SSD-LM has none)
        facts.update(heldout_nll=report[f"{family}_eval"]["nelbo"], heldout_nll_exact=False)
    return pipe, facts


def human_row(args, items, scorer: Scorer, cfg, tokenizer) -> dict:
    """The independent human continuations' scores and the true continuations' prompt binding (computed once)."""
    path = args.out / f"human-{args.samples}.json"
    if path.exists():
        return json.loads(path.read_text())
    row = scorer([it["second_reference"] for it in items])
    row["reference_prompt_binding"] = prompt_binding([it["prompt"] for it in items], scorer.refs, cfg.metrics.judge)
    row["agreement"] = position_agreement([tokenizer(it["second_reference"], add_special_tokens=False)["input_ids"]
                                           [:cfg.sample.length] for it in items[:args.agreement_prompts]])
    write_json(path, row)
    return row


def run_point(args, design: str, spec, flops: float, seed: int, data, items, scorer: Scorer) -> dict:
    run = args.runs / design / f"{flops:.3g}-s{seed}"
    if spec == AR:
        pipe, facts = train_ar(args, flops, seed, run, data)
    elif isinstance(spec, dict):
        pipe, facts = train_baseline(args, spec["family"], spec["overrides"], flops, seed, run, data)
    else:
        pipe, facts = train_textldm(args, spec, flops, seed, run, data)
        facts["agreement"] = benchmark_agreement(pipe, items[:args.agreement_prompts])
    contestant, cfg = Contestant(design, pipe), pipe.config
    evaluations = count_evaluations(pipe)
    start = time.time()
    gens = contestant.continue_items(items, cfg.sample, cfg.metrics.batch_size, 128)
    facts["seconds_per_continuation"] = (time.time() - start) / len(items)
    facts["nfe_per_continuation"] = statistics.fmean(evaluations) if evaluations else None
    metrics = scorer(gens)
    return {"design": design, "overrides": spec, "flops_budget": flops, "seed": seed, "facts": facts,
            "metrics": metrics, "samples": args.samples, "config": args.config, "date": str(datetime.date.today()),
            "machine": {"processor": platform.processor() or platform.machine(), **environment()}}


def count_evaluations(pipe) -> list[float]:
    """Wraps the pipeline's `continue_ids` so that each row's network evaluations (NFE) of every call are collected:
    TextLDM's and the masked baselines' `last_evaluations` (TextLDM counts per row, CFG's two halves included), or
    one cached forward per new token for the AR baseline."""
    seen, real = [], pipe.continue_ids

    def counted(prompt_ids, length, **kw):
        rows = real(prompt_ids, length, **kw)
        last = getattr(pipe, "last_evaluations", None)
        if isinstance(last, list):
            seen.extend(last)
        elif last is not None:
            seen.extend([last] * len(rows))
        else:
            seen.extend(len(r) for r in rows)
        return rows

    pipe.continue_ids = counted
    return seen


def cmd_run(args) -> int:
    designs = load_designs(args.grid)
    chosen = args.design.split(",")
    unknown = [d for d in chosen if d not in designs]
    if unknown:
        raise SystemExit(f"unknown design(s) {unknown}; {args.grid} has {list(designs)}")
    base = preset(args, f"metrics.samples={args.samples}")
    data = prepare_data(base)
    _, items = benchmark("embedded", args.samples, base.seed)
    scorer = Scorer(items, base.metrics)
    human_row(args, items, scorer, base, data[0])
    for flops in (float(f) for f in args.flops.split(",")):
        for seed in (int(s) for s in args.seed.split(",")):
            for design in chosen:
                path = point_path(args.out, design, flops, seed)
                if path.exists():
                    logging.info("%s exists: skipped", path)
                    continue
                point = run_point(args, design, designs[design], flops, seed, data, items, scorer)
                write_json(path, point)
                logging.info("%s: %s", path, {k: round(v, 4) for k, v in point["metrics"].items() if k in METRICS})
    return 0


# the fit -----------------------------------------------------------------------------------------------
def fit_line(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b x: coefficients, their covariance (residual variance; n - 2 degrees of freedom) and
    R^2. A y constant to rounding (SSD-LM's MAUVE: the same floor value at every budget, differing in the 16th digit)
    is flat: slope exactly 0 and no R^2 (nan), so the slope's sign is not decided by rounding."""
    X = np.column_stack([np.ones(len(xs)), np.asarray(xs, dtype=float)])
    y = np.asarray(ys, dtype=float)
    flat = np.ptp(y) <= FLAT * np.abs(y).max()
    coef = np.array([y.mean(), 0.0]) if flat else np.linalg.lstsq(X, y, rcond=None)[0]
    resid = y - X @ coef
    dof = max(len(xs) - 2, 1)
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(X.T @ X)
    total = float(((y - y.mean()) ** 2).sum())
    return {"a": float(coef[0]), "b": float(coef[1]), "cov": cov.tolist(),
            "r2": float("nan") if flat else 1 - float(resid @ resid) / total, "n": len(xs)}


def fit_forms(metric: str) -> tuple[str, ...]:
    return FIT_FORMS.get(metric, ("linear",))


def transform(form: str, value: float) -> float:
    return math.log(value) if form == "log" else value


def untransform(form: str, value):
    return np.exp(value) if form == "log" else value


def crossing_flops(fit: dict, target: float, draws: int = 4000, seed: int = 0) -> dict:
    """The log10 FLOPs where the fitted line reaches `target` (already transformed), with a 68% band from
    (a, b) drawn from their estimated normal distribution. None where the line never gets there (a slope
    of the wrong sign: more compute does not help)."""
    def solve(a, b):
        return (target - a) / b

    centre = solve(fit["a"], fit["b"]) if fit["b"] != 0 else float("nan")
    rng = np.random.default_rng(seed)
    ab = rng.multivariate_normal([fit["a"], fit["b"]], np.asarray(fit["cov"]), size=draws)
    sols = np.array([solve(a, b) for a, b in ab if b != 0])
    lo, hi = np.percentile(sols, [16, 84]) if len(sols) else (float("nan"), float("nan"))
    return {"log10_flops": centre, "band": [float(lo), float(hi)]}


def design_fits(points: list[dict], min_flops: float = 0.0) -> dict:
    """design -> metric -> form -> the fit of the metric (or its log) against log10(FLOPs) over that design's runs
    at budgets >= min_flops."""
    fits = {}
    for design in sorted({p["design"] for p in points}):
        runs = [p for p in points if p["design"] == design and p["flops_budget"] >= min_flops]
        if len({p["flops_budget"] for p in runs}) < 2:
            continue
        xs = [math.log10(p["facts"]["flops"]) for p in runs]
        fits[design] = {m: {form: fit_line(xs, [transform(form, p["metrics"][m]) for p in runs])
                            for form in fit_forms(m) if form == "linear" or min(p["metrics"][m] for p in runs) > 0}
                        for m in METRICS}
    return fits


def ratio(log10_ratio: float) -> float:
    """10 ** x, inf past float range (a nearly flat fit reaches AR's value only at an absurd compute)."""
    return 10 ** log10_ratio if log10_ratio < 300 else math.inf


def multipliers(points: list[dict], fits: dict, reference: float) -> dict:
    """design -> metric -> form -> FLOPs to reach the AR baseline's mean at the reference budget / AR's FLOPs
    there."""
    ar = [p for p in points if p["design"] == AR and math.isclose(p["flops_budget"], reference, rel_tol=1e-6)]
    if not ar:
        return {}
    ar_flops = math.log10(statistics.fmean(p["facts"]["flops"] for p in ar))
    out = {}
    for design, per_metric in fits.items():
        if design == AR:
            continue
        out[design] = {m: {} for m in MULTIPLIER_METRICS}
        for m in MULTIPLIER_METRICS:
            target = statistics.fmean(p["metrics"][m] for p in ar)
            for form, fit in per_metric[m].items():
                helps = fit["b"] < 0 if m in LOWER_IS_BETTER else fit["b"] > 0
                cross = crossing_flops(fit, transform(form, target))
                multiplier = ratio(cross["log10_flops"] - ar_flops) if helps else None
                out[design][m][form] = {
                    "ar_value": target, "helps": helps, "fit_r2": fit["r2"], "n": fit["n"], "multiplier": multiplier,
                    "band": [ratio(x - ar_flops) for x in cross["band"]] if helps else None,
                    "reached": helps and math.isfinite(multiplier)}
    return out


def ar_equivalent_flops(rows: list[dict], metric: str, value: float) -> float | None:
    """The FLOPs at which the AR baseline's measured curve (its `summary_rows`, seed means) reaches `value` of
    `metric`, interpolated piecewise linearly in log FLOPs and log metric between its budgets; None outside its
    measured range or where its curve passes the value more than once. No fit, no extrapolation: a matched-quality
    multiplier is a TextLDM run's FLOPs over this."""
    curve = [(math.log(r["flops"]), math.log(r[metric][0])) for r in rows if r["design"] == AR and r[metric][0] > 0]
    if value <= 0:
        return None
    target = math.log(value)
    crossings = [((x0, y0), (x1, y1)) for (x0, y0), (x1, y1) in zip(curve, curve[1:])
                 if min(y0, y1) <= target <= max(y0, y1) and y0 != y1]
    if len(crossings) != 1:
        return None
    (x0, y0), (x1, y1) = crossings[0]
    return math.exp(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def shown(metric: str, value: float) -> str:
    """A metric as the tables print it: x100 with one decimal for PERCENT metrics, gen-PPL whole, else 3 decimals."""
    if metric in PERCENT:
        return f"{100 * value:.1f}"
    return f"{value:.0f}" if metric == "gen_ppl" else f"{value:.3f}"


def format_matched(rows: list[dict]) -> list[str]:
    """Each TextLDM row's FLOPs over the AR baseline's FLOPs for the same MAUVE and the same gen-PPL."""
    lines = ["| design | budget (FLOPs) | MAUVE | AR's FLOPs for that MAUVE | multiplier | gen-PPL "
             "| AR's FLOPs for that gen-PPL | multiplier |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["design"] == AR:
            continue
        cells = []
        for m in MULTIPLIER_METRICS:
            ar = ar_equivalent_flops(rows, m, r[m][0])
            cells += [shown(m, r[m][0]), "outside AR's range" if ar is None else f"{ar:.3g}",
                      "-" if ar is None else f"{r['flops'] / ar:.2g}x"]
        lines.append(f"| {r['design']} | {r['budget']:.3g} | " + " | ".join(cells) + " |")
    return lines


def summary_rows(points: list[dict]) -> list[dict]:
    """One row per (design, budget): mean and sd over seeds of every metric and fact; the wall-clock facts (training
    minutes, seconds per continuation) as the median over seeds, so one run that shared the machine does not set a
    design's cost."""
    rows = []
    for design, budget in sorted({(p["design"], p["flops_budget"]) for p in points}):
        runs = [p for p in points if p["design"] == design and p["flops_budget"] == budget]
        row = {"design": design, "budget": budget, "seeds": len(runs),
               "flops": statistics.fmean(p["facts"]["flops"] for p in runs),
               "minutes": statistics.median(p["facts"]["minutes"] for p in runs),
               "steps": runs[0]["facts"]["steps"], "params": runs[0]["facts"]["params"]}
        for m in METRICS:
            values = [p["metrics"][m] for p in runs]
            row[m] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        agree = [p["facts"].get("agreement") for p in runs]
        row["agreement"] = statistics.fmean(agree) if None not in agree else None
        for fact, average in (("nfe_per_continuation", statistics.fmean),
                              ("seconds_per_continuation", statistics.median), ("heldout_nll", statistics.fmean)):
            values = [p["facts"].get(fact) for p in runs]
            row[fact] = average(values) if None not in values else None
        row["heldout_nll_exact"] = runs[0]["facts"].get("heldout_nll_exact")
        row["entropy"] = statistics.fmean(p["metrics"].get("unigram_entropy", float("nan")) for p in runs)
        second = [p["metrics"].get("second_judge_gen_ppl") for p in runs]
        row["second_gen_ppl"] = statistics.fmean(second) if None not in second else None
        rows.append(row)
    return rows


def format_costs(rows: list[dict]) -> list[str]:
    """What each continuation cost to write and the samples' entropy, beside every gen-PPL; the held-out likelihood
    where the design has one (AR exact; masked diffusion a bound, <=; TextLDM none)."""
    lines = ["| design | budget (FLOPs) | gen-PPL | gen-PPL (2nd judge) | unigram entropy (bits) "
             "| NFE per continuation | s per continuation | held-out NLL (nats / token) | perplexity |",
             "|---" * 9 + "|"]
    for r in rows:
        nfe, sec = r.get("nfe_per_continuation"), r.get("seconds_per_continuation")
        nll, second = r.get("heldout_nll"), r.get("second_gen_ppl")
        bound = "" if r.get("heldout_nll_exact") else "<= "
        lines.append(f"| {r['design']} | {r['budget']:.3g} | {shown('gen_ppl', r['gen_ppl'][0])} "
                     f"| {'-' if second is None else shown('gen_ppl', second)} | {r['entropy']:.2f} "
                     f"| {'-' if nfe is None else f'{nfe:.1f}'} | {'-' if sec is None else f'{sec:.3f}'} "
                     f"| {'-' if nll is None else f'{bound}{nll:.3f}'} "
                     f"| {'-' if nll is None else f'{bound}{math.exp(nll):.0f}'} |")
    return lines


def format_table(rows: list[dict], human: dict) -> list[str]:
    lines = ["| design | budget (FLOPs) | seeds | params | counted FLOPs | minutes | steps | "
             + " | ".join(METRICS.values()) + " | same-noise agreement |", "|---" * (8 + len(METRICS)) + "|"]
    for r in rows:
        cells = []
        for m in METRICS:
            mean, sd = r[m]
            cells.append(shown(m, mean) + (f" ± {shown(m, sd)}" if r["seeds"] > 1 else ""))
        steps = ", ".join(f"{k} {v}" for k, v in r["steps"].items())
        agree = "-" if r["agreement"] is None else f"{100 * r['agreement']:.1f}%"
        lines.append(f"| {r['design']} | {r['budget']:.3g} | {r['seeds']} | {r['params'] / 1e6:.1f}M "
                     f"| {r['flops']:.3g} | {r['minutes']:.1f} | {steps} | " + " | ".join(cells) + f" | {agree} |")
    human_cells = [shown(m, human[m]) for m in METRICS]
    human_cells[list(METRICS).index("prompt_binding")] = f"{human['reference_prompt_binding']:.3f} (true cont.)"
    lines.append("| human (2nd reference) | - | - | - | - | - | - | " + " | ".join(human_cells)
                 + f" | {100 * human['agreement']:.1f}% |")
    return lines


def format_multipliers(mult: dict, reference: float) -> list[str]:
    lines = [f"| design | metric | fitted as | runs | AR at {reference:.3g} FLOPs | fit R² | compute multiplier "
             "(68% band) |", "|---|---|---|---|---|---|---|"]
    for design, per_metric in mult.items():
        for m, per_form in per_metric.items():
            for form, r in per_form.items():
                value = shown(m, r['ar_value'])
                cell = f"{r['multiplier']:.3g}x ({r['band'][0]:.3g}-{r['band'][1]:.3g})" if r["reached"] else \
                    "never (more compute does not improve the fit)" if not r["helps"] else \
                    "never (the fit is too flat: its crossing lies past float range)"
                shape = "power law" if form == "log" else "line in log FLOPs"
                r2 = "-" if math.isnan(r["fit_r2"]) else f"{r['fit_r2']:.2f}"
                lines.append(f"| {design} | {METRICS[m]} | {shape} | {r['n']} | {value} | {r2} | {cell} |")
    return lines


def seed_values(points: list[dict], design: str, budget: float, metric: str) -> list[float]:
    return [p["metrics"][metric] for p in points
            if p["design"] == design and math.isclose(p["flops_budget"], budget, rel_tol=1e-6)]


def compare(ours: list[float], theirs: list[float], metric: str) -> dict:
    """Ours against theirs over seeds: the difference of means (gen-PPL: of mean logs, i.e. a ratio) with its standard
    error (Welch: each side's seed variance over its seeds; None with fewer than 2 seeds a side) and the verdict -
    ahead or behind where the difference is over 2 standard errors, level within them."""
    log = metric in LOWER_IS_BETTER
    a, b = ([math.log(v) for v in xs] if log else xs for xs in (ours, theirs))
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) \
        if min(len(a), len(b)) > 1 else None
    better = -diff if log else diff
    verdict = "-" if se is None else "ahead" if better > 2 * se else "behind" if better < -2 * se else "level"
    return {"diff": diff, "se": se, "seeds": [len(a), len(b)], "verdict": verdict}


def comparisons(points: list[dict], ours: list[str]) -> list[dict]:
    """Each of `ours` (the TextLDM designs) against every other design at every budget both were run at, on MAUVE and
    gen-PPL (over seeds: the gap's trend with compute, each budget with its own error)."""
    budgets = {d: {p["flops_budget"] for p in points if p["design"] == d} for d in {p["design"] for p in points}}
    return [{"design": d, "versus": o, "budget": b, **{m: compare(seed_values(points, d, b, m),
                                                                seed_values(points, o, b, m), m)
                                                       for m in MULTIPLIER_METRICS}}
            for d in ours if d in budgets for o in sorted(set(budgets) - set(ours))
            for b in sorted(budgets[d] & budgets[o])]


def format_comparisons(rows: list[dict]) -> list[str]:
    lines = ["| design | against | budget (FLOPs) | seeds | MAUVE: difference ± s.e. | verdict "
             "| gen-PPL: ratio (x/÷ s.e.) | verdict |", "|---" * 8 + "|"]
    for r in rows:
        m, g = r["mauve"], r["gen_ppl"]
        mauve = f"{100 * m['diff']:+.1f}" + ("" if m["se"] is None else f" ± {100 * m['se']:.1f}")
        ppl = f"{math.exp(g['diff']):.2f}x" + ("" if g["se"] is None else f" (x/÷ {math.exp(g['se']):.2f})")
        lines.append(f"| {r['design']} | {r['versus']} | {r['budget']:.3g} | {m['seeds'][0]} vs {m['seeds'][1]} "
                     f"| {mauve} | {m['verdict']} | {ppl} | {g['verdict']} |")
    return lines


def plot(points: list[dict], fits: dict, human: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (m, label) in zip(axes.flat, METRICS.items()):
        for design in sorted({p["design"] for p in points}):
            runs = [p for p in points if p["design"] == design]
            xs = [p["facts"]["flops"] for p in runs]
            line = ax.plot(xs, [p["metrics"][m] for p in runs], "o", alpha=0.7, label=design)[0]
            if design in fits:
                grid = np.linspace(math.log10(min(xs)), math.log10(max(xs)) + 1, 50)
                for form, style in zip(fit_forms(m), ("-", ":")):
                    if form not in fits[design][m]:  # a power law needs positive values
                        continue
                    f = fits[design][m][form]
                    ax.plot(10 ** grid, untransform(form, f["a"] + f["b"] * grid), style, color=line.get_color(), lw=1)
        ref = human["reference_prompt_binding"] if m == "prompt_binding" else human[m]
        ax.axhline(ref, color="grey", ls="--", lw=1, label="human")
        ax.set_xscale("log")
        ax.set_yscale("log" if m in LOG_AXIS else "linear")
        ax.set_title(label)
        ax.set_xlabel("training FLOPs (counted)")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)


def cmd_fit(args) -> int:
    points = read_points(args.out)
    if not points:
        raise SystemExit(f"no points under {args.out / 'points'}; run `bench/scaling.py run` first")
    human = json.loads(sorted(args.out.glob("human-*.json"))[-1].read_text())
    fits, rows = design_fits(points, args.min_flops), summary_rows(points)
    mult = multipliers(points, fits, args.reference)
    designs = load_designs(args.grid)
    pairs = comparisons(points, [d for d in sorted({p["design"] for p in points}) if isinstance(designs.get(d), list)])
    lines = [f"# Quality against training compute ({points[0]['samples']} embedded-benchmark items)", "",
             *format_table(rows, human), "",
             "Mean ± sd over seeds; *minutes* (training) and the seconds per continuation below: the median over "
             "seeds (a run that shared the machine moves it least).", "",
             f"Compute multiplier against the AR baseline at {args.reference:.3g} FLOPs (the FLOPs where a design's "
             "fit against log10 FLOPs reaches the AR baseline's mean there, over AR's FLOPs; fits over the budgets "
             f">= {args.min_flops:.3g} FLOPs; solid lines in the plot, dotted: MAUVE as a power law):", "",
             *format_multipliers(mult, args.reference), "",
             "Matched quality without a fit: each run's FLOPs over the FLOPs at which the AR baseline's "
             "measured curve (interpolated between its budgets in log-log) reaches the same value:", "",
             *format_matched(rows), "",
             "Each TextLDM design against the others at every budget both ran, over seeds (the difference of "
             "the seed means with its standard error; gen-PPL as a ratio of geometric means, lower is better; ahead "
             "or behind: more than 2 standard errors apart, level: within them; -: one seed, no error):", "",
             *format_comparisons(pairs), "",
             "Cost per continuation and likelihood (NFE: network evaluations per continuation - TextLDM's per window "
             "or block with CFG's two halves, the masked baselines' after the caching sampler, the AR baseline's one "
             "cached forward per token; seconds on the machine that ran the point, the median over seeds; held-out "
             "NLL from each run's own validation windows):", "", *format_costs(rows), "",
             "![quality vs compute](scaling.png)"]
    plot(points, fits, human, args.out)
    write_json(args.out / "scaling.json", {"rows": rows, "fits": fits, "multipliers": mult, "comparisons": pairs,
                                           "human": human, "reference": args.reference, "min_flops": args.min_flops})
    atomic_write_text(args.out / "scaling.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["run", "fit"])
    p.add_argument("--design", default="full,ar", help="designs to run, comma-separated (names in --grid)")
    p.add_argument("--grid", type=Path, default=ROOT / "bench" / "grids" / "scaling.yaml")
    p.add_argument("--flops", default="5e13", help="total training FLOPs budgets, comma-separated")
    p.add_argument("--seed", default="0", help="seeds, comma-separated")
    p.add_argument("--reference", type=float, default=5e13, help="fit: the AR budget TextLDM must match")
    p.add_argument("--min-flops", type=float, default=0.0, help="fit: leave smaller budgets out of the fits")
    p.add_argument("--config", default="demo", help="preset (sizes, data, sampler) for every design")
    p.add_argument("--vae-share", type=float, default=0.35, help="share of TextLDM's FLOPs spent on the VAE")
    p.add_argument("--samples", type=int, default=500, help="benchmark items scored")
    p.add_argument("--agreement-prompts", type=int, default=24, help="prompts for the same-noise agreement")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaling", help="points, fits, plots")
    p.add_argument("--runs", type=Path, default=Path("runs/scaling"), help="the trained models (not committed)")
    p.add_argument("overrides", nargs="*", metavar="K=V", help="config overrides for every design")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return cmd_run(args) if args.command == "run" else cmd_fit(args)
    except UserError as e:  # bad settings, e.g. fewer --samples than MAUVE's buckets: one line, no traceback
        print(f"bench/scaling.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
