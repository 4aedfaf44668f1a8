"""TextLDM vs the AR baseline at equal parameters and equal wall-clock, plus the REPA ablation, on the
embedded corpus's continuation benchmark. One table, printed and written to OUT/quality.md.

    python bench/quality.py [--minutes-per-model 12] [--samples 500] [--out runs/quality]

Three models are trained on the same data with the same tokenizer and optimizer, each for the same
wall-clock budget (`--minutes-per-model`):
  - TextLDM: VAE (with REPA) for 40% of the budget, then the DiT for 60%;
  - the AR baseline: a causal Transformer from the same block, its depth chosen so its parameter count
    matches TextLDM's inference parameters (VAE without the REPA projector + DiT);
  - TextLDM without REPA (vae.repa_weight=0), same budget split: the paper's central ablation.
Then all three, and the human-reference row, are scored on the same benchmark items, with sampling-step
and CFG sweeps for TextLDM. Sizes come from the `paper-recipe` preset (the full window at the demo's size, what
the committed table measured; any preset: --config).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from textldm import ARPipeline, TextLDMPipeline, load_config
from textldm.evaluation import matched
from textldm.evaluation.harness import HUMAN, TABLE_METRICS, Contestant, format_results, run_eval
from textldm.export import read_model_config
from textldm.families.ar.train import train_ar
from textldm.families.textldm.train import train_dit, train_vae
from textldm.training.run import prepare_data
from textldm.utils import atomic_write_text, write_json


def format_quality(args, facts: dict, results: dict, train_minutes: float) -> str:
    """The markdown table of the three models and the human row, the REPA ablation line, the harness output."""
    lines = [f"# TextLDM vs AR baseline vs TextLDM without REPA (embedded benchmark, {args.samples} items)", "",
             f"`python bench/quality.py --minutes-per-model {args.minutes_per_model} --samples {args.samples}` "
             f"(preset {args.config}; training {train_minutes:.1f} min in all"
             f"{', models reused from an earlier run of the same command' if args.reuse else ''})", "",
             "| model | params | train tokens | train wall-clock | steps | R1 | R2 | RL | BERTScore | MAUVE "
             "| gen-PPL | distinct-2 | unigram entropy | words gen/ref |", "|---" * 15 + "|"]
    for name in [*facts, HUMAN]:
        r, f = results["benchmarks"]["embedded"]["rows"][name], facts.get(name, {})
        head = (f"| {name} | {f['params'] / 1e6:.1f}M | {f['tokens'] / 1e6:.2f}M | {f['seconds'] / 60:.1f} min "
                f"| {f['steps']} |") if f else f"| {name} | - | - | - | - |"
        lines.append(head + " " + " | ".join(f"{100 * r[k]:.1f}" for k in TABLE_METRICS)
                     + f" | {r['gen_ppl']:.1f} | {r['distinct_2']:.3f} | {r['unigram_entropy']:.2f} "
                     f"| {r['mean_words']:.1f}/{r['reference_words']:.1f} |")
    lines += ["", "REPA ablation, VAE side: held-out reconstruction accuracy (posterior mean): "
              f"with REPA {100 * facts['TextLDM']['recon']:.2f}%, "
              f"without {100 * facts['TextLDM no REPA']['recon']:.2f}%. "
              f"AR baseline held-out perplexity: {facts['AR baseline']['val_ppl']:.1f}.", "",
              "Full harness output (sweeps included):", "", format_results(results)]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="paper-recipe", help="preset for sizes, data and sampler (the paper's "
                   "full-window recipe at the demo's size; `demo` is block mode)")
    p.add_argument("--minutes-per-model", type=float, default=12.0)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--buckets", type=int, default=50)
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--steps-sweep", default="5,10,25,50")
    p.add_argument("--cfg-sweep", default="1,3,7")
    p.add_argument("--no-sweeps", action="store_true")
    p.add_argument("--reuse", action="store_true", help="load the models a previous run left in --out (re-score only)")
    p.add_argument("overrides", nargs="*")
    return p.parse_args(argv)


def textldm_facts(cfg, pipe, vae_report: dict, dit_report: dict) -> dict:
    """A TextLDM run's parameters, training time, tokens, steps and reconstruction for the table."""
    v, d = vae_report["vae_train"], dit_report["dit_train"]
    ctx_tgt = (cfg.dit.context_min + cfg.dit.context_max + cfg.dit.target_min + cfg.dit.target_max) / 2
    return {"params": matched.inference_params(pipe), "seconds": v["seconds"] + d["seconds"],
            "tokens": v["steps"] * cfg.vae_train.batch_size * cfg.vae.max_len
            + d["steps"] * cfg.dit_train.batch_size * ctx_tgt,
            "steps": f"VAE {v['steps']} + DiT {d['steps']}", "recon": vae_report["vae_eval"]["recon_acc"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    minutes = args.minutes_per_model
    budget = [f"vae_train.max_minutes={0.4 * minutes}", "vae_train.steps=1000000", "vae_train.max_flops=null",
              f"dit_train.max_minutes={0.6 * minutes}", "dit_train.steps=1000000", "dit_train.max_flops=null",
              "vae_train.guard_minutes=null", "dit_train.guard_minutes=null",  # the budget is the minutes here
              f"ar_train.max_minutes={minutes}", "ar_train.steps=1000000", "eval.rouge_samples=0",
              f"metrics.samples={args.samples}", f"metrics.mauve_buckets={args.buckets}"]
    cfg = load_config(args.config, [*budget, *args.overrides, f"out_dir={out / 'textldm'}"])
    data = prepare_data(cfg)

    def textldm(run_cfg):
        """(pipeline, VAE report, DiT report): trained now, or loaded with --reuse."""
        run = Path(run_cfg.out_dir)
        if args.reuse:
            return (TextLDMPipeline.from_pretrained(run / "model"), read_model_config(run / "vae")["report"],
                    read_model_config(run / "model")["report"])
        vae_pipe, vae_report = train_vae(run_cfg, progress=False, data=data)
        pipe, dit_report = train_dit(run_cfg, vae_pipe=vae_pipe, progress=False, data=data)
        return pipe, vae_report, dit_report

    ldm, vae_report, dit_report = textldm(cfg)
    target = matched.inference_params(ldm)
    ar_cfg = load_config(args.config, [*budget, *args.overrides, f"out_dir={out / 'ar'}",
                                       *matched.matched_ar_overrides(cfg, target, len(data[0]))])
    depth = ar_cfg.ar.depth
    if args.reuse:
        ar = ARPipeline.from_pretrained(out / "ar" / "ar")
        ar_report = read_model_config(out / "ar" / "ar")["report"]
    else:
        ar, ar_report = train_ar(ar_cfg, progress=False, data=data)

    norepa_cfg = load_config(args.config, [*budget, *args.overrides, f"out_dir={out / 'textldm-no-repa'}",
                                           "vae.repa_weight=0"])
    norepa, nr_vae_report, nr_dit_report = textldm(norepa_cfg)

    facts = {
        "TextLDM": textldm_facts(cfg, ldm, vae_report, dit_report),
        "AR baseline": {"params": ar_report["ar_parameters"], "seconds": ar_report["ar_train"]["seconds"],
                        "tokens": ar_report["ar_train"]["steps"] * ar_cfg.ar_train.batch_size * ar_report["ar_seq_len"],
                        "steps": f"{ar_report['ar_train']['steps']} (depth {depth})",
                        "val_ppl": ar_report["ar_eval"]["perplexity"]},
        "TextLDM no REPA": textldm_facts(cfg, norepa, nr_vae_report, nr_dit_report),
    }
    train_minutes = sum(f["seconds"] for f in facts.values()) / 60
    contestants = [Contestant("TextLDM", ldm), Contestant("AR baseline", ar),
                   Contestant("TextLDM no REPA", norepa)]
    sweeps = {} if args.no_sweeps else {"steps_sweep": [int(x) for x in args.steps_sweep.split(",")],
                                        "cfg_sweep": [float(x) for x in args.cfg_sweep.split(",")]}
    results = run_eval([], ["embedded"], cfg, out / "eval", contestants=contestants, **sweeps)

    text = format_quality(args, facts, results, train_minutes)
    write_json(out / "quality.json", {"facts": facts, "results": results, "argv": sys.argv})
    atomic_write_text(out / "quality.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
