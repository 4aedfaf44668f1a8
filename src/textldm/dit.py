"""TextDiT: a visual-DiT-style Transformer (adaLN-Zero blocks) that predicts the flow velocity of the
target (continuation) latents, given clean context (prompt) latents.

Sequence layout: [context (Lc) ; target (Lt)], full self-attention. Each token gets a segment embedding
(context / target), and RoPE positions run on across the boundary: target token j sits at position
len(context) + j, so "the token right after the prompt" is a fixed relative offset. Only the target
positions produce outputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .blocks import TransformerBlock, modulate, padding_attn_mask, rope_angles
from .config import DiTConfig


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features -> MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * 1000.0)[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_channels)

    def forward(self, x, cond):
        shift, scale = self.modulation(cond).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class TextDiT(nn.Module):
    def __init__(self, cfg: DiTConfig, latent_channels: int):
        super().__init__()
        self.cfg = cfg
        self.latent_channels = latent_channels
        w = cfg.width
        self.in_proj = nn.Linear(latent_channels, w)
        self.segment = nn.Embedding(2, w)  # 0 = context, 1 = target
        if cfg.t_conditioning:
            self.t_embedder = TimestepEmbedder(w)
        else:  # t-free variant: the blocks keep their adaLN, driven by one learned vector
            self.t_embedder = None
            self.free_cond = nn.Parameter(torch.zeros(w))
        # a global summary of the prompt joins the timestep in the adaLN condition, so every block is told
        # what the prompt is about directly, not only through attention
        self.context_pool = nn.Sequential(nn.Linear(latent_channels, w), nn.SiLU(), nn.Linear(w, w)) \
            if cfg.pooled_context else None
        self.null_context = nn.Parameter(torch.zeros(latent_channels), requires_grad=cfg.null_context == "learned")
        self.blocks = nn.ModuleList(TransformerBlock(w, cfg.heads, cfg.mlp_ratio, cond_dim=w) for _ in range(cfg.depth))
        self.final = FinalLayer(w, latent_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """Xavier everywhere, then the adaLN-Zero policy: every modulation and the output layer start at zero,
        so each block is the identity and the model outputs 0 at initialisation."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.segment.weight, std=0.02)
        if self.t_embedder is not None:
            for layer in self.t_embedder.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final.modulation[-1].weight)
        nn.init.zeros_(self.final.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def condition(self, t: torch.Tensor) -> torch.Tensor:
        if self.t_embedder is None:
            return self.free_cond.expand(t.shape[0], -1)
        return self.t_embedder(t)

    def drop_context(self, context: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace the context of the samples where `drop` (B,) is True by the null condition (CFG)."""
        null = self.null_context.to(context.dtype).expand_as(context)
        return torch.where(drop.view(-1, 1, 1), null, context)

    def forward(self, x_t, t, context, context_mask=None, target_mask=None):
        """x_t (B, Lt, C) noisy target latents, t (B,), context (B, Lc, C) clean latents,
        masks (B, L) bool with True at real tokens (context padded on the right) -> velocity (B, Lt, C)."""
        B, Lt, _ = x_t.shape
        Lc = context.shape[1]
        device = x_t.device
        if context_mask is None:
            context_mask = torch.ones(B, Lc, dtype=torch.bool, device=device)
        if target_mask is None:
            target_mask = torch.ones(B, Lt, dtype=torch.bool, device=device)
        x = self.in_proj(torch.cat([context, x_t], dim=1).to(self.in_proj.weight.dtype))
        segments = torch.cat([torch.zeros(Lc, dtype=torch.long, device=device),
                              torch.ones(Lt, dtype=torch.long, device=device)])
        x = x + self.segment(segments)
        context_len = context_mask.sum(1, keepdim=True)
        positions = torch.cat([torch.arange(Lc, device=device).expand(B, Lc),
                               context_len + torch.arange(Lt, device=device)], dim=1)
        rope = rope_angles(positions, self.cfg.width // self.cfg.heads)
        attn_mask = padding_attn_mask(torch.cat([context_mask, target_mask], dim=1))
        cond = self.condition(t)
        if self.context_pool is not None:
            weights = context_mask.unsqueeze(-1).to(context.dtype)
            pooled = (context * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            cond = cond + self.context_pool(pooled.to(self.in_proj.weight.dtype))
        for block in self.blocks:
            x = block(x, rope, attn_mask, cond=cond)
        return self.final(x[:, Lc:], cond)

    def guided_velocity(self, x_t, t, context, context_mask=None, target_mask=None, cfg_scale: float = 1.0):
        """Classifier-free guidance as one batched forward over [conditional ; unconditional]:
        v = v_uncond + scale * (v_cond - v_uncond). scale 1 is plain conditional sampling."""
        if cfg_scale == 1.0:
            return self(x_t, t, context, context_mask, target_mask)
        B = x_t.shape[0]
        null = self.drop_context(context, torch.ones(B, dtype=torch.bool, device=x_t.device))
        cat = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731
        v = self(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, null]),
                 cat(context_mask, context_mask), cat(target_mask, target_mask))
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + cfg_scale * (v_cond - v_uncond)
