"""The masked-diffusion baselines' objective (MDLM, BD3-LM): the continuous-time NELBO of diffusion/masking.py - the
masked tokens' cross-entropy weighted by w(t) = 1 / t - averaged over every token of the batch (a clean token adds 0:
SUBS carries it over). BD3-LM draws one t per block (each block's loss is MDLM's given the clean blocks before it);
MDLM one per window. The times are stratified over the batch's blocks (antithetic), in [masked.t_min, masked.t_max]
(BD3-LM's clipped schedule when narrowed); the held-out bound (`nelbo`) always spans [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn

from textldm.diffusion.masking import antithetic_times, elbo_weight, mask_tokens
from textldm.models.masked import MaskedDenoiser


class MaskedObjective(nn.Module):
    """The nn.Module `fit` trains: `batch` lays out a step's windows, times and masking draws; `forward` is the mean
    NELBO term per token."""

    def __init__(self, model: MaskedDenoiser):
        super().__init__()
        self.model = model

    def blocks_per_window(self, length: int) -> int:
        return 1 if self.model.block == 0 else length // self.model.block

    def batch(self, stream, length: int, batch_size: int, g: torch.Generator, rows: slice, device: torch.device,
              t_range: tuple[float, float] | None = None) -> dict:
        """The global batch of one step, drawn from `g` in this order - windows (N, L), each block's time
        (N, L / B; one per window for MDLM), each token's masking uniform (N, L) - then this part's `rows`.
        `t_range`: the times' interval (default the config's [t_min, t_max])."""
        cfg = self.model.cfg
        low, high = t_range or (cfg.t_min, cfg.t_max)
        ids = stream.windows(batch_size, length, g)
        nb = self.blocks_per_window(length)
        t = antithetic_times(batch_size * nb, g, low, high, cfg.antithetic)
        t = t[torch.randperm(batch_size * nb, generator=g)].view(batch_size, nb)
        uniforms = torch.rand(batch_size, length, generator=g)
        return {"ids": ids[rows].to(device), "t": t[rows].to(device), "uniforms": uniforms[rows].to(device)}

    def noised(self, batch: dict):
        """(x_t, each token's time (N, L)) of a batch: a token masked where its uniform is below its block's t."""
        ids, t = batch["ids"], batch["t"]
        per_token = t.repeat_interleave(ids.shape[1] // t.shape[1], dim=1)
        x_t, _ = mask_tokens(ids, per_token, batch["uniforms"], self.model.mask_id)
        return x_t, per_token

    def terms(self, batch: dict) -> torch.Tensor:
        """The sum over the batch's tokens of the NELBO terms: w(t) x -log p(x_0 | x_t) at masked positions."""
        x_t, per_token = self.noised(batch)
        weights = torch.where(x_t == self.model.mask_id, elbo_weight(per_token), torch.zeros_like(per_token))
        return self.model.weighted_nll(x_t, batch["t"], batch["ids"], weights,
                                       clean=batch["ids"] if self.model.block else None)

    def forward(self, batch: dict, step: int):
        """(loss, metrics): the NELBO terms' mean over every token of the micro-batch."""
        loss = self.terms(batch) / batch["ids"].numel()
        masked = (batch["uniforms"] < batch["t"].repeat_interleave(batch["ids"].shape[1] // batch["t"].shape[1], 1))
        return loss, {"loss": loss.detach(), "masked": masked.float().mean().detach()}

    @torch.no_grad()
    def nelbo(self, batch: dict) -> tuple[float, int]:
        """(sum of the NELBO terms, tokens) of a batch whose times span [0, 1]: its mean over tokens estimates the
        bound on -log p per token (exact in expectation over the times)."""
        return self.terms(batch).item(), batch["ids"].numel()
