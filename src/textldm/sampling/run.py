"""One sampling call as the samplers see it (`SamplingRun`: settings, time grid, step callback, what the loop reports
back), the noise every row starts from (seeded per row, the same whatever its batch), and what every sampler provides
(`Sampler`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from textldm.config import SampleConfig
from textldm.diffusion.flow import clean_estimate
from textldm.diffusion.sampling import STOP, Callback
from textldm.errors import UserError
from textldm.models.dit import TextDiT
from textldm.utils import derive_seed


def noise_seed(seed: int, window: int, row: int) -> int:
    """The seed of the starting noise of prompt `row` in its `window`-th window or block (infilling: window 0)."""
    return derive_seed("noise", seed, window, row)


def start_noise(seeds: list[int], length: int, channels: int, device) -> torch.Tensor:
    """The starting noise (N, length, channels) of N rows, row i drawn from its own seed: the same whatever batch the
    row is in."""
    return torch.stack([torch.randn(length, channels, generator=torch.Generator().manual_seed(k))
                        for k in seeds]).to(device)


@dataclass
class SamplingRun:
    """One `generate` call as the mode's loop sees it: the settings, the time grid, the caller's step callback, and
    what the loop reports back - whether the callback asked to stop, the network evaluations per row.

    The step callback is `callback(step, t, x)`; one with `reads_tokens = True` is called `callback(step, t, x,
    decode)`, where `decode(latents)` gives the token ids the first rows of the current window or block decode to,
    as the final text will (beside the block's prefix, cut to the tokens the text keeps): the live view."""
    settings: SampleConfig
    grid: torch.Tensor
    callback: Callback | None = None
    first_index: int = 0  # the batch's first row is prompt number first_index (its noise seeds)
    shared_noise: bool = False  # every row starts from row first_index's noise (the prompt-dependence measure)
    stopped: bool = False
    evaluations: int = 0

    def noise_seed(self, window: int, row: int) -> int:
        """The seed of the batch's row `row` in its `window`-th window or block (`noise_seed`)."""
        return noise_seed(self.settings.seed, window, self.first_index + (0 if self.shared_noise else row))

    def start_noise(self, seeds: list[int], length: int, channels: int, device) -> torch.Tensor:
        """The starting noise of rows with these seeds (`start_noise`), scaled by the settings' noise_scale."""
        x = start_noise(seeds, length, channels, device)
        return x if self.settings.noise_scale == 1 else x * self.settings.noise_scale

    def step_callback(self, decode):
        """The callback the solver calls within one window or block (`decode`: that window's or block's decoder),
        or None without a caller's callback."""
        if self.callback is None:
            return None

        def step(i: int, t: float, x: torch.Tensor):
            user = self.callback
            result = user(i, t, x, decode) if getattr(user, "reads_tokens", False) else user(i, t, x)
            if isinstance(result, str) and result == STOP:
                self.stopped = True
            return result

        return step

    def velocity(self, evaluate, self_condition: torch.Tensor | None = None):
        """The velocity function the solver integrates: this call's guidance over `evaluate(x, t, guided,
        self_cond)`, each step's evaluations counted. `self_condition`: for a self-conditioning DiT, the zeros its
        first evaluation reads (None: a DiT without it); each later evaluation reads the previous one's clean-target
        estimate x + (1 - t) v, the same for a guided step's conditional and unconditional rows."""
        guidance, estimate = self.settings.guidance, self_condition

        def with_estimate(x_t: torch.Tensor, t: torch.Tensor, guided: bool) -> torch.Tensor:
            return evaluate(x_t, t, guided, torch.cat([estimate] * 2) if guided and estimate is not None else estimate)

        def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            nonlocal estimate
            self.evaluations += guidance.evaluations(float(t[0]))
            v = guidance.velocity(with_estimate, x_t, t)
            if estimate is not None:  # self-conditioning: the next evaluation reads this clean-target estimate
                estimate = clean_estimate(x_t, t, v)
            return v

        return velocity


@dataclass
class TokenRun:
    """One generate call of a sampler over tokens (the masked-diffusion and SSD-LM baselines): its settings, the
    batch's first row's index (its seeds), and the network evaluations each row needed (NFE)."""
    settings: SampleConfig
    first_index: int = 0
    evaluations: list[int] = field(default_factory=list)  # per row of the call

    def generator(self, unit: int, row: int) -> torch.Generator:
        """The draws of row `row` (of the call) in its `unit`-th window or block: seeded by (seed, unit,
        first_index + row), the same whatever batch the row is in."""
        return torch.Generator().manual_seed(noise_seed(self.settings.seed, unit, self.first_index + row))


class Sampler:
    """What a generation mode's sampler provides: `generate(codec, prompt_ids, run)` (the loop, window after window
    or block after block; raw token ids per row, not cut at end-of-text) and `prompt_tokens(settings)` (how many of a
    prompt's last tokens it reads); `infill` where the mode can fill a middle. It holds the denoiser and what else
    the mode reads (a context LM), never the pipeline."""

    def __init__(self, dit: TextDiT):
        self.dit = dit

    def generate(self, codec, prompt_ids: list[list[int]], run: SamplingRun) -> list[list[int]]:
        raise NotImplementedError

    def prompt_tokens(self, s: SampleConfig) -> int:
        """How many of a prompt's last tokens the mode reads under sampler settings `s`: the DiT's, dit.context_max
        (a mode with a context LM reads more: `context_lm.ContextLMSampler`). Longer prompts are cut to them."""
        return self.dit.cfg.context_max

    def infill(self, codec, lefts: list[list[int]], rights: list[list[int]], run: SamplingRun) -> list[list[int]]:
        raise UserError("infilling is a full-window option (dit.mode=window with dit.window.infill_prob > 0)")
