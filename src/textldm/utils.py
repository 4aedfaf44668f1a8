"""Small shared helpers: cache location, atomic writes, seeding, the environment record."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from textldm.errors import UserError

# a device name: what `device=` and --device accept ("auto" = the GPU when there is one)
DEVICE_NAME = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
DEVICE_HINT = "use auto, cpu, cuda, cuda:N, mps or xpu"


def resolve_device(name: str | torch.device, what: str = "device") -> torch.device:
    """A device name (DEVICE_NAME: auto, cpu, cuda, cuda:N, mps, xpu) -> the torch.device, checked against this
    machine: "auto" is the GPU when there is one; a malformed name, or a device this machine lacks, is a UserError
    naming it (never torch's assertion from deep inside a model's .to())."""
    name = str(name)
    if DEVICE_NAME.fullmatch(name) is None:
        raise UserError(f"{what} '{name}' is not a device name; {DEVICE_HINT}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    backend = {"cuda": torch.cuda, "xpu": getattr(torch, "xpu", None), "mps": torch.backends.mps}[device.type]
    if backend is None or not backend.is_available():
        raise UserError(f"{what} '{name}' was asked for, but this machine has no {device.type.upper()} device "
                        f"(or this torch build lacks it); use cpu or auto")
    if device.type in ("cuda", "xpu") and device.index is not None and device.index >= backend.device_count():
        raise UserError(f"{what} '{name}': this machine has {backend.device_count()} {device.type} device(s), "
                        f"numbered from 0")
    return device


# file endings that say a name is a local file: Hub ids name repositories, never files
FILE_SUFFIXES = (".json", ".jsonl", ".txt", ".text", ".parquet", ".csv", ".tsv", ".gz", ".zst", ".tar", ".arrow",
                 ".yaml", ".yml", ".safetensors", ".gguf", ".bin", ".pt")


def looks_like_path(name: str) -> bool:
    """Whether a name meant a local path rather than a Hugging Face Hub id ('name' or 'owner/name'): it starts with
    '.', '/' or '~', holds a backslash or more than one '/', or ends in a file suffix. Such a name that is not on disk
    is reported as a missing path, never looked up on the Hub."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or \
        name.lower().endswith(FILE_SUFFIXES)


def cache_dir() -> Path:
    """$TEXTLDM_CACHE, else $XDG_CACHE_HOME/textldm, else ~/.cache/textldm."""
    if os.environ.get("TEXTLDM_CACHE"):
        return Path(os.environ["TEXTLDM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "textldm"


@contextlib.contextmanager
def atomic_dir(target: Path | str):
    """Yield a temporary sibling folder; on success it replaces `target` by rename, on error it is removed,
    so a reader never sees a half-written folder and the previous version survives a crash."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a text file atomically (a temporary file in the same folder, renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path | str, obj) -> None:
    """Write JSON atomically (indented, sorted keys)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def derive_seed(*keys: int | str) -> int:
    """The one seeding helper: a 63-bit seed hashed from a tuple of keys, e.g. ("batch", seed, step, stream) or
    ("noise", seed, window, row). Distinct tuples give unrelated seeds (a collision has probability ~2^-63 per
    pair), unlike arithmetic such as seed * a + step * b + i, where (step, i + b) meets (step + 1, i)."""
    parts = [k.encode() if isinstance(k, str) else int(k).to_bytes(16, "little", signed=True) for k in keys]
    data = b"\x00".join(len(part).to_bytes(2, "little") + part for part in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def seeded_generator(*keys: int | str) -> torch.Generator:
    """A CPU generator seeded by `derive_seed(*keys)`."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment() -> dict:
    """What reproduces a run, saved with every run and saved model: textldm's version, library versions, the
    command line, the git revision of the source (when it is a git checkout), and the devices."""
    import importlib.metadata as md

    from textldm.version import __version__

    versions = {"textldm": __version__}
    for pkg in ("torch", "transformers", "tokenizers", "safetensors", "numpy", "datasets", "huggingface_hub"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
            "command": sys.argv, "git": git_revision(), "devices": devices()}


def git_revision(folder: Path | None = None) -> dict | None:
    """{"commit", "dirty"} of the git checkout holding this source (None outside one, or without git)."""
    folder = folder or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def devices() -> dict:
    """CPU threads, and each CUDA device's name, memory and capability with the CUDA and driver versions."""
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": None}
    if torch.cuda.is_available():
        info["cuda"] = {"version": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                        "driver": _nvidia_driver(),
                        "devices": [{"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                                     "capability": f"{p.major}.{p.minor}"}
                                    for p in map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))]}
    return info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def pad_rows(rows: list[list[int]], width: int | None = None, left: bool = True, device=None,
             fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids as one (N, width) tensor and its mask (True at the real tokens): padded on the left (the
    rows end together, as a causal reader or a block layout wants them) or the right; `width` defaults to the
    longest row. The one padding of id rows (the AR baseline, the block sampler, the context LM, the latent codec,
    an HF model in the evaluation harness)."""
    width = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = True
    return ids.to(device), mask.to(device)


def cut_at(rows: list[list[int]], stop_id: int | None) -> list[list[int]]:
    """Each row of token ids up to (not including) its first `stop_id`."""
    return [row[: row.index(stop_id)] if stop_id in row else row for row in rows]


def param_count(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The text up to its first stop sequence (empty ones never match), and "stop" when one was found (None
    otherwise): the one stop-sequence rule of the OpenAI API and the lm-eval harness."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(hits)], "stop") if hits else (text, None)
