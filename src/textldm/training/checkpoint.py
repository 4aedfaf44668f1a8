"""Resumable training state on disk.

    CHECKPOINT_DIR/step-00001000/state.pt   model, EMA, optimizer, next step, clock, every rank's RNG, config
    CHECKPOINT_DIR/latest                   the name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed into place only when complete, and
`latest` is replaced atomically after that, so a crash at any moment leaves the previous checkpoint as
the one a resume finds. Only the newest `keep` checkpoints are kept. The data position is the step
number itself: every batch is drawn from (seed, step), so the next step's batch needs nothing else.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from textldm.config import Config
from textldm.errors import UserError
from textldm.utils import atomic_dir, atomic_write_text

STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(cfg: Config, stage: str) -> Path:
    """Where a stage ("vae", "dit", "ar") keeps its resumable training state."""
    return Path(cfg.out_dir) / "checkpoints" / stage


def rng_state() -> dict:
    """The RNG states of Python, NumPy, torch (and CUDA): what a resume restores."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (temporary folders of interrupted writes are skipped)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / "state.pt").exists()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(folder: Path | str) -> Path | None:
    """The checkpoint `latest` names; if that file is missing or stale, the newest complete one."""
    folder = Path(folder)
    pointer = folder / "latest"
    if pointer.exists():
        named = folder / pointer.read_text().strip()
        if (named / "state.pt").exists():
            return named
    found = checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: Path | str, step: int, state: dict, keep: int = 2) -> Path:
    """Write `state` as checkpoint `step` (atomically), point `latest` at it, keep the newest `keep`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step-*.tmp-*"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    target = folder / f"step-{step:08d}"
    with atomic_dir(target) as tmp:
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    atomic_write_text(folder / "latest", target.name + "\n")
    for old in checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path | str) -> dict:
    """A training checkpoint's state (a UserError if it is unreadable)."""
    path = Path(path)
    file = path / "state.pt" if path.is_dir() else path
    if not file.exists():
        raise UserError(f"no training checkpoint at '{path}' (expected {file}); check the path or drop --resume")
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read training checkpoint '{file}': {type(e).__name__}: {e}") from None
