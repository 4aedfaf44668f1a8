"""Masked (absorbing-state) discrete diffusion, stated once: the forward process, the ELBO's weight, the SUBS
parameterization and the ancestral reverse step of MDLM (Sahoo et al. 2024) and BD3-LM (Arriola et al. 2025). Like
`flow.py`, it knows no network and no config: the objective and the sampler call it.

Time convention here: t in [0, 1] is the masking level - each token is masked independently with probability t (the
log-linear schedule: alpha(t) = 1 - t is the chance a token is still clean), so t = 0 is the data and t = 1 all
masks. (The flow's t runs the other way: flow.py, t = 1 is the data.)

    forward      x_t[i] = MASK with probability t, else x_0[i]
    loss         E_t [ w(t) * sum over masked i of -log p_theta(x_0[i] | x_t) ],  w(t) = -alpha'(t) / (1 - alpha(t))
                 = 1 / t: the continuous-time NELBO, a bound on -log p(x_0)
    SUBS         the mask is never predicted; a position already clean keeps its token (its log-probability is 0)
    reverse      from t to s < t: a masked position becomes a draw from p_theta(x_0 | x_t) with probability
                 (t - s) / t, else stays masked; a clean one stays. At s = 0 every position is clean. Draws are
                 made from float64 probabilities (`sample_categorical`).
"""
from __future__ import annotations

import torch

MIN_T = 1e-3  # the smallest training time (BD3-LM's sampling_eps_min): w(t) = 1 / t stays finite


def elbo_weight(t: torch.Tensor) -> torch.Tensor:
    """w(t) = -alpha'(t) / (1 - alpha(t)) of the log-linear schedule: 1 / t."""
    return 1.0 / t


def antithetic_times(n: int, generator: torch.Generator, t_min: float = 0.0, t_max: float = 1.0,
                     antithetic: bool = True) -> torch.Tensor:
    """n times in [max(t_min, MIN_T), t_max]: stratified (one uniform offset, n evenly spaced strata - MDLM's
    low-discrepancy sampler; BD3-LM draws them over batch x blocks) or i.i.d. uniform."""
    u = torch.rand(n, generator=generator)
    if antithetic:
        u = (u / n + torch.arange(n) / n) % 1.0
    low = max(t_min, MIN_T)
    return low + (t_max - low) * u


def mask_tokens(ids: torch.Tensor, t: torch.Tensor, uniforms: torch.Tensor, mask_id: int):
    """The forward process: ids (N, L) and each position's masking level t (N, L) with its uniform draw (N, L) ->
    (x_t, masked): position i is masked where uniforms[i] < t[i]."""
    masked = uniforms < t
    return torch.where(masked, torch.full_like(ids, mask_id), ids), masked


def subs_log_probs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS: logits (N, L, V) over the vocabulary (the mask id, V, is never a prediction) -> log-probabilities (N, L,
    V) in float32, where a position that is not masked in x_t is certain of its own token (log 1 = 0, the rest
    -inf): the model only ever predicts masked tokens."""
    log_probs = logits.float().log_softmax(-1)
    clean = x_t != mask_id
    if clean.any():
        carried = torch.full_like(log_probs, float("-inf"))
        carried.scatter_(-1, x_t.clamp(max=logits.shape[-1] - 1)[..., None], 0.0)
        log_probs = torch.where(clean[..., None], carried, log_probs)
    return log_probs


def masked_nll(logits: torch.Tensor, x_t: torch.Tensor, ids: torch.Tensor, t: torch.Tensor, mask_id: int):
    """Per-position terms of the NELBO (N, L): w(t) * -log p_theta(x_0 | x_t) at masked positions, 0 elsewhere
    (SUBS: a clean position's own token has probability 1). t: each position's masking level (N, L)."""
    masked = x_t == mask_id
    log_probs = logits.float().log_softmax(-1)
    nll = -log_probs.gather(-1, ids[..., None]).squeeze(-1)
    return torch.where(masked, nll * elbo_weight(t), torch.zeros_like(nll))


def sampling_probabilities(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """The float64 probabilities (..., V) a position is drawn from: softmax(logits / temperature), cut to the nucleus
    top_p (the smallest set of top tokens whose mass reaches p; the top token always stays) and renormalised.
    temperature 0: the argmax alone."""
    logits = logits.double()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * (before < top_p))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of probs (..., V), by inverting the row's cumulative distribution at one float64 uniform.
    The probabilities must be float64: float32 sampling truncates the tail (of Gumbel noise, or of a cumulative sum
    near 1), lowering the effective temperature and flattering gen-PPL (Zheng et al. 2024, arXiv 2409.02908)."""
    if probs.dtype != torch.float64:
        raise TypeError(f"sample_categorical draws from float64 probabilities, got {probs.dtype}")
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[:-1], generator=generator, dtype=torch.float64).to(probs.device) * cdf[..., -1]
    return torch.searchsorted(cdf, u[..., None], right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def reverse_step(x_t: torch.Tensor, logits: torch.Tensor, t: float, s: float, generator: torch.Generator,
                 mask_id: int, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """One ancestral step of one row from level t to s < t: x_t (L,) and the model's logits (L, V) of x_0 -> x_s
    (L,). Each masked position is unmasked with probability (t - s) / t (all of them at s = 0) to a draw from
    `sampling_probabilities` (float64); clean positions are kept. The row's generator draws, in this order, one
    uniform per position (whether it unmasks) and one per unmasked position (its token)."""
    masked = x_t == mask_id
    unmask = torch.rand(x_t.shape, generator=generator, dtype=torch.float64).to(x_t.device) < (t - s) / t
    chosen = masked & unmask
    x_s = x_t.clone()
    if chosen.any():
        x_s[chosen] = sample_categorical(sampling_probabilities(logits[chosen], temperature, top_p), generator)
    return x_s
