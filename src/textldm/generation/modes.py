"""What every generation mode provides, and the pieces all of them share (noise seeds, held-out timesteps, the state of
one sampling call). The modes themselves: `window.FullWindow` (the paper's), `blocks.Blocks` (block-causal).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from textldm.config import Config, DiTConfig, SampleConfig
from textldm.diffusion.flow import clean_estimate, masked_row_mean
from textldm.diffusion.sampling import STOP, Callback
from textldm.models.dit import TextDiT
from textldm.utils import derive_seed

HEAD_TOKENS = 4  # held-out: the first target tokens (of a block), where the prompt carries the most information


def noise_seed(seed: int, window: int, row: int) -> int:
    """The seed of the starting noise of prompt `row` in its `window`-th window or block (infilling: window 0)."""
    return derive_seed("noise", seed, window, row)


def start_noise(seeds: list[int], length: int, channels: int, device) -> torch.Tensor:
    """The starting noise (N, length, channels) of N rows, row i drawn from its own seed: the same whatever batch the
    row is in."""
    return torch.stack([torch.randn(length, channels, generator=torch.Generator().manual_seed(k))
                        for k in seeds]).to(device)


@torch.no_grad()
def first_pass_estimate(velocity_of_rows, x_t: torch.Tensor, t: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Self-conditioning in training: the clean-target estimate x_t + (1 - t) v of a gradient-free first pass for
    the `chosen` rows (N,) - `velocity_of_rows(rows)` runs the DiT on those rows alone, so only they pay for it - and
    zeros for the others, as at the first sampling step. t: (N,), or per position (N, L)."""
    estimate = torch.zeros_like(x_t)
    rows = chosen.nonzero().flatten()
    if len(rows):
        estimate[rows] = clean_estimate(x_t[rows], t[rows], velocity_of_rows(rows)).to(estimate.dtype)
    return estimate


def stratified_t(n: int, g: torch.Generator) -> torch.Tensor:
    """n held-out times, a quarter of them in each quarter of [0, 1]."""
    return ((torch.arange(n) % 4) + torch.rand(n, generator=g)) / 4


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


def trained_from_scratch(config: Config) -> str:
    """A run report's words for a mode whose VAE and DiT learn everything from the run's data."""
    return (f"the VAE and the DiT are trained from scratch on '{config.data.source}', so what the text knows comes "
            "from this run alone")


class GenerationMode(nn.Module):
    """A way of generating text with a TextDiT, and of training it to: everything that differs between modes lives
    in one subclass. As an nn.Module holding the DiT it is the DiT's training objective (what `fit` trains and DDP
    wraps): `forward(batch, step) -> (loss, metrics)`. It also owns the batch layout (`batch`), the per-token
    velocity errors that both the loss and the held-out evaluation reduce (`errors`, `heldout`), the sampler's loop
    (`generate`), the FLOPs and tokens of a training step, and the options it refuses (`rules`).

    A new mode: a subclass with these methods, listed in `generation.MODES` with its `selects` rule."""
    name = ""  # the mode's name: the value of dit.mode that selects it

    def __init__(self, dit: TextDiT):
        super().__init__()
        self.dit = dit

    @staticmethod
    def describe(config: Config) -> str:
        """One sentence for a run's report: what the mode trains, and where its text's knowledge comes from."""
        raise NotImplementedError

    @classmethod
    def new_dit(cls, d: DiTConfig, latent_channels: int) -> TextDiT:
        """A fresh TextDiT of this config (its parts are the config's: `TextDiT`)."""
        return TextDiT(d, latent_channels)

    def prompt_tokens(self, s: SampleConfig) -> int:
        """How many of a prompt's last tokens the mode reads under sampler settings `s`: the DiT's, dit.context_max
        (a mode with a context LM reads more: `lm_blocks.LMBlocks`). Longer prompts are cut to them
        (`pipeline.truncate_prompts`)."""
        return self.dit.cfg.context_max

    def training_source(self, cfg: Config, stream, device: torch.device, progress: bool = True):
        """What the training batches are drawn from (`batch`'s first argument): the training stream, unless the mode
        precomputes something of it once (`lm_blocks.LMBlocks`: the context LM's states on disk)."""
        return stream

    def trained_helpers(self) -> dict[str, torch.Tensor]:
        """Weights outside the DiT that training changes and a model folder keeps beside it (`lm_blocks.LMBlocks`
        with dit.context_lm.train_layers: the context LM's trained blocks); none here."""
        return {}

    def load_trained_helpers(self, state: dict[str, torch.Tensor]) -> None:
        """Put saved `trained_helpers` back."""

    def forward(self, batch: dict, step: int):
        """(loss, metrics) of one micro-batch: the mean over samples of each sample's velocity MSE."""
        loss = masked_row_mean(self.errors(batch, batch["drop"], batch.get("self_cond")), self.loss_mask(batch)).mean()
        return loss, {"loss": loss.detach()}
