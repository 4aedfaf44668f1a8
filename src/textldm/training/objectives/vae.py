"""The VAE's training objective, read top to bottom: reconstruction CE + beta * KL - lambda * REPA cosine, with the
sampled softmax and the robust-decoder noise it may use."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from textldm.config import VAEConfig
from textldm.models.lmhead import linear_cross_entropy
from textldm.models.vae import TextVAE


def kl_per_token(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over channels: (B, L, C) -> (B, L)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def repa_cosine(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-token cosine similarity with the (stop-gradient) teacher features: (B, L, D) x2 -> (B, L)."""
    return F.cosine_similarity(projected.float(), teacher.detach().float(), dim=-1, eps=1e-6)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, count: float | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is true; `count`: divide by this many positions instead (a shard's
    share of the global batch's, so that the shards' means average to the global batch's)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / (mask.sum().clamp_min(1.0) if count is None else count)


def sampled_softmax(vae: TextVAE, ids: torch.Tensor, mask: torch.Tensor, generator=None):
    """(output rows, targets as indices into them) of a softmax over the batch's own tokens, their nearest
    neighbours (when `build_neighbor_table` ran) and vae.cfg.sampled_negatives random tokens: every target
    stays a candidate, and on a CPU the vocabulary projection no longer dominates the cost."""
    present = ids[mask]
    negatives = [torch.randint(0, vae.vocab_size, (vae.cfg.sampled_negatives,), generator=generator).to(ids.device)]
    if vae.neighbors is not None:
        negatives.append(vae.neighbors[present].flatten())
    candidates = torch.unique(torch.cat([present, *negatives]))
    return vae.output_weight()[candidates], torch.searchsorted(candidates, ids.clamp(max=candidates[-1]))


def decoder_noise(mean: torch.Tensor, mask: torch.Tensor, scale: float, generator=None) -> torch.Tensor:
    """Extra noise for a decoder robust to generated latents: Gaussian, with a std of `scale` x U(0, 1) (one
    level per sequence, so the decoder sees clean to very noisy latents) x each channel's std over the batch's
    real tokens - the units of the DiT's normalised latents, where its errors live."""
    B, L, C = mean.shape
    channel_std = mean[mask].std(0) if mask.sum() > 1 else mean.new_ones(C)
    level = scale * torch.rand(B, 1, 1, generator=generator).to(mean.device)
    return level * channel_std * torch.randn(B, L, C, generator=generator).to(mean.device)


def vae_loss(vae: TextVAE, ids, mask, teacher_features=None, kl_weight: float = 1e-3, noise=None, generator=None,
             token_count: float | None = None):
    """CE(reconstruction) + kl_weight * KL + repa_weight * (-cos), each a mean over the real tokens. Returns (loss,
    metrics dict). `token_count`: the real tokens of the whole global batch over the number of parts it is split into
    (ranks x accumulation steps): each part divides by it, so their average is the global batch's token mean under
    any split, as in one process - the local count would weigh the tokens of a part with fewer tokens more.

    With cfg.softmax == "sampled" (training only) the softmax runs over `sampled_softmax`'s candidates; with
    cfg.decoder_noise > 0 (training only) the decoder reads the latents with `decoder_noise` added."""
    cfg = vae.cfg
    mean, logvar, feature = vae.encode_features(ids, mask)
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    z = mean + (0.5 * logvar).exp() * noise
    if cfg.decoder_noise > 0 and vae.training:
        z = z + decoder_noise(mean.detach(), mask, cfg.decoder_noise, generator)
    hidden = vae.decode_hidden(z, mask)
    weight, targets = vae.output_weight(), ids
    if cfg.softmax == "sampled" and vae.training:
        weight, targets = sampled_softmax(vae, ids, mask, generator)
    # the masked mean of the per-token CE, without the (tokens x vocabulary) logits ever existing whole
    token_weights = mask.float() / (mask.sum().clamp_min(1) if token_count is None else token_count)
    ce, correct = linear_cross_entropy(hidden.flatten(0, 1), weight, targets.flatten(), token_weights.flatten())
    kl = masked_mean(kl_per_token(mean, logvar), mask, token_count)
    acc = masked_mean(correct.view_as(targets).float(), mask, token_count)
    loss = ce + kl_weight * kl
    metrics = {"ce": ce.detach(), "kl": kl.detach(), "acc": acc.detach()}
    if vae.repa_proj is not None and teacher_features is not None:
        n = teacher_features.shape[0]  # teacher features may cover only the first n sequences
        cos = masked_mean(repa_cosine(vae.repa_proj(feature[:n]), teacher_features), mask[:n],
                          token_count if n == ids.shape[0] else None)  # repa_fraction < 1: a per-part mean
        loss = loss + cfg.repa_weight * (-cos)
        metrics["repa_cos"] = cos.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics


def kl_weight_at(step: int, cfg: VAEConfig) -> float:
    """The KL weight at a step: linear warm-up from 0 over kl_warmup_steps."""
    if cfg.kl_warmup_steps <= 0:
        return cfg.kl_weight
    return cfg.kl_weight * min(1.0, step / cfg.kl_warmup_steps)


class VAEObjective(nn.Module):
    """The VAE's training objective: `vae_loss` with the KL warm-up at the current step."""
    def __init__(self, vae: TextVAE):
        super().__init__()
        self.vae = vae

    def forward(self, batch: dict, step: int):
        """(loss, metrics) of one micro-batch."""
        return vae_loss(self.vae, batch["ids"], batch["mask"], batch.get("teacher"),
                        kl_weight=kl_weight_at(step, self.vae.cfg), noise=batch["noise"], generator=batch["generator"],
                        token_count=batch.get("token_count"))
