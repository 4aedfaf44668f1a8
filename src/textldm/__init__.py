"""textldm: language modeling with continuous latent diffusion (TextVAE + REPA, TextDiT flow matching).

    from textldm import TextLDMPipeline, ARPipeline, load_config, load_pipeline
"""
from textldm.config import Config, load_config
from textldm.errors import UserError
from textldm.families import load_pipeline
from textldm.families.ar import ARPipeline
from textldm.families.textldm import TextLDMPipeline
from textldm.version import __version__

__all__ = ["ARPipeline", "Config", "load_config", "load_pipeline", "TextLDMPipeline", "UserError", "__version__"]
