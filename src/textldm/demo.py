"""The demo job, as a Python API: data -> VAE -> DiT -> held-out measurements and samples, and its report.

    from textldm import demo, load_config
    report = demo.demo(load_config("demo"))
    print(demo.format_report(report))

Writes report.json / report.md into the run folder, beside what the training stages write
(`families/textldm/train.py`, `training/loop.py`, `training/run.py`).
"""
from __future__ import annotations

from pathlib import Path

from textldm.config import Config
from textldm.data.shards import TokenStream
from textldm.evaluation.heldout import (
    AGREEMENT_PROMPTS,
    corpus_vocabulary,
    heldout_prompts,
    position_agreement,
    same_noise_agreement,
)
from textldm.evaluation.metrics import judge_scores, rouge_l, text_statistics
from textldm.export import locate_model_folder, read_model_config
from textldm.families.textldm import TextLDMPipeline, train_dit, train_vae
from textldm.families.textldm.modes import mode_of
from textldm.families.textldm.train import with_vae_of
from textldm.models.lm import resolve
from textldm.runtime.distributed import is_main
from textldm.training.run import prepare_data, start_run
from textldm.utils import atomic_write_text, write_json


def continuation_report(pipe: TextLDMPipeline, cfg: Config, train: TokenStream, val: TokenStream) -> dict:
    """Continue held-out prompts; score ROUGE-L against the true continuation, next to (a) a random human
    passage (another prompt's reference) against the same reference, the floor a prompt-blind writer of
    real text reaches, and (b) each generation against another prompt's reference: if (b) is as high as the
    main score, the generations are generic text, not continuations of *their* prompts."""
    n = max(cfg.eval.num_prompts, cfg.eval.rouge_samples)
    prompt_len = min(cfg.dit.context_max, 32)
    pairs = heldout_prompts(val, n, prompt_len, cfg.sample.length, cfg.seed)
    tok = pipe.tokenizer
    generated = []
    for i in range(0, len(pairs), 16):
        generated += pipe.generate_ids([p for p, _ in pairs[i: i + 16]], first_index=i)
    prompts = [tok.decode(p) for p, _ in pairs]
    refs = [tok.decode(r) for _, r in pairs]
    gens = [tok.decode(g) for g in generated]
    shuffled = refs[1:] + refs[:1]  # each reference paired with another prompt's passage
    vocab = corpus_vocabulary(train, tok)
    k = min(len(pairs), AGREEMENT_PROMPTS)
    return {
        "same_noise_agreement": same_noise_agreement(pipe, [p for p, _ in pairs[:k]], cfg.sample.length,
                                                     cfg.sample.seed),
        "reference_agreement": position_agreement([r for _, r in pairs[:k]]), "agreement_prompts": k,
        "samples": [{"prompt": p, "generated": g, "reference": r} for p, g, r in zip(prompts, gens, refs)],
        "rouge_l": rouge_l(gens, refs), "rouge_l_random_passage": rouge_l(shuffled, refs),
        "rouge_l_other_prompts_reference": rouge_l(gens, shuffled),
        "generated_stats": text_statistics(gens, vocab), "reference_stats": text_statistics(refs, vocab),
        **judged(prompts, gens, refs, cfg.metrics.judge),
        **({"second_judge": judged(prompts, gens, refs, cfg.metrics.second_judge)} if cfg.metrics.second_judge else {}),
        "prompts_scored": len(pairs), "sampler": {"steps": cfg.sample.steps, "cfg_scale": cfg.sample.cfg_scale,
                                                   "solver": cfg.sample.solver, "length": cfg.sample.length,
                                                   "noise_scale": cfg.sample.noise_scale,
                                                   "lm_prior": cfg.sample.lm_prior},
    }


def what_it_is(cfg: Config) -> str:
    """One sentence on what the run trains and where its text's knowledge comes from: the report's first line."""
    text = mode_of(cfg.dit).describe(cfg)
    return text + (" (the from-scratch demo: --config demo)" if cfg.dit.reads("context_lm") else "")


