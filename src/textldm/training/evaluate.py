"""Held-out checks a training stage runs, and what it measures on the way (the VAE's latent statistics):

- VAE: token reconstruction accuracy from the posterior mean (and from a posterior sample), mean REPA cosine.
- DiT: validation velocity loss per timestep quarter, next to the same loss with the prompt dropped and
  the loss of the best linear predictor for Gaussian data with the latents' per-channel variance - the errors of
  the objective itself, its generation mode's (block mode: per block, each block's prompt being its clean prefix).
- AR baseline: held-out next-token loss, perplexity and accuracy.
- Masked-diffusion baselines (MDLM, BD3-LM): the held-out NELBO per token and its perplexity bound.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from textldm.data.shards import TokenStream
from textldm.diffusion.flow import gaussian_optimal_loss
from textldm.models.vae import TextVAE
from textldm.runtime.distributed import step_generator
from textldm.runtime.precision import frozen_lm_context
from textldm.training.batches import dit_batches
from textldm.training.objectives import repa_cosine
from textldm.training.objectives.dit import HEAD_TOKENS, DiTObjective

log = logging.getLogger(__name__)
STD_FLOOR = 1e-2  # latent channel std floor, relative to the median channel std
EVAL_STREAM = 10_007  # generator stream for evaluation draws, apart from training's


@torch.no_grad()
def evaluate_vae(vae: TextVAE, stream: TokenStream, n_batches: int, batch_size: int, seed: int,
                 device: torch.device, teacher=None) -> dict:
    """Held-out reconstruction accuracy (posterior mean and sample) and the REPA cosine of a VAE."""
    vae.eval()
    correct = correct_sampled = total = 0
    cos_sum, cos_n = 0.0, 0
    for b in range(n_batches):
        g = step_generator(seed, b, EVAL_STREAM)
        ids = stream.windows(batch_size, vae.cfg.max_len, g).to(device)
        mean, logvar, feature = vae.encode_features(ids)
        correct += (vae.decode(mean).argmax(-1) == ids).sum().item()
        noise = torch.randn(mean.shape, generator=g).to(device)
        correct_sampled += (vae.decode(mean + (0.5 * logvar).exp() * noise).argmax(-1) == ids).sum().item()
        total += ids.numel()
        if teacher is not None and vae.repa_proj is not None:
            with frozen_lm_context(device):
                target = teacher(ids)
            cos = repa_cosine(vae.repa_proj(feature), target)
            cos_sum, cos_n = cos_sum + cos.sum().item(), cos_n + cos.numel()
    out = {"recon_acc": correct / total, "recon_acc_sampled": correct_sampled / total, "tokens": total}
    if cos_n:
        out["repa_cos"] = cos_sum / cos_n
    return out


@torch.no_grad()
def latent_statistics(vae: TextVAE, stream: TokenStream, n_batches: int, batch_size: int, seed: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the posterior means over training windows."""
    vae.eval()
    s = s2 = n = 0
    for b in range(n_batches):
        ids = stream.windows(batch_size, vae.cfg.max_len, step_generator(seed, b, EVAL_STREAM + 1)).to(device)
        z = vae.encode(ids).double().reshape(-1, vae.cfg.latent_channels)
        s, s2, n = s + z.sum(0), s2 + z.pow(2).sum(0), n + z.shape[0]
    mean = s / n
    std = (s2 / n - mean.pow(2)).clamp_min(0).sqrt()
    return mean.float(), std_floor(std).float()


def std_floor(std: torch.Tensor) -> torch.Tensor:
    """Raise channel stds below STD_FLOOR x the median channel std to that floor, with a warning. A collapsed
    channel (the VAE stopped using it) then stays near 0 after normalisation instead of having its numerical
    noise blown up to unit variance, which the DiT would have to learn to predict."""
    floor = max(STD_FLOOR * float(std.median()), 1e-6)
    collapsed = (std < floor).nonzero().flatten().tolist()
    if collapsed:
        log.warning("latent channels %s have collapsed (std below %.0e x the median channel std %.3g); normalising "
                    "them by that floor", collapsed, STD_FLOOR, float(std.median()))
    return std.clamp_min(floor)


