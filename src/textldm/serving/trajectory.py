"""The denoising trajectory of a streamed generation, as events: per sampling step, the decoded tokens of the
current window (block-causal models: the current block, decoded beside its prefix), how far each token's latent
moved, and which tokens flipped."""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

from textldm.utils import cut_at


class Trajectory:
    """Turns the sampler's per-step latents of one row into step events: the decoded tokens of the current
    window, how far each token's latent moved in that step (RMS over channels), and which token ids flipped."""

    def __init__(self, pipe, steps: int, emit: Callable[[dict], None], check: Callable[[], None]):
        self.pipe, self.steps, self.emit, self.check = pipe, steps, emit, check
        self.window, self.committed, self.previous_x, self.previous_ids = -1, [], None, None

    reads_tokens = True  # the sampler passes the step's decoder (`sampling.SamplingRun`)

    def __call__(self, step: int, t: float, x: torch.Tensor, decode):
        self.check()
        x = x[:1].float()
        if step == 1:  # a window starts from fresh noise (the sampler does not show us that noise)
            self.window, self.previous_x, self.previous_ids = self.window + 1, None, None
        ids = decode(x)[0]
        if self.previous_x is None:
            change = [0.0] * len(ids)
        else:
            change = (x - self.previous_x)[0].pow(2).mean(-1).sqrt().tolist()
        flipped = [True] * len(ids) if self.previous_ids is None else [a != b for a, b in zip(ids, self.previous_ids)]
        tok, eot = self.pipe.tokenizer, self.pipe.eot_id
        shown = len(cut_at([ids], eot)[0])
        self.emit({"window": self.window, "step": step, "steps": self.steps, "t": round(float(t), 4),
                   "tokens": token_pieces(tok, ids[:shown]),
                   "change": [round(c, 4) for c in change[:shown]], "flipped": flipped[:shown],
                   "text": tok.decode(cut_at([self.committed + ids], eot)[0])})
        self.previous_x, self.previous_ids = x, ids
        if step == self.steps:
            self.committed += ids


def token_pieces(tokenizer, ids: list[int], context: int = 4) -> list[str]:
    """The text each token adds: decode(up to `context` tokens before it + it) minus decode(those before), so
    word-initial spaces and merged characters survive (decoding tokens alone loses them) and the pieces join
    to the decoded text. Tokens that leave a character incomplete (its bytes spread over several tokens) add
    "", and their text shows with the token that completes it. Short windows keep this linear in the row
    length (it runs at every streamed step)."""
    pieces, start = [], 0  # ids[start:] are the tokens whose text has not been given out yet
    for k in range(len(ids)):
        lo = max(0, start - context)
        full = tokenizer.decode(ids[lo: k + 1])
        if full.endswith("\ufffd") and k + 1 < len(ids):
            pieces.append("")
            continue
        left = tokenizer.decode(ids[lo:start])
        pieces.append(full[len(os.path.commonprefix([full, left])):])
        start = k + 1
    return pieces