def judged(prompts: list[str], gens: list[str], refs: list[str], judge: str) -> dict:
    """The judge LM's measurements of the generations beside the true continuations of the same prompts: fluency
    (gen-PPL) and how much the text depends on its own prompt (perplexity after another prompt / after its own)."""
    return {"judge": judge, **judge_scores(prompts, gens, judge),
            **judge_scores(prompts, refs, judge, prefix="reference_")}


def _lm_prior(sampler: dict) -> str:
    """The sampler line's words for sample.lm_prior (none when off)."""
    return f", the LM's prior at decoding x {sampler['lm_prior']}" if sampler.get("lm_prior") else ""


def format_report(report: dict) -> str:
    """The demo's report as markdown (VAE, DiT per-quarter losses, continuations and their measurements)."""
    lines = ["# textldm run report", ""] + ([f"What this run is: {report['what_it_is']}.", ""]
                                            if "what_it_is" in report else [])
    v = report.get("vae_eval", {})
    if v:
        lines += ["## TextVAE (held-out validation text)", "",
                  f"- parameters: {report['vae_parameters'] / 1e6:.2f}M; training: {_trained(report['vae_train'])}",
                  f"- token reconstruction accuracy (posterior mean): **{100 * v['recon_acc']:.2f}%** "
                  f"(posterior sample: {100 * v['recon_acc_sampled']:.2f}%) over {v['tokens']} tokens"]
        if "repa_cos" in v:
            lines.append(f"- mean REPA cosine with the teacher: **{v['repa_cos']:.3f}**")
        lines.append("")
    d = report.get("dit_eval")
    if d:
        lines += ["## TextDiT validation velocity loss per timestep quarter (t=0 noise, t=1 data)", "",
                  f"parameters: {report['dit_parameters'] / 1e6:.2f}M; training: {_trained(report['dit_train'])}", "",
                  "| t | with prompt | prompt dropped | linear (Gaussian) | with prompt / linear "
                  f"| first {d['head_tokens']} tokens: with prompt | first {d['head_tokens']}: dropped |",
                  "|---|---|---|---|---|---|---|"]
        overall = {**d, "t": "all", "with_prompt_over_linear": d["with_prompt"] / d["linear_gaussian"]}
        for q in d["quarters"] + [overall]:
            lines.append(f"| {q['t']} | {q['with_prompt']:.4f} | {q['prompt_dropped']:.4f} "
                         f"| {q['linear_gaussian']:.4f} "
                         f"| {q['with_prompt_over_linear']:.3f} | {q['head_with_prompt']:.4f} "
                         f"| {q['head_prompt_dropped']:.4f} |")
        lines.append("")
    c = report.get("continuations")
    if c:
        s = c["sampler"]
        lines += [f"## Continuations of held-out prompts ({s['solver']}, {s['steps']} steps, CFG {s['cfg_scale']}, "
                  f"noise {s.get('noise_scale', 1.0)}{_lm_prior(s)}, {s['length']} tokens)", "",
                  f"- ROUGE-L vs reference: **{c['rouge_l']:.4f}**; a random human passage vs the same reference: "
                  f"{c['rouge_l_random_passage']:.4f}; the same generations vs *another* prompt's reference: "
                  f"{c['rouge_l_other_prompts_reference']:.4f} ({c['prompts_scored']} prompts)",
                  f"- generated: distinct-2 {c['generated_stats']['distinct_2']:.3f}, distinct-3 "
                  f"{c['generated_stats']['distinct_3']:.3f}, known-word share "
                  f"{c['generated_stats'].get('known_word_share', float('nan')):.3f}; references: distinct-2 "
                  f"{c['reference_stats']['distinct_2']:.3f}, known-word share "
                  f"{c['reference_stats'].get('known_word_share', float('nan')):.3f}"]
        for j in [c] + ([c["second_judge"]] if "second_judge" in c else []):
            if "gen_ppl" in j:
                lines.append(f"- generative perplexity under {j['judge']} (lower = more fluent): generated "
                             f"**{j['gen_ppl']:.0f}**, references {j['reference_gen_ppl']:.0f}")
            if "prompt_binding" in j:
                lines.append(f"- prompt binding under {j['judge']} (its perplexity after another prompt / after "
                             f"its own; 1 = prompt-blind): generated **{j['prompt_binding']:.3f}**, references "
                             f"{j['reference_prompt_binding']:.3f}")
        if "same_noise_agreement" in c:
            lines.append(f"- prompt dependence: {c['agreement_prompts']} prompts continued from the same noise agree "
                         f"on {100 * c['same_noise_agreement']:.1f}% of positions (their human continuations: "
                         f"{100 * c['reference_agreement']:.1f}%; lower = the prompt, not the noise, decides)")
        lines.append("")
        for i, sample in enumerate(c["samples"][:8]):
            lines += [f"**{i + 1}.** prompt: `{_one_line(sample['prompt'])}`", "",
                      f"- generated: `{_one_line(sample['generated'])}`",
                      f"- reference: `{_one_line(sample['reference'])}`", ""]
    return "\n".join(lines)


