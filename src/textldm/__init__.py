"""textldm: language modeling with continuous latent diffusion (TextVAE + REPA, TextDiT flow matching).

    from textldm import TextLDMPipeline, ARPipeline, load_config, load_pipeline
    from textldm import train_vae, train_dit, train_ar    # the training stages, as `textldm train-*` runs them
"""
from textldm.config import Config, load_config
from textldm.errors import UserError
from textldm.families import load_pipeline
from textldm.families.ar import ARPipeline, train_ar
from textldm.families.textldm import TextLDMPipeline, cache_teacher, train_dit, train_vae
from textldm.version import __version__

__all__ = ["ARPipeline", "Config", "TextLDMPipeline", "UserError", "__version__", "cache_teacher", "load_config",
           "load_pipeline", "train_ar", "train_dit", "train_vae"]
