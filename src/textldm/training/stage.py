"""One training stage, whatever the family: a `Stage` (its model, objective, batches, FLOPs, held-out evaluation and
how to save what it trained) run by `train_stage` - train with `fit`, evaluate, save on rank 0 - and what every stage
does around it (`start_run`, `prepare_data`, `record_run`, checkpoints and --resume). The families' stages build
Stages: `families/textldm/train.py` (train_vae, train_dit), `families/ar/train.py` (train_ar).

A run folder (`out_dir`) receives: config.yaml (the resolved config), environment.json, the JSONL training
logs, the saved models (the stage's export folder: `vae/`, `model/`, `ar/`), and `checkpoints/<stage>/`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from textldm.config import Config, TrainConfig, to_dict
from textldm.data.corpus import check_source
from textldm.data.shards import TokenStream, tokenize_corpus
from textldm.errors import UserError
from textldm.models.lm import end_of_text_id, load_tokenizer
from textldm.runtime.distributed import barrier, is_main, setup_distributed
from textldm.training.checkpoint import latest_checkpoint
from textldm.training.loop import fit
from textldm.utils import atomic_write_text, environment, param_count, seed_everything, write_json

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Stage:
    """What differs between training the VAE, the DiT and the AR baseline; `train_stage` does the rest."""
    name: str  # "vae", "dit", "ar", "masked": the log file <name>_log.jsonl, checkpoints/<name>, report keys <name>_*
    desc: str  # progress bar and log label
    model: nn.Module  # the trained network (its parameters are counted in the report)
    objective: nn.Module  # what `fit` trains (and DDP wraps)
    batches: Callable  # batches(step, micro, accum) -> this rank's micro-batch
    train_config: TrainConfig  # the stage's loop settings (vae_train, dit_train or ar_train)
    tokens_per_step: int
    flops_per_step: float
    evaluate: Callable[[], dict]  # held-out numbers (rank 0)
    save: Callable[[Path, dict], None]  # save(folder, report): the trained model's folder (the family's writer)
    export: str  # the folder under OUT_DIR
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
        stage.save(out / stage.export, report)
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