def _trained(summary: dict) -> str:
    """A stage's steps and time, and a warning when the wall-clock guard stopped it short of its steps."""
    text = f"{summary['steps']} steps, {summary['seconds']:.0f} s"
    if summary.get("guard_fired"):
        text += " - **stopped by the wall-clock guard: not the preset's step count, so not its numbers**"
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("`", "'")


def demo(cfg: Config, progress: bool = True, vae_dir: str | None = None, resume: bool = False) -> dict:
    """The main job: data -> VAE -> DiT -> measurements and samples, on the configured preset.
    With `vae_dir`, the VAE checkpoint there is reused (and its own report carried over). `resume`: a
    finished VAE in OUT_DIR/vae is reused, and an interrupted stage continues from its training checkpoint."""
    if vae_dir is None and resume and (Path(cfg.out_dir) / "vae" / "config.json").exists():
        vae_dir = str(Path(cfg.out_dir) / "vae")
    if vae_dir is not None:
        vae_dir = locate_model_folder(vae_dir)  # a folder or a Hub repo id
        vae_pipe = TextLDMPipeline.from_pretrained(vae_dir, require_dit=False)
        cfg = with_vae_of(cfg, vae_pipe)
        report = {k: v for k, v in read_model_config(vae_dir).get("report", {}).items() if k.startswith("vae")}
    if cfg.metrics.second_judge:
        resolve(cfg.metrics.second_judge)  # a missing wheel or folder fails now, not after training
    start_run(cfg)  # joins the process group before rank 0 tokenizes
    recipe = what_it_is(cfg)
    if is_main() and progress:
        print(f"demo: {recipe}", flush=True)
        print(f"demo: {'a saved VAE' if vae_dir else f'VAE {cfg.vae_train.steps} steps'}, DiT {cfg.dit_train.steps} "
              f"steps, then the report ({max(cfg.eval.num_prompts, cfg.eval.rouge_samples)} held-out prompts); fixed "
              f"steps: the same seed and thread count give the same numbers on any machine (each bar shows its ETA)",
              flush=True)
    data = prepare_data(cfg)
    if vae_dir is None:
        vae_pipe, report = train_vae(cfg, progress, data=data, resume=resume)
    pipe, dit_report = train_dit(cfg, vae_pipe=vae_pipe, progress=progress, data=data, resume=resume,
                                 vae_report=report)
    report.update(dit_report)
    report["what_it_is"] = recipe
    if is_main():
        _, _, train, val = data
        report["continuations"] = continuation_report(pipe, cfg, train, val)
        out = Path(cfg.out_dir)
        write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", format_report(report) + "\n")
    return report
