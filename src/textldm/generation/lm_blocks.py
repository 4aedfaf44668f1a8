"""Block mode with a pretrained context encoder (dit.mode=context_lm, `dit.context_lm.*`; STAR-LDM / DGLM-style): every
noisy block reads, as its clean prefix, a causal LM's hidden states of the tokens before it (`dit.context_lm.layer`)
instead of their VAE
latents. The target stays the VAE's latents, decoded beside the window's latents as in plain block mode. The LM
carries what it learned in pretraining into the latent space: the DiT only learns to map "what comes next" states
to next-block latents. Training reads the LM's states of whole windows (at every step, or precomputed to disk once:
`dit.context_lm.features`); sampling keeps the LM's KV cache over the window's committed tokens, so each block costs
one LM forward over its B tokens (`LMPrefix`). The LM is frozen - its FLOPs a helper's, not in the trained FLOPs,
as the REPA teacher's are not - unless its last `dit.context_lm.train_layers` blocks train with the DiT (at lr x
`dit.context_lm.lr_scale`; their FLOPs counted, their weights saved beside the DiT).
"""
from __future__ import annotations

import logging

import torch

from textldm.config import Config, DiTConfig, SampleConfig
from textldm.data.features import FeatureCache, open_or_build
from textldm.data.shards import TokenStream
from textldm.errors import UserError
from textldm.generation.blocks import Blocks, block_layout
from textldm.models.dit import TextDiT
from textldm.models.lm import FrozenLM, load_tokenizer, resolve
from textldm.models.vae import TextVAE
from textldm.runtime.perf import TRAIN_FACTOR
from textldm.runtime.precision import frozen_lm_context

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


def lm_config(name: str):
    """A causal LM's config alone (no weights loaded)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve(name))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the config of dit.context_lm.encoder '{name}': {str(e).splitlines()[0]}; give a "
                        "Hugging Face causal LM name (needs internet the first time) or a local model folder") from None


def check_tokenizer(run_tokenizer: str, encoder: str) -> None:
    """The context LM reads the run's token ids, so it must share the run's tokenizer (teacher.name's): every token
    of the run's vocabulary at the same id when the LM ships a tokenizer, else at least one embedding row per id
    (a warning says the rest cannot be checked). A different vocabulary would read wrong ids silently."""
    if resolve(run_tokenizer) == resolve(encoder):
        return
    run = load_tokenizer(run_tokenizer).get_vocab()
    try:
        theirs = load_tokenizer(encoder).get_vocab()
    except UserError:
        rows = lm_config(encoder).vocab_size
        if rows < len(run):
            raise UserError(f"dit.context_lm.encoder '{encoder}' has {rows} embedding rows, fewer than the run's "
                            f"{len(run)} token ids (teacher.name '{run_tokenizer}'): pick an LM with that tokenizer "
                            "or set teacher.name to the LM") from None
        log.warning("dit.context_lm.encoder '%s' ships no tokenizer: cannot check that its ids are the run's (%s)",
                    encoder, run_tokenizer)
        return
    differ = sum(theirs.get(token) != i for token, i in run.items())
    if differ:
        raise UserError(f"dit.context_lm.encoder '{encoder}' tokenizes differently from the run's tokenizer "
                        f"(teacher.name "
                        f"'{run_tokenizer}'): {differ} of its {len(run)} tokens have another id or none there, so the "
                        "LM would read wrong ids; pick an LM with teacher.name's tokenizer (the same family) or set "
                        "teacher.name to the LM")


class LMPrefix:
    """The sampling prefix of `LMBlocks` (`blocks.LatentPrefix`'s methods): the context LM's states, its KV cache
    carried from block to block, so a committed block costs one LM forward over its own tokens. At a window's start
    the LM reads each row's history (the last sample.lm_history tokens, or the window's alone), left-padded; the DiT
    reads its states of the window's positions. Carried: (the cache, the mask of the tokens it holds, the last
    token's features: the LM's view of the next token, `prior`)."""

    def __init__(self, lm: FrozenLM, prior_weight: float = 0.0):
        if prior_weight and not lm.final:
            raise UserError(f"sample.lm_prior reads the context LM's next-token probabilities at its last layer; this "
                            f"model's LM ends at block {lm.layers_run} (dit.context_lm.layer): set sample.lm_prior=0")
        self.lm, self.prior_weight = lm, prior_weight

    def start(self, ids: torch.Tensor, mask: torch.Tensor, latents: torch.Tensor, history: list[list[int]]):
        width = max(ids.shape[1], max(len(h) for h in history))
        read = torch.zeros(len(history), width, dtype=torch.long, device=ids.device)
        read_mask = torch.zeros(read.shape, dtype=torch.bool, device=ids.device)
        for i, h in enumerate(history):
            read[i, width - len(h):] = torch.tensor(h, dtype=torch.long, device=ids.device)
            read_mask[i, width - len(h):] = True
        # in the sampler's precision (its autocast), as the DiT
        features, cache = self.lm.states(read, read_mask)
        return features[:, -ids.shape[1]:], (cache, read_mask, features[:, -1])

    def extend(self, carried, block_ids: torch.Tensor, mask: torch.Tensor, latents: torch.Tensor):
        cache, read_mask, _ = carried
        read_mask = torch.cat([read_mask, torch.ones(block_ids.shape, dtype=torch.bool, device=read_mask.device)], 1)
        features, cache = self.lm.states(block_ids, read_mask, cache)
        return features, (cache, read_mask, features[:, -1])

    def keep(self, carried, index: torch.Tensor):
        cache, read_mask, last = carried
        cache.batch_select_indices(index)
        return cache, read_mask[index], last[index]

    def prior(self, carried, vocab_size: int) -> torch.Tensor | None:
        """(N, vocab_size) what sample.lm_prior adds to the decoder's logits of a block's first token: the weight
        times the LM's log-probabilities of the next token (None at weight 0)."""
        if not self.prior_weight:
            return None
        return self.prior_weight * self.lm.next_token_logprobs(carried[2], vocab_size)


