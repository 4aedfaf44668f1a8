"""Classifier-free guidance, stated once: the formula, the guidance interval and what they cost.

    v = v_uncond + scale * (v_cond - v_uncond)     applied for t in [min_t, max_t] (t = 0 noise, 1 data)

Scale 1 is plain conditional sampling (one evaluation); inside the interval a guided step evaluates the network on
[conditional ; unconditional] rows in one batched call (two evaluations per row); outside it, the conditional rows
alone (one). Every sampler (full window, blocks), the CLI, the server and the config check use this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def interval_problem(min_t: float, max_t: float) -> str | None:
    """What is wrong with a guidance interval, or None: it must satisfy 0 <= min_t <= max_t <= 1."""
    if 0 <= min_t <= max_t <= 1:
        return None
    return f"the guidance interval needs 0 <= min_t <= max_t <= 1, got {min_t}, {max_t}"


def combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """The guided velocity from the two branches."""
    return v_uncond + scale * (v_cond - v_uncond)


@dataclass(frozen=True)
class Guidance:
    """One sampling call's guidance: the scale and its interval."""
    scale: float = 1.0
    min_t: float = 0.0
    max_t: float = 1.0

    @property
    def on(self) -> bool:
        """Whether guidance is used at all (its unconditional rows must then be prepared)."""
        return self.scale != 1.0

    def active(self, t: float) -> bool:
        """Whether a step at time t is guided."""
        return self.on and self.min_t <= t <= self.max_t

    def evaluations(self, t: float) -> int:
        """Network evaluations per row of a step at time t: 2 when guided, else 1."""
        return 2 if self.active(t) else 1

    def velocity(self, evaluate, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The (guided) velocity of x_t (N, ...) at t (N,). `evaluate(x, t, guided)` runs the network: on [x_t ;
        x_t] against [conditional ; unconditional] inputs when `guided`, on the conditional rows alone otherwise."""
        if not self.active(float(t[0])):
            return evaluate(x_t, t, False)
        v_cond, v_uncond = evaluate(torch.cat([x_t, x_t]), torch.cat([t, t]), True).chunk(2)
        return combine(v_cond, v_uncond, self.scale)
