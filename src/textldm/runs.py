"""The jobs behind the CLI, as a Python API: train_vae, train_dit, demo.

A run folder (`out_dir`) receives: config.yaml (the resolved config), environment.json, the JSONL
training logs, the checkpoints `vae/` (VAE only) and `model/` (VAE + DiT), and report.json / report.md.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from .config import Config, to_dict
from .data.corpus import check_source
from .data.shards import TokenStream, tokenize_corpus
from .dit import TextDiT
from .ar import ARObjective, ARPipeline, CausalLM, ar_batches
from .evaluate import (corpus_vocabulary, evaluate_ar, evaluate_dit, evaluate_vae, heldout_prompts, latent_statistics,
                       position_agreement, same_noise_agreement)
from .metrics import generative_perplexity, rouge_l, text_statistics
from .objectives import DiTObjective, VAEObjective, dit_batches, vae_batches
from .pipeline import TextLDMPipeline, read_checkpoint_config
from .teacher import Teacher, end_of_text_id, load_tokenizer, project_embeddings
from .perf import (TRAIN_FACTOR, ar_flops_per_sequence, decoder_ce_flops_per_sequence, dit_flops_per_sequence,
                   vae_flops_per_sequence)
from .train import fit, is_main, resolve_batch_size, setup_distributed, split_batch
from .errors import UserError
from .utils import atomic_write_text, environment, seed_everything, write_json
from .vae import TextVAE, param_count

log = logging.getLogger(__name__)
AGREEMENT_PROMPTS = 24  # held-out prompts continued from one shared noise for the prompt-dependence figure


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def finish_run() -> None:
    """Let every rank wait for rank 0's report, then leave the process group cleanly."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def start_run(cfg: Config) -> torch.device:
    _, _, device = setup_distributed(cfg.device)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    return device


def record_run(cfg: Config) -> Path:
    """Write the resolved config and library versions into the run folder - only once the inputs (tokenizer,
    data, teacher, checkpoints) have loaded, so a bad input leaves an existing run folder untouched."""
    out = Path(cfg.out_dir)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        write_json(out / "environment.json", environment())
    return out


def prepare_data(cfg: Config):
    """Tokenizer, end-of-text id and the train/val token streams (tokenized once, on rank 0)."""
    check_source(cfg.data.source)
    tokenizer = load_tokenizer(cfg.teacher.name)
    eot = end_of_text_id(tokenizer)
    if is_main():
        folder = tokenize_corpus(cfg.data, tokenizer, cfg.teacher.name, eot)
    _barrier()
    if not is_main():  # rank 0 has written it: this is a cache lookup
        folder = tokenize_corpus(cfg.data, tokenizer, cfg.teacher.name, eot)
    return tokenizer, eot, TokenStream(folder, "train"), TokenStream(folder, "val")


def checkpoint_dir(cfg: Config, stage: str) -> Path:
    """Where a stage ("vae", "dit", "ar") keeps its resumable training state."""
    return Path(cfg.out_dir) / "checkpoints" / stage