class LMBlocks(Blocks):
    """Block mode whose clean prefix is a frozen causal LM's states. The batch is plain block mode's (windows, their
    latents, noise, a time per block) plus the LM's states of the same windows under "context"."""
    name = "context_lm"

    def __init__(self, dit: TextDiT, lm: FrozenLM | None = None):
        """`lm`: the context LM, already built (tests, or a caller that has it); default: dit.context_lm.encoder loaded
        at dit.context_lm.layer, frozen, on the DiT's device."""
        super().__init__(dit)
        c = dit.cfg.context_lm
        self.lm = lm if lm is not None else FrozenLM(c.encoder, c.layer, c.prediction)
        self.lm.to(next(dit.parameters()).device)
        if c.train_layers:
            self.lm.unfreeze(c.train_layers, c.lr_scale)

    @staticmethod
    def describe(config: Config) -> str:
        d, c = config.dit, config.dit.context_lm
        prediction = f" and its next-token prediction (top {c.prediction})" if c.prediction else ""
        w = config.sample.lm_prior
        prior = (f"; each block's first token is decoded from the sampled latent and that LM's own next-token "
                 f"probabilities together (sample.lm_prior {w:g})" if w else "")
        return (f"{block_layout(d)}, with a pretrained context encoder: the frozen LM {c.encoder}'s states "
                f"of the earlier tokens{prediction} are the DiT's clean prefix, and the DiT learns to map them to the "
                f"next token's latent{prior}. What the text knows comes from that LM's pretraining, not from this run")

    @classmethod
    def new_dit(cls, d: DiTConfig, latent_channels: int, prefix_channels: int | None = None) -> TextDiT:
        """A block-mode TextDiT whose prefix projection reads the context LM's hidden width (read from its config
        unless given)."""
        c = d.context_lm
        width = prefix_channels or lm_config(c.encoder).hidden_size * (2 if c.prediction else 1)
        return TextDiT(d, latent_channels, prefix_channels=width)

    # training ----------------------------------------------------------------------------------------------
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
        """Whether some of the LM's blocks train with the DiT (dit.context_lm.train_layers)."""
        return self.dit.cfg.context_lm.train_layers > 0

    def train_flops(self, batch_size: int) -> float:
        """The DiT's counted FLOPs plus the LM blocks trained with it (dit.context_lm.train_layers: their matrix
        products, forward + backward; the frozen blocks below are a helper's and are not counted)."""
        trained = sum(p.numel() for p in self.lm.parameters() if p.requires_grad and p.dim() >= 2)
        window = self.dit.cfg.window_tokens
        return super().train_flops(batch_size) + TRAIN_FACTOR * batch_size * window * 2 * trained

    def trained_helpers(self) -> dict[str, torch.Tensor]:
        return self.lm.trained_state()

    def load_trained_helpers(self, state: dict[str, torch.Tensor]) -> None:
        self.lm.load_trained_state(state)

    def prefix(self, batch: dict) -> torch.Tensor:
        """What the noisy blocks read as their clean prefix: the LM's states of the window."""
        if "context" in batch:
            return batch["context"]
        with frozen_lm_context(batch["context_ids"].device):
            return self.lm(batch["context_ids"])

    # sampling ----------------------------------------------------------------------------------------------
    def prompt_tokens(self, s: SampleConfig) -> int:
        """The DiT's window or, with sample.lm_history, the longer history the LM reads (within the LM's positions:
        the history and a window's continuation)."""
        d, most = self.dit.cfg, getattr(self.lm.model.config, "max_position_embeddings", None)
        if most is not None and s.lm_history + d.target_max > most:
            raise UserError(f"sample.lm_history {s.lm_history} plus a window's {d.target_max} new tokens "
                            f"(dit.target_max) exceed the context LM's {most} positions; lower sample.lm_history "
                            f"to at most {most - d.target_max}")
        return max(d.context_max, s.lm_history)

    def prefix_encoder(self, s: SampleConfig) -> LMPrefix:
        return LMPrefix(self.lm, s.lm_prior)
