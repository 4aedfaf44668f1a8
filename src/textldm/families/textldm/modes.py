"""The TextDiT's generation modes, each chosen by name (`dit.mode`) from one registry: a `Mode` bundles what differs
between them - the training objective (training/objectives/), the sampler (sampling/), the DiT's builder, what else
the mode holds (a context LM) and the sentence a run report starts with. Adding a mode: a section of `DiTConfig`
(config.py, with `MODE_SECTIONS`), an objective, a sampler and one `Mode` here (docs/design.md, "How to add a mode")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from textldm.config import Config, DiTConfig
from textldm.models.dit import TextDiT
from textldm.models.lm import FrozenLM, lm_config
from textldm.sampling import BlockSampler, ContextLMSampler, Sampler, WindowSampler
from textldm.training.objectives import BlockObjective, ContextLMObjective, DiTObjective, WindowObjective


def trained_from_scratch(config: Config) -> str:
    """A run report's words for a mode whose VAE and DiT learn everything from the run's data."""
    return (f"the VAE and the DiT are trained from scratch on '{config.data.source}', so what the text knows comes "
            "from this run alone")


def block_layout(d: DiTConfig) -> str:
    """The block layout in words, for a run's report."""
    return f"block-causal, {d.blocks.size} token{'s' * (d.blocks.size > 1)} a block"


def no_parts(d: DiTConfig) -> dict:
    return {}


def context_lm_parts(d: DiTConfig) -> dict:
    """The context-LM mode's LM (dit.context_lm.encoder at its layer, frozen but for its trained last layers), which
    the objective trains with and the sampler reads."""
    c = d.context_lm
    lm = FrozenLM(c.encoder, c.layer, c.prediction)
    if c.train_layers:
        lm.unfreeze(c.train_layers, c.lr_scale)
    return {"lm": lm}


def context_lm_width(d: DiTConfig) -> int:
    """The width of the context LM's features (twice its hidden size with its prediction), read from its config."""
    return lm_config(d.context_lm.encoder).hidden_size * (2 if d.context_lm.prediction else 1)


@dataclass(frozen=True)
class Mode:
    """One generation mode: its name (the value of dit.mode), its objective and sampler classes (built on the DiT and
    the mode's `parts`), and how it builds its DiT, its parts and its report sentence."""
    name: str
    objective: type[DiTObjective]
    sampler: type[Sampler]
    describe: Callable[[Config], str]  # the run report's first sentence: what it trains, where its knowledge comes from
    build_parts: Callable[[DiTConfig], dict] = no_parts  # what else the objective and the sampler read, by name
    prefix_channels: Callable[[DiTConfig], int] | None = None  # the clean prefix's feature width, if not the latents'

    def build_dit(self, d: DiTConfig, latent_channels: int) -> TextDiT:
        """A fresh TextDiT of this config (its parts are the config's: `TextDiT`; a context LM's width read from the
        LM's config). Built before the mode's parts, as training always has (the DiT's initialisation draws first)."""
        if self.prefix_channels is None:
            return TextDiT(d, latent_channels)
        return TextDiT(d, latent_channels, prefix_channels=self.prefix_channels(d))


WINDOW = Mode("window", WindowObjective, WindowSampler,
              lambda c: f"the full window (the paper's layout: the prompt's latents, then the continuation's at once); "
                        f"{trained_from_scratch(c)}")
BLOCKS = Mode("blocks", BlockObjective, BlockSampler, lambda c: f"{block_layout(c.dit)}; {trained_from_scratch(c)}")


def describe_context_lm(config: Config) -> str:
    d, c = config.dit, config.dit.context_lm
    prediction = f" and its next-token prediction (top {c.prediction})" if c.prediction else ""
    w = config.sample.lm_prior
    prior = (f"; each block's first token is decoded from the sampled latent and that LM's own next-token "
             f"probabilities together (sample.lm_prior {w:g})" if w else "")
    return (f"{block_layout(d)}, with a pretrained context encoder: the frozen LM {c.encoder}'s states "
            f"of the earlier tokens{prediction} are the DiT's clean prefix, and the DiT learns to map them to the "
            f"next token's latent{prior}. What the text knows comes from that LM's pretraining, not from this run")


CONTEXT_LM = Mode("context_lm", ContextLMObjective, ContextLMSampler, describe_context_lm, context_lm_parts,
                  context_lm_width)
MODES: dict[str, Mode] = {m.name: m for m in (WINDOW, BLOCKS, CONTEXT_LM)}  # a new mode: its Mode here


def mode_of(d: DiTConfig) -> Mode:
    """The generation mode dit.mode names."""
    return MODES[d.mode]
