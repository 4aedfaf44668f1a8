"""The latent codec: the frozen VAE as the samplers see it - token ids to the latents the DiT reads (posterior means,
standardised when the DiT was trained so) and back (the decoder's argmax, cut at end-of-text), and the precision a
call samples in."""
from __future__ import annotations

import torch

from textldm.config import SampleConfig
from textldm.models.vae import TextVAE
from textldm.runtime.precision import bf16_autocast
from textldm.utils import cut_at, pad_rows


class LatentCodec:
    """A frozen TextVAE, whether the DiT works in its standardised space (`normalize`, dit.normalize_latents), and the
    end-of-text id that ends a continuation."""

    def __init__(self, vae: TextVAE, normalize: bool, eot_id: int):
        self.vae, self.normalize, self.eot_id = vae, normalize, eot_id

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def vocab_size(self) -> int:
        return self.vae.vocab_size

    def latents(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, L) -> the clean latents the DiT reads (posterior means, standardised when it uses that)."""
        return self.vae.latents(ids, mask, self.normalize)

    def encode_rows(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists -> (clean DiT-space latents (B, L, C), mask), right-padded."""
        ids, mask = pad_rows(rows, left=False, device=self.device)
        return self.latents(ids, mask), mask

    @torch.no_grad()
    def decode(self, z: torch.Tensor, cut: bool = True, mask: torch.Tensor | None = None, last: int | None = None,
               prior: torch.Tensor | None = None) -> list[list[int]]:
        """DiT-space latents (B, L, C) (`mask`: True at real positions) -> token ids per row (of the `last`
        positions only, when given: the decoder still reads them all), cut at the first end-of-text (if `cut`).
        `prior` (B, vocab): added to the decoder's logits of the first decoded position (sample.lm_prior)."""
        if self.normalize:
            z = self.vae.denormalize(z)
        hidden = self.vae.decode_hidden(z, mask)
        hidden = hidden if last is None else hidden[:, -last:]
        logits = hidden @ self.vae.output_weight().t()
        ids = logits.argmax(-1)
        if prior is not None:
            ids[:, 0] = (logits[:, 0].float() + prior).argmax(-1)
        ids = ids.tolist()
        return cut_at(ids, self.eot_id) if cut else ids

    def autocast(self, s: SampleConfig):
        """bf16 autocast for settings with precision bf16, or for bf16 weights; otherwise a no-op context."""
        bf16 = s.precision == "bf16" or self.vae.embed.weight.dtype == torch.bfloat16
        return bf16_autocast(self.device, bf16)
