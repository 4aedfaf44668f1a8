"""TextDiT: a visual-DiT-style Transformer (adaLN-Zero layers, DiT's "blocks") that predicts the flow velocity of the
target (continuation) latents, given clean context (prompt) latents.

Sequence layout: [context (Lc) ; target (Lt)], full self-attention. Each token gets a segment embedding
(context / target), and RoPE positions run on across the boundary: target token j sits at position
len(context) + j, so "the token right after the prompt" is a fixed relative offset. Only the target
positions produce outputs.

Block-causal mode's network methods: `models/block_causal.py`. The cacheable-context variant
(`dit.window.context_cache`):
`models/context_cache.py`. Both are mixins of TextDiT, so the recipe's DiT reads here alone. Classifier-free guidance
(the batched [conditional ; unconditional] call and the formula) is the sampler's: `diffusion/guidance.py`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from textldm.config import DiTConfig, WindowConfig
from textldm.models.block_causal import BlockCausalMixin
from textldm.models.context_cache import ContextCacheMixin
from textldm.models.layers import (
    Conditions,
    TransformerLayer,
    modulate,
    padding_attn_mask,
    per_token_modulation,
    rope_angles,
)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features -> MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps in [0, 1] -> (B, D) embeddings (sinusoidal features through an MLP)."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * 1000.0)[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


class FinalLayer(nn.Module):
    """adaLN-modulated norm and a linear map to the latent channels (zero-initialised: the DiT starts at v = 0)."""
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_channels)

    def forward(self, x, cond):
        """(B, L, D) hidden, (B, D) condition or `Conditions` -> (B, L, C) velocity."""
        shift, scale = per_token_modulation(self.modulation, cond).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class TextDiT(ContextCacheMixin, BlockCausalMixin, nn.Module):
    """The denoiser: a standard DiT over the target latents, conditioned on clean context latents (prompt, and a right
    context when infilling) concatenated in the sequence, on t through adaLN-Zero, and optionally on a pooled
    context and its own previous clean estimate."""
    RENAMED_WEIGHTS = (("blocks.", "layers."),)  # 0.5's weight names (`export.load_weights`)
    def __init__(self, cfg: DiTConfig, latent_channels: int, *, prefix_channels: int | None = None):
        """The parts are the config's (dit.mode and its section): the pooled prompt (the full window with
        dit.window.pooled_context), a trained null vector only where the mode reads it (dit.null_context=learned: the
        full window, block mode's null_latent condition) - no parameter is trained outside the mode's graph (DDP
        stops at its second step on one). `prefix_channels` (dit.mode=context_lm, required there): the clean prefix
        is features of this width (the context LM's hidden states), not the latents."""
        super().__init__()
        self.cfg = cfg
        self.latent_channels = latent_channels
        w = cfg.width
        self.in_proj = nn.Linear(latent_channels, w)
        # self-conditioning: the previous clean-latent estimate of the target, added to its input embedding
        self.self_cond_proj = nn.Linear(latent_channels, w) if cfg.self_condition_prob > 0 else None
        # 0 = context, 1 = target, 2 = right context (infilling; only in models trained with dit.infill_prob > 0)
        window = cfg.window if cfg.mode == "window" else WindowConfig()
        self.segment = nn.Embedding(3 if window.infill_prob > 0 else 2, w)
        if cfg.t_conditioning:
            self.t_embedder = TimestepEmbedder(w)
        else:  # t-free variant: the layers keep their adaLN, driven by one learned vector
            self.t_embedder = None
            self.free_cond = nn.Parameter(torch.zeros(w))
        # a global summary of the prompt joins the timestep in the adaLN condition, so every layer is told
        # what the prompt is about directly, not only through attention
        self.context_pool = nn.Sequential(nn.Linear(latent_channels, w), nn.SiLU(), nn.Linear(w, w)) \
            if cfg.mode == "window" and window.pooled_context else None
        if (cfg.mode == "context_lm") != (prefix_channels is not None):
            raise ValueError("prefix_channels (the context LM's feature width) is given with dit.mode=context_lm, "
                             "and only then")
        # a context LM's hidden states enter through their own projection, normalised first (an LM's hidden states
        # have a few huge channels)
        self.prefix_in = None if prefix_channels is None else nn.Sequential(
            nn.LayerNorm(prefix_channels, elementwise_affine=False), nn.Linear(prefix_channels, w))
        # CFG's null condition, in the space of the clean context (trained only where the mode reads it: block
        # mode's empty prefix does not)
        reads_null = cfg.mode == "window" or cfg.blocks.uncond == "null_latent"  # "empty" masks the prefix instead
        self.null_context = nn.Parameter(torch.zeros(prefix_channels or latent_channels),
                                         requires_grad=cfg.null_context == "learned" and reads_null)
        # cacheable-context variant: the context's adaLN condition, free of t
        self.context_cond = nn.Parameter(torch.zeros(w)) if window.context_cache else None
        self.layers = nn.ModuleList(TransformerLayer(w, cfg.heads, cfg.mlp_ratio, cond_dim=w) for _ in range(cfg.depth))
        self.final = FinalLayer(w, latent_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """Xavier everywhere, then the adaLN-Zero policy: every modulation and the output layer start at zero,
        so each layer is the identity and the model outputs 0 at initialisation."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.segment.weight, std=0.02)
        if self.t_embedder is not None:
            for layer in self.t_embedder.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        for layer in self.layers:
            nn.init.zeros_(layer.modulation[-1].weight)
            nn.init.zeros_(layer.modulation[-1].bias)
        nn.init.zeros_(self.final.modulation[-1].weight)
        nn.init.zeros_(self.final.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
        if self.self_cond_proj is not None:  # zero: the estimate starts as no input at all
            nn.init.zeros_(self.self_cond_proj.weight)
            nn.init.zeros_(self.self_cond_proj.bias)

    def condition(self, t: torch.Tensor) -> torch.Tensor:
        """The adaLN condition per example: the timestep embedding (+ the pooled context when on), (B, D)."""
        if self.t_embedder is None:
            return self.free_cond.expand(t.shape[0], -1)
        return self.t_embedder(t)

    def drop_context(self, context: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace the context of the samples where `drop` (B,) is True by the null condition (CFG)."""
        null = self.null_context.to(context.dtype).expand_as(context)
        return torch.where(drop.view(-1, 1, 1), null, context)

    def _pooled(self, context, context_mask) -> torch.Tensor | float:
        """The pooled-prompt term of the adaLN condition (SD3-style), or 0."""
        if self.context_pool is None:
            return 0.0
        weights = context_mask.unsqueeze(-1).to(context.dtype)
        pooled = (context * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.context_pool(pooled.to(self.in_proj.weight.dtype))

    def _embed(self, latents, segment: int):
        x = self.in_proj(latents.to(self.in_proj.weight.dtype))
        return x + self.segment.weight[segment]

    def _embed_prefix(self, clean):
        """Block mode's clean prefix (N, L, C or prefix_channels) -> (N, L, D): the latents' embedding, or a
        context LM's states through their projection."""
        if self.prefix_in is None:
            return self._embed(clean, 0)
        return self.prefix_in(clean.to(self.in_proj.weight.dtype)) + self.segment.weight[0]

    def _embed_target(self, x_t, self_cond):
        """The target's input embedding, plus the self-conditioning estimate (None = zeros) when the model has it."""
        x = self._embed(x_t, 1)
        if self.self_cond_proj is not None:
            estimate = torch.zeros_like(x_t) if self_cond is None else self_cond
            x = x + self.self_cond_proj(estimate.to(self.self_cond_proj.weight.dtype))
        return x

    def forward(self, x_t, t, *, context, context_mask=None, target_mask=None, right=None, right_mask=None,
                self_cond=None):
        """x_t (B, Lt, C) noisy target latents, t (B,), context (B, Lc, C) clean latents,
        masks (B, L) bool with True at real tokens (context padded on the right) -> velocity (B, Lt, C).
        Infilling: `right` (B, Lr, C) clean latents of the text after the target, placed after the target's
        real length (a model trained with dit.window.infill_prob > 0). `self_cond` (B, Lt, C): the previous estimate
        of the clean target (a model trained with dit.self_condition_prob > 0; None = zeros)."""
        B, Lt, _ = x_t.shape
        Lc = context.shape[1]
        device = x_t.device
        if context_mask is None:
            context_mask = torch.ones(B, Lc, dtype=torch.bool, device=device)
        if target_mask is None:
            target_mask = torch.ones(B, Lt, dtype=torch.bool, device=device)
        context_len = context_mask.sum(1, keepdim=True)
        parts, keys = [self._embed(context, 0), self._embed_target(x_t, self_cond)], [context_mask, target_mask]
        positions = [torch.arange(Lc, device=device).expand(B, Lc), context_len + torch.arange(Lt, device=device)]
        clean, clean_mask = context, context_mask
        Lr = 0
        if right is not None:
            if self.segment.num_embeddings < 3:
                raise ValueError("this DiT was trained without a right context; train with dit.window.infill_prob > 0")
            Lr = right.shape[1]
            right_mask = torch.ones(B, Lr, dtype=torch.bool, device=device) if right_mask is None else right_mask
            parts.append(self._embed(right, 2))
            keys.append(right_mask)
            positions.append(context_len + target_mask.sum(1, keepdim=True) + torch.arange(Lr, device=device))
            clean, clean_mask = torch.cat([context, right], 1), torch.cat([context_mask, right_mask], 1)
        x, keys = torch.cat(parts, 1), torch.cat(keys, 1)
        rope = rope_angles(torch.cat(positions, 1), self.cfg.width // self.cfg.heads)
        pooled = self._pooled(clean, clean_mask)
        cond = self.condition(t) + pooled
        if self.context_cond is None:
            attn_mask, layer_cond = padding_attn_mask(keys), cond
        else:  # context queries see only context keys; the context is modulated without t
            index = torch.arange(Lc + Lt + Lr, device=device)
            is_context = (index < Lc) | (index >= Lc + Lt)
            attn_mask = (keys[:, None, :] & (~is_context[:, None] | is_context[None, :]))[:, None]
            context_cond = (self.context_cond + pooled).expand(B, -1)
            layer_cond = Conditions(torch.stack([context_cond, cond], 1), (~is_context).long())
        for layer in self.layers:
            x = layer(x, rope, attn_mask, cond=layer_cond)
        return self.final(x[:, Lc: Lc + Lt], cond)
