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
Callback = Callable[[int, float, torch.Tensor], "torch.Tensor | str | None"]
STOP = "stop"  # what a step callback returns to end the sampling after this step


class _Stopped(Exception):
    def __init__(self, x: torch.Tensor):
        self.x = x


def _at(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device)


def _after_step(callback: Callback | None, step: int, t: float, x: torch.Tensor) -> torch.Tensor:
    """The state after a step as the callback leaves it: None keeps x, a tensor of x's shape replaces it (a
    multistep solver's velocity history is kept), STOP ends the integration here."""
    out = None if callback is None else callback(step, t, x)
    if out is None:
        return x
    if isinstance(out, str) and out == STOP:
        raise _Stopped(x)
    if not torch.is_tensor(out) or out.shape != x.shape:
        raise ValueError(f"a step callback returns None, STOP or latents of shape {tuple(x.shape)}; got "
                         f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
    return out.to(x.dtype)


def euler(velocity: VelocityFn, x, grid, callback=None):
    """Euler steps: one velocity evaluation a step."""
    for i in range(len(grid) - 1):
        x = x + (grid[i + 1] - grid[i]) * velocity(x, _at(grid[i], x))
        x = _after_step(callback, i + 1, grid[i + 1], x)
    return x


def heun(velocity: VelocityFn, x, grid, callback=None):
    """Heun steps (Euler predictor, trapezoidal corrector): two evaluations a step, second order."""
    for i in range(len(grid) - 1):
        h = grid[i + 1] - grid[i]
        v0 = velocity(x, _at(grid[i], x))
        v1 = velocity(x + h * v0, _at(grid[i + 1], x))
        x = x + h * 0.5 * (v0 + v1)
        x = _after_step(callback, i + 1, grid[i + 1], x)
    return x


def ab2(velocity: VelocityFn, x, grid, callback=None):
    """Adams-Bashforth 2 on the velocity history (variable steps, a Heun first step): one evaluation a step."""
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
        x = _after_step(callback, i + 1, grid[i + 1], x)
    return x


SOLVERS = {"euler": euler, "heun": heun, "ab2": ab2}


def evaluations(solver: str, steps: int) -> int:
    """Network evaluations (velocity calls) a solver makes over `steps` steps."""
    return {"euler": steps, "heun": 2 * steps, "ab2": steps + 1}[solver]


def integrate(velocity: VelocityFn, x: torch.Tensor, grid: torch.Tensor, solver: str = "euler",
              callback: Callback | None = None) -> torch.Tensor:
    """Integrate from grid[0] to grid[-1]. `callback(step, t, x)` sees the state after every step and may
    replace it (return latents) or end the integration there (return STOP)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    try:
        return SOLVERS[solver](velocity, x, [float(t) for t in grid], callback)
    except _Stopped as stop:
        return stop.x
