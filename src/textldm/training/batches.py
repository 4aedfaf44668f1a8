"""The batch builders of the three stages (what `fit` calls every step).

Each draws the whole *global* batch of a step from a generator seeded by (seed, step) - windows, truncation
lengths, noise, timesteps, CFG drops - then keeps this rank's slice, so the data a run sees does not depend on
the number of processes.
"""
from __future__ import annotations

import torch

from textldm.config import DiTConfig, VAEConfig
from textldm.data.shards import TokenStream
from textldm.diffusion.flow import sample_t
from textldm.models.vae import TextVAE
from textldm.training.distributed import local_slice, step_generator
from textldm.training.precision import teacher_context


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
        token_count = float(lengths.sum()) * (sl.stop - sl.start) / batch_size  # this part's share (`vae_loss`)
        ids, lengths, noise = ids[sl].to(device), lengths[sl].to(device), noise[sl].to(device)
        mask = torch.arange(L, device=device)[None] < lengths[:, None]
        batch = {"ids": ids, "mask": mask, "noise": noise, "generator": step_generator(seed, step, stream=1 + micro),
                 "token_count": token_count}
        n = max(1, round(cfg.repa_fraction * ids.shape[0]))  # teacher features for the first n sequences
        if cache is not None:
            batch["teacher"] = cache.features(idx[sl][:n]).to(device)
        elif teacher is not None:
            with teacher_context(device):
                batch["teacher"] = teacher(ids[:n], mask[:n])
        return batch

    return get


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


def ar_batches(stream, seq_len: int, batch_size: int, seed: int, device: torch.device):
    """Windows of seq_len + 1 tokens (inputs and shifted targets), global batch drawn from (seed, step)."""
    def get(step: int, micro: int = 0, accum: int = 1) -> dict:
        ids = stream.windows(batch_size, seq_len + 1, step_generator(seed, step))
        return {"ids": ids[local_slice(batch_size, micro, accum)].to(device)}

    return get
