"""The published MDLM / BD3-LM checkpoints (kuleshov-group's Hugging Face format, e.g. `kuleshov-group/mdlm-owt`,
`kuleshov-group/bd3lm-owt-block_size16`: a `trust_remote_code` model whose forward takes `input_ids` and
`timesteps` and returns logits over the vocabulary and the mask) behind the `MaskedDenoiser` interface, so this
project's sampler, bound and metrics drive their network.

What differs from a textldm-trained model: their networks take no padding mask, so prompts are left-padded with
end-of-text tokens (their training data is documents packed between end-of-text tokens); BD3-LM's clean prefix is
not KV-cached here - every evaluation runs their training forward over [noisy ; clean] at their full model length
(exact, and slower). Run against the real weights only where the Hub is reachable (a GPU session with network); the
offline tests drive a tiny stand-in written in the same folder layout and interface (tests/test_masked.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from textldm.models.block_causal import BlockPrefix

HUB_TYPES = ("mdlm", "bd3lm")  # the model_type of the published checkpoints' config.json


@dataclass
class PrefixIds:
    """A BD3-LM prefix without a KV cache: the clean ids themselves (the `KVCache` role in `BlockPrefix`)."""
    ids: torch.Tensor
    frozen: bool = True

    def rows(self, index) -> PrefixIds:
        return PrefixIds(self.ids[index])


class HubMaskedDenoiser(nn.Module):
    """A published masked-diffusion network as a `MaskedDenoiser`: `forward(x_t, t, clean=, key_mask=)` gives
    logits over the vocabulary (the mask's column dropped); `extend_prefix` / `block_logits` for BD3-LM sampling."""

    def __init__(self, hf_model: nn.Module, pad_id: int):
        super().__init__()
        self.hf, self.pad_id = hf_model, pad_id
        cfg = hf_model.config
        self.mask_id = self.vocab_size = cfg.vocab_size - 1  # the mask is their vocabulary's last id
        self.length = getattr(cfg, "model_length", 1024)
        self.block = cfg.block_size if getattr(cfg, "cross_attn", False) else 0
        self.time = None  # time-agnostic (their published configs: time_conditioning False)

    def _logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        sigma = torch.zeros(input_ids.shape[0], device=input_ids.device)
        out = self.hf(input_ids=input_ids, timesteps=sigma)
        logits = out.logits if hasattr(out, "logits") else out
        return logits[..., : self.vocab_size].float()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | None = None, *, clean: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, L, V). Padding (key_mask False) is read as end-of-text tokens (their networks take no mask)."""
        if key_mask is not None:
            x_t = torch.where(key_mask, x_t, torch.full_like(x_t, self.pad_id))
            clean = None if clean is None else torch.where(key_mask, clean, torch.full_like(clean, self.pad_id))
        if self.block == 0:
            return self._logits(x_t)
        N, L = x_t.shape
        pad = self.length - L  # their block-diffusion mask is built for [noisy ; clean] at their full length
        noisy = torch.cat([x_t, torch.full((N, pad), self.mask_id, dtype=x_t.dtype, device=x_t.device)], 1)
        full = torch.cat([clean, torch.full((N, pad), self.pad_id, dtype=x_t.dtype, device=x_t.device)], 1)
        return self._logits(torch.cat([noisy, full], 1))[:, :L]

    @torch.no_grad()
    def weighted_nll(self, x_t: torch.Tensor, t: torch.Tensor | None, ids: torch.Tensor, weights: torch.Tensor, *,
                     clean: torch.Tensor | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """sum of weights x -log p(ids | x_t), one row at a time (their logits span the whole vocabulary)."""
        total = torch.zeros((), device=x_t.device)
        for i in range(x_t.shape[0]):
            logits = self(x_t[i:i + 1], clean=None if clean is None else clean[i:i + 1],
                          key_mask=None if key_mask is None else key_mask[i:i + 1])[0]
            nll = -logits.log_softmax(-1).gather(-1, ids[i, :, None]).squeeze(-1)
            total = total + (weights[i] * nll).sum()
        return total

    @torch.no_grad()
    def extend_prefix(self, prefix: BlockPrefix | None, clean: torch.Tensor, mask: torch.Tensor) -> BlockPrefix:
        ids = torch.where(mask, clean, torch.full_like(clean, self.pad_id))
        if prefix is not None:
            ids = torch.cat([prefix.caches[0].ids, ids], 1)
            mask = torch.cat([prefix.key_mask, mask], 1)
        return BlockPrefix([PrefixIds(ids)], mask)

    def block_logits(self, x_block: torch.Tensor, prefix: BlockPrefix, t: torch.Tensor | None = None) -> torch.Tensor:
        """The block's logits from their training forward over [prefix and the noisy block ; prefix and blanks]."""
        ids = prefix.caches[0].ids
        x_t = torch.cat([ids, x_block], 1)
        clean = torch.cat([ids, torch.full_like(x_block, self.pad_id)], 1)
        return self(x_t, clean=clean)[:, -x_block.shape[1]:]


def is_published_masked(name: str, revision: str | None = None) -> bool:
    """Whether `name` (a folder or a Hub repo id) holds a published MDLM / BD3-LM checkpoint: its config.json's
    model_type. False where it cannot be read (offline without it in the cache, not a model)."""
    import json
    from pathlib import Path

    path = Path(name) / "config.json"
    try:
        if not path.exists():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(name, "config.json", revision=revision))
        return json.loads(path.read_text()).get("model_type") in HUB_TYPES
    except Exception:  # noqa: BLE001 - any failure to read it means "not one of those"
        return False


def load_hub_denoiser(name: str, device: str | torch.device = "cpu", revision: str | None = None):
    """(the adapter, its tokenizer) of a published checkpoint by Hub id or folder. Its tokenizer: the folder's own,
    else GPT-2's (the published models were trained with it)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(name, trust_remote_code=True, revision=revision).eval().to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    except (OSError, ValueError):
        tokenizer = AutoTokenizer.from_pretrained("gpt2")
    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return HubMaskedDenoiser(model, pad), tokenizer
