"""The DiT's training objective, one subclass per generation mode (`window.WindowObjective`, `blocks.BlockObjective`,
`context_lm.ContextLMObjective`), and the pieces they share: the self-conditioning draw and first pass, the held-out
timesteps. An objective is the nn.Module that `fit` trains (and DDP wraps): `forward(batch, step) -> (loss,
metrics)` is the mean of its per-token velocity errors (`errors`) over the loss mask; the held-out report reduces the
same `errors` (`heldout`), so a change to the objective shows in the report."""
from __future__ import annotations

import torch
import torch.nn as nn

from textldm.config import Config, DiTConfig
from textldm.diffusion.flow import clean_estimate, masked_row_mean
from textldm.models.dit import TextDiT

HEAD_TOKENS = 4  # held-out: the first target tokens (of a block), where the prompt carries the most information


@torch.no_grad()
def first_pass_estimate(velocity_of_rows, x_t: torch.Tensor, t: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Self-conditioning in training: the clean-target estimate x_t + (1 - t) v of a gradient-free first pass for
    the `chosen` rows (N,) - `velocity_of_rows(rows)` runs the DiT on those rows alone, so only they pay for it - and
    zeros for the others, as at the first sampling step. t: (N,), or per position (N, L)."""
    estimate = torch.zeros_like(x_t)
    rows = chosen.nonzero().flatten()
    if len(rows):
        estimate[rows] = clean_estimate(x_t[rows], t[rows], velocity_of_rows(rows)).to(estimate.dtype)
    return estimate


def self_condition_rows(d: DiTConfig, batch_size: int, g: torch.Generator, rows: slice,
                        device: torch.device) -> torch.Tensor:
    """The rows (of a batch's `rows`) whose examples read a first pass's estimate (dit.self_condition_prob), drawn last
    from the batch's generator so that the other draws do not depend on the setting."""
    return (torch.rand(batch_size, generator=g) < d.self_condition_prob)[rows].to(device)


def stratified_t(n: int, g: torch.Generator) -> torch.Tensor:
    """n held-out times, a quarter of them in each quarter of [0, 1]."""
    return ((torch.arange(n) % 4) + torch.rand(n, generator=g)) / 4


class DiTObjective(nn.Module):
    """What the DiT is trained on in one generation mode: the batch layout (`batch`), the per-token velocity errors
    (`errors`) and the positions the loss averages (`loss_mask`), the held-out times and errors (`heldout_times`,
    `heldout`), the tokens and FLOPs of a step (`tokens_per_sequence`, `train_flops`), and what the batches are drawn
    from (`training_source`). Holding the DiT (and what else the mode trains with, e.g. a context LM), it is what
    `fit` trains."""

    def __init__(self, dit: TextDiT):
        super().__init__()
        self.dit = dit

    def forward(self, batch: dict, step: int):
        """(loss, metrics) of one micro-batch: the mean over samples of each sample's velocity MSE."""
        loss = masked_row_mean(self.errors(batch, batch["drop"], batch.get("self_cond")), self.loss_mask(batch)).mean()
        return loss, {"loss": loss.detach()}

    def batch(self, source, vae, batch_size: int, g: torch.Generator, rows: slice, device: torch.device,
              t: torch.Tensor | None = None) -> dict:
        """The `rows` of a global batch of `batch_size` examples drawn from `source` with `g` (`t`: given times)."""
        raise NotImplementedError

    def errors(self, batch: dict, drop: torch.Tensor | None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """(N, L) squared velocity errors, the prompt dropped where `drop`; `self_cond`: the rows reading a first pass's
        estimate."""
        raise NotImplementedError

    def loss_mask(self, batch: dict) -> torch.Tensor:
        """The positions the loss averages over."""
        raise NotImplementedError

    def heldout_times(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def heldout(self, batch: dict) -> dict:
        raise NotImplementedError

    def tokens_per_sequence(self) -> int:
        raise NotImplementedError

    def train_flops(self, batch_size: int) -> float:
        raise NotImplementedError

    def training_source(self, cfg: Config, stream, device: torch.device, progress: bool = True):
        """What the training batches are drawn from (`batch`'s first argument): the training stream, unless the mode
        precomputes something of it once (`context_lm.ContextLMObjective`: the context LM's states on disk)."""
        return stream
