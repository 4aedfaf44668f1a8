"""Shared test builders: token streams, a fake teacher, weights moved off their initialisation, DiTs and objectives
built as their generation mode builds them, and the sampler's guided velocity as a one-call helper. Imported by the
test files (`from builders import ...`; pytest puts tests/ on the path)."""
from __future__ import annotations

import torch

from textldm.config import BlocksConfig, ContextLMConfig, DiTConfig, SampleConfig, WindowConfig
from textldm.families.textldm.modes import mode_of
from textldm.models.dit import TextDiT
from textldm.sampling import SamplingRun, WindowSampler
from textldm.training.objectives import DiTObjective

TEACHER_DIM = 12


class RandomStream:
    """Windows of uniformly random token ids below `vocab`."""

    def __init__(self, vocab: int = 40):
        self.vocab = vocab

    def windows(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.vocab, (n, length), generator=generator)


def fake_teacher(vocab: int = 40, dim: int = TEACHER_DIM):
    """A stand-in REPA teacher: a fixed random feature per token id."""
    table = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(5))
    return lambda ids, mask=None: table[ids]


def perturbed(module: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Every trainable weight moved off its initialisation (adaLN-Zero starts as the identity with a zero output,
    which would hide every path a test looks at)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def dit_config(mode: str = "window", *, window: dict | None = None, blocks: dict | None = None,
               context_lm: dict | None = None, **fields) -> DiTConfig:
    """A DiT config of `mode` with that mode's section(s) set from dicts, e.g. dit_config("blocks", blocks={"size": 2},
    width=32)."""
    return DiTConfig(mode=mode, window=WindowConfig(**(window or {})), blocks=BlocksConfig(**(blocks or {})),
                     context_lm=ContextLMConfig(**(context_lm or {})), **fields)


def new_dit(cfg: DiTConfig, latent_channels: int) -> TextDiT:
    """A fresh TextDiT as its generation mode builds it (the parts that mode reads)."""
    return mode_of(cfg).build_dit(cfg, latent_channels)


def objective_of(dit: TextDiT, **parts) -> DiTObjective:
    """The training objective of a DiT's mode, on the mode's parts (`parts`, or fresh ones from its config: a context
    LM)."""
    mode = mode_of(dit.cfg)
    return mode.objective(dit, **(parts or mode.build_parts(dit.cfg)))


def guided_velocity(dit: TextDiT, x: torch.Tensor, t: torch.Tensor, scale: float, context_cache: bool = True,
                    evaluations: int = 1, **conditions) -> torch.Tensor:
    """The full-window sampler's velocity of x at t under guidance `scale`, at the last of `evaluations` calls (a
    self-conditioning DiT reads the previous call's estimate, zeros at the first): `conditions` context,
    context_mask, right, right_mask."""
    conditions = {"context_mask": None, "right": None, "right_mask": None, **conditions}
    if conditions["context_mask"] is None:
        conditions["context_mask"] = torch.ones(conditions["context"].shape[:2], dtype=torch.bool)
    if conditions["right"] is not None and conditions["right_mask"] is None:
        conditions["right_mask"] = torch.ones(conditions["right"].shape[:2], dtype=torch.bool)
    run = SamplingRun(SampleConfig(cfg_scale=scale, context_cache=context_cache), grid=torch.tensor([0.0, 1.0]))
    with torch.no_grad():
        velocity = WindowSampler(dit).window_velocity(run, x, conditions)
        for _ in range(evaluations):
            v = velocity(x, t)
        return v