def train_vae(cfg: Config, progress: bool = True, data=None, resume: bool = False) -> tuple[TextLDMPipeline, dict]:
    """`data`: the result of `prepare_data(cfg)` when the caller has it already. `resume`: continue from the
    newest training checkpoint in OUT_DIR/checkpoints/vae (a fresh start if there is none)."""
    device = start_run(cfg)
    tokenizer, eot, train, val = data or prepare_data(cfg)
    need_teacher = cfg.vae.repa_weight > 0 or cfg.vae.embed_init == "teacher"
    teacher = Teacher(cfg.teacher.name, cfg.teacher.layer if cfg.vae.repa_weight > 0 else 1) if need_teacher else None
    vae = TextVAE(cfg.vae, len(tokenizer), teacher.hidden_size if cfg.vae.repa_weight > 0 else None)
    if cfg.vae.embed_init == "teacher":
        vae.init_embeddings_from(teacher.input_embeddings(len(tokenizer)), seed=cfg.seed)
    vae.to(device)
    if cfg.vae.softmax == "sampled" and cfg.vae.hard_negatives > 0:
        vae.build_neighbor_table(cfg.vae.hard_negatives)
    if teacher is not None:  # frozen, inference only: bf16 weights on GPU (half the memory, the fast kernels)
        teacher.to(device, dtype=torch.bfloat16 if device.type == "cuda" else None)
    repa_teacher = teacher if cfg.vae.repa_weight > 0 else None
    cache = teacher_cache(cfg, train, teacher, device, progress) if repa_teacher and cfg.vae.teacher_cache else None
    out = record_run(cfg)
    tcfg = cfg.vae_train
    resolve_batch_size(tcfg, cfg.vae.max_len)
    per_device, _ = split_batch(tcfg.batch_size, tcfg.micro_batch)
    softmax_rows = len(tokenizer) if cfg.vae.softmax == "full" else min(  # sampled: an upper bound
        len(tokenizer), cfg.vae.sampled_negatives + (1 + cfg.vae.hard_negatives) * per_device * cfg.vae.max_len)
    flops = TRAIN_FACTOR * tcfg.batch_size * vae_flops_per_sequence(vae, cfg.vae.max_len, softmax_rows,
                                                                    cfg.vae.repa_fraction if repa_teacher else 0.0)
    log.info("VAE: %.1fM parameters, %d steps of %d x %d tokens", param_count(vae) / 1e6, tcfg.steps,
             tcfg.batch_size, cfg.vae.max_len)
    def periodic_eval(step: int) -> dict:  # held-out numbers in the log every eval_every steps (rank 0)
        return evaluate_vae(vae, val, cfg.eval.val_batches, cfg.eval.batch_size, cfg.seed, device, repa_teacher) \
            if is_main() else {}

    batches = vae_batches(train, cfg.vae, tcfg.batch_size, cfg.seed, device, repa_teacher, cache)
    summary = fit(VAEObjective(vae), batches,
                  tcfg, log_path=out / "vae_log.jsonl", desc="VAE", progress=progress, on_eval=periodic_eval,
                  tokens_per_step=tcfg.batch_size * cfg.vae.max_len, flops_per_step=flops, precision=cfg.precision,
                  checkpoint_dir=checkpoint_dir(cfg, "vae"), resume=resume)
    mean, std = latent_statistics(vae, train, cfg.eval.val_batches, cfg.eval.batch_size, cfg.seed, device)
    vae.latent_mean.copy_(mean.to(device))
    vae.latent_std.copy_(std.to(device))
    report = {"vae_parameters": param_count(vae), "vae_train": summary}
    pipe = TextLDMPipeline(cfg, tokenizer, vae, None, eot)
    if is_main():
        report["vae_eval"] = evaluate_vae(vae, val, cfg.eval.val_batches, cfg.eval.batch_size, cfg.seed, device,
                                          repa_teacher)
        pipe.save_pretrained(out / "vae", extra={"report": report})
    _barrier()
    return pipe, report


def teacher_cache(cfg: Config, train: TokenStream, teacher: Teacher, device: torch.device, progress: bool = True):
    """The precomputed teacher features that vae.teacher_cache names ("auto": a folder in the cache keyed by
    corpus, teacher, layer and window), built on rank 0 the first time."""
    from .teacher_cache import TeacherCache, build_teacher_cache, default_folder

    v = cfg.vae
    folder = default_folder(train, cfg.teacher.name, cfg.teacher.layer, v.max_len, v.teacher_cache_windows) \
        if v.teacher_cache == "auto" else Path(v.teacher_cache)
    if is_main() and not (folder / "meta.json").exists():
        log.info("precomputing teacher features into %s", folder)
        build_teacher_cache(train, teacher, cfg.teacher.name, cfg.teacher.layer, v.max_len, folder,
                            v.teacher_cache_windows, cfg.eval.batch_size, device, progress)
    _barrier()
    cache = TeacherCache(folder, train)
    if cache.length != v.max_len or cache.meta["layer"] != cfg.teacher.layer:
        raise UserError(f"teacher cache '{folder}' holds layer {cache.meta['layer']} windows of {cache.length} "
                        f"tokens; this run needs layer {cfg.teacher.layer}, {v.max_len}: use another folder or auto")
    return cache


