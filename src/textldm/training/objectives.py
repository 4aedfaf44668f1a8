"""The training objectives, each read top to bottom: the VAE's loss (reconstruction CE + beta * KL - lambda * REPA
cosine, with the sampled softmax and the robust-decoder noise it may use), the DiT's flow-matching loss (full window
or block-causal) and the AR baseline's next-token cross-entropy. Each objective
is the nn.Module that `fit` trains (and DDP wraps); the batches they read come from `training/batches.py`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from textldm.config import VAEConfig
from textldm.diffusion.flow import clean_estimate, flow_loss, interpolate
from textldm.models.ar import CausalLM
from textldm.models.dit import TextDiT
from textldm.models.lmhead import linear_cross_entropy
from textldm.models.vae import TextVAE


# the VAE -----------------------------------------------------------------------------------------------
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


# the DiT -----------------------------------------------------------------------------------------------
class DiTObjective(nn.Module):
    """Flow matching in latent space: the velocity MSE on the target positions (full window), or on every noisy block
    against its clean prefix (block mode)."""

    def __init__(self, dit: TextDiT):
        super().__init__()
        self.dit = dit

    def forward(self, batch: dict, step: int):
        """(loss, metrics) of one micro-batch: the flow-matching loss."""
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
        return loss, {"loss": loss.detach()}

    def block_loss(self, batch: dict):
        """Block mode: the velocity loss of every noisy block of the window, each at its own time and against the
        clean blocks before it, in one masked forward (`TextDiT.forward_blocks`)."""
        x0, x1, mask, t = batch["noise"], batch["target"], batch["mask"], batch["t"]
        x_t = interpolate(x0, x1, t.repeat_interleave(self.dit.cfg.block_size, dim=1))
        v = self.dit.forward_blocks(x_t, t, x1, mask, batch["drop"])
        loss = flow_loss(v, x0, x1, mask).mean()
        return loss, {"loss": loss.detach()}

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


# the AR baseline ---------------------------------------------------------------------------------------
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


