"""How a TextDiT generates text, and what it is trained on to do so: one `GenerationMode` subclass per way of
generating (`modes.py`: the interface and shared pieces; `window.py`: the paper's full window; `blocks.py`:
block-causal; `lm_blocks.py`: block-causal with a pretrained LM's states as the prefix), chosen once from the DiT
config by `mode_class`; `ar.py`: the AR baseline's pipeline.
"""
from __future__ import annotations

from textldm.config import DiTConfig
from textldm.generation.blocks import Blocks
from textldm.generation.lm_blocks import LMBlocks
from textldm.generation.modes import GenerationMode, SamplingRun, noise_seed
from textldm.generation.window import FullWindow

MODES: tuple[type[GenerationMode], ...] = (FullWindow, Blocks, LMBlocks)  # a new mode: its class here


def mode_class(d: DiTConfig) -> type[GenerationMode]:
    """The generation mode of a DiT config: the class named by dit.mode."""
    return {m.name: m for m in MODES}[d.mode]


__all__ = ["MODES", "Blocks", "FullWindow", "LMBlocks", "GenerationMode", "SamplingRun", "mode_class", "noise_seed"]