def cache_teacher(cfg: Config, progress: bool = True) -> Path:
    """`textldm cache-teacher`: precompute the REPA teacher's features for vae.teacher_cache (default auto)."""
    device = start_run(cfg)
    _, _, train, _ = prepare_data(cfg)
    cfg.vae.teacher_cache = cfg.vae.teacher_cache or "auto"
    teacher = Teacher(cfg.teacher.name, cfg.teacher.layer).to(device, dtype=torch.bfloat16 if device.type == "cuda"
                                                                else None)
    cache = teacher_cache(cfg, train, teacher, device, progress)
    return Path(cache.features_map.filename).parent


def train_dit(cfg: Config, vae_pipe: TextLDMPipeline | None = None, vae_dir: str | None = None,
              progress: bool = True, data=None, resume: bool = False) -> tuple[TextLDMPipeline, dict]:
    """Train a DiT on a frozen VAE (given in memory or as a checkpoint folder)."""
    if vae_pipe is None:
        vae_pipe = TextLDMPipeline.from_pretrained(vae_dir, require_dit=False)
        # the VAE, its tokenizer and its teacher are fixed by the checkpoint
        cfg.vae, cfg.teacher = vae_pipe.config.vae, vae_pipe.config.teacher
    device = start_run(cfg)
    _, eot, train, val = data or prepare_data(cfg)
    out = record_run(cfg)
    vae = vae_pipe.vae.to(device).eval().requires_grad_(False)
    dit = TextDiT(cfg.dit, cfg.vae.latent_channels).to(device)
    tcfg = cfg.dit_train
    resolve_batch_size(tcfg, cfg.dit.context_max + cfg.dit.target_max)
    # forward + backward, plus the self-conditioning examples' gradient-free first pass
    flops = (TRAIN_FACTOR + cfg.dit.self_condition_prob) * tcfg.batch_size * \
        dit_flops_per_sequence(dit, cfg.dit.context_max, cfg.dit.target_max)
    if cfg.dit.decoder_ce_weight > 0:  # the token-aware loss: the frozen decoder, forward and backward
        rows = min(vae.vocab_size, cfg.vae.sampled_negatives + tcfg.batch_size * cfg.dit.target_max)
        flops += TRAIN_FACTOR * tcfg.batch_size * decoder_ce_flops_per_sequence(vae, cfg.dit.target_max, rows)
    log.info("DiT: %.1fM parameters, %d steps of %d sequences", param_count(dit) / 1e6, tcfg.steps, tcfg.batch_size)
    batches = dit_batches(train, vae, cfg.dit, tcfg.batch_size, cfg.seed, device)
    mean_tokens = tcfg.batch_size * (cfg.dit.target_min + cfg.dit.target_max) // 2
    def periodic_eval(step: int) -> dict:
        return evaluate_dit(dit, vae, val, cfg.eval.val_batches, cfg.eval.batch_size, cfg.seed, device) \
            if is_main() else {}

    summary = fit(DiTObjective(dit, vae), batches, tcfg, log_path=out / "dit_log.jsonl", desc="DiT", progress=progress,
                  on_eval=periodic_eval, tokens_per_step=mean_tokens, flops_per_step=flops, precision=cfg.precision,
                  checkpoint_dir=checkpoint_dir(cfg, "dit"), resume=resume)
    pipe = TextLDMPipeline(cfg, vae_pipe.tokenizer, vae, dit, eot)
    report = {"dit_parameters": param_count(dit), "dit_train": summary}
    if is_main():
        report["dit_eval"] = evaluate_dit(dit, vae, val, cfg.eval.val_batches, cfg.eval.batch_size, cfg.seed, device)
        pipe.save_pretrained(out / "model", extra={"report": report})
    _barrier()
    return pipe, report


