"""SSD-LM's objective: a block of B tokens after a clean context of random length, noised as almost-one-hot logit
vectors under the cosine schedule (diffusion/simplex.py) at a step t drawn uniformly from 1..T, and the cross-entropy
of the network's logits against the block's clean tokens."""
from __future__ import annotations

import torch
import torch.nn as nn

from textldm.diffusion.simplex import noised, simplex_of
from textldm.models.ssd import SimplexDenoiser


class SSDObjective(nn.Module):
    """The nn.Module `fit` trains: `batch` lays out a step's contexts, blocks, times and noise; `forward` the mean
    cross-entropy over the blocks' tokens."""

    def __init__(self, model: SimplexDenoiser):
        super().__init__()
        self.model = model

    def batch(self, stream, length: int, batch_size: int, g: torch.Generator, rows: slice,
              device: torch.device) -> dict:
        """The global batch of one step, drawn from `g` in this order - windows (N, L), each row's context length in
        0..L - B, each row's step t in 1..T, the noise (N, B, V) - then this part's `rows`. A row's context is the
        window's first c tokens, left-padded to L - B positions (masked out of attention); its block the next B."""
        cfg, V = self.model.cfg, self.model.vocab_size
        B = cfg.block_size
        ids = stream.windows(batch_size, length, g)
        c = torch.randint(0, length - B + 1, (batch_size,), generator=g)
        t = torch.randint(1, cfg.diffusion_steps + 1, (batch_size,), generator=g)
        noise = torch.randn(batch_size, B, V, generator=g)
        C = length - B
        context = torch.zeros(batch_size, C, dtype=torch.long)
        key_mask = torch.ones(batch_size, length, dtype=torch.bool)
        block = torch.stack([ids[i, c[i]: c[i] + B] for i in range(batch_size)])
        for i in range(batch_size):
            context[i, C - c[i]:] = ids[i, : c[i]]
            key_mask[i, : C - c[i]] = False
        return {"context": context[rows].to(device), "block": block[rows].to(device), "t": t[rows].to(device),
                "noise": noise[rows].to(device), "key_mask": key_mask[rows].to(device)}

    def noisy(self, batch: dict) -> torch.Tensor:
        """The block's noisy logit vectors w_t (N, B, V)."""
        cfg = self.model.cfg
        w0 = simplex_of(batch["block"], self.model.vocab_size, cfg.simplex_k)
        return noised(w0, batch["t"], batch["noise"], cfg.diffusion_steps, cfg.simplex_k)

    def forward(self, batch: dict, step: int):
        """(loss, metrics): the block tokens' mean cross-entropy."""
        loss = self.model.block_nll(batch["context"], self.noisy(batch), batch["t"], batch["block"], batch["key_mask"])
        return loss, {"loss": loss.detach()}
