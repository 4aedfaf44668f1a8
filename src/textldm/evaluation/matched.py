"""Baselines "under the same settings": the parameters TextLDM uses to write text, and the AR and masked-diffusion
baselines' configs matched to them (used by bench/quality.py and bench/scaling.py)."""
from __future__ import annotations

import dataclasses

from textldm.config import Config
from textldm.families.textldm import TextLDMPipeline
from textldm.models.ar import CausalLM
from textldm.models.masked import MaskedDenoiser
from textldm.models.ssd import SimplexDenoiser
from textldm.utils import param_count


def inference_params(pipe: TextLDMPipeline) -> int:
    """Parameters used to write text: the VAE without its REPA projector (a training-only head) + the DiT."""
    repa = param_count(pipe.vae.repa_proj) if pipe.vae.repa_proj is not None else 0
    return param_count(pipe.vae) - repa + param_count(pipe.dit)


BASELINES = {"ar": CausalLM, "masked": MaskedDenoiser, "ssd": SimplexDenoiser}  # config section -> its network


def matched_overrides(cfg: Config, target_params: int, vocab_size: int, section: str = "ar") -> list[str]:
    """Config overrides for a baseline (`section`: "ar", "masked") "under the same settings" as a TextLDM of
    `target_params` inference parameters: the DiT's width, heads, batch, learning rate and warm-up, and the depth
    whose parameter count is nearest to the target (the section's other settings, e.g. masked.block_size, kept)."""
    own, net = getattr(cfg, section), BASELINES[section]
    one, two = (param_count(net(dataclasses.replace(own, width=cfg.dit.width, depth=d, heads=cfg.dit.heads),
                                vocab_size)) for d in (1, 2))
    block = two - one
    depth = max(1, round((target_params - (one - block)) / block))
    return [f"{section}.width={cfg.dit.width}", f"{section}.heads={cfg.dit.heads}", f"{section}.depth={depth}",
            f"{section}_train.batch_size={cfg.dit_train.batch_size}", f"{section}_train.lr={cfg.dit_train.lr}",
            f"{section}_train.warmup_steps={cfg.dit_train.warmup_steps}"]


def matched_ar_overrides(cfg: Config, target_params: int, vocab_size: int) -> list[str]:
    """The AR baseline's `matched_overrides`."""
    return matched_overrides(cfg, target_params, vocab_size, "ar")
