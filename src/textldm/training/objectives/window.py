"""The paper's full window in training (dit.mode=window): a prompt's clean latents, then one target of up to
dit.target_max latents at one t; the loss is the velocity MSE on the target's real tokens. Infilling examples
(dit.window.infill_prob) also read the text after the target."""
from __future__ import annotations

import torch

from textldm.data.shards import TokenStream
from textldm.diffusion.flow import interpolate, masked_row_mean, sample_t, velocity_error
from textldm.models.vae import TextVAE
from textldm.runtime.perf import TRAIN_FACTOR, dit_flops_per_sequence
from textldm.training.objectives.dit import (
    HEAD_TOKENS,
    DiTObjective,
    first_pass_estimate,
    self_condition_rows,
    stratified_t,
)


def split_context_target(window: torch.Tensor, context_len: torch.Tensor, target_len: torch.Tensor, context_max: int):
    """window (B, dit.window_tokens): the context is the `context_len` tokens just before position context_max, moved to
    the left edge (right padding); the target starts at position context_max."""
    idx = torch.arange(context_max)[None] + (context_max - context_len)[:, None]
    context_mask = torch.arange(context_max)[None] < context_len[:, None]
    context = torch.where(context_mask, window.gather(1, idx.clamp(max=context_max - 1)), 0)
    target = window[:, context_max:]
    target_mask = torch.arange(target.shape[1])[None] < target_len[:, None]
    return context, context_mask, torch.where(target_mask, target, 0), target_mask


def right_context(window: torch.Tensor, target_len: torch.Tensor, right_len: torch.Tensor, context_max: int):
    """The `right_len` tokens that follow each target's real end (target_len tokens after context_max) in `window`,
    moved to the left edge (right padding)."""
    start = context_max + target_len
    idx = (start[:, None] + torch.arange(context_max)[None]).clamp(max=window.shape[1] - 1)
    mask = torch.arange(context_max)[None] < right_len[:, None]
    return torch.where(mask, window.gather(1, idx), 0), mask


class WindowObjective(DiTObjective):
    """Full-window mode: the batch is (clean context latents, target latents, noise, t, CFG drop), each side encoded
    by the VAE separately; the loss is the velocity MSE on the target positions."""

    def batch(self, stream: TokenStream, vae: TextVAE, batch_size: int, g: torch.Generator, rows: slice,
              device: torch.device, t: torch.Tensor | None = None) -> dict:
        """The `rows` of a global batch drawn from `g` (`t`: given timesteps instead of drawn ones). Infilling
        examples (dit.window.infill_prob) also get the text after the target; self-conditioning picks its rows last."""
        d, C = self.dit.cfg, vae.cfg.latent_channels
        infill = d.window.infill_prob
        window = stream.windows(batch_size, d.window_tokens + (d.context_max if infill > 0 else 0), g)
        context_len = torch.randint(d.context_min, d.context_max + 1, (batch_size,), generator=g)
        target_len = torch.randint(d.target_min, d.target_max + 1, (batch_size,), generator=g)
        if t is None:
            t = sample_t(batch_size, d.t_distribution, d.t_mean, d.t_std, generator=g)
        drop = torch.rand(batch_size, generator=g) < d.p_uncond
        noise = torch.randn(batch_size, d.target_max, C, generator=g)
        parts = split_context_target(window[rows, :d.window_tokens], context_len[rows], target_len[rows], d.context_max)
        ctx, ctx_mask, tgt, tgt_mask = (x.to(device) for x in parts)
        batch = {"context": vae.latents(ctx, ctx_mask, d.normalize_latents), "context_mask": ctx_mask,
                 "target": vae.latents(tgt, tgt_mask, d.normalize_latents), "target_mask": tgt_mask,
                 "noise": noise[rows].to(device), "t": t[rows].to(device), "drop": drop[rows].to(device),
                 "target_ids": tgt}
        if infill > 0:  # the text right after the target's real end, for a share of the examples
            right_len = torch.randint(d.context_min, d.context_max + 1, (batch_size,), generator=g)
            right_len[torch.rand(batch_size, generator=g) >= infill] = 0
            right, right_mask = right_context(window[rows], target_len[rows], right_len[rows], d.context_max)
            right, right_mask = right.to(device), right_mask.to(device)
            batch["right"], batch["right_mask"] = vae.latents(right, right_mask, d.normalize_latents), right_mask
        if d.self_condition_prob > 0:
            batch["self_cond"] = self_condition_rows(d, batch_size, g, rows, device)
        return batch

    def loss_mask(self, batch: dict) -> torch.Tensor:
        """The positions the loss averages over: the target's real tokens."""
        return batch["target_mask"]

    def errors(self, batch: dict, drop: torch.Tensor, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """(N, Lt) squared velocity errors on the target, the prompt (and right context) replaced by the null
        condition where `drop`; `self_cond` (N,): the rows that read a first pass's estimate (`_self_condition`)."""
        x_t = interpolate(batch["noise"], batch["target"], batch["t"])
        right = batch.get("right")
        conditions = {"context": self.dit.drop_context(batch["context"], drop), "context_mask": batch["context_mask"],
                      "target_mask": batch["target_mask"], "right_mask": batch.get("right_mask"),
                      "right": None if right is None else self.dit.drop_context(right, drop)}
        estimate = None
        if self.dit.self_cond_proj is not None and self_cond is not None:
            estimate = first_pass_estimate(lambda rows: self.dit(
                x_t[rows], batch["t"][rows], **{k: None if c is None else c[rows] for k, c in conditions.items()}),
                x_t, batch["t"], self_cond)
        v = self.dit(x_t, batch["t"], **conditions, self_cond=estimate)
        return velocity_error(v, batch["noise"], batch["target"])

    def heldout_times(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """A held-out batch's timesteps: stratified over the quarters of [0, 1]."""
        return stratified_t(batch_size, g)

    @torch.no_grad()
    def heldout(self, batch: dict) -> dict:
        """Per sample of a held-out batch: t, the velocity MSE with the prompt and with it dropped, the same on the
        first HEAD_TOKENS target tokens, and the target latents. As sampling reads it: a continuation (no right
        context), a self-conditioning DiT reading its own first estimate."""
        batch = {**batch, "right": None, "right_mask": None}
        n, mask = len(batch["t"]), batch["target_mask"]
        head = mask & (torch.arange(mask.shape[1], device=mask.device) < HEAD_TOKENS)  # right after the prompt
        out, every = {"t": batch["t"].cpu()}, torch.ones(n, dtype=torch.bool, device=mask.device)
        for name, drop in (("with_prompt", ~every), ("prompt_dropped", every)):
            err = self.errors(batch, drop, every)
            out[name], out[f"head_{name}"] = masked_row_mean(err, mask).cpu(), masked_row_mean(err, head).cpu()
        out["latents"] = batch["target"][mask].cpu()
        return out

    def tokens_per_sequence(self) -> int:
        """Target tokens a training sequence holds on average."""
        return (self.dit.cfg.target_min + self.dit.cfg.target_max) // 2

    def train_flops(self, batch_size: int) -> float:
        """Counted FLOPs of one optimizer step over `batch_size` sequences: forward + backward, and the
        self-conditioning examples' gradient-free first pass."""
        d = self.dit.cfg
        return (TRAIN_FACTOR + d.self_condition_prob) * batch_size * \
            dit_flops_per_sequence(self.dit, d.context_max, d.target_max)
