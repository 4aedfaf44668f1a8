"""Flow matching on the straight noise-to-data path: the time convention, the path, the loss, the
timestep distribution and the sampling time grid all live here and nowhere else.

Time convention: t = 0 is pure Gaussian noise x0, t = 1 is data x1.
    x_t = (1 - t) * x0 + t * x1,        velocity v = dx_t/dt = x1 - x0.
Samplers integrate dx/dt = v(x, t) from t = 0 to t = 1.
"""
from __future__ import annotations

import math

import torch


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The path x_t = (1 - t) x0 + t x1 (t = 0 noise, t = 1 data). t: (B,) one time per sample, or (B, L) one
    per position (block mode, each block at its own time)."""
    t = t.reshape(*t.shape, *([1] * (x1.dim() - t.dim())))
    return (1 - t) * x0 + t * x1


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The velocity along the path: x1 - x0."""
    return x1 - x0


def clean_estimate(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The data end of the straight line through x_t with velocity v: x1 = x_t + (1 - t) v. t: (B,), or one time
    per position (B, L) (block mode)."""
    return x_t + (1 - t).view(*t.shape, *([1] * (x_t.dim() - t.dim()))) * v


def sample_t(n: int, distribution: str = "logit_normal", mean: float = 0.0, std: float = 1.5,
             generator=None, device=None) -> torch.Tensor:
    """Training timesteps. logit-normal(mean, std): t = sigmoid(mean + std * N(0, 1)) (SD3's choice)."""
    if distribution == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if distribution == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))
    raise ValueError(f"unknown timestep distribution {distribution!r}")


def time_grid(steps: int, distribution: str = "logit_normal", mean: float = 0.0, std: float = 1.5,
              kind: str = "schedule", shift: float = 3.0) -> torch.Tensor:
    """steps + 1 sampling times from 0 (noise) to 1 (data).
    schedule: equally spaced quantiles of the training distribution, so the sampler spends its steps where
              training put its samples (the paper's "same schedule").
    uniform:  equally spaced.
    shifted:  uniform, then SD3's shift on the noise level sigma = 1 - t: sigma' = s sigma / (1 + (s-1) sigma)
              (s > 1 puts more steps near the noise end)."""
    q = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform" or (kind == "schedule" and distribution == "uniform"):
        grid = q
    elif kind == "shifted":
        sigma = 1 - q
        grid = 1 - shift * sigma / (1 + (shift - 1) * sigma)
    elif kind == "schedule" and distribution == "logit_normal":
        inner = q[1:-1]
        normal_quantile = math.sqrt(2.0) * torch.erfinv(2 * inner - 1)
        grid = torch.cat([q[:1], torch.sigmoid(mean + std * normal_quantile), q[-1:]])
    else:
        raise ValueError(f"unknown time grid {kind!r} / timestep distribution {distribution!r}")
    return grid.float()


def velocity_error(v_pred: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Per-position velocity squared error, mean over channels: (B, L, C) -> (B, L)."""
    return (v_pred.float() - velocity_target(x0, x1).float()).pow(2).mean(-1)


def masked_row_mean(err: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) per-position errors -> (B,) means over each row's masked positions (all of them without a mask)."""
    if mask is None:
        return err.mean(-1)
    mask = mask.float()
    return (err * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def flow_loss(v_pred: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor | None = None):
    """Per-sample velocity MSE (mean over channels and the masked positions): (B, L, C) -> (B,)."""
    return masked_row_mean(velocity_error(v_pred, x0, x1), mask)


def gaussian_optimal_loss(t: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Expected velocity MSE of the best predictor of v from x_t when the data are Gaussian with the given
    per-channel variance (any mean) and independent across positions - which is also what the best
    *linear* predictor achieves on the real data. t: (B,); var: (C,) -> (B,), averaged over channels.

    For one channel, x1 ~ N(m, s2), x0 ~ N(0, 1): Var(v) = s2 + 1, Var(x_t) = (1-t)^2 + t^2 s2,
    Cov(v, x_t) = t s2 - (1 - t), so the residual variance is Var(v) - Cov^2 / Var(x_t)."""
    t = t.view(-1, 1).double()
    s2 = var.view(1, -1).double()
    var_v = s2 + 1
    var_xt = (1 - t) ** 2 + t**2 * s2
    cov = t * s2 - (1 - t)
    return (var_v - cov**2 / var_xt).mean(-1).float()
