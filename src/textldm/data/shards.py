"""Token shards on disk and batches read from them.

A tokenized corpus is a folder with `meta.json` and flat uint32 files `{split}-{k:05d}.bin`, each a run
of documents, every document followed by the end-of-text token. Reading memory-maps the files, so a
corpus of billions of tokens costs no RAM. The train/validation split is per document and fixed by a hash
of the document's text, so it does not depend on order or on which other documents are present.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..utils import atomic_dir, cache_dir
from .corpus import load_documents

log = logging.getLogger(__name__)

SHARD_TOKENS = 100_000_000
FORMAT_VERSION = 1


def is_validation(doc: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def _source_key(source: str) -> str:
    path = Path(source)
    if path.exists():  # local data: key on content identity (paths, sizes, mtimes)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        return ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())
    return source


def write_shards(out: Path, token_arrays, split: str) -> tuple[list[str], int]:
    """Write an iterable of uint32 arrays into shard files of at most SHARD_TOKENS tokens."""
    names, buffer, filled, total = [], [], 0, 0

    def flush():
        nonlocal buffer, filled
        if buffer:
            name = f"{split}-{len(names):05d}.bin"
            np.concatenate(buffer).astype(np.uint32).tofile(out / name)
            names.append(name)
            buffer, filled = [], 0

    for arr in token_arrays:
        buffer.append(arr)
        filled += len(arr)
        total += len(arr)
        if filled >= SHARD_TOKENS:
            flush()
    flush()
    return names, total


def tokenize_corpus(data_cfg, tokenizer, tokenizer_name: str, eot_id: int) -> Path:
    """Tokenize the configured source once (cached by source, tokenizer and split settings); returns the folder."""
    key = json.dumps([FORMAT_VERSION, _source_key(data_cfg.source), data_cfg.text_field, data_cfg.hf_config,
                      data_cfg.hf_split, data_cfg.val_fraction, data_cfg.max_documents, tokenizer_name, len(tokenizer)])
    folder = cache_dir() / "tokens" / hashlib.sha1(key.encode()).hexdigest()[:16]
    if (folder / "meta.json").exists():
        return folder
    docs = load_documents(data_cfg.source, data_cfg.text_field, data_cfg.hf_config, data_cfg.hf_split)
    if data_cfg.max_documents:
        docs = docs[: data_cfg.max_documents]
    splits = {"train": [], "val": []}
    for d in docs:
        splits["val" if is_validation(d, data_cfg.val_fraction) else "train"].append(d)
    if not splits["train"] or not splits["val"]:
        raise UserError(f"data source '{data_cfg.source}' has {len(docs)} document(s), too few for a train/validation "
                        f"split at data.val_fraction={data_cfg.val_fraction}; add documents or change the fraction")
    meta = {"format": FORMAT_VERSION, "source": data_cfg.source, "tokenizer": tokenizer_name,
            "vocab_size": len(tokenizer), "eot_id": eot_id, "splits": {}}
    with atomic_dir(folder) as tmp:
        for split, split_docs in splits.items():
            def arrays():
                for i in range(0, len(split_docs), 256):
                    batch = tokenizer(split_docs[i: i + 256], add_special_tokens=False)["input_ids"]
                    for ids in batch:
                        yield np.asarray(ids + [eot_id], dtype=np.uint32)
            files, total = write_shards(tmp, arrays(), split)
            meta["splits"][split] = {"files": files, "tokens": total, "documents": len(split_docs)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    log.info("tokenized %s: %s", data_cfg.source, {k: v["tokens"] for k, v in meta["splits"].items()})
    return folder


class TokenStream:
    """Memory-mapped token stream of one split; draws fixed-length windows."""

    def __init__(self, folder: Path | str, split: str):
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        files = self.meta["splits"][split]["files"]
        self.parts = [np.memmap(folder / f, dtype=np.uint32, mode="r") for f in files]
        self.sizes = np.array([len(p) for p in self.parts])
        self.eot_id = self.meta["eot_id"]

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def windows(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """n random windows of `length` tokens (never crossing a shard boundary) -> (n, length) int64."""
        usable = np.maximum(self.sizes - length, 0)
        if usable.sum() == 0:
            raise UserError(f"every token shard is shorter than the window of {length} tokens; use more data "
                            f"or a shorter sequence length")
        starts = torch.randint(0, int(usable.sum()), (n,), generator=generator).numpy()
        bounds = np.cumsum(usable)
        out = np.empty((n, length), dtype=np.int64)
        for i, s in enumerate(starts):
            part = int(np.searchsorted(bounds, s, side="right"))
            offset = int(s - (bounds[part - 1] if part else 0))
            out[i] = self.parts[part][offset: offset + length]
        return torch.from_numpy(out)
