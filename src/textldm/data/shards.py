"""Token shards on disk and batches read from them.

A tokenized corpus is a folder with `meta.json` and shard files `{split}-{k:05d}.bin`: a 64-byte header
(magic, format, bytes per token, token and document counts) and then a run of documents, every document
followed by the end-of-text token, as uint16 (vocabularies up to 65,536) or uint32. Reading memory-maps the files, so a
corpus of billions of tokens costs no RAM. The train/validation split is per document and fixed by a hash
of the document's text, so it does not depend on order or on which other documents are present.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from textldm.data.corpus import read_unit, source_units
from textldm.errors import UserError
from textldm.models.lm import load_tokenizer
from textldm.utils import atomic_dir, cache_dir

log = logging.getLogger(__name__)

SHARD_TOKENS = 100_000_000
FORMAT_VERSION = 2
HEADER_BYTES = 64
MAGIC = b"TLDMTOK\x00"


def is_validation(doc: str, val_fraction: float) -> bool:
    """Whether a document is held out: a fixed function of its text (a hash), so the split never depends on order or
    sharding."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def _source_key(source: str) -> str:
    path = Path(source)
    if path.exists():  # local data: key on content identity (paths, sizes, mtimes)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        return ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())
    return source


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2-sized vocabularies: half the disk), else uint32 (Qwen3's 151,936)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


# shard files: a 64-byte header (magic, format, bytes per token, tokens, documents), then the token ids ------
def _header(dtype: np.dtype, tokens: int, documents: int) -> bytes:
    head = MAGIC + struct.pack("<IIQQ", FORMAT_VERSION, dtype.itemsize, tokens, documents)
    return head.ljust(HEADER_BYTES, b"\x00")


def read_header(path: Path) -> tuple[np.dtype, int, int]:
    """(dtype, tokens, documents) of a shard file."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
        raise UserError(f"'{path}' is not a textldm token shard (an older cache format?); delete its folder and "
                        f"run again to re-tokenize")
    version, itemsize, tokens, documents = struct.unpack("<IIQQ", head[len(MAGIC): len(MAGIC) + 24])
    if version != FORMAT_VERSION:
        raise UserError(f"token shard '{path}' has format {version}, this textldm reads {FORMAT_VERSION}; re-tokenize")
    return np.dtype(np.uint16 if itemsize == 2 else np.uint32), tokens, documents


class ShardWriter:
    """Appends documents (token runs, each ending in end-of-text) to `{split}-{k:05d}.bin` files, starting a
    new file once one holds SHARD_TOKENS tokens; a document never straddles two files."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.files, self.tokens, self.documents = [], 0, 0
        self.file, self.file_tokens, self.file_docs = None, 0, 0

    def _open(self):
        name = f"{self.split}-{len(self.files):05d}.bin"
        self.files.append(name)
        self.file = open(self.folder / name, "wb")
        self.file.write(_header(self.dtype, 0, 0))
        self.file_tokens = self.file_docs = 0

    def _close(self):
        if self.file is not None:
            self.file.seek(0)
            self.file.write(_header(self.dtype, self.file_tokens, self.file_docs))
            self.file.close()
            self.file = None

    def add(self, tokens: np.ndarray, lengths: np.ndarray):
        """Documents laid end to end in `tokens`, with their lengths."""
        ends = np.cumsum(lengths)
        start_doc, start_tok = 0, 0
        while start_doc < len(lengths):
            if self.file is None or self.file_tokens >= SHARD_TOKENS:
                self._close()
                self._open()
            room = SHARD_TOKENS - self.file_tokens  # documents that start before the file is full go in it
            last = int(np.searchsorted(ends, start_tok + room, side="left"))
            stop_doc = min(len(lengths), max(last + 1, start_doc + 1))
            stop_tok = int(ends[stop_doc - 1])
            np.asarray(tokens[start_tok:stop_tok], dtype=self.dtype).tofile(self.file)
            self.file_tokens += stop_tok - start_tok
            self.file_docs += stop_doc - start_doc
            self.tokens += stop_tok - start_tok
            self.documents += stop_doc - start_doc
            start_doc, start_tok = stop_doc, stop_tok

    def close(self) -> dict:
        """Finish the last shard; returns the split's files, tokens and documents."""
        self._close()
        return {"files": self.files, "tokens": self.tokens, "documents": self.documents}


# tokenization: units in parallel, assembled in unit order (identical shards for any number of workers) -----
_worker_tokenizer = None


def _init_worker(tokenizer_name: str):
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the parallelism is ours: one process per unit
    _worker_tokenizer = load_tokenizer(tokenizer_name)


def _tokenize_unit(job: tuple) -> dict:
    """Tokenize one unit into two raw part files (train, val); returns each document's split and length."""
    index, unit, text_field, val_fraction, eot_id, max_documents, parts, dtype = job
    files = {split: open(parts / f"{index:06d}-{split}.bin", "wb") for split in ("train", "val")}
    flags, lengths = [], []

    def flush(docs: list[str]):
        batch = _worker_tokenizer(docs, add_special_tokens=False)["input_ids"]
        for doc, ids in zip(docs, batch):
            val = is_validation(doc, val_fraction)
            np.asarray(ids + [eot_id], dtype=dtype).tofile(files["val" if val else "train"])
            flags.append(val)
            lengths.append(len(ids) + 1)

    pending = []
    for doc in read_unit(unit, text_field):
        if not doc.strip():
            continue
        pending.append(doc)
        if len(pending) == 256:
            flush(pending)
            pending = []
        if max_documents and len(flags) + len(pending) >= max_documents:
            break
    if pending:
        flush(pending)
    for f in files.values():
        f.close()
    return {"index": index, "val": np.asarray(flags, dtype=bool), "lengths": np.asarray(lengths, dtype=np.int64)}


def tokenize_corpus(data_cfg, tokenizer, tokenizer_name: str, eot_id: int, workers: int | None = None) -> Path:
    """Tokenize the configured source once (cached by source, tokenizer and split settings); returns the folder.
    Units (files, archive members, chunks of documents) are tokenized by `workers` processes (default
    data.num_workers; 0 = up to 8, one per CPU) and assembled in source order, so the shards are identical
    whatever the number of workers."""
    key = json.dumps([FORMAT_VERSION, _source_key(data_cfg.source), data_cfg.text_field, data_cfg.hf_config,
                      data_cfg.hf_split, data_cfg.val_fraction, data_cfg.max_documents, tokenizer_name, len(tokenizer)])
    folder = cache_dir() / "tokens" / hashlib.sha1(key.encode()).hexdigest()[:16]
    if (folder / "meta.json").exists():
        return folder
    units = source_units(data_cfg.source, data_cfg.text_field, data_cfg.hf_config, data_cfg.hf_split)
    workers = workers or data_cfg.num_workers or min(8, os.cpu_count() or 1)
    workers = max(1, min(workers, len(units)))
    dtype = token_dtype(len(tokenizer))
    with atomic_dir(folder) as tmp:
        parts = tmp / "parts"
        parts.mkdir()
        jobs = [(i, u, data_cfg.text_field, data_cfg.val_fraction, eot_id, data_cfg.max_documents, parts, dtype)
                for i, u in enumerate(units)]
        writers = {split: ShardWriter(tmp, split, dtype) for split in ("train", "val")}
        left = data_cfg.max_documents or float("inf")
        if workers == 1:
            global _worker_tokenizer
            _worker_tokenizer = tokenizer
            results = map(_tokenize_unit, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer_name,))
            results = pool.imap(_tokenize_unit, jobs)
        try:
            for res in tqdm(results, total=len(jobs), desc="tokenize", unit="unit", disable=len(jobs) < 4):
                keep = int(min(left, len(res["lengths"])))  # data.max_documents: the first N in source order
                left -= keep
                for split, is_val in (("train", False), ("val", True)):
                    part = parts / f"{res['index']:06d}-{split}.bin"
                    lengths = res["lengths"][:keep][res["val"][:keep] == is_val]
                    if len(lengths):
                        writers[split].add(np.memmap(part, dtype=dtype, mode="r")[: int(lengths.sum())], lengths)
                    part.unlink()
        finally:
            if pool is not None:
                pool.terminate()
        shutil.rmtree(parts)
        splits = {split: w.close() for split, w in writers.items()}
        if not splits["train"]["documents"] or not splits["val"]["documents"]:
            total = splits["train"]["documents"] + splits["val"]["documents"]
            raise UserError(f"data source '{data_cfg.source}' has {total} document(s), too few for a train/validation "
                            f"split at data.val_fraction={data_cfg.val_fraction}; add documents or change the fraction")
        meta = {"format": FORMAT_VERSION, "source": data_cfg.source, "tokenizer": tokenizer_name,
                "vocab_size": len(tokenizer), "eot_id": eot_id, "dtype": dtype.name, "units": len(units),
                "splits": splits}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    log.info("tokenized %s: %s", data_cfg.source, {k: v["tokens"] for k, v in meta["splits"].items()})
    return folder


class TokenStream:
    """Memory-mapped token stream of one split; draws fixed-length windows."""

    def __init__(self, folder: Path | str, split: str):
        self.folder = folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        files = self.meta["splits"][split]["files"]
        self.parts = []
        for f in files:  # memory-mapped after the header: a corpus of billions of tokens costs no RAM
            dtype, tokens, _ = read_header(folder / f)
            self.parts.append(np.memmap(folder / f, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(tokens,)))
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
