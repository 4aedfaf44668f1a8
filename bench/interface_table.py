"""The interface study's tables, generated from its committed results (bench/results/interface/): the levers
scored by the next token of decoded samples (bench/next_token.py per arm), and the side-by-side table of every
trained model beside the backbone sampling itself (textldm eval under both judges).

    python bench/interface_table.py [--results bench/results/interface] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ARMS = {  # arm -> what differs from `base` (the context-LM mode, B = 1, on the base VAE)
    "base": "context LM (SmolLM2-135M last layer: its raw block output, before the final norm), B = 1",
    "normed": "the LM's final-normed last state (as HF's hidden_states[-1]; the context LM's features since 0.4.0)",
    "pred": "normed + the LM's prediction: its top-32 expected output embedding (dit.context_lm.prediction=32)",
    "b4pred": "block size 4, with the LM's prediction (dit.context_lm.prediction=32)",
    "pred2x": "pred at 2x the DiT's steps over 3,000 precomputed windows (25.6 passes)",
    "live": "the LM run at every step on streamed windows (base: 1,500 precomputed windows)",
    "ft1": "live, and the LM's last block trained with the DiT (dit.context_lm.train_layers=1, lr x 0.1)",
    "dit4x": "4x the DiT's training steps",
    "dit4xlive": "4x the DiT's training steps, the LM live on streamed windows (no cache: no repeated window)",
    "dit2xlive": "2x the DiT's training steps, the LM live on streamed windows (no cache: no repeated window)",
    "small": "a smaller denoiser: 2 DiT blocks (the demo DiT's 6)",
    "selfcond": "+ self-conditioning (dit.self_condition_prob=0.5)",
    "b4": "block size 4",
    "b16": "block size 16",
    "scratch": "no context LM: the from-scratch block-1 DiT",
    "scratchsc": "from scratch, with self-conditioning (dit.self_condition_prob=0.5)",
    "decnoise": "VAE decoder trained on noised latents (vae.decoder_noise=0.5)",
    "kl1e-2": "wider posterior (vae.kl_weight=1e-2)",
    "width32": "32-d latents (vae.latent_channels=32)",
    "norepa": "VAE without REPA (vae.repa_weight=0)",
    "ar": "AR baseline at the base DiT's counted FLOPs",
}
OWN_VAE = ("base", "decnoise", "kl1e-2", "width32", "norepa")  # the arms that train a VAE (the others: base's)
FIRST_DRAW = "first_draw"  # the 2026-12-03 draw (128 prompts): an arm not rerun since is read from there
SAMPLERS = ("noise 1, cfg 2", "noise 0.5, cfg 2", "noise 0 (x0 = 0), cfg 2")  # the demo's first


def load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def train_facts(res: Path, arm: str) -> str:
    r = load(res / f"{arm}.train.json") or {}
    t = r.get("dit_train") or r.get("ar_train")
    return f"{t['steps']} / {t['flops']:.2g} / {t['seconds']:.0f}" if t else "-"


def vae_facts(res: Path, arm: str) -> str:
    """The arm's VAE, where it trained its own: held-out reconstruction (from posterior samples), the final
    training KL per token and the REPA cosine."""
    r = load(res / f"{arm}.train.json") or {}
    if not r.get("vae_eval"):
        return ""
    e, f = r["vae_eval"], r["vae_train"]["final"]
    repa = f"REPA cos {e['repa_cos']:.3f}" if "repa_cos" in e else "no REPA"
    return f" (its VAE: recon. {100 * e['recon_acc_sampled']:.2f}%, KL {f['kl']:.1f}, {repa})"


def heldout_loss(res: Path, arm: str) -> str:
    """The DiT's held-out flow loss with the prompt / with it dropped (training's report): lower is better, and
    with > dropped means the conditioning hurts on unseen text (overfit). Comparable only on one VAE."""
    e = (load(res / f"{arm}.train.json") or {}).get("dit_eval")
    return f"{e['with_prompt']:.3f} / {e['prompt_dropped']:.3f}" if e else "-"


def _ratio(row: dict) -> str:
    """x LM top-1, with its standard error where the run recorded one."""
    se = row.get("vs_lm_top1_se")
    return f"{row['vs_lm_top1']:.2f}x" + (f" ± {se:.2f}" if se is not None else "")


def levers_table(res: Path) -> list[str]:
    """One row per scored arm; an arm scored on other prompts than base (the first draw's 128) says so."""
    base = load(res / "base.json")
    if base is None:
        return ["(the base arm has not finished)"]
    lm, n = base["rows"][0], base["prompts"]
    own = next((r for r in (load(res / "backbone.json") or {"rows": []})["rows"] if "sampling itself" in r["setting"]),
               None)  # the LM sampling itself at temperature 1: the ceiling of a sampler at noise 1
    ceiling = (f"; the backbone sampling itself at temperature 1 (expected): {_ratio(own)}, the LM's p of its own "
               f"sample {own['lm_prob_of_sample']:.3f}" if own else "")
    lines = [f"{n} held-out prompts of 24 tokens; the backbone's top-1 accuracy {lm['accuracy']:.3f} (= 1.00x)"
             + ceiling, "",
             "| arm | what differs | steps / FLOPs / s | " + " | ".join(f"x LM top-1: {s}" for s in SAMPLERS)
             + " | LM's p of the sample (demo sampler) | held-out loss: with prompt / dropped |",
             "|---" * (5 + len(SAMPLERS)) + "|"]
    for arm, what in ARMS.items():
        folder = next((f for f in (res, res / FIRST_DRAW) if (f / f"{arm}.json").exists()), None)
        if folder is None:
            continue
        r = load(folder / f"{arm}.json")
        rows = {row["setting"]: row for row in r["rows"]}
        if r["prompts"] != n:
            what += f" ({r['prompts']} prompts, {r['date']}: the first draw, LM top-1 {r['rows'][0]['accuracy']:.3f})"
        cells = [_ratio(rows[s]) if s in rows else "-" for s in SAMPLERS]
        if arm in OWN_VAE:
            what += vae_facts(folder, arm)
        lines.append(f"| {arm} | {what} | {train_facts(folder, arm)} | " + " | ".join(cells)
                     + f" | {rows[SAMPLERS[0]]['lm_prob_of_sample']:.3f} | {heldout_loss(folder, arm)} |")
    return lines


def side_by_side(res: Path, folder: str) -> list[str]:
    """The `textldm eval` table in res/folder, else the first draw's (said so: its models are that draw's)."""
    r, note = load(res / folder / "results.json"), []
    if r is None and (r := load(res / FIRST_DRAW / folder / "results.json")) is not None:
        res, note = res / FIRST_DRAW, [f"The first draw's table (2026-12-03; its models, in {FIRST_DRAW}/).", ""]
    if r is None:
        return ["(the eval table has not run)"]
    second = r["metrics_config"].get("second_judge")
    (bench, b), = r["benchmarks"].items()
    refs, rows = b["references"], b["rows"]
    own = next((rows[name] for name, kind in r["models"].items() if kind == "hf"), None)  # the backbone itself
    j2 = "second_judge_" if second else ""
    sampler = r["sample"]
    lines = [*note, f"Sampler: noise {sampler['noise_scale']}, CFG {sampler['cfg_scale']}, {sampler['steps']} steps; "
             f"AR and the backbone: temperature {sampler['temperature']}, top-p {sampler['top_p']}. "
             f"{bench}: {b['items']} items; judges {r['metrics_config']['judge']} and {second or '-'}; binding ratio: "
             "against the backbone sampling itself (the issue's >= 0.8x)", "",
             f"| model | steps / FLOPs / s | gen-PPL ({r['metrics_config']['judge']}) | gen-PPL ({second}) "
             f"| x references | binding ({second}) | x backbone's | MAUVE | ROUGE-L | distinct-2 | generation s |",
             "|---" * 11 + "|"]
    for name, row in rows.items():
        ppl, bind = row.get(j2 + "gen_ppl", float("nan")), row.get(j2 + "prompt_binding", float("nan"))
        lines.append(f"| {name} | {train_facts(res, name)} | {row['gen_ppl']:.1f} | {ppl:.1f} "
                     f"| {ppl / refs[j2 + 'gen_ppl']:.2f}x | {bind:.3f} "
                     f"| {bind / own[j2 + 'prompt_binding']:.2f}x | {100 * row['mauve']:.1f} "
                     f"| {100 * row['rougeL']:.1f} | {row['distinct_2']:.3f} | {row.get('generation_seconds', '-')} |"
                     if own else f"| {name} | ... |")
    lines.append(f"| true continuations | - | {refs['gen_ppl']:.1f} | {refs[j2 + 'gen_ppl']:.1f} | 1.00x "
                 f"| {refs[j2 + 'prompt_binding']:.3f} | - | - | - | - | - |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="bench/results/interface")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    res = Path(args.results)
    text = "\n".join(["## Levers: the next token of decoded samples (bench/next_token.py)", "", *levers_table(res), "",
                      "## Side by side (textldm eval)", "", *side_by_side(res, "eval"), "",
                      "## Side by side, the colder sampler", "", *side_by_side(res, "eval_cold"), "",
                      "## The LM's prediction beside its state (pred), the colder sampler", "",
                      *side_by_side(res, "eval_cold_pred"), "",
                      "## The LM's prediction beside its state (pred), the demo's sampler", "",
                      *side_by_side(res, "eval_pred"), "",
                      "## The LM's prediction beside its state (pred), noise 0.7", "",
                      *side_by_side(res, "eval_pred07"), "",
                      "## pred2x (600 steps), the colder sampler", "",
                      *side_by_side(res, "eval_cold_pred2x")]) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
