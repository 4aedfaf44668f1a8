"""The TextLDM family's training stages, as a Python API: train_vae, train_dit (and cache_teacher): each builds a
`training.loop.Stage` - its model, objective (the DiT's: its mode's), batches, FLOPs, held-out checks and the
pipeline that saves it - and runs `train_stage`."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from textldm.config import Config, validate
from textldm.data.features import open_or_build
from textldm.data.shards import TokenStream
from textldm.export import locate_model_folder, read_model_config
from textldm.families.textldm.modes import mode_of
from textldm.families.textldm.pipeline import TextLDMPipeline
from textldm.models.lm import FrozenLM
from textldm.models.vae import TextVAE
from textldm.runtime.distributed import split_batch
from textldm.runtime.perf import TRAIN_FACTOR, vae_flops_per_sequence
from textldm.training.batches import dit_batches, vae_batches
from textldm.training.evaluate import evaluate_dit, evaluate_vae, latent_statistics
from textldm.training.loop import Stage, train_stage
from textldm.training.objectives import VAEObjective
from textldm.training.run import check_resume, prepare_data, record_run, start_run


def _frozen_teacher(cfg: Config, device: torch.device, layer: int) -> FrozenLM:
    """The teacher, inference only: bf16 weights on GPU (half the memory, the fast kernels)."""
    return FrozenLM(cfg.teacher.name, layer).to(device, dtype=torch.bfloat16 if device.type == "cuda" else None)


def _vae_flops(cfg: Config, vae: TextVAE, vocab_size: int, repa: bool) -> float:
    """Counted FLOPs of one VAE optimizer step (the sampled softmax's rows: an upper bound)."""
    tcfg = cfg.vae_train
    per_device, _ = split_batch(tcfg.batch_size, tcfg.micro_batch)
    rows = vocab_size if cfg.vae.softmax == "full" else min(
        vocab_size, cfg.vae.sampled_negatives + (1 + cfg.vae.hard_negatives) * per_device * cfg.vae.max_len)
    return TRAIN_FACTOR * tcfg.batch_size * vae_flops_per_sequence(vae, cfg.vae.max_len, rows,
                                                                   cfg.vae.repa_fraction if repa else 0.0)


def train_vae(cfg: Config, progress: bool = True, data=None, resume: bool = False) -> tuple[TextLDMPipeline, dict]:
    """`data`: the result of `prepare_data(cfg)` when the caller has it already. `resume`: continue from the
    newest training checkpoint in OUT_DIR/checkpoints/vae (`check_resume`: none is an error or a fresh start)."""
    check_resume(cfg, "vae", resume)
    device = start_run(cfg)
    tokenizer, eot, train, val = data or prepare_data(cfg)
    repa = cfg.vae.repa_weight > 0
    teacher = _frozen_teacher(cfg, device, cfg.teacher.layer if repa else 1) \
        if repa or cfg.vae.embed_init == "teacher" else None
    vae = TextVAE(cfg.vae, len(tokenizer), teacher.hidden_size if repa else None)
    if cfg.vae.embed_init == "teacher":
        vae.init_embeddings_from(teacher.input_embeddings(len(tokenizer)), seed=cfg.seed)
    vae.to(device)
    if cfg.vae.softmax == "sampled" and cfg.vae.hard_negatives > 0:
        vae.build_neighbor_table(cfg.vae.hard_negatives)
    repa_teacher = teacher if repa else None
    cache = teacher_cache(cfg, train, teacher, device, progress) if repa and cfg.vae.teacher_cache else None
    record_run(cfg)
    tcfg = cfg.vae_train
    e = cfg.eval

    def set_latent_statistics():
        mean, std = latent_statistics(vae, train, e.val_batches, e.batch_size, cfg.seed, device)
        vae.latent_mean.copy_(mean.to(device))
        vae.latent_std.copy_(std.to(device))

    pipeline = TextLDMPipeline(cfg, tokenizer, vae, None, eot)
    stage = Stage(
        name="vae", desc="VAE", model=vae, objective=VAEObjective(vae),
        batches=vae_batches(train, cfg.vae, tcfg.batch_size, cfg.seed, device, repa_teacher, cache), train_config=tcfg,
        tokens_per_step=tcfg.batch_size * cfg.vae.max_len,
        flops_per_step=_vae_flops(cfg, vae, len(tokenizer), repa_teacher is not None),
        evaluate=lambda: evaluate_vae(vae, val, e.val_batches, e.batch_size, cfg.seed, device, repa_teacher),
        save=lambda folder, report: pipeline.save_pretrained(folder, extra={"report": report}), export="vae",
        after_fit=set_latent_statistics)
    report = train_stage(cfg, stage, progress, resume)
    return pipeline, report


def teacher_cache(cfg: Config, train: TokenStream, teacher: FrozenLM, device: torch.device, progress: bool = True):
    """The precomputed teacher features that vae.teacher_cache names ("auto": a folder in the cache keyed by
    corpus, teacher, layer and window), built on rank 0 the first time."""
    v = cfg.vae
    return open_or_build(train, teacher, teacher.feature_name, cfg.teacher.layer, v.max_len, v.teacher_cache,
                         v.teacher_cache_windows, cfg.eval.batch_size, device, progress, "teacher cache")


def cache_teacher(cfg: Config, progress: bool = True) -> Path:
    """`textldm cache-teacher`: precompute the REPA teacher's features for vae.teacher_cache (default auto)."""
    device = start_run(cfg)
    _, _, train, _ = prepare_data(cfg)
    if not cfg.vae.teacher_cache:  # this command's default: the cache folder named by the run's settings
        cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, teacher_cache="auto"))
    cache = teacher_cache(cfg, train, _frozen_teacher(cfg, device, cfg.teacher.layer), device, progress)
    return Path(cache.features_map.filename).parent


