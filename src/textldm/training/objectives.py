"""Training objectives (what DDP wraps) and the batch builders that feed them.

Each batch builder draws the whole *global* batch from a generator seeded by (seed, step) - windows,
truncation lengths, noise, timesteps, CFG drops - then keeps this rank's slice (see `train`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from textldm.config import DiTConfig, VAEConfig
from textldm.data.shards import TokenStream
from textldm.diffusion.flow import clean_estimate, flow_loss, interpolate, sample_t
from textldm.models.ar import CausalLM
from textldm.models.dit import TextDiT
from textldm.models.lmhead import linear_cross_entropy
from textldm.models.vae import TextVAE, kl_weight_at, sampled_softmax, vae_loss
from textldm.training.distributed import local_slice, step_generator
from textldm.training.loop import autocast_dtype


def teacher_context(device: torch.device):
    """The teacher runs under bf16 autocast where bf16 is native (GPUs, CPUs with bf16 matrix units): ~3x faster,
    and a cosine target needs no more. Elsewhere in fp32: emulated bf16 made it 5.4x slower on a CPU without it."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_dtype("auto", device) is not None)


class VAEObjective(nn.Module):
    """The VAE's training objective: `vae_loss` with the KL warm-up at the current step."""
    def __init__(self, vae: TextVAE):
        super().__init__()
        self.vae = vae

    def forward(self, batch: dict, step: int):
        """(loss, metrics) of one micro-batch."""
        return vae_loss(self.vae, batch["ids"], batch["mask"], batch.get("teacher"),
                        kl_weight=kl_weight_at(step, self.vae.cfg), noise=batch["noise"], generator=batch["generator"])


def vae_batches(stream: TokenStream, cfg: VAEConfig, batch_size: int, seed: int, device: torch.device, teacher=None,
                cache=None):
    """With a `TeacherCache`, whole cached windows are drawn and their stored teacher features used."""
    L = cfg.max_len

    def get(step: int, micro: int = 0, accum: int = 1) -> dict:
        g = step_generator(seed, step)
        if cache is not None:
            idx = torch.randint(0, len(cache), (batch_size,), generator=g)
            ids = cache.ids(idx)
        else:
            ids = stream.windows(batch_size, L, g)
        lengths = torch.full((batch_size,), L)
        cut = torch.rand(batch_size, generator=g) < cfg.truncate_prob
        lengths[cut] = torch.randint(1, L + 1, (int(cut.sum()),), generator=g)
        noise = torch.randn(batch_size, L, cfg.latent_channels, generator=g)
        sl = local_slice(batch_size, micro, accum)
        ids, lengths, noise = ids[sl].to(device), lengths[sl].to(device), noise[sl].to(device)
        mask = torch.arange(L, device=device)[None] < lengths[:, None]
        batch = {"ids": ids, "mask": mask, "noise": noise, "generator": step_generator(seed, step, stream=1 + micro)}
        n = max(1, round(cfg.repa_fraction * ids.shape[0]))  # teacher features for the first n sequences
        if cache is not None:
            batch["teacher"] = cache.features(idx[sl][:n]).to(device)
        elif teacher is not None:
            with teacher_context(device):
                batch["teacher"] = teacher(ids[:n], mask[:n])
        return batch

    return get


