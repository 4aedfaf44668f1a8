"""The published SSD-LM checkpoint (`xhan77/ssdlm`, the layout of xhan77/ssd-lm's `logging/ssd_dbs25`: a RoBERTa masked
LM - config.json, weights, tokenizer - beside `embed_sum_layer.pt`, the Linear(V, hidden) that reads the simplex, and
`timestep_layer.pt`, the Linear(1, hidden) that reads t / T) behind the `SimplexDenoiser` interface, so this
project's SSD-LM sampler and metrics drive its network. Its settings are the paper's: blocks of 25, K = 5, T = 5000.

The context is embedded by the masked LM's own input embeddings, the block as softmax(w_t) through
`embed_sum_layer` plus `timestep_layer(t / T)`; positions count from each row's first real token (RoBERTa's absolute
positions), padding masked out of attention. Run against the real weights only where the Hub is reachable; the
offline tests drive a tiny stand-in in the same layout (tests/test_ssd.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from textldm.config import SSDConfig

PARTS = ("embed_sum_layer.pt", "timestep_layer.pt")  # the two modules beside the masked LM
PAPER = {"block_size": 25, "simplex_k": 5.0, "diffusion_steps": 5000}


class HubSimplexDenoiser(nn.Module):
    """A published SSD-LM network as a `SimplexDenoiser`: `forward(context, w_t, t, key_mask)` gives the block's
    logits."""

    def __init__(self, mlm: nn.Module, embed_sum: nn.Linear, timestep: nn.Linear, cfg: SSDConfig):
        super().__init__()
        self.mlm, self.embed_sum, self.timestep, self.cfg = mlm, embed_sum, timestep, cfg
        self.vocab_size = embed_sum.in_features

    def forward(self, context: torch.Tensor, w_t: torch.Tensor, t: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        N, C = context.shape
        B = w_t.shape[1]
        block = self.embed_sum(w_t.float().softmax(-1))
        block = block + self.timestep((t.float() / self.cfg.diffusion_steps).view(N, 1, 1))
        embeds = torch.cat([self.mlm.get_input_embeddings()(context), block], 1)
        key_mask = torch.ones(N, C + B, dtype=torch.bool, device=context.device) if key_mask is None else key_mask
        pad = getattr(self.mlm.config, "pad_token_id", 1)
        positions = (key_mask.long().cumsum(1) - 1).clamp_min(0) + pad + 1  # RoBERTa's: from padding_idx + 1
        out = self.mlm(inputs_embeds=embeds, attention_mask=key_mask.long(), position_ids=positions)
        return out.logits[:, C:].float()


def is_published_ssd(name: str, revision: str | None = None) -> bool:
    """Whether `name` (a folder or a Hub repo id) holds SSD-LM's published layout (its two extra modules)."""
    if Path(name).is_dir():
        return all((Path(name) / part).exists() for part in PARTS)
    try:
        return all(Path(_part(name, part, revision)).exists() for part in PARTS)
    except Exception:  # noqa: BLE001 - any failure to fetch them means "not one"
        return False


def load_hub_simplex(name: str, device: str | torch.device = "cpu", revision: str | None = None):
    """(the adapter, its tokenizer) of a published SSD-LM checkpoint by Hub id or folder."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    mlm = AutoModelForMaskedLM.from_pretrained(name, revision=revision).eval()
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    vocab, hidden = mlm.get_input_embeddings().weight.shape
    embed_sum, timestep = nn.Linear(vocab, hidden, bias=False), nn.Linear(1, hidden)
    for module, part in zip((embed_sum, timestep), PARTS):
        module.load_state_dict(torch.load(_part(name, part, revision), map_location="cpu", weights_only=True))
    cfg = SSDConfig(**PAPER)
    return HubSimplexDenoiser(mlm, embed_sum, timestep, cfg).eval().to(device), tokenizer


def _part(name: str, part: str, revision: str | None) -> str:
    path = Path(name) / part
    if path.exists():
        return str(path)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(name, part, revision=revision)
