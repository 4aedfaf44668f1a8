"""Measurements of generated text on held-out data, used by the demo report, the harness and the benches:
held-out (prompt, reference) pairs, prompt dependence (position agreement of continuations from one shared noise),
and the corpus vocabulary (known-word share). The held-out checks a training stage runs live in
`training/evaluate.py`."""
from __future__ import annotations

import numpy as np
import torch

from textldm.data.shards import TokenStream
from textldm.evaluation.metrics import words

AGREEMENT_PROMPTS = 24  # prompts continued from one shared noise for the prompt-dependence figure


def position_agreement(rows: list[list[int]]) -> float:
    """Mean over pairs of rows of the share of positions (up to the shorter row) holding the same token."""
    shares = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            n = min(len(rows[i]), len(rows[j]))
            if n:
                shares.append(sum(a == b for a, b in zip(rows[i][:n], rows[j][:n])) / n)
    return float(np.mean(shares)) if shares else float("nan")


@torch.no_grad()
def same_noise_agreement(pipe, prompts: list[list[int]], length: int, seed: int = 0) -> float:
    """Prompt dependence: every prompt continued from the SAME starting noise (row 0's, in one batch), then the
    position agreement of the continuations. Continuations that follow their prompts agree about as often as
    unrelated text does; a model whose output is decided by the noise agrees far more."""
    return position_agreement(pipe.generate_ids(prompts, length, seed=seed, shared_noise=True))


def heldout_prompts(stream: TokenStream, n: int, prompt_len: int, ref_len: int,
                    seed: int) -> list[tuple[list[int], list[int]]]:
    """n (prompt ids, reference ids) pairs cut at random places inside held-out documents (documents drawn in
    proportion to their length, so a few long documents can give many pairs; no pair crosses a document end)."""
    tokens = np.concatenate([np.asarray(p) for p in stream.parts])
    ends = np.flatnonzero(tokens == stream.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    room = ends - starts - prompt_len - ref_len  # number of valid cut points minus one, per document
    ok = np.flatnonzero(room >= 0)
    if len(ok) == 0:
        return []
    rng = np.random.default_rng(seed)
    docs = rng.choice(ok, size=n, p=(room[ok] + 1) / (room[ok] + 1).sum())
    pairs = []
    for d in docs:
        s = int(starts[d] + rng.integers(0, room[d] + 1))
        pairs.append((tokens[s: s + prompt_len].tolist(), tokens[s + prompt_len: s + prompt_len + ref_len].tolist()))
    return pairs


def corpus_vocabulary(stream: TokenStream, tokenizer, max_tokens: int = 2_000_000) -> set[str]:
    """Words of (a prefix of) the training corpus, to tell real words from invented ones."""
    ids = np.asarray(stream.parts[0][:max_tokens])
    return set(words(tokenizer.decode(ids.tolist())))