def train_ar(cfg: Config, progress: bool = True, data=None, resume: bool = False) -> tuple[ARPipeline, dict]:
    """The AR baseline under the same settings: tokenizer, data, window (the DiT's prompt + continuation),
    optimizer and loop. Writes OUT_DIR/ar."""
    device = start_run(cfg)
    tokenizer, eot, train, val = data or prepare_data(cfg)
    out = record_run(cfg)
    model = CausalLM(cfg.ar, len(tokenizer))
    if cfg.ar.embed_init == "teacher":  # the same head start the VAE gets
        with torch.no_grad():
            embeddings = Teacher(cfg.teacher.name, 1).input_embeddings(len(tokenizer))
            model.embed.weight.copy_(project_embeddings(embeddings, cfg.ar.width, cfg.seed))
    model.to(device)
    seq_len = cfg.ar.seq_len or cfg.dit.context_max + cfg.dit.target_max
    tcfg = cfg.ar_train
    resolve_batch_size(tcfg, seq_len)
    flops = TRAIN_FACTOR * tcfg.batch_size * ar_flops_per_sequence(model, seq_len)
    log.info("AR: %.1fM parameters, %d steps of %d x %d tokens", param_count(model) / 1e6, tcfg.steps,
             tcfg.batch_size, seq_len)
    def periodic_eval(step: int) -> dict:
        return evaluate_ar(model, val, seq_len, cfg.eval.val_batches, cfg.eval.batch_size, cfg.seed, device) \
            if is_main() else {}

    summary = fit(ARObjective(model), ar_batches(train, seq_len, tcfg.batch_size, cfg.seed, device), tcfg,
                  log_path=out / "ar_log.jsonl", desc="AR", progress=progress, on_eval=periodic_eval,
                  tokens_per_step=tcfg.batch_size * seq_len, flops_per_step=flops, precision=cfg.precision,
                  checkpoint_dir=checkpoint_dir(cfg, "ar"), resume=resume)
    pipe = ARPipeline(cfg, tokenizer, model, eot)
    report = {"ar_parameters": param_count(model), "ar_train": summary, "ar_seq_len": seq_len}
    if is_main():
        report["ar_eval"] = evaluate_ar(model, val, seq_len, cfg.eval.val_batches, cfg.eval.batch_size, cfg.seed,
                                        device)
        pipe.save_pretrained(out / "ar", extra={"report": report})
    _barrier()
    return pipe, report


def inference_params(pipe: TextLDMPipeline) -> int:
    """Parameters used to write text: the VAE without its REPA projector (a training-only head) + the DiT."""
    repa = param_count(pipe.vae.repa_proj) if pipe.vae.repa_proj is not None else 0
    return param_count(pipe.vae) - repa + param_count(pipe.dit)


def matched_ar_overrides(cfg: Config, target_params: int, vocab_size: int) -> list[str]:
    """Config overrides for the AR baseline "under the same settings" as a TextLDM of `target_params` inference
    parameters: the DiT's width, heads, batch, learning rate and warm-up, and the depth whose parameter count
    is nearest to the target."""
    one, two = (param_count(CausalLM(type(cfg.ar)(width=cfg.dit.width, depth=d, heads=cfg.dit.heads), vocab_size))
                for d in (1, 2))
    block = two - one
    depth = max(1, round((target_params - (one - block)) / block))
    return [f"ar.width={cfg.dit.width}", f"ar.heads={cfg.dit.heads}", f"ar.depth={depth}",
            f"ar_train.batch_size={cfg.dit_train.batch_size}", f"ar_train.lr={cfg.dit_train.lr}",
            f"ar_train.warmup_steps={cfg.dit_train.warmup_steps}"]


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
        # fluency under the judge LM, for the generations and for the true continuations of the same prompts
        "gen_ppl": generative_perplexity(prompts, gens, cfg.metrics.judge),
        "reference_gen_ppl": generative_perplexity(prompts, refs, cfg.metrics.judge), "judge": cfg.metrics.judge,
        "prompts_scored": len(pairs), "sampler": {"steps": cfg.sample.steps, "cfg_scale": cfg.sample.cfg_scale,
                                                   "solver": cfg.sample.solver, "length": cfg.sample.length},
    }


