"""The batch builders of the training stages (what `fit` calls every step).

Each draws the whole *global* batch of a step from a generator seeded by (seed, step) - windows, truncation
lengths, noise, timesteps, CFG drops - then keeps this rank's slice, so the data a run sees does not depend on
the number of processes.
"""
from __future__ import annotations

import torch

from textldm.config import VAEConfig
from textldm.data.shards import TokenStream
from textldm.models.vae import TextVAE
from textldm.runtime.distributed import local_slice, step_generator
from textldm.runtime.precision import frozen_lm_context
from textldm.training.objectives.dit import DiTObjective


def vae_batches(stream: TokenStream, cfg: VAEConfig, batch_size: int, seed: int, device: torch.device, teacher=None,
                cache=None):
    """With a `FeatureCache`, whole cached windows are drawn and their stored teacher features used."""
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
            with frozen_lm_context(device):
                batch["teacher"] = teacher(ids[:n], mask[:n])
        return batch

    return get


def dit_batches(stream: TokenStream, vae: TextVAE, mode: DiTObjective, batch_size: int, seed: int,
                device: torch.device, shard: bool = True):
    """The DiT's batches, laid out by its mode's objective (`mode.batch`: full window or blocks). `get(step, micro,
    accum)` is this rank's micro-th part of step `step`'s global batch; `get(step, t=...)` takes given timesteps
    (global batch) instead of drawing them - for stratified evaluation. shard=False keeps the whole global batch
    (evaluation runs on rank 0 alone)."""
    def get(step: int, micro: int = 0, accum: int = 1, t: torch.Tensor | None = None) -> dict:
        rows = local_slice(batch_size, micro, accum) if shard else slice(None)
        return mode.batch(stream, vae, batch_size, step_generator(seed, step), rows, device, t)

    return get


def ar_batches(stream, seq_len: int, batch_size: int, seed: int, device: torch.device):
    """Windows of seq_len + 1 tokens (inputs and shifted targets), global batch drawn from (seed, step)."""
    def get(step: int, micro: int = 0, accum: int = 1) -> dict:
        ids = stream.windows(batch_size, seq_len + 1, step_generator(seed, step))
        return {"ids": ids[local_slice(batch_size, micro, accum)].to(device)}

    return get


def window_batches(stream: TokenStream, objective, length: int, batch_size: int, seed: int, device: torch.device):
    """Batches of token windows laid out by a baseline's objective (`objective.batch(stream, length, batch_size,
    generator, rows, device)`: the masked-diffusion baselines' windows, times and masking draws; SSD-LM's context,
    block, time and noise)."""
    def get(step: int, micro: int = 0, accum: int = 1) -> dict:
        return objective.batch(stream, length, batch_size, step_generator(seed, step),
                               local_slice(batch_size, micro, accum), device)

    return get
