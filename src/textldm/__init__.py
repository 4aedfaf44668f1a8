"""textldm: language modeling with continuous latent diffusion (TextVAE + REPA, TextDiT flow matching).

    from textldm import TextLDMPipeline, ARPipeline, load_config, load_pipeline
"""
from textldm.config import Config, load_config
from textldm.errors import UserError
from textldm.pipeline import ARPipeline, TextLDMPipeline, load_pipeline
from textldm.version import __version__

__all__ = ["ARPipeline", "Config", "load_config", "load_pipeline", "TextLDMPipeline", "UserError", "__version__"]
