"""ODE samplers for dx/dt = v(x, t) on a given time grid (time convention: see `flow`).

Each solver is one small function of (velocity, x, grid, callback) and counts its network evaluations:
    euler  x += h v(x, t)                                          1 evaluation a step, first order
    heun   Euler predictor, trapezoidal corrector                  2 evaluations a step, second order
    ab2    Adams-Bashforth 2 on the velocity history: x += h ((1 + r/2) v_n - (r/2) v_{n-1}), r = h_n / h_{n-1}
           (variable steps; the first step is a Heun step)         1 evaluation a step (+1), second order
"""
from __future__ import annotations

from typing import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t of shape (B,)) -> v
Callback = Callable[[int, float, torch.Tensor], None]


def _at(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device)


def euler(velocity: VelocityFn, x, grid, callback=None):
    for i in range(len(grid) - 1):
        x = x + (grid[i + 1] - grid[i]) * velocity(x, _at(grid[i], x))
        if callback is not None:
            callback(i + 1, grid[i + 1], x)
    return x


def heun(velocity: VelocityFn, x, grid, callback=None):
    for i in range(len(grid) - 1):
        h = grid[i + 1] - grid[i]
        v0 = velocity(x, _at(grid[i], x))
        v1 = velocity(x + h * v0, _at(grid[i + 1], x))
        x = x + h * 0.5 * (v0 + v1)
        if callback is not None:
            callback(i + 1, grid[i + 1], x)
    return x


def ab2(velocity: VelocityFn, x, grid, callback=None):
    previous, h_prev = None, None
    for i in range(len(grid) - 1):
        h = grid[i + 1] - grid[i]
        v = velocity(x, _at(grid[i], x))
        if previous is None:  # start with a second-order (Heun) step so the order holds from the first step
            x = x + h * 0.5 * (v + velocity(x + h * v, _at(grid[i + 1], x)))
        else:
            r = h / h_prev
            x = x + h * ((1 + 0.5 * r) * v - 0.5 * r * previous)
        previous, h_prev = v, h
        if callback is not None:
            callback(i + 1, grid[i + 1], x)
    return x


SOLVERS = {"euler": euler, "heun": heun, "ab2": ab2}


def evaluations(solver: str, steps: int) -> int:
    """Network evaluations (velocity calls) a solver makes over `steps` steps."""
    return {"euler": steps, "heun": 2 * steps, "ab2": steps + 1}[solver]


def integrate(velocity: VelocityFn, x: torch.Tensor, grid: torch.Tensor, solver: str = "euler",
              callback: Callback | None = None) -> torch.Tensor:
    """Integrate from grid[0] to grid[-1]. `callback(step, t, x)` sees the state after every step."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    return SOLVERS[solver](velocity, x, [float(t) for t in grid], callback)
