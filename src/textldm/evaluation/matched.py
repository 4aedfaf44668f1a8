"""Baselines "under the same settings": the parameters TextLDM uses to write text, and the AR baseline's config
matched to them (used by bench/quality.py and bench/scaling.py)."""
from __future__ import annotations

from textldm.config import Config
from textldm.families.textldm import TextLDMPipeline
from textldm.models.ar import CausalLM
from textldm.utils import param_count


def inference_params(pipe: TextLDMPipeline) -> int:
    """Parameters used to write text: the VAE without its REPA projector (a training-only head) + the DiT."""
    repa = param_count(pipe.vae.repa_proj) if pipe.vae.repa_proj is not None else 0
    return param_count(pipe.vae) - repa + param_count(pipe.dit)


def matched_ar_overrides(cfg: Config, target_params: int, vocab_size: int) -> list[str]:
    """Config overrides for the AR baseline "under the same settings" as a TextLDM of `target_params` inference
    parameters: the DiT's width, heads, batch, learning rate and warm-up, and the depth whose parameter count
    is nearest to the target."""
    one, two = (param_count(CausalLM(type(cfg.ar)(width=cfg.dit.width, depth=d, heads=cfg.dit.heads), vocab_size))
                for d in (1, 2))
    block = two - one
    depth = max(1, round((target_params - (one - block)) / block))
    return [f"ar.width={cfg.dit.width}", f"ar.heads={cfg.dit.heads}", f"ar.depth={depth}",
            f"ar_train.batch_size={cfg.dit_train.batch_size}", f"ar_train.lr={cfg.dit_train.lr}",
            f"ar_train.warmup_steps={cfg.dit_train.warmup_steps}"]
