"""SSD-LM's network (Han et al. 2023): a bidirectional Transformer of the project's own layer over [clean context ;
noisy block]. The context's tokens are embedded as usual; the block's positions read softmax(w_t) - a point of the
probability simplex - through the same embedding matrix, plus an embedding of t / T; the head (tied to the
embeddings) gives the block's logits. It knows nothing of the noise: diffusion/simplex.py and the objective do.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from textldm.config import SSDConfig
from textldm.models.layers import TransformerLayer, gpt2_init, padding_attn_mask, rope_angles
from textldm.models.lmhead import linear_cross_entropy


class SimplexDenoiser(nn.Module):
    """Token embedding (shared by the context and the simplex inputs), a timestep embedding of t / T (SSD-LM's
    linear layer), layers, final norm, head tied to the embeddings."""

    def __init__(self, cfg: SSDConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.width)
        self.time = nn.Linear(1, cfg.width)
        self.layers = nn.ModuleList(TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.initialize_weights()

    def initialize_weights(self):
        """GPT-2's policy (`gpt2_init`)."""
        gpt2_init(self, self.layers)

    def hidden(self, context: torch.Tensor, w_t: torch.Tensor, t: torch.Tensor,
               key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The block's final normalised hidden states (N, B, D): context ids (N, C) (left-padded where key_mask (N,
        C + B) is False), the block's noisy logit vectors w_t (N, B, V) at step t (N,) of T."""
        N, C = context.shape
        B = w_t.shape[1]
        simplex = w_t.float().softmax(-1)
        block = simplex.to(self.embed.weight.dtype) @ self.embed.weight  # softmax(w_t) x E
        block = block + self.time((t.float() / self.cfg.diffusion_steps).view(N, 1, 1).to(block.dtype))
        x = torch.cat([self.embed(context), block], 1)
        rope = rope_angles(torch.arange(C + B, device=x.device), self.cfg.width // self.cfg.heads)
        attn = padding_attn_mask(key_mask)
        for layer in self.layers:
            x = layer(x, rope, attn)
        return self.norm(x[:, C:])

    def forward(self, context: torch.Tensor, w_t: torch.Tensor, t: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The block's logits (N, B, V)."""
        return F.linear(self.hidden(context, w_t, t, key_mask), self.embed.weight)

    def block_nll(self, context: torch.Tensor, w_t: torch.Tensor, t: torch.Tensor, ids: torch.Tensor,
                  key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The mean cross-entropy of the block's logits against its clean ids (N, B), head and loss fused."""
        hidden = self.hidden(context, w_t, t, key_mask).flatten(0, 1)
        weights = torch.full((hidden.shape[0],), 1.0 / hidden.shape[0], device=hidden.device)
        loss, _ = linear_cross_entropy(hidden, self.embed.weight, ids.flatten(), weights)
        return loss
