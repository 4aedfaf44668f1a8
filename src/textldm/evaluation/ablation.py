"""Ablation runner: a grid of config overrides, each trained (VAE -> DiT) and scored on one benchmark.

A variant reuses what it shares with an earlier one: the same VAE-side config (vae, teacher, data, seed,
vae_train, precision) reuses that VAE; the same DiT-side config too reuses the whole model, so a variant
that only changes `sample.*` (e.g. the CFG scale) costs only its generations.

Writes OUT_DIR/ablation.json and OUT_DIR/ablation.md: generation metrics per variant (the paper's Tables
2/3 shape) and VAE reconstruction per variant (Table 4 shape).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, is_dataclass
from pathlib import Path

import yaml

from textldm.config import load_config
from textldm.errors import UserError
from textldm.evaluation.benchmark import benchmark
from textldm.evaluation.harness import TABLE_METRICS, Contestant, Scorer, benchmark_agreement, scoring_device
from textldm.evaluation.heldout import AGREEMENT_PROMPTS
from textldm.families.textldm import train_dit, train_vae
from textldm.utils import atomic_write_text, write_json

log = logging.getLogger(__name__)

GRIDS = {
    # the paper's ablations (Tables 2-4), each one change from the preset
    "paper": {
        "default": [],
        "no-repa": ["vae.repa_weight=0"],
        "repa-last-layer": ["teacher.layer=-1"],
        "latent-128": ["vae.latent_channels=128"],
        "t-std-1.2": ["dit.t_std=1.2"],
        "uniform-t": ["dit.t_distribution=uniform"],
        "no-t-conditioning": ["dit.t_conditioning=false"],
        "cfg-1": ["sample.cfg_scale=1"],
        "cfg-3": ["sample.cfg_scale=3"],
    },
    "repa": {"default": [], "no-repa": ["vae.repa_weight=0"]},
}


def load_grid(grid: str) -> dict[str, list[str]]:
    """A built-in grid name or a YAML file mapping variant name -> list of `key=value` overrides."""
    if grid in GRIDS:
        return GRIDS[grid]
    path = Path(grid)
    if not path.is_file():
        raise UserError(f"unknown ablation grid '{grid}'; built-in: {', '.join(GRIDS)}, or a YAML file mapping "
                        f"variant names to override lists")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"ablation grid '{grid}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) or v is None for v in data.values()):
        raise UserError(f"ablation grid '{grid}' must map each variant name to a list of overrides, "
                        f"e.g. 'no-repa: [vae.repa_weight=0]'")
    return {str(k): [str(o) for o in (v or [])] for k, v in data.items()}


def _key(cfg, sections: tuple[str, ...]) -> str:
    values = {s: getattr(cfg, s) for s in sections}
    return json.dumps({s: asdict(v) if is_dataclass(v) else v for s, v in values.items()}, sort_keys=True)


VAE_SIDE = ("vae", "teacher", "data", "seed", "vae_train", "precision", "device")
DIT_SIDE = VAE_SIDE + ("dit", "dit_train")


def run_ablation(preset: str, overrides: list[str], grid: dict[str, list[str]], bench: str, out_dir: str,
                 progress: bool = True) -> dict:
    """Train (sharing VAEs and models between variants that agree on them) and score every variant of `grid`; writes
    ablation.json / .md (and a partial file as rows finish)."""
    out = Path(out_dir)
    configs = {name: load_config(preset, [*overrides, *extra, f"out_dir={out / name}"])
               for name, extra in grid.items()}  # validate every variant before training any
    vaes, models, rows = {}, {}, {}
    for name, cfg in configs.items():
        log.info("ablation variant %s: %s", name, grid[name] or "(preset)")
        vae_key, dit_key = _key(cfg, VAE_SIDE), _key(cfg, DIT_SIDE)
        row = {"overrides": grid[name]}
        if dit_key in models:
            pipe, report, row["model_from"] = models[dit_key]
        else:
            if vae_key in vaes:
                vae_pipe, vae_report, row["vae_from"] = vaes[vae_key]
            else:
                vae_pipe, vae_report = train_vae(cfg, progress)
                vaes[vae_key] = (vae_pipe, vae_report, name)
            pipe, dit_report = train_dit(cfg, vae_pipe=vae_pipe, progress=progress, vae_report=vae_report)
            report = {**vae_report, **dit_report}
            models[dit_key] = (pipe, report, name)
        _, items = benchmark(bench, cfg.metrics.samples, cfg.seed)
        gens = Contestant(name, pipe).continue_items(items, cfg.sample, cfg.metrics.batch_size, 0)
        row["metrics"] = Scorer(items, cfg.metrics, scoring_device(cfg.device))(gens)
        row["same_noise_agreement"] = benchmark_agreement(pipe, items[:AGREEMENT_PROMPTS])
        row["vae_eval"] = report.get("vae_eval", {})
        row["dit_val_loss"] = report.get("dit_eval", {}).get("with_prompt")
        row["train_seconds"] = report["vae_train"]["seconds"] + report["dit_train"]["seconds"]
        row["train_steps"] = {"vae": report["vae_train"]["steps"], "dit": report["dit_train"]["steps"]}
        rows[name] = row
        write_json(out / "ablation.partial.json", {"preset": preset, "overrides": overrides, "benchmark": bench,
                                                   "variants": rows})  # a crash later loses no finished row
    result = {"preset": preset, "overrides": overrides, "benchmark": bench, "variants": rows}
    write_json(out / "ablation.json", result)
    atomic_write_text(out / "ablation.md", format_ablation(result) + "\n")
    return result


def format_ablation(result: dict) -> str:
    """An ablation's results as markdown tables (generation metrics; VAE, DiT and training facts)."""
    lines = [f"# Ablations on `{result['benchmark']}` (preset `{result['preset']}`)", "",
             "Generation metrics per variant (x100; gen-PPL raw):", "",
             "| variant | overrides | R1 | R2 | RL | BERTScore | MAUVE | gen-PPL | distinct-2 | same-noise agreement |",
             "|---" * 10 + "|"]
    for name, row in result["variants"].items():
        m = row["metrics"]
        lines.append(f"| {name} | {' '.join(row['overrides']) or '-'} | "
                     + " | ".join(f"{100 * m[k]:.1f}" for k in TABLE_METRICS)
                     + f" | {m.get('gen_ppl', float('nan')):.1f} | {m['distinct_2']:.3f} "
                     f"| {100 * row.get('same_noise_agreement', float('nan')):.1f}% |")
    lines += ["", "VAE per variant (held-out reconstruction from the posterior mean, REPA cosine, DiT loss):", "",
              "| variant | reconstruction % | REPA cos | DiT val loss | trained with | steps (VAE + DiT) | train s |",
              "|---" * 7 + "|"]
    for name, row in result["variants"].items():
        v = row["vae_eval"]
        shared = row.get("model_from") and f"model of {row['model_from']}" or \
            row.get("vae_from") and f"VAE of {row['vae_from']}" or "own VAE + DiT"
        repa = f"{v['repa_cos']:.3f}" if "repa_cos" in v else "-"
        loss = f"{row['dit_val_loss']:.4f}" if row["dit_val_loss"] is not None else "-"
        steps = row.get("train_steps", {})
        lines.append(f"| {name} | {100 * v.get('recon_acc', float('nan')):.2f} | {repa} | {loss} | {shared} "
                     f"| {steps.get('vae', '-')} + {steps.get('dit', '-')} | {row['train_seconds']:.0f} |")
    return "\n".join(lines)