def format_report(report: dict) -> str:
    lines = ["# textldm run report", ""]
    v = report.get("vae_eval", {})
    if v:
        lines += ["## TextVAE (held-out validation text)", "",
                  f"- parameters: {report['vae_parameters'] / 1e6:.2f}M; training: {report['vae_train']['steps']} steps, "
                  f"{report['vae_train']['seconds']:.0f} s",
                  f"- token reconstruction accuracy (posterior mean): **{100 * v['recon_acc']:.2f}%** "
                  f"(posterior sample: {100 * v['recon_acc_sampled']:.2f}%) over {v['tokens']} tokens"]
        if "repa_cos" in v:
            lines.append(f"- mean REPA cosine with the teacher: **{v['repa_cos']:.3f}**")
        lines.append("")
    d = report.get("dit_eval")
    if d:
        lines += ["## TextDiT validation velocity loss per timestep quarter (t=0 noise, t=1 data)", "",
                  f"parameters: {report['dit_parameters'] / 1e6:.2f}M; training: {report['dit_train']['steps']} steps, "
                  f"{report['dit_train']['seconds']:.0f} s", "",
                  "| t | with prompt | prompt dropped | linear (Gaussian) | with prompt / linear "
                  f"| first {d['head_tokens']} tokens: with prompt | first {d['head_tokens']}: dropped |",
                  "|---|---|---|---|---|---|---|"]
        for q in d["quarters"] + [{**d, "t": "all", "with_prompt_over_linear": d["with_prompt"] / d["linear_gaussian"]}]:
            lines.append(f"| {q['t']} | {q['with_prompt']:.4f} | {q['prompt_dropped']:.4f} | {q['linear_gaussian']:.4f} "
                         f"| {q['with_prompt_over_linear']:.3f} | {q['head_with_prompt']:.4f} "
                         f"| {q['head_prompt_dropped']:.4f} |")
        lines.append("")
    c = report.get("continuations")
    if c:
        s = c["sampler"]
        lines += [f"## Continuations of held-out prompts ({s['solver']}, {s['steps']} steps, CFG {s['cfg_scale']}, "
                  f"{s['length']} tokens)", "",
                  f"- ROUGE-L vs reference: **{c['rouge_l']:.4f}**; a random human passage vs the same reference: "
                  f"{c['rouge_l_random_passage']:.4f}; the same generations vs *another* prompt's reference: "
                  f"{c['rouge_l_other_prompts_reference']:.4f} ({c['prompts_scored']} prompts)",
                  f"- generated: distinct-2 {c['generated_stats']['distinct_2']:.3f}, distinct-3 "
                  f"{c['generated_stats']['distinct_3']:.3f}, known-word share "
                  f"{c['generated_stats'].get('known_word_share', float('nan')):.3f}; references: distinct-2 "
                  f"{c['reference_stats']['distinct_2']:.3f}, known-word share "
                  f"{c['reference_stats'].get('known_word_share', float('nan')):.3f}"]
        if "gen_ppl" in c:
            lines.append(f"- generative perplexity under {c['judge']} (lower = more fluent): generated "
                         f"**{c['gen_ppl']:.0f}**, references {c['reference_gen_ppl']:.0f}")
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


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("`", "'")


def demo(cfg: Config, progress: bool = True, vae_dir: str | None = None, resume: bool = False) -> dict:
    """The main job: data -> VAE -> DiT -> measurements and samples, on the configured preset.
    With `vae_dir`, the VAE checkpoint there is reused (and its own report carried over). `resume`: a
    finished VAE in OUT_DIR/vae is reused, and an interrupted stage continues from its training checkpoint."""
    if vae_dir is None and resume and (Path(cfg.out_dir) / "vae" / "config.json").exists():
        vae_dir = str(Path(cfg.out_dir) / "vae")
    if vae_dir is not None:
        vae_pipe = TextLDMPipeline.from_pretrained(vae_dir, require_dit=False)
        cfg.vae, cfg.teacher = vae_pipe.config.vae, vae_pipe.config.teacher
        report = {k: v for k, v in read_checkpoint_config(vae_dir).get("report", {}).items() if k.startswith("vae")}
    start_run(cfg)  # joins the process group before rank 0 tokenizes
    data = prepare_data(cfg)
    if vae_dir is None:
        vae_pipe, report = train_vae(cfg, progress, data=data, resume=resume)
    pipe, dit_report = train_dit(cfg, vae_pipe=vae_pipe, progress=progress, data=data, resume=resume)
    report.update(dit_report)
    if is_main():
        _, _, train, val = data
        report["continuations"] = continuation_report(pipe, cfg, train, val)
        out = Path(cfg.out_dir)
        write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", format_report(report) + "\n")
    return report
