"""Simplex diffusion (SSD-LM, Han et al. 2023), stated once: tokens as almost-one-hot logit vectors, Gaussian noise
under a cosine schedule, and the sampler's projection of predicted logits back onto the almost-one-hot set. Like
`flow.py` and `masking.py`, it knows no network and no config.

    w_0          +K at the token's index, -K elsewhere (a point of {-K, +K}^V)
    forward      w_t = sqrt(a(t)) w_0 + sqrt(1 - a(t)) K eps,  eps ~ N(0, I), a(t) = f(t) / f(0),
                 f(t) = cos((t / T + s) / (1 + s) pi / 2)^2, s = 1e-4 (the cosine schedule; t in 1..T, T the
                 schedule's steps; a(0) = 1 is the data)
    the network  reads softmax(w_t) (a point of the probability simplex) through the embedding matrix, plus t / T
    loss         cross-entropy of its logits against the clean tokens
    sampling     from w_T = K eps, at each time of a decreasing grid: the predicted logits projected (+K inside their
                 top-p nucleus, -K outside), then noised to the next time's level with fresh noise; the tokens are
                 the last prediction's argmax
"""
from __future__ import annotations

import math

import torch

COSINE_S = 1e-4  # the cosine schedule's offset (Nichol & Dhariwal 2021, as SSD-LM's code)


def alpha_bar(t: torch.Tensor | float, total: int) -> torch.Tensor:
    """a(t): the share of the clean signal's variance left at step t of `total` (1 at t = 0, ~0 at t = total)."""
    t = torch.as_tensor(t, dtype=torch.float64)

    def f(x):
        return torch.cos((x / total + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2

    return (f(t) / f(torch.zeros_like(t))).clamp(0.0, 1.0)


def simplex_of(ids: torch.Tensor, vocab_size: int, k: float) -> torch.Tensor:
    """Token ids (...) -> almost-one-hot logit vectors (..., V): +k at the token, -k elsewhere."""
    out = torch.full((*ids.shape, vocab_size), -k, device=ids.device)
    return out.scatter_(-1, ids[..., None], k)


def noised(w0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, total: int, k: float) -> torch.Tensor:
    """The forward process: w_t = sqrt(a(t)) w0 + sqrt(1 - a(t)) k noise; t (N,) per row."""
    a = alpha_bar(t, total).to(w0.dtype).to(w0.device).view(-1, *([1] * (w0.dim() - 1)))
    return a.sqrt() * w0 + (1 - a).sqrt() * k * noise


def project(logits: torch.Tensor, top_p: float, k: float) -> torch.Tensor:
    """The sampler's projection: +k at every token of the logits' top-p nucleus (the smallest set of top tokens whose
    probability reaches p; the top token always), -k elsewhere. Probabilities in float64. Only the top n tokens are
    ranked, n growing fourfold from 1024 until every row's nucleus ends inside them (a nucleus of 0.2 is a few
    hundred tokens of a trained model's 50k: the full sort was most of a sampling step)."""
    probs = logits.double().softmax(-1)
    n = min(1024, probs.shape[-1])
    while True:
        top, order = probs.topk(n, -1)  # descending
        before = top.cumsum(-1) - top  # mass ranked above each token
        if n == probs.shape[-1] or bool((before[..., -1] >= top_p).all()):
            break  # the n-th token is outside every row's nucleus, and so is every later one
        n = min(4 * n, probs.shape[-1])
    inside = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before < top_p)
    return torch.where(inside, k, -k).to(logits.dtype)


def time_grid(steps: int, total: int) -> list[int]:
    """`steps` integer times from `total` down to 1, evenly spaced, then 0 (the data)."""
    times = torch.linspace(total, 1, steps).round().long().tolist() if steps > 1 else [total]
    return times + [0]