class DiTObjective(nn.Module):
    """Velocity MSE on the target positions, plus (dit.cfg.decoder_ce_weight > 0) the token-aware term: the frozen
    VAE decoder's cross-entropy on the DiT's clean-latent estimate. The VAE is held outside the module's
    children, so DDP, the optimizer and the checkpoints see the DiT alone."""

    def __init__(self, dit: TextDiT, vae: TextVAE | None = None):
        super().__init__()
        self.dit = dit
        self.frozen_vae = (vae,)  # a tuple: not registered as a submodule
        if dit.cfg.decoder_ce_weight > 0 and vae is None:
            raise ValueError("dit.decoder_ce_weight > 0 needs the frozen VAE: DiTObjective(dit, vae)")

    def forward(self, batch: dict, step: int):
        """(loss, metrics) of one micro-batch: the flow-matching loss (+ the token-aware loss when on)."""
        if self.dit.cfg.block_size:
            return self.block_loss(batch)
        x0, x1, t = batch["noise"], batch["target"], batch["t"]
        context = self.dit.drop_context(batch["context"], batch["drop"])
        right = batch.get("right")
        if right is not None:  # infilling examples: the text after the target is dropped with the context
            right = self.dit.drop_context(right, batch["drop"])
        x_t = interpolate(x0, x1, t)
        conditions = (context, batch["context_mask"], batch["target_mask"], right, batch.get("right_mask"))
        v = self.dit(x_t, t, *conditions, self_cond=self.self_condition(x_t, t, conditions, batch.get("self_cond")))
        loss = flow_loss(v, x0, x1, batch["target_mask"]).mean()
        metrics = {"loss": loss.detach()}
        weight = self.dit.cfg.decoder_ce_weight
        if weight > 0:
            ce = self.decoder_ce(clean_estimate(x_t, t, v), t, batch)
            metrics = {"flow_loss": loss.detach(), "decoder_ce": ce.detach()}
            loss = loss + weight * ce
            metrics["loss"] = loss.detach()
        return loss, metrics

    def block_loss(self, batch: dict):
        """Block mode: the velocity loss of every noisy block of the window, each at its own time and against the
        clean blocks before it, in one masked forward (`TextDiT.forward_blocks`)."""
        x0, x1, mask, t = batch["noise"], batch["target"], batch["mask"], batch["t"]
        x_t = interpolate(x0, x1, t.repeat_interleave(self.dit.cfg.block_size, dim=1))
        v = self.dit.forward_blocks(x_t, t, x1, mask, batch["drop"])
        loss = flow_loss(v, x0, x1, mask).mean()
        return loss, {"loss": loss.detach()}

    def decoder_ce(self, estimate: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        """Mean over target tokens of t x CE(frozen decoder(estimate), target token). Weighted by t: near the
        noise the estimate is a blur of many continuations, and pulling it onto one token's latent there would
        fight the velocity loss; near the data it should decode to the right token."""
        vae = self.frozen_vae[0]
        mask = batch["target_mask"]
        z = vae.denormalize(estimate) if self.dit.cfg.normalize_latents else estimate
        hidden = vae.decode_hidden(z, mask)
        weight, targets = sampled_softmax(vae, batch["target_ids"], mask, batch.get("generator"))
        token_weights = (t[:, None] * mask).flatten() / mask.sum().clamp_min(1)
        ce, _ = linear_cross_entropy(hidden.flatten(0, 1), weight, targets.flatten(), token_weights)
        return ce

    @torch.no_grad()
    def self_condition(self, x_t, t, conditions: tuple, chosen: torch.Tensor | None):
        """The clean-target estimate x_t + (1 - t) v of a first, gradient-free pass for the `chosen` rows (zeros
        for the others, as at the first sampling step); None when the model does not self-condition."""
        if self.dit.self_cond_proj is None:
            return None
        estimate = torch.zeros_like(x_t)
        rows = chosen.nonzero().flatten()
        if len(rows):  # only the chosen rows pay for the extra pass
            v = self.dit(x_t[rows], t[rows], *(None if c is None else c[rows] for c in conditions))
            estimate[rows] = clean_estimate(x_t[rows], t[rows], v).to(estimate.dtype)
        return estimate


@torch.no_grad()
def encode_latents(vae: TextVAE, ids: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Token ids -> the frozen VAE's posterior means, standardised when the DiT uses normalised latents."""
    z = vae.encode(ids, mask)
    return vae.normalize(z) if normalize else z


def split_context_target(window: torch.Tensor, context_len: torch.Tensor, target_len: torch.Tensor, context_max: int):
    """window (B, context_max + target_max): the context is the `context_len` tokens just before position
    context_max, moved to the left edge (right padding); the target starts at position context_max."""
    idx = torch.arange(context_max)[None] + (context_max - context_len)[:, None]
    context_mask = torch.arange(context_max)[None] < context_len[:, None]
    context = torch.where(context_mask, window.gather(1, idx.clamp(max=context_max - 1)), 0)
    target = window[:, context_max:]
    target_mask = torch.arange(target.shape[1])[None] < target_len[:, None]
    return context, context_mask, torch.where(target_mask, target, 0), target_mask


def right_context(window: torch.Tensor, target_len: torch.Tensor, right_len: torch.Tensor, context_max: int):
    """The `right_len` tokens that follow each target's real end (at context_max + target_len) in `window`,
    moved to the left edge (right padding)."""
    start = context_max + target_len
    idx = (start[:, None] + torch.arange(context_max)[None]).clamp(max=window.shape[1] - 1)
    mask = torch.arange(context_max)[None] < right_len[:, None]
    return torch.where(mask, window.gather(1, idx), 0), mask


def dit_batches(stream: TokenStream, vae: TextVAE, cfg: DiTConfig, batch_size: int, seed: int, device: torch.device,
                shard: bool = True):
    """Batches of (clean context latents, target latents, noise, t, CFG drop), each side encoded separately.
    `get(step, micro, accum)` is this rank's micro-th part of step `step`'s global batch;
    `get(step, t=...)` takes given timesteps (global batch) instead of drawing them - for stratified evaluation.
    shard=False keeps the whole global batch (evaluation runs on rank 0 alone). Block mode: `block_batches`."""
    if cfg.block_size:
        return block_batches(stream, vae, cfg, batch_size, seed, device, shard)
    C = vae.cfg.latent_channels

    def get(step: int, micro: int = 0, accum: int = 1, t: torch.Tensor | None = None) -> dict:
        g = step_generator(seed, step)
        span = cfg.context_max + cfg.target_max
        window = stream.windows(batch_size, span + (cfg.context_max if cfg.infill_prob > 0 else 0), g)
        context_len = torch.randint(cfg.context_min, cfg.context_max + 1, (batch_size,), generator=g)
        target_len = torch.randint(cfg.target_min, cfg.target_max + 1, (batch_size,), generator=g)
        if t is None:
            t = sample_t(batch_size, cfg.t_distribution, cfg.t_mean, cfg.t_std, generator=g)
        drop = torch.rand(batch_size, generator=g) < cfg.p_uncond
        noise = torch.randn(batch_size, cfg.target_max, C, generator=g)
        sl = local_slice(batch_size, micro, accum) if shard else slice(None)
        ctx, ctx_mask, tgt, tgt_mask = split_context_target(window[sl, :span], context_len[sl], target_len[sl],
                                                            cfg.context_max)
        ctx, ctx_mask, tgt, tgt_mask = (x.to(device) for x in (ctx, ctx_mask, tgt, tgt_mask))
        batch = {"context": encode_latents(vae, ctx, ctx_mask, cfg.normalize_latents), "context_mask": ctx_mask,
                 "target": encode_latents(vae, tgt, tgt_mask, cfg.normalize_latents), "target_mask": tgt_mask,
                 "noise": noise[sl].to(device), "t": t[sl].to(device), "drop": drop[sl].to(device),
                 "target_ids": tgt}
        if cfg.decoder_ce_weight > 0:  # the token-aware loss's sampled negatives
            batch["generator"] = step_generator(seed, step, stream=1 + micro)
        if cfg.infill_prob > 0:  # the text right after the target's real end, for a share of the examples
            right_len = torch.randint(cfg.context_min, cfg.context_max + 1, (batch_size,), generator=g)
            right_len[torch.rand(batch_size, generator=g) >= cfg.infill_prob] = 0
            right, right_mask = right_context(window[sl], target_len[sl], right_len[sl], cfg.context_max)
            right, right_mask = right.to(device), right_mask.to(device)
            batch["right"] = encode_latents(vae, right, right_mask, cfg.normalize_latents)
            batch["right_mask"] = right_mask
        if cfg.self_condition_prob > 0:  # drawn last, so the other draws do not depend on the setting
            batch["self_cond"] = (torch.rand(batch_size, generator=g) < cfg.self_condition_prob)[sl].to(device)
        return batch

    return get


def block_batches(stream: TokenStream, vae: TextVAE, cfg: DiTConfig, batch_size: int, seed: int, device: torch.device,
                  shard: bool = True):
    """Block mode's batches: windows of context_max + target_max tokens, encoded once by the block-causal VAE (the
    clean latents of every block), noise, one time per block (N, L / B) - or one per window repeated, with
    dit.block_t=shared - and the CFG drop per window. The first block is left-padded by 0..B-1 tokens, as a prompt
    that does not fill whole blocks is at sampling. `get(step, t=...)` takes given (N, L / B) times."""
    C, B, L = vae.cfg.latent_channels, cfg.block_size, cfg.context_max + cfg.target_max

    def get(step: int, micro: int = 0, accum: int = 1, t: torch.Tensor | None = None) -> dict:
        g = step_generator(seed, step)
        ids = stream.windows(batch_size, L, g)
        pad = torch.randint(0, B, (batch_size,), generator=g)
        if t is None:
            per_window = 1 if cfg.block_t == "shared" else L // B
            t = sample_t(batch_size * per_window, cfg.t_distribution, cfg.t_mean, cfg.t_std, generator=g)
            t = t.view(batch_size, per_window).expand(batch_size, L // B)
        drop = torch.rand(batch_size, generator=g) < cfg.p_uncond
        noise = torch.randn(batch_size, L, C, generator=g)
        sl = local_slice(batch_size, micro, accum) if shard else slice(None)
        mask = (torch.arange(L)[None] >= pad[:, None])[sl].to(device)
        ids = torch.where(mask, ids[sl].to(device), 0)
        return {"target": encode_latents(vae, ids, mask, cfg.normalize_latents), "mask": mask,
                "noise": noise[sl].to(device), "t": t[sl].to(device), "drop": drop[sl].to(device), "target_ids": ids}

    return get


class ARObjective(nn.Module):
    """Next-token cross-entropy (softmax in fp32), head and loss fused (`linear_cross_entropy`)."""

    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, step: int):
        """(loss, metrics) of one micro-batch: next-token CE."""
        hidden = self.model.hidden(batch["ids"][:, :-1]).flatten(0, 1)
        targets = batch["ids"][:, 1:].flatten()
        weights = torch.full(targets.shape, 1.0 / targets.numel(), device=targets.device)
        loss, _ = linear_cross_entropy(hidden, self.model.embed.weight, targets, weights)
        return loss, {"loss": loss.detach()}


def ar_batches(stream, seq_len: int, batch_size: int, seed: int, device: torch.device):
    """Windows of seq_len + 1 tokens (inputs and shifted targets), global batch drawn from (seed, step)."""
    def get(step: int, micro: int = 0, accum: int = 1) -> dict:
        ids = stream.windows(batch_size, seq_len + 1, step_generator(seed, step))
        return {"ids": ids[local_slice(batch_size, micro, accum)].to(device)}

    return get