@torch.no_grad()
def evaluate_dit(mode: DiTObjective, vae: TextVAE, stream: TokenStream, n_batches: int, batch_size: int, seed: int,
                 device: torch.device) -> dict:
    """The DiT's velocity loss per timestep quarter with the prompt, with the prompt dropped (CFG null), and for the
    Gaussian optimal linear predictor, from its generation mode's per-sample errors (`mode.heldout`: the loss's
    errors, per sample; block mode: per block, each block's prompt being its clean prefix). t is stratified: a
    quarter of every batch in each quarter of [0, 1]."""
    mode.eval()
    batches = dit_batches(stream, vae, mode, batch_size, seed + EVAL_STREAM, device, shard=False)
    parts = [mode.heldout(batches(b, t=mode.heldout_times(batch_size, step_generator(seed, b, EVAL_STREAM + 2))))
             for b in range(n_batches)]
    names = ("t", "with_prompt", "prompt_dropped", "head_with_prompt", "head_prompt_dropped")
    t, cond, uncond, head_c, head_u = (torch.cat([part[k] for part in parts]) for k in names)
    linear = gaussian_optimal_loss(t, torch.cat([part["latents"] for part in parts]).double().var(0))
    quarters = []
    for q in range(4):
        sel = (t >= q / 4) & (t < (q + 1) / 4)
        c, u, lin = cond[sel].mean().item(), uncond[sel].mean().item(), linear[sel].mean().item()
        quarters.append({"t": f"{q / 4:.2f}-{(q + 1) / 4:.2f}", "with_prompt": c, "prompt_dropped": u,
                         "linear_gaussian": lin, "with_prompt_over_linear": c / lin,
                         "head_with_prompt": head_c[sel].mean().item(),
                         "head_prompt_dropped": head_u[sel].mean().item()})
    return {"quarters": quarters, "with_prompt": cond.mean().item(), "prompt_dropped": uncond.mean().item(),
            "linear_gaussian": linear.mean().item(), "head_with_prompt": head_c.mean().item(),
            "head_prompt_dropped": head_u.mean().item(), "head_tokens": HEAD_TOKENS, "samples": len(t)}


@torch.no_grad()
def evaluate_ar(model, stream: TokenStream, seq_len: int, n_batches: int, batch_size: int, seed: int,
                device: torch.device) -> dict:
    """Held-out next-token loss (nats/token), perplexity and accuracy of the AR baseline."""
    model.eval()
    nll, correct, total = 0.0, 0, 0
    for b in range(n_batches):
        ids = stream.windows(batch_size, seq_len + 1, step_generator(seed, b, EVAL_STREAM + 3)).to(device)
        logits = model(ids[:, :-1]).float()
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == ids[:, 1:]).sum().item()
        total += ids[:, 1:].numel()
    return {"loss": nll / total, "perplexity": float(np.exp(nll / total)), "next_token_acc": correct / total,
            "tokens": total}


def evaluate_objective(objective, stream: TokenStream, length: int, n_batches: int, batch_size: int, seed: int,
                       device: torch.device) -> dict:
    """The mean training loss of an objective whose batches `objective.batch` lays out (SSD-LM's block
    cross-entropy at random times and contexts) on held-out windows."""
    objective.eval()
    losses = []
    with torch.no_grad():
        for b in range(n_batches):
            batch = objective.batch(stream, length, batch_size, step_generator(seed, b, EVAL_STREAM + 5), slice(None),
                                    device)
            losses.append(objective(batch, 0)[0].item())
    objective.train()
    return {"loss": float(np.mean(losses)), "batches": n_batches}


def evaluate_masked(objective, stream: TokenStream, length: int, n_batches: int, batch_size: int, seed: int,
                    device: torch.device) -> dict:
    """The held-out NELBO per token of the masked-diffusion baseline (an upper bound on -log p per token, estimated
    with times stratified over [0, 1]) and its perplexity bound exp(NELBO)."""
    objective.eval()
    total, tokens = 0.0, 0
    for b in range(n_batches):
        g = step_generator(seed, b, EVAL_STREAM + 4)
        batch = objective.batch(stream, length, batch_size, g, slice(None), device, t_range=(0.0, 1.0))
        part, n = objective.nelbo(batch)
        total, tokens = total + part, tokens + n
    objective.train()
    return {"nelbo": total / tokens, "perplexity_bound": float(np.exp(total / tokens)), "tokens": tokens}
