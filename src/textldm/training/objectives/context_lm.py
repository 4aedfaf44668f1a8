"""The context-LM mode in training (dit.mode=context_lm; STAR-LDM / DGLM-style): block mode whose clean prefix is a
causal LM's hidden states of the tokens before each block (`dit.context_lm.layer`) instead of their VAE latents; the
target stays the VAE's latents. Training reads the LM's states of whole windows, at every step or precomputed to disk
once (`dit.context_lm.features`). The LM is frozen - its FLOPs a helper's, not in the trained FLOPs, as the REPA
teacher's are not - unless its last `dit.context_lm.train_layers` layers train with the DiT (at lr x
`dit.context_lm.lr_scale`; their FLOPs counted, their weights saved beside the DiT)."""
from __future__ import annotations

import logging

import torch

from textldm.config import Config
from textldm.data.features import FeatureCache, open_or_build
from textldm.data.shards import TokenStream
from textldm.models.dit import TextDiT
from textldm.models.lm import FrozenLM, check_tokenizer
from textldm.models.vae import TextVAE
from textldm.runtime.perf import TRAIN_FACTOR
from textldm.runtime.precision import frozen_lm_context
from textldm.training.objectives.blocks import BlockObjective

log = logging.getLogger(__name__)
# Passes over the precomputed windows past which the DiT was measured to overfit them (bench/results/context_lm.md:
# 51 passes gave a held-out loss with the prompt above the prompt-dropped one; 12.8 and 25.6 did not).
MAX_PASSES = 30


def warn_repeated_windows(steps: int | None, batch_size: int, windows: int) -> float | None:
    """Warns when `steps` batches would read each precomputed window more than MAX_PASSES times; returns the
    passes (None when the stage stops on time or FLOPs, not steps)."""
    if not steps:
        return None
    passes = steps * batch_size / windows
    if passes > MAX_PASSES:
        log.warning("the DiT will read each of the %d precomputed context windows up to %.0f times (%d steps x "
                    "%d); past ~%d passes it was measured to overfit them: raise dit.context_lm.windows (or 0 = the "
                    "whole split) or run the LM live (dit.context_lm.features='')",
                    windows, passes, steps, batch_size, MAX_PASSES)
    return passes


class ContextLMObjective(BlockObjective):
    """Block mode's objective with the context LM's states as the prefix. The batch is plain block mode's (windows,
    their latents, noise, a time per block) plus the LM's states of the same windows under "context"."""

    def __init__(self, dit: TextDiT, lm: FrozenLM):
        super().__init__(dit)
        self.lm = lm

    def training_source(self, cfg: Config, stream: TokenStream, device: torch.device, progress: bool = True):
        """What training batches are drawn from: the stream (the LM runs at every step) or, with
        dit.context_lm.features, the LM's states of fixed windows precomputed once to disk (memory-mapped). First
        checks that the LM reads the run's token ids (`check_tokenizer`)."""
        d, c = cfg.dit, cfg.dit.context_lm
        check_tokenizer(cfg.teacher.name, c.encoder)
        if not c.features:
            return stream
        # keyed like vae.teacher_cache: with the REPA teacher at its layer and window, one LM pass serves both
        cache = open_or_build(stream, self.lm, self.lm.feature_name, c.layer, d.window_tokens,
                              c.features, c.windows, cfg.eval.batch_size, device, progress,
                              "context features")
        warn_repeated_windows(cfg.dit_train.steps, cfg.dit_train.batch_size, len(cache))
        return cache

    def batch(self, source, vae: TextVAE, batch_size: int, g: torch.Generator, rows: slice, device: torch.device,
              t: torch.Tensor | None = None) -> dict:
        """Plain block mode's batch of windows drawn from `source` (a stream, or precomputed features: whole cached
        windows by index), with the LM's states of those windows under "context". The LM reads each whole window
        (its states of padding positions are masked out of the DiT)."""
        if isinstance(source, FeatureCache):
            idx = torch.randint(0, len(source), (batch_size,), generator=g)
            ids, features = source.ids(idx), source.features(idx[rows])
        else:
            ids, features = source.windows(batch_size, self.dit.cfg.window_tokens, g), None
        batch = self.lay_out(ids, vae, g, rows, device, t)
        if self.trains_lm():  # the LM runs inside the objective's forward, where its gradients (and DDP's) are
            batch["context_ids"] = ids[rows].to(device)
            return batch
        if features is None:
            with frozen_lm_context(device):
                features = self.lm(ids[rows].to(device))
        batch["context"] = features.to(device)
        return batch

    def trains_lm(self) -> bool:
        """Whether some of the LM's layers train with the DiT (dit.context_lm.train_layers)."""
        return self.dit.cfg.context_lm.train_layers > 0

    def train_flops(self, batch_size: int) -> float:
        """The DiT's counted FLOPs plus the LM layers trained with it (dit.context_lm.train_layers: their matrix
        products, forward + backward; the frozen layers below are a helper's and are not counted)."""
        trained = sum(p.numel() for p in self.lm.parameters() if p.requires_grad and p.dim() >= 2)
        window = self.dit.cfg.window_tokens
        return super().train_flops(batch_size) + TRAIN_FACTOR * batch_size * window * 2 * trained

    def prefix(self, batch: dict) -> torch.Tensor:
        """What the noisy blocks read as their clean prefix: the LM's states of the window."""
        if "context" in batch:
            return batch["context"]
        with frozen_lm_context(batch["context_ids"].device):
            return self.lm(batch["context_ids"])
