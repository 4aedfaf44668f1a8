"""textldm: language modeling with continuous latent diffusion (TextVAE + REPA, TextDiT flow matching)."""
from textldm.config import Config, load_config
from textldm.errors import UserError
from textldm.pipeline import TextLDMPipeline

__version__ = "0.1.0"
__all__ = ["Config", "load_config", "TextLDMPipeline", "UserError", "__version__"]
