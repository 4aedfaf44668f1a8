"""Simplex diffusion (SSD-LM, Han et al. 2023), stated once: tokens as almost-one-hot logit vectors, Gaussian noise
under a cosine schedule, and the sampler's projection of predicted logits back onto the almost-one-hot set. Like
`flow.py` and `masking.py`, it knows no network and no config.

    w_0          +K at the token's index, -K elsewhere (a point of {-K, +K}^V)
    forward      w_t = sqrt(a(t)) w_0 + sqrt(1 - a(t)) K eps,  eps ~ N(0, I), a(t) = f(t) / f(0),
                 f(t) = cos((t / T + s) / (1 + s) pi / 2)^2, s = 1e-4 (the cosine schedule; t in 1..T, T the
                 schedule's steps; a(0) = 1 is the data)
    the network  reads softmax(w_t) (a point of the probability simplex) through the embedding matrix, plus t / T
    loss         cross-entropy of its logits against the clean tokens
    sampling     from w_T = K eps, at each time of a decreasing grid: the predicted logits projected, then noised
                 to the next time's level with fresh noise; the tokens are the last prediction's argmax
    projection   "multi-hot": +K on every token of the logits' top-p nucleus, -K elsewhere (the paper's and
                 xhan77/ssd-lm's default decode); "sampling": +K on one token drawn from the nucleus (its
                 probabilities renormalized), -K elsewhere (the authors' alternative decode, ssd_model_decode_alt)
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


def ranked_nucleus(logits: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits' top-p nucleus (the smallest set of top tokens whose probability reaches p; the top token always),
    as (probabilities of the n top tokens, descending; their ids; which of them are inside). Probabilities in
    float64. Only the top n tokens are ranked, n growing fourfold from 1024 until every row's nucleus ends inside
    them (a nucleus of 0.2 is a few hundred tokens of a trained model's 50k: the full sort was most of a step)."""
    probs = logits.double().softmax(-1)
    n = min(1024, probs.shape[-1])
    while True:
        top, order = probs.topk(n, -1)  # descending
        before = top.cumsum(-1) - top  # mass ranked above each token
        if n == probs.shape[-1] or bool((before[..., -1] >= top_p).all()):
            break  # the n-th token is outside every row's nucleus, and so is every later one
        n = min(4 * n, probs.shape[-1])
    return top, order, before < top_p


def project(logits: torch.Tensor, top_p: float, k: float) -> torch.Tensor:
    """The multi-hot projection: +k at every token of the logits' top-p nucleus, -k elsewhere."""
    _, order, inside = ranked_nucleus(logits, top_p)
    inside = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, inside)
    return torch.where(inside, k, -k).to(logits.dtype)


def project_sampled(logits: torch.Tensor, top_p: float, k: float, uniforms: torch.Tensor) -> torch.Tensor:
    """The sampling projection: +k at one token per position drawn from the logits' top-p nucleus (probabilities
    renormalized over it; the token whose share of the nucleus' cumulative mass holds `uniforms`, one in [0, 1) a
    position, shape logits.shape[:-1]), -k elsewhere."""
    top, order, inside = ranked_nucleus(logits, top_p)
    mass = torch.where(inside, top, 0.0).cumsum(-1)
    pick = torch.searchsorted(mass, (uniforms.double() * mass[..., -1])[..., None], right=True)
    last = inside.sum(-1, keepdim=True) - 1  # the nucleus is a prefix of the ranking; u * mass may round up to mass
    token = order.gather(-1, torch.minimum(pick, last))
    return torch.full_like(logits, -k).scatter(-1, token, k)


def time_grid(steps: int, total: int) -> list[int]:
    """`steps` integer times from `total` down to 1, evenly spaced, then 0 (the data)."""
    times = torch.linspace(total, 1, steps).round().long().tolist() if steps > 1 else [total]
    return times + [0]
