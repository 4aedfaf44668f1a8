"""The training stages as a Python API: train_vae, train_dit, train_ar (and cache_teacher).

Each stage builds a `Stage` (its model, objective, batches, FLOPs, held-out evaluation and export folder) and
hands it to `train_stage`, the one skeleton all three share: train with `fit`, evaluate, save on rank 0.
A run folder (`out_dir`) receives: config.yaml (the resolved config), environment.json, the JSONL training
logs, the saved models `vae/` (VAE only), `model/` (VAE + DiT) and `ar/`, and `checkpoints/<stage>/`.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from textldm.config import Config, TrainConfig, to_dict, validate
from textldm.data.corpus import check_source
from textldm.data.features import open_or_build
from textldm.data.shards import TokenStream, tokenize_corpus
from textldm.errors import UserError
from textldm.export import locate_model_folder, read_model_config
from textldm.generation import mode_class
from textldm.models.ar import CausalLM
from textldm.models.lm import FrozenLM, end_of_text_id, load_tokenizer, project_embeddings
from textldm.models.vae import TextVAE
from textldm.pipeline import ARPipeline, TextLDMPipeline
from textldm.runtime.distributed import barrier, is_main, setup_distributed, split_batch
from textldm.runtime.perf import TRAIN_FACTOR, ar_flops_per_sequence, vae_flops_per_sequence
from textldm.training.batches import ar_batches, dit_batches, vae_batches
from textldm.training.checkpoint import latest_checkpoint
from textldm.training.evaluate import evaluate_ar, evaluate_dit, evaluate_vae, latent_statistics
from textldm.training.loop import fit
from textldm.training.objectives import ARObjective, VAEObjective
from textldm.utils import atomic_write_text, environment, param_count, seed_everything, write_json

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Stage:
    """What differs between training the VAE, the DiT and the AR baseline; `train_stage` does the rest."""
    name: str  # "vae", "dit" or "ar": the log file <name>_log.jsonl, checkpoints/<name>, report keys <name>_*
    desc: str  # progress bar and log label
    model: nn.Module  # the trained network (its parameters are counted in the report)
    objective: nn.Module  # what `fit` trains (and DDP wraps)
    batches: Callable  # batches(step, micro, accum) -> this rank's micro-batch
    train_config: TrainConfig  # the stage's loop settings (vae_train, dit_train or ar_train)
    tokens_per_step: int
    flops_per_step: float
    evaluate: Callable[[], dict]  # held-out numbers (rank 0)
    pipeline: TextLDMPipeline | ARPipeline  # saved to OUT_DIR/<export> at the end
    export: str
    after_fit: Callable[[], None] | None = None  # e.g. the VAE's latent statistics, before evaluation and saving
    report: dict | None = None  # extra report entries


def train_stage(cfg: Config, stage: Stage, progress: bool = True, resume: bool = False) -> dict:
    """Train, evaluate and save one stage; returns its report (parameters, training summary, held-out eval)."""
    out = Path(cfg.out_dir)
    log.info("%s: %.1fM parameters, %d steps of %d sequences", stage.desc, param_count(stage.model) / 1e6,
             stage.train_config.steps, stage.train_config.batch_size)

    def periodic_eval(step: int) -> dict:  # held-out numbers in the log every eval_every steps (rank 0)
        return stage.evaluate() if is_main() else {}

    summary = fit(stage.objective, stage.batches, stage.train_config, log_path=out / f"{stage.name}_log.jsonl",
                  desc=stage.desc, progress=progress, on_eval=periodic_eval, tokens_per_step=stage.tokens_per_step,
                  flops_per_step=stage.flops_per_step, precision=cfg.precision,
                  checkpoint_dir=checkpoint_dir(cfg, stage.name), resume=resume, run_config=to_dict(cfg))
    if stage.after_fit is not None:
        stage.after_fit()
    report = {f"{stage.name}_parameters": param_count(stage.model), f"{stage.name}_train": summary,
              **(stage.report or {})}
    if is_main():
        report[f"{stage.name}_eval"] = stage.evaluate()
        stage.pipeline.save_pretrained(out / stage.export, extra={"report": report})
    barrier()
    return report


def start_run(cfg: Config) -> torch.device:
    """Join the process group (under torchrun), set CPU threads and seeds; returns the device."""
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
    barrier()
    if not is_main():  # rank 0 has written it: this is a cache lookup
        folder = tokenize_corpus(cfg.data, tokenizer, cfg.teacher.name, eot)
    return tokenizer, eot, TokenStream(folder, "train"), TokenStream(folder, "val")


def checkpoint_dir(cfg: Config, stage: str) -> Path:
    """Where a stage ("vae", "dit", "ar") keeps its resumable training state."""
    return Path(cfg.out_dir) / "checkpoints" / stage


def check_resume(cfg: Config, stage: str, resume: bool) -> None:
    """`--resume` with no checkpoint to resume: an error when the stage saves none (its checkpoint_every is 0:
    the run could never be resumed), else a warning that it starts from step 0 (so a job script that always passes
    --resume starts its first run)."""
    folder = checkpoint_dir(cfg, stage)
    if not resume or latest_checkpoint(folder) is not None:
        return
    if not getattr(cfg, f"{stage}_train").checkpoint_every:
        raise UserError(f"--resume: there is no checkpoint in {folder}, and {stage}_train.checkpoint_every is 0, so "
                        f"this run would save none; set {stage}_train.checkpoint_every=N to make it resumable")
    log.warning("--resume: no checkpoint in %s yet; the %s stage starts from step 0", folder, stage)


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

    stage = Stage(
        name="vae", desc="VAE", model=vae, objective=VAEObjective(vae),
        batches=vae_batches(train, cfg.vae, tcfg.batch_size, cfg.seed, device, repa_teacher, cache), train_config=tcfg,
        tokens_per_step=tcfg.batch_size * cfg.vae.max_len,
        flops_per_step=_vae_flops(cfg, vae, len(tokenizer), repa_teacher is not None),
        evaluate=lambda: evaluate_vae(vae, val, e.val_batches, e.batch_size, cfg.seed, device, repa_teacher),
        pipeline=TextLDMPipeline(cfg, tokenizer, vae, None, eot), export="vae", after_fit=set_latent_statistics)
    report = train_stage(cfg, stage, progress, resume)
    return stage.pipeline, report


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
    mode_type = mode_class(cfg.dit)  # full window or blocks: the objective, batches and held-out errors
    mode = mode_type(mode_type.new_dit(cfg.dit, cfg.vae.latent_channels).to(device))
    dit, tcfg, e = mode.dit, cfg.dit_train, cfg.eval
    stage = Stage(
        name="dit", desc="DiT", model=dit, objective=mode,
        batches=dit_batches(mode.training_source(cfg, train, device, progress), vae, mode, tcfg.batch_size, cfg.seed,
                            device), train_config=tcfg,
        tokens_per_step=tcfg.batch_size * mode.tokens_per_sequence(), flops_per_step=mode.train_flops(tcfg.batch_size),
        evaluate=lambda: evaluate_dit(mode, vae, val, e.val_batches, e.batch_size, cfg.seed, device),
        pipeline=TextLDMPipeline(cfg, vae_pipe.tokenizer, vae, dit, eot, mode=mode), export="model",
        report={k: v for k, v in (vae_report or {}).items() if k.startswith("vae")})
    report = train_stage(cfg, stage, progress, resume)
    return stage.pipeline, report


def train_ar(cfg: Config, progress: bool = True, data=None, resume: bool = False) -> tuple[ARPipeline, dict]:
    """The AR baseline under the same settings: tokenizer, data, window (the DiT's prompt + continuation),
    optimizer and loop. Writes OUT_DIR/ar."""
    check_resume(cfg, "ar", resume)
    device = start_run(cfg)
    tokenizer, eot, train, val = data or prepare_data(cfg)
    record_run(cfg)
    model = CausalLM(cfg.ar, len(tokenizer))
    if cfg.ar.embed_init == "teacher":  # the same head start the VAE gets
        with torch.no_grad():
            embeddings = FrozenLM(cfg.teacher.name, 1).input_embeddings(len(tokenizer))
            model.embed.weight.copy_(project_embeddings(embeddings, cfg.ar.width, cfg.seed))
    model.to(device)
    seq_len = cfg.ar_seq_len
    tcfg, e = cfg.ar_train, cfg.eval
    stage = Stage(
        name="ar", desc="AR", model=model, objective=ARObjective(model),
        batches=ar_batches(train, seq_len, tcfg.batch_size, cfg.seed, device), train_config=tcfg,
        tokens_per_step=tcfg.batch_size * seq_len,
        flops_per_step=TRAIN_FACTOR * tcfg.batch_size * ar_flops_per_sequence(model, seq_len),
        evaluate=lambda: evaluate_ar(model, val, seq_len, e.val_batches, e.batch_size, cfg.seed, device),
        pipeline=ARPipeline(cfg, tokenizer, model, eot), export="ar", report={"ar_seq_len": seq_len})
    report = train_stage(cfg, stage, progress, resume)
    return stage.pipeline, report
