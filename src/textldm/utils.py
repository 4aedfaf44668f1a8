"""Small shared helpers: cache location, atomic writes, seeding, the environment record."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


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
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment() -> dict:
    """Library versions saved with every run and checkpoint."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "tokenizers", "safetensors", "numpy", "textldm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "versions": versions}


def cut_at(rows: list[list[int]], stop_id: int | None) -> list[list[int]]:
    """Each row of token ids up to (not including) its first `stop_id`."""
    return [row[: row.index(stop_id)] if stop_id in row else row for row in rows]

