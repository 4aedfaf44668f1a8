"""A frozen LM's features of fixed windows, precomputed to disk (`FeatureCache`), as the alternative to running the LM
at every step: the REPA teacher's (vae.teacher_cache) and the context LM's (dit.context_lm.features) - one folder
when they are the same LM at the same layer and window.

The cache covers fixed windows of the training split: window k is `length` tokens at a fixed place in a
shard (consecutive, non-overlapping, never crossing a shard). Its folder holds `windows.npy` ((n, 2):
shard, offset), `features.bin` ((n, length, hidden) float16, memory-mapped) and `meta.json`. Training
with a cache draws whole cached windows (by index, seeded per step) and reads their features instead of
running the LM. The trade-off (docs/design.md): 2 bytes x hidden per token of disk (4 KB per token for
Qwen3-1.7B) against the LM's forward FLOPs at every step.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from textldm.data.shards import TokenStream
from textldm.errors import UserError
from textldm.runtime.distributed import barrier, is_main
from textldm.runtime.precision import frozen_lm_context
from textldm.utils import atomic_dir, cache_dir


def default_folder(stream: TokenStream, teacher_name: str, layer: int, length: int, windows: int) -> Path:
    """The cache folder for (corpus, teacher, layer, window length, windows), under the textldm cache."""
    key = json.dumps([stream.folder.name, teacher_name, layer, length, windows])
    return cache_dir() / "teacher" / hashlib.sha1(key.encode()).hexdigest()[:16]


def aligned_windows(stream: TokenStream, length: int, limit: int = 0) -> np.ndarray:
    """(n, 2) int64 [shard, offset] of the consecutive windows of `length` tokens, in shard order."""
    rows = [(part, start) for part, size in enumerate(stream.sizes)
            for start in range(0, int(size) - length + 1, length)]
    if not rows:
        raise UserError(f"no token shard holds a window of {length} tokens; use more data or a shorter vae.max_len")
    rows = np.asarray(rows, dtype=np.int64)
    return rows[:limit] if limit else rows


@torch.no_grad()
def build_teacher_cache(stream: TokenStream, teacher, teacher_name: str, layer: int, length: int, folder: Path,
                        limit: int = 0, batch_size: int = 16, device: torch.device = torch.device("cpu"),
                        progress: bool = True) -> Path:
    """Run the teacher once over the aligned windows (at most `limit`, 0 = all) and store its features."""
    from tqdm.auto import tqdm

    windows = aligned_windows(stream, length, limit)
    hidden = teacher.hidden_size
    with atomic_dir(folder) as tmp:
        np.save(tmp / "windows.npy", windows)
        features = np.memmap(tmp / "features.bin", dtype=np.float16, mode="w+", shape=(len(windows), length, hidden))
        for start in tqdm(range(0, len(windows), batch_size), desc="teacher features", disable=not progress):
            ids = window_ids(stream, windows[start: start + batch_size], length).to(device)
            with frozen_lm_context(device):
                out = teacher(ids)
            features[start: start + len(ids)] = out.float().cpu().numpy().astype(np.float16)
        features.flush()
        del features
        (tmp / "meta.json").write_text(json.dumps({"teacher": teacher_name, "layer": layer, "length": length,
                                                   "hidden": hidden, "windows": len(windows),
                                                   "tokens": stream.folder.name}, indent=2))
    return folder


def window_ids(stream: TokenStream, rows: np.ndarray, length: int) -> torch.Tensor:
    """(n, length) token ids of cached windows given as (shard, offset) rows."""
    return torch.from_numpy(np.stack([np.asarray(stream.parts[p][o: o + length], dtype=np.int64) for p, o in rows]))


class FeatureCache:
    """A built cache, memory-mapped: `ids(idx)` and `features(idx)` of cached windows."""

    def __init__(self, folder: Path | str, stream: TokenStream):
        folder = Path(folder)
        if not (folder / "meta.json").exists():
            raise UserError(f"'{folder}' is not a teacher-feature cache (no meta.json); build it with "
                            f"`textldm cache-teacher` or set vae.teacher_cache=auto")
        self.meta = json.loads((folder / "meta.json").read_text())
        if self.meta["tokens"] != stream.folder.name:
            raise UserError(f"teacher cache '{folder}' was built for another tokenized corpus; rebuild it")
        self.stream, self.length = stream, self.meta["length"]
        self.rows = np.load(folder / "windows.npy")
        self.features_map = np.memmap(folder / "features.bin", dtype=np.float16, mode="r",
                                      shape=(self.meta["windows"], self.length, self.meta["hidden"]))

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids of the cached windows `idx`."""
        return window_ids(self.stream, self.rows[idx.numpy()], self.length)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """FrozenLM features (float32) of the cached windows `idx`."""
        return torch.from_numpy(np.stack([self.features_map[i] for i in idx.tolist()]).astype(np.float32))


def open_or_build(stream: TokenStream, teacher, teacher_name: str, layer: int, length: int, setting: str,
                  windows: int, batch_size: int, device: torch.device, progress: bool, what: str) -> FeatureCache:
    """The precomputed features a setting names ("auto": a folder in the cache keyed by corpus, teacher, layer and
    window; else the folder given), built on rank 0 the first time, checked against the run's layer and length.
    `what`: the setting's key, for the messages (vae.teacher_cache, dit.context_lm.features)."""
    folder = default_folder(stream, teacher_name, layer, length, windows) if setting == "auto" else Path(setting)
    if is_main() and not (folder / "meta.json").exists():
        build_teacher_cache(stream, teacher, teacher_name, layer, length, folder, windows, batch_size, device, progress)
    barrier()
    cache = FeatureCache(folder, stream)
    if cache.length != length or cache.meta["layer"] != layer or cache.meta["hidden"] != teacher.hidden_size:
        raise UserError(f"{what} '{folder}' holds layer {cache.meta['layer']} windows of {cache.length} tokens, "
                        f"{cache.meta['hidden']} features each; this run needs layer {layer}, {length}, "
                        f"{teacher.hidden_size}: use another folder or auto")
    return cache
