"""Block-causal mode of the TextDiT (dit.mode=blocks, `dit.blocks.size` B; BD3-LM / Cola DLM): a window is cut into
blocks of B
tokens, and training runs one masked forward over [clean latents of the window ; noisy latents of the window], each
noisy block at its own t (`forward_blocks`): a noisy block sees the clean blocks before it and itself, a clean block
sees the clean blocks up to its own (`clean_noisy_attn_mask`). Clean tokens are modulated with the condition of
t = 1 (they are the data end of the path), so at sampling their keys and values are computed once per block and
cached (`BlockPrefix`, `extend_prefix`): each new block runs only its own B tokens against the cache
(`block_velocity`; guidance: `sampling/blocks.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from textldm.models.layers import (
    Conditions,
    KVCache,
    block_causal_attn_mask,
    block_index,
    padding_attn_mask,
    rope_angles,
)


@dataclass
class BlockPrefix:
    """Block mode at sampling: every DiT layer's keys/values of the clean latents so far (whole blocks, left-padded),
    and the keys each row may attend to (False at padding, and everywhere for a CFG row whose null condition is
    the empty prefix)."""
    caches: list[KVCache]  # one per DiT layer
    key_mask: torch.Tensor  # (rows, Lp)

    @property
    def length(self) -> int:
        """Positions held (padding included): the next block starts here."""
        return self.key_mask.shape[1]

    def rows(self, index: torch.Tensor) -> BlockPrefix:
        """The prefix of some rows only (e.g. those still generating, or the conditional half)."""
        return BlockPrefix([c.rows(index) for c in self.caches], self.key_mask[index])


def clean_noisy_attn_mask(key_mask: torch.Tensor, block: int, see_prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Block mode's training mask over [clean ; noisy] (2L tokens): a clean query sees the clean keys of its own
    and earlier blocks, a noisy query the clean keys of earlier blocks (none in rows where `see_prefix` (N,) is
    False: CFG's empty prefix) and the noisy keys of its own block; never a later block, never padding.
    key_mask (N, L), True = real token -> (N, 1, 2L, 2L). Every query sees itself (no empty row for SDPA)."""
    L = key_mask.shape[1]
    causal = block_causal_attn_mask(key_mask, block)[:, 0]  # own and earlier blocks, never padding; itself
    blocks = block_index(L, block, key_mask.device)
    same = blocks[None, :] == blocks[:, None]
    noisy_sees_clean = causal & ~same  # strictly earlier blocks
    if see_prefix is not None:
        noisy_sees_clean = noisy_sees_clean & see_prefix.view(-1, 1, 1)
    top = torch.cat([causal, torch.zeros_like(causal)], 2)
    return torch.cat([top, torch.cat([noisy_sees_clean, causal & same], 2)], 1)[:, None]


class BlockCausalMixin:
    """TextDiT's block-mode methods: the training forward and the cached sampling path."""

    def clean_condition(self, n: int, device) -> torch.Tensor:
        """The adaLN condition of clean latents in block mode: that of t = 1, the data end of the path. (n, D)"""
        return self.condition(torch.ones(n, device=device))

    def forward_blocks(self, x_t, t, *, clean, mask, drop=None, self_cond=None):
        """Block-mode training, one masked forward over [clean ; noisy]: x_t (N, L, C) noisy latents of every
        block, t (N, L / B) each block's time, clean (N, L, C) clean latents of the same window, mask (N, L) True
        at real tokens (a window's first block may be left-padded), drop (N,) rows given the CFG null condition,
        self_cond (N, L, C) a self-conditioning DiT's previous clean estimate of every noisy block (None = zeros)
        -> velocity (N, L, C) of every noisy block. (With a context LM, `clean` is its states (N, L, H) instead.)"""
        N, L, _ = x_t.shape
        B, device = self.cfg.blocks.size, x_t.device
        empty = self.cfg.blocks.uncond == "empty"
        if drop is not None and not empty:
            clean = self.drop_context(clean, drop)
        blocks = block_index(L, B, device)
        x = torch.cat([self._embed_prefix(clean), self._embed_target(x_t, self_cond)], 1)  # (N, 2L, D)
        rope = rope_angles(torch.cat([torch.arange(L, device=device)] * 2), self.cfg.width // self.cfg.heads)
        per_block = self.condition(t.flatten()).view(N, t.shape[1], -1)
        values = torch.cat([self.clean_condition(N, device)[:, None], per_block], 1)  # (N, 1 + L / B, D)
        cond = Conditions(values, torch.cat([torch.zeros_like(blocks), 1 + blocks]))  # clean: row 0, block b: 1 + b
        attn_mask = clean_noisy_attn_mask(mask, B, None if drop is None or not empty else ~drop)
        for layer in self.layers:
            x = layer(x, rope, attn_mask, cond=cond)
        return self.final(x[:, L:], cond.part(L, 2 * L))

    @torch.no_grad()
    def extend_prefix(self, prefix: BlockPrefix | None, clean, mask) -> BlockPrefix:
        """Append whole blocks of clean latents (N, n, C) (mask (N, n)) to a sampling prefix (None: start one): the
        new tokens attend block-causally to the cached keys and to each other, exactly as clean tokens do in
        training, and their keys/values join the cache."""
        N, n, _ = clean.shape
        start = 0 if prefix is None else prefix.length
        key_mask = mask if prefix is None else torch.cat([prefix.key_mask, mask], 1)
        allowed = block_causal_attn_mask(key_mask, self.cfg.blocks.size, start)
        caches = [KVCache() for _ in self.layers] if prefix is None else prefix.caches
        rope = rope_angles(torch.arange(start, start + n, device=clean.device), self.cfg.width // self.cfg.heads)
        x, cond = self._embed_prefix(clean), self.clean_condition(N, clean.device)
        for layer, cache in zip(self.layers, caches):
            cache.frozen = False
            x = layer(x, rope, allowed, cond=cond, cache=cache)
            cache.frozen = True
        return BlockPrefix(caches, key_mask)

    def block_velocity(self, x_t, t, prefix: BlockPrefix, self_cond=None):
        """One noisy block x_t (N, n, C) at time t (N,) right after a cached prefix -> its velocity (N, n, C).
        self_cond (N, n, C): a self-conditioning DiT's previous clean estimate of the block (None = zeros)."""
        N, n, _ = x_t.shape
        rope = rope_angles(torch.arange(prefix.length, prefix.length + n, device=x_t.device),
                           self.cfg.width // self.cfg.heads)
        keys = torch.cat([prefix.key_mask, torch.ones(N, n, dtype=torch.bool, device=x_t.device)], 1)
        cond, x = self.condition(t), self._embed_target(x_t, self_cond)
        for layer, cache in zip(self.layers, prefix.caches):
            x = layer(x, rope, padding_attn_mask(keys), cond=cond, cache=cache)
        return self.final(x, cond)

    def null_prefix_input(self, clean, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """What the unconditional CFG rows read as their prefix: the null latent at every position ("null_latent"), or
        nothing ("empty": the same tensor, every key masked)."""
        if self.cfg.blocks.uncond == "empty":
            return clean, torch.zeros_like(mask)
        return self.drop_context(clean, torch.ones(clean.shape[0], dtype=torch.bool, device=clean.device)), mask
