"""The masked-diffusion denoiser of the MDLM / BD3-LM baselines: a bidirectional Transformer of the shared layer over
token ids and one more id, the mask (the absorbing state), with logits over the vocabulary. It knows nothing of the
noise process: the objective masks and weighs (diffusion/masking.py), the sampler unmasks.

MDLM (`masked.block_size` 0): one bidirectional pass over the noisy window (`forward`). BD3-LM (B > 0): training runs
[clean ; noisy] (2L tokens) under the block-diffusion mask - a noisy block sees the clean blocks before it and itself,
a clean block the clean blocks up to its own (`clean_noisy_attn_mask`, as the TextDiT's block mode) - and sampling
caches the clean blocks' keys and values (`extend_prefix`), so each new block runs only its own B tokens against
them (`block_logits`). No time input by default (MDLM's and BD3-LM's: the masks tell the level); with
`masked.time_conditioning` each block's t modulates its tokens (adaLN-Zero), clean tokens at t = 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from textldm.config import MaskedConfig
from textldm.models.block_causal import BlockPrefix, clean_noisy_attn_mask
from textldm.models.dit import TimestepEmbedder
from textldm.models.layers import (
    Conditions,
    KVCache,
    TransformerLayer,
    block_causal_attn_mask,
    block_index,
    gpt2_init,
    padding_attn_mask,
    rope_angles,
)
from textldm.models.lmhead import linear_cross_entropy


class MaskedDenoiser(nn.Module):
    """Token embedding (the vocabulary and the mask), layers, final norm, output head tied to the vocabulary's
    embeddings (the mask is never predicted)."""

    def __init__(self, cfg: MaskedConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size, self.mask_id = cfg, vocab_size, vocab_size
        self.embed = nn.Embedding(vocab_size + 1, cfg.width)
        cond_dim = cfg.width if cfg.time_conditioning else None
        self.time = TimestepEmbedder(cfg.width) if cfg.time_conditioning else None
        self.layers = nn.ModuleList(TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cond_dim)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.initialize_weights()

    def initialize_weights(self):
        """GPT-2's policy (`gpt2_init`); adaLN-Zero modulations."""
        gpt2_init(self, self.layers)
        for layer in self.layers:
            if layer.modulation is not None:
                nn.init.zeros_(layer.modulation[-1].weight)
                nn.init.zeros_(layer.modulation[-1].bias)

    @property
    def block(self) -> int:
        """Tokens per block: BD3-LM's B, or 0 for MDLM (the whole window)."""
        return self.cfg.block_size

    def output_weight(self) -> torch.Tensor:
        """The output head's (V, D) matrix: the vocabulary's embeddings (tied; the mask's row is not among them)."""
        return self.embed.weight[: self.vocab_size]

    def _rope(self, positions: torch.Tensor):
        return rope_angles(positions, self.cfg.width // self.cfg.heads)

    def _times(self, t: torch.Tensor) -> torch.Tensor:
        """(n,) masking levels -> (n, D) conditions."""
        return self.time(t.float())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | None = None, *, clean: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, L, V) for the noisy ids x_t (N, L) (mask_id where masked): `hidden` through the tied head."""
        return F.linear(self.hidden(x_t, t, clean=clean, key_mask=key_mask), self.output_weight())

    def hidden(self, x_t: torch.Tensor, t: torch.Tensor | None = None, *, clean: torch.Tensor | None = None,
               key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final normalised hidden states (N, L, D) of the noisy ids x_t (N, L). MDLM: one bidirectional pass,
        key_mask (N, L) True at real tokens (None: all). BD3-LM: `clean` (N, L), the window's clean ids, read
        through the block-diffusion mask. t (N, L / B) each block's level (MDLM: (N, 1)), read only with
        masked.time_conditioning."""
        N, L = x_t.shape
        device = x_t.device
        key_mask = torch.ones(N, L, dtype=torch.bool, device=device) if key_mask is None else key_mask
        if self.block == 0:
            cond = None if self.time is None else self._times(t[:, 0])
            x, rope, attn = self.embed(x_t), self._rope(torch.arange(L, device=device)), padding_attn_mask(key_mask)
            for layer in self.layers:
                x = layer(x, rope, attn, cond=cond)
            return self.norm(x)
        cond = None
        if self.time is not None:  # clean tokens: row 0 (t = 0, the data); block b's noisy tokens: row 1 + b
            blocks = block_index(L, self.block, device)
            values = self._times(torch.cat([torch.zeros(N, 1, device=device), t], 1).flatten()).view(N, -1,
                                                                                                     self.cfg.width)
            cond = Conditions(values, torch.cat([torch.zeros_like(blocks), 1 + blocks]))
        x = self.embed(torch.cat([clean, x_t], 1))
        rope = self._rope(torch.cat([torch.arange(L, device=device)] * 2))
        attn = clean_noisy_attn_mask(key_mask, self.block)
        for layer in self.layers:
            x = layer(x, rope, attn, cond=cond)
        return self.norm(x[:, L:])

    def weighted_nll(self, x_t: torch.Tensor, t: torch.Tensor | None, ids: torch.Tensor, weights: torch.Tensor, *,
                     clean: torch.Tensor | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """sum over positions of weights (N, L) x -log p(ids | x_t): the NELBO's reduction, the head and the
        cross-entropy fused (nothing of size tokens x vocabulary is kept)."""
        hidden = self.hidden(x_t, t, clean=clean, key_mask=key_mask)
        total, _ = linear_cross_entropy(hidden.flatten(0, 1), self.output_weight(), ids.flatten(), weights.flatten())
        return total

    @torch.no_grad()
    def extend_prefix(self, prefix: BlockPrefix | None, clean: torch.Tensor, mask: torch.Tensor) -> BlockPrefix:
        """BD3-LM sampling: append whole blocks of clean ids (N, n) (mask (N, n) True at real tokens) to the cached
        prefix (None: start one). They attend block-causally to the cache and each other, as clean tokens do in
        training, and their keys and values join the cache."""
        N, n = clean.shape
        start = 0 if prefix is None else prefix.length
        key_mask = mask if prefix is None else torch.cat([prefix.key_mask, mask], 1)
        allowed = block_causal_attn_mask(key_mask, self.block, start)
        caches = [KVCache() for _ in self.layers] if prefix is None else prefix.caches
        cond = None if self.time is None else self._times(torch.zeros(N, device=clean.device))
        x, rope = self.embed(clean), self._rope(torch.arange(start, start + n, device=clean.device))
        for layer, cache in zip(self.layers, caches):
            cache.frozen = False
            x = layer(x, rope, allowed, cond=cond, cache=cache)
            cache.frozen = True
        return BlockPrefix(caches, key_mask)

    def block_logits(self, x_block: torch.Tensor, prefix: BlockPrefix, t: torch.Tensor | None = None) -> torch.Tensor:
        """BD3-LM sampling: logits (N, n, V) of one noisy block x_block (N, n) right after the cached prefix; it
        sees the prefix's real keys and all of its own tokens. t (N,): its level (time conditioning only)."""
        N, n = x_block.shape
        keys = torch.cat([prefix.key_mask, torch.ones(N, n, dtype=torch.bool, device=x_block.device)], 1)
        cond = None if self.time is None else self._times(t)
        x, rope = self.embed(x_block), self._rope(torch.arange(prefix.length, prefix.length + n,
                                                               device=x_block.device))
        for layer, cache in zip(self.layers, prefix.caches):
            x = layer(x, rope, padding_attn_mask(keys), cond=cond, cache=cache)
        return F.linear(self.norm(x), self.output_weight())
