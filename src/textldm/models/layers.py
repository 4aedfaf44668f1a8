"""The one Transformer layer that the VAE, the DiT and the AR baseline all share (DiT's "block"; here a block is a
stretch of tokens, as in block-causal).

Pre-norm attention + MLP with rotary position embeddings and SDPA attention. With `cond_dim` set, the
layer is adaLN-modulated (DiT style): a conditioning vector produces shift/scale/gate for both branches.
The zero-initialisation of that modulation (adaLN-Zero) lives in the DiT's `initialize_weights`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0):
    """cos/sin tables for integer positions of shape (L,) or (B, L); returns tensors (B|1, 1, L, head_dim/2)."""
    if positions.dim() == 1:
        positions = positions.unsqueeze(0)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float().unsqueeze(-1) * inv_freq  # (B, L, head_dim/2)
    return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension. x: (B, H, L, D)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (B, D) modulation broadcast over positions."""
    return x * (1 + scale) + shift


class KVCache:
    """Keys and values of the tokens seen so far in one attention layer. Autoregressive decoding appends to
    it; a frozen cache (the DiT's clean context, the same at every sampling step) is prepended and kept."""

    def __init__(self):
        self.k = self.v = None
        self.frozen = False

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def rows(self, index) -> KVCache:
        """A frozen cache of some rows only (a tensor of row indices or a slice)."""
        part = KVCache()
        part.k, part.v, part.frozen = self.k[index], self.v[index], True
        return part

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Append this step's keys and values; returns all cached so far."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        if not self.frozen:
            self.k, self.v = k, v
        return k, v


def use_sdpa(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Which branch `attention` takes (the tests force SDPA on CPU through this, to check its mask polarity)."""
    return q.is_cuda or q.shape[-2] * k.shape[-2] > 2048 * 2048


def attention(q, k, v, attn_mask=None, causal=False):
    """Softmax attention over (B, H, L, D) tensors. On GPU: SDPA (flash / memory-efficient kernels). On CPU the
    explicit product is used instead: at the sequence lengths trained on CPUs it runs the forward + backward
    2.2x faster than SDPA's CPU flash kernel (scores in fp32 for the softmax); past 2048 x 2048 scores per head,
    SDPA again, whose memory does not grow with the square of the length."""
    if use_sdpa(q, k):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None)
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if causal and attn_mask is None:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    return scores.softmax(-1).to(v.dtype) @ v


class Attention(nn.Module):
    """Multi-head self-attention with RoPE, SDPA, an optional boolean mask and an optional KV cache."""
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, rope, attn_mask=None, causal=False, cache: KVCache | None = None):
        """With a cache, the new keys/values are appended to it and the queries attend to all of them; the
        caller then passes an explicit `attn_mask` (SDPA's is_causal assumes queries and keys start together)."""
        B, L, W = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v)
        out = attention(q, k, v, attn_mask, causal)
        return self.proj(out.transpose(1, 2).reshape(B, L, W))


class MLP(nn.Module):
    """The Transformer MLP: Linear -> GELU (tanh) -> Linear."""
    def __init__(self, width: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        """(B, L, D) -> (B, L, D)."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


@dataclass
class Conditions:
    """Several adaLN conditions over one sequence: `values` (B, P, D), and `index` (L,) the row of `values` each
    token reads (e.g. a DiT's clean context and noisy target, or each block's own timestep)."""
    values: torch.Tensor
    index: torch.Tensor

    def part(self, start: int, stop: int) -> Conditions:
        """The conditions of tokens start..stop-1."""
        return Conditions(self.values, self.index[start:stop])


def per_token_modulation(modulation: nn.Module, cond: torch.Tensor | Conditions) -> torch.Tensor:
    """The adaLN modulation: (B, 1, M) from one condition per sequence (B, D); (B, L, M) from `Conditions`, computed
    once per condition and gathered per token."""
    if isinstance(cond, Conditions):
        return modulation(cond.values)[:, cond.index]
    return modulation(cond).unsqueeze(1)


class TransformerLayer(nn.Module):
    """Pre-norm layer. Unconditioned (VAE, AR): LayerNorms with affine parameters.
    Conditioned (DiT): affine-free LayerNorms modulated by `cond`: (B, cond_dim), or `Conditions`."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, cond_dim: int | None = None):
        super().__init__()
        affine = cond_dim is None
        self.norm1 = nn.LayerNorm(width, elementwise_affine=affine, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=affine, eps=1e-6)
        self.mlp = MLP(width, mlp_ratio)
        self.modulation = None if cond_dim is None else nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * width))

    def forward(self, x, rope, attn_mask=None, cond=None, causal=False, cache: KVCache | None = None):
        """`cond`: (B, cond_dim) for the whole sequence, or `Conditions` (one of several per token)."""
        if self.modulation is None:
            x = x + self.attn(self.norm1(x), rope, attn_mask, causal, cache)
            return x + self.mlp(self.norm2(x))
        mod = per_token_modulation(self.modulation, cond)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope, attn_mask, causal, cache)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


def gpt2_init(module: nn.Module, layers) -> None:
    """GPT-2's initialisation, for the baselines' networks: N(0, 0.02) for every linear and embedding weight of
    `module`, zero biases, and each of its `layers`' residual output projections (attention out, MLP out) at
    0.02 / sqrt(2 x depth)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    for layer in layers:
        for proj in (layer.attn.proj, layer.mlp.fc2):
            nn.init.normal_(proj.weight, std=0.02 / (2 * len(layers)) ** 0.5)


def padding_attn_mask(key_mask: torch.Tensor | None):
    """(B, L) bool, True = real token -> (B, 1, 1, L) boolean SDPA mask (True = may attend)."""
    return None if key_mask is None else key_mask[:, None, None, :]


def block_index(length: int, block: int, device=None, start: int = 0) -> torch.Tensor:
    """The block of each position start..start+length-1 in a sequence cut into blocks of `block` tokens."""
    return torch.arange(start, start + length, device=device) // block


def block_causal_attn_mask(key_mask: torch.Tensor, block: int, start: int = 0) -> torch.Tensor:
    """Block-causal attention: a query sees the keys of its own block and of earlier blocks, never later ones. The
    queries are positions start.. of a sequence cut into blocks of `block` tokens (start > 0: new tokens after a cached
    prefix); key_mask (B, Lk), True = real key -> (B, 1, Lk - start, Lk). Every query also sees itself, so a padded
    query never has an empty row (SDPA would return NaN for it); real queries never see padding."""
    keys = key_mask.shape[1]
    n, device = keys - start, key_mask.device
    queries = block_index(n, block, device, start)
    allowed = (block_index(keys, block, device)[None, :] <= queries[:, None])[None] & key_mask[:, None, :]
    allowed[:, torch.arange(n, device=device), start + torch.arange(n, device=device)] = True
    return allowed[:, None]
