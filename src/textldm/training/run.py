"""What every training run does around its stages (`training/loop.py`: Stage, train_stage, fit): join the process
group and seed (`start_run`), tokenize the data (`prepare_data`), write the config and library versions into the run
folder (`record_run`), and check --resume (`check_resume`).

A run folder (`out_dir`) receives: config.yaml (the resolved config), environment.json, the JSONL training
logs, the saved models (the stage's export folder: `vae/`, `model/`, `ar/`), and `checkpoints/<stage>/`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml

from textldm.config import Config, to_dict
from textldm.data.corpus import check_source
from textldm.data.shards import TokenStream, tokenize_corpus
from textldm.errors import UserError
from textldm.models.lm import end_of_text_id, load_tokenizer
from textldm.runtime.distributed import barrier, is_main, setup_distributed
from textldm.training.checkpoint import checkpoint_dir, latest_checkpoint
from textldm.utils import atomic_write_text, environment, seed_everything, write_json

log = logging.getLogger(__name__)


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
