"""The training objectives, each the nn.Module `fit` trains (and DDP wraps): the VAE's (`vae`), the AR baseline's
(`ar`), the masked-diffusion baselines' (`masked`: MDLM, BD3-LM) and the DiT's, one per generation mode (`dit`: the
interface; `window`, `blocks`, `context_lm`). Which objective a DiT trains with is its mode's
(families.textldm.modes)."""
from textldm.training.objectives.ar import ARObjective
from textldm.training.objectives.blocks import BlockObjective
from textldm.training.objectives.context_lm import ContextLMObjective
from textldm.training.objectives.dit import DiTObjective
from textldm.training.objectives.masked import MaskedObjective
from textldm.training.objectives.vae import VAEObjective, repa_cosine, vae_loss
from textldm.training.objectives.window import WindowObjective

__all__ = ["ARObjective", "BlockObjective", "ContextLMObjective", "DiTObjective", "MaskedObjective", "VAEObjective",
           "WindowObjective", "repa_cosine", "vae_loss"]
