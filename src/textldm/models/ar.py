"""The autoregressive baseline: a GPT-style causal Transformer trained under TextLDM's settings.

Same tokenizer, data, sequence length (the DiT's prompt + continuation window), optimizer and training
loop (`training.loop.fit`) as the VAE and DiT, and the same `TransformerLayer` (causal, with a KV cache for
decoding). Sampling: temperature / top-k / top-p, greedy at temperature 0; batches of prompts are
left-padded, with positions counted from each row's first real token.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from textldm.config import ARConfig
from textldm.errors import UserError
from textldm.models.layers import KVCache, TransformerLayer, gpt2_init, rope_angles
from textldm.utils import pad_rows


class CausalLM(nn.Module):
    """A GPT-style causal Transformer from the shared layer: token embedding, layers, final norm, tied output head."""
    RENAMED_WEIGHTS = (("blocks.", "layers."),)  # 0.5's weight names (`export.load_weights`)

    def __init__(self, cfg: ARConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.width)
        self.layers = nn.ModuleList(TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.initialize_weights()

    def initialize_weights(self):
        """GPT-2's policy (`gpt2_init`)."""
        gpt2_init(self, self.layers)

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                caches: list[KVCache] | None = None) -> torch.Tensor:
        """Logits (B, L, V) for `ids` (B, L). Training: plain causal attention. Decoding: `key_mask` (B, T)
        covers the cached tokens plus these L (True = real token), `positions` (B, L) their RoPE positions."""
        return F.linear(self.hidden(ids, key_mask, positions, caches), self.embed.weight)  # tied output head

    def hidden(self, ids: torch.Tensor, key_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
               caches: list[KVCache] | None = None) -> torch.Tensor:
        """The final normalised hidden states (B, L, width), before the output head."""
        B, L = ids.shape
        past = len(caches[0]) if caches else 0
        if positions is None:
            positions = torch.arange(past, past + L, device=ids.device)
        rope = rope_angles(positions, self.cfg.width // self.cfg.heads)
        attn_mask = None
        if key_mask is not None or past:
            T = past + L
            keys = torch.ones(B, T, dtype=torch.bool, device=ids.device) if key_mask is None else key_mask
            query_pos = torch.arange(past, T, device=ids.device)
            causal = torch.arange(T, device=ids.device)[None, :] <= query_pos[:, None]  # (L, T)
            # a query always sees itself, so left-padding rows never attend to nothing (NaN)
            attn_mask = (causal[None] & keys[:, None, :]) | (torch.arange(T, device=ids.device)[None, None] ==
                                                              query_pos[None, :, None])
            attn_mask = attn_mask[:, None]
        x = self.embed(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, attn_mask, causal=attn_mask is None, cache=None if caches is None else caches[i])
        return self.norm(x)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids. temperature 0 = greedy."""
    if temperature < torch.finfo(torch.float32).tiny:  # 0, or so small it would round to 0 in float32
        return logits.argmax(-1)
    logits = logits.float()
    # shifted so the top logit is 0: a tiny temperature then gives -inf / 0 (greedy), never inf - inf = nan
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate(model: CausalLM, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, use_cache: bool = True) -> torch.Tensor:
    """(B, max_new_tokens) new tokens for left-padded prompts. Without the cache every step re-runs the
    whole sequence (the reference the cached path must match)."""
    if any(len(p) == 0 for p in prompts):
        raise UserError("an AR continuation needs a non-empty prompt")
    model.eval()
    device = next(model.parameters()).device
    B = len(prompts)
    ids, mask = pad_rows(prompts, device=device)
    g = torch.Generator().manual_seed(seed)
    caches = [KVCache() for _ in model.layers] if use_cache else None
    new = []
    step_ids, step_pos = ids, (mask.long().cumsum(1) - 1).clamp_min(0)
    for _ in range(max_new_tokens):
        if use_cache:
            logits = model(step_ids, mask, step_pos, caches)[:, -1]
        else:
            logits = model(ids, mask, (mask.long().cumsum(1) - 1).clamp_min(0))[:, -1]
        token = sample_next(logits, temperature, top_k, top_p, g)
        new.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=device)], 1)
        step_ids, step_pos = token[:, None], mask.long().sum(1, keepdim=True) - 1
    return torch.stack(new, 1) if new else torch.zeros(B, 0, dtype=torch.long, device=device)