def with_vae_of(cfg: Config, vae_pipe: TextLDMPipeline) -> Config:
    """The run's config with the VAE, tokenizer and teacher a trained VAE fixes (a new config: the caller's is not
    written), checked against the DiT's settings (e.g. block mode needs a block-causal encoder)."""
    cfg = dataclasses.replace(cfg, vae=vae_pipe.config.vae, teacher=vae_pipe.config.teacher)
    validate(cfg)
    return cfg


def train_dit(cfg: Config, vae_pipe: TextLDMPipeline | None = None, vae_dir: str | None = None,
              progress: bool = True, data=None, resume: bool = False,
              vae_report: dict | None = None) -> tuple[TextLDMPipeline, dict]:
    """Train a DiT on a frozen VAE (given in memory, with its `vae_report`, or as a saved-model folder). The
    saved model's report (and card) carries the VAE's numbers beside the DiT's."""
    if vae_pipe is None:
        folder = locate_model_folder(vae_dir)  # a folder or a Hub repo id
        vae_pipe = TextLDMPipeline.from_pretrained(folder, require_dit=False)
        vae_report = read_model_config(folder).get("report", {})
    cfg = with_vae_of(cfg, vae_pipe)
    check_resume(cfg, "dit", resume)
    device = start_run(cfg)
    _, eot, train, val = data or prepare_data(cfg)
    record_run(cfg)
    vae = vae_pipe.vae.to(device).eval().requires_grad_(False)
    mode = mode_of(cfg.dit)  # the objective, batches and held-out errors of dit.mode
    dit = mode.build_dit(cfg.dit, cfg.vae.latent_channels).to(device)
    parts = {name: part.to(device) for name, part in mode.build_parts(cfg.dit).items()}  # e.g. the context LM
    objective, tcfg, e = mode.objective(dit, **parts), cfg.dit_train, cfg.eval
    pipeline = TextLDMPipeline(cfg, vae_pipe.tokenizer, vae, dit, eot, parts=parts)
    stage = Stage(
        name="dit", desc="DiT", model=dit, objective=objective,
        batches=dit_batches(objective.training_source(cfg, train, device, progress), vae, objective, tcfg.batch_size,
                            cfg.seed, device), train_config=tcfg,
        tokens_per_step=tcfg.batch_size * objective.tokens_per_sequence(),
        flops_per_step=objective.train_flops(tcfg.batch_size),
        evaluate=lambda: evaluate_dit(objective, vae, val, e.val_batches, e.batch_size, cfg.seed, device),
        save=lambda folder, report: pipeline.save_pretrained(folder, extra={"report": report}), export="model",
        report={k: v for k, v in (vae_report or {}).items() if k.startswith("vae")})
    report = train_stage(cfg, stage, progress, resume)
    return pipeline, report
