"""The cacheable-context variant of the TextDiT (`dit.window.context_cache`): context tokens attend only to the context
and are modulated by a condition without t (a learned vector + the pooled prompt), so every block's context keys
and values are the same at every sampling step: `cache_context` computes them once per generation (over [context ;
null context] for both CFG branches) and `forward_cached` runs only the target tokens against them. Target tokens
still attend to everything, with the t-modulation (the masks and conditions of that layout: `TextDiT.forward`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from textldm.models.layers import KVCache, padding_attn_mask, rope_angles


@dataclass
class ContextCache:
    """Per-layer keys/values of clean context latents (cacheable-context DiT), with what the target pass needs."""
    caches: list[KVCache]  # one per DiT layer
    context_mask: torch.Tensor  # (B, Lc)
    pooled: torch.Tensor  # (B, width): the pooled-prompt term of the adaLN condition (0 when off)

    def head(self, n: int) -> ContextCache:
        """The first n rows (the conditional half of a [context ; null] cache)."""
        return ContextCache([c.rows(slice(None, n)) for c in self.caches], self.context_mask[:n], self.pooled[:n])


class ContextCacheMixin:
    """TextDiT's cached-context methods (the variant's sampling path)."""

    @torch.no_grad()
    def cache_context(self, context, context_mask=None) -> ContextCache:
        """Run the clean context through every layer once and keep its keys/values (cacheable variant)."""
        if self.context_cond is None:
            raise ValueError("this DiT attends jointly over context and target; train with "
                             "dit.window.context_cache=true")
        B, Lc, _ = context.shape
        if context_mask is None:
            context_mask = torch.ones(B, Lc, dtype=torch.bool, device=context.device)
        pooled = self._pooled(context, context_mask)
        cond = (self.context_cond + pooled).expand(B, -1)
        rope = rope_angles(torch.arange(Lc, device=context.device), self.cfg.width // self.cfg.heads)
        x, caches = self._embed(context, 0), [KVCache() for _ in self.layers]
        for layer, cache in zip(self.layers, caches):
            x = layer(x, rope, padding_attn_mask(context_mask), cond=cond, cache=cache)
            cache.frozen = True
        pooled = pooled if torch.is_tensor(pooled) else torch.zeros(B, self.cfg.width, device=context.device)
        return ContextCache(caches, context_mask, pooled)

    def forward_cached(self, x_t, t, cache: ContextCache, *, target_mask=None, self_cond=None):
        """The velocity of `forward`, running only the target tokens against a `cache_context` result."""
        B, Lt, _ = x_t.shape
        device = x_t.device
        if target_mask is None:
            target_mask = torch.ones(B, Lt, dtype=torch.bool, device=device)
        positions = cache.context_mask.sum(1, keepdim=True) + torch.arange(Lt, device=device)
        rope = rope_angles(positions, self.cfg.width // self.cfg.heads)
        attn_mask = padding_attn_mask(torch.cat([cache.context_mask, target_mask], dim=1))
        cond = self.condition(t) + cache.pooled
        x = self._embed_target(x_t, self_cond)
        for layer, kv in zip(self.layers, cache.caches):
            x = layer(x, rope, attn_mask, cond=cond, cache=kv)
        return self.final(x, cond)
