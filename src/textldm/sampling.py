"""ODE samplers for dx/dt = v(x, t) on a given time grid (time convention: see `flow`)."""
from __future__ import annotations

from typing import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t of shape (B,)) -> v


def integrate(velocity: VelocityFn, x: torch.Tensor, grid: torch.Tensor, solver: str = "euler",
              callback: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate from grid[0] to grid[-1]. `callback(step, t, x)` sees the state after every step.

    euler: x += dt * v(x, t) (one evaluation a step).  heun: Euler predictor + trapezoidal corrector
    (two evaluations a step, second order).
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"unknown solver {solver!r}; use 'euler' or 'heun'")
    B = x.shape[0]
    for i in range(len(grid) - 1):
        t0, t1 = float(grid[i]), float(grid[i + 1])
        dt = t1 - t0
        v0 = velocity(x, torch.full((B,), t0, device=x.device))
        x_next = x + dt * v0
        if solver == "heun":
            v1 = velocity(x_next, torch.full((B,), t1, device=x.device))
            x_next = x + dt * 0.5 * (v0 + v1)
        x = x_next
        if callback is not None:
            callback(i + 1, t1, x)
    return x
