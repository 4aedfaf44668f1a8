"""Block-causal mode in training (dit.mode=blocks; BD3-LM / Cola DLM): a window of dit.window_tokens tokens cut into
blocks of dit.blocks.size, one masked forward over [clean latents ; noisy latents] of the whole window, each noisy
block at its own t and seeing the clean blocks before it (`TextDiT.forward_blocks`); the loss covers every noisy
block."""
from __future__ import annotations

import torch

from textldm.data.shards import TokenStream
from textldm.diffusion.flow import interpolate, sample_t, velocity_error
from textldm.models.vae import TextVAE
from textldm.runtime.perf import TRAIN_FACTOR, dit_block_flops_per_sequence
from textldm.training.objectives.dit import (
    HEAD_TOKENS,
    DiTObjective,
    first_pass_estimate,
    self_condition_rows,
    stratified_t,
)


class BlockObjective(DiTObjective):
    """Block mode: the batch is whole windows encoded once by the block-causal VAE, noise and one time per block; the
    loss is every noisy block's velocity MSE against its clean prefix."""

    def batch(self, stream: TokenStream, vae: TextVAE, batch_size: int, g: torch.Generator, rows: slice,
              device: torch.device, t: torch.Tensor | None = None) -> dict:
        """The `rows` of a global batch drawn from `g`: windows of the stream, laid out by `lay_out`."""
        return self.lay_out(stream.windows(batch_size, self.dit.cfg.window_tokens, g), vae, g, rows, device, t)

    def lay_out(self, ids: torch.Tensor, vae: TextVAE, g: torch.Generator, rows: slice, device: torch.device,
                t: torch.Tensor | None = None) -> dict:
        """The `rows` of a global batch of windows `ids` (N, L): encoded once by the block-causal VAE (the clean
        latents of every block), noise, one time per block (N, L / B) - or one per window repeated, with
        dit.blocks.t=shared - and the CFG drop per window, drawn from `g`. The first block is left-padded by 0..B-1
        tokens, as a prompt that does not fill whole blocks is at sampling. `t`: given (N, L / B) times. With
        self-conditioning, "self_cond" (N,): the windows whose blocks read a first pass's estimate (`errors`)."""
        d, C = self.dit.cfg, vae.cfg.latent_channels
        B, L, batch_size = d.blocks.size, d.window_tokens, ids.shape[0]
        pad = torch.randint(0, B, (batch_size,), generator=g)
        if t is None:
            per_window = 1 if d.blocks.t == "shared" else L // B
            t = sample_t(batch_size * per_window, d.t_distribution, d.t_mean, d.t_std, generator=g)
            t = t.view(batch_size, per_window).expand(batch_size, L // B)
        drop = torch.rand(batch_size, generator=g) < d.p_uncond
        noise = torch.randn(batch_size, L, C, generator=g)
        mask = (torch.arange(L)[None] >= pad[:, None])[rows].to(device)
        ids = torch.where(mask, ids[rows].to(device), 0)
        # "clean": the window's latents - the data end of every block's path, and the prefix the later blocks read
        batch = {"clean": vae.latents(ids, mask, d.normalize_latents), "mask": mask, "noise": noise[rows].to(device),
                 "t": t[rows].to(device), "drop": drop[rows].to(device), "ids": ids}
        if d.self_condition_prob > 0:
            batch["self_cond"] = self_condition_rows(d, batch_size, g, rows, device)
        return batch

    def loss_mask(self, batch: dict) -> torch.Tensor:
        """The positions the loss averages over: every real token of the window."""
        return batch["mask"]

    def prefix(self, batch: dict) -> torch.Tensor:
        """What the noisy blocks read as their clean prefix: the window's clean latents."""
        return batch["clean"]

    def errors(self, batch: dict, drop: torch.Tensor | None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """(N, L) squared velocity errors of every noisy block, each against its clean prefix (none, or the null
        prefix, in the rows where `drop`: dit.blocks.uncond); `self_cond` (N,): the windows whose blocks read a
        first pass's clean estimate (a self-conditioning DiT)."""
        x0, x1, t = batch["noise"], batch["clean"], batch["t"]
        per_token = t.repeat_interleave(self.dit.cfg.blocks.size, dim=1)
        x_t = interpolate(x0, x1, per_token)
        prefix, mask = self.prefix(batch), batch["mask"]

        def velocity(rows=slice(None), estimate=None):
            return self.dit.forward_blocks(x_t[rows], t[rows], clean=prefix[rows], mask=mask[rows],
                                           drop=None if drop is None else drop[rows], self_cond=estimate)

        estimate = None
        if self.dit.self_cond_proj is not None and self_cond is not None:
            estimate = first_pass_estimate(velocity, x_t, per_token, self_cond)
        return velocity_error(velocity(estimate=estimate), x0, x1)

    def heldout_times(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """A held-out batch's (N, L / B) block times: stratified, the quarters dealt out at random over the blocks
        (never tied to a block's index)."""
        per_window = self.dit.cfg.window_tokens // self.dit.cfg.blocks.size
        n = batch_size * per_window
        return stratified_t(n, g)[torch.randperm(n, generator=g)].view(batch_size, per_window)

    @torch.no_grad()
    def heldout(self, batch: dict) -> dict:
        """Per block that has a prefix (a window's first block has none): t, the velocity MSE with its clean prefix
        and with the prefix dropped, the same on the block's first HEAD_TOKENS tokens, and the latents."""
        B, mask = self.dit.cfg.blocks.size, batch["mask"]
        N, L = mask.shape
        head = mask & (torch.arange(L, device=mask.device) % B < HEAD_TOKENS)

        def per_block(e, m):  # (N, L) squared errors -> (N * (nb - 1),) block means, the first block left out
            m = m.float().view(N, -1, B)
            return ((e.view(N, -1, B) * m).sum(-1) / m.sum(-1).clamp_min(1.0))[:, 1:].flatten().cpu()

        out, every = {"t": batch["t"][:, 1:].flatten().cpu()}, torch.ones(N, dtype=torch.bool, device=mask.device)
        for name, drop in (("with_prompt", None), ("prompt_dropped", every)):
            err = self.errors(batch, drop, every)  # as sampling reads it: a self-conditioning DiT, its own estimate
            out[name], out[f"head_{name}"] = per_block(err, mask), per_block(err, head)
        out["latents"] = batch["clean"][mask].cpu()
        return out

    def tokens_per_sequence(self) -> int:
        """Tokens a training sequence holds: every token of the window is a target."""
        return self.dit.cfg.window_tokens

    def train_flops(self, batch_size: int) -> float:
        """Counted FLOPs of one optimizer step over `batch_size` windows: forward + backward, and the
        self-conditioning windows' gradient-free first pass."""
        return (TRAIN_FACTOR + self.dit.cfg.self_condition_prob) * batch_size * \
            dit_block_flops_per_sequence(self.dit, self.dit.cfg.window_tokens)
