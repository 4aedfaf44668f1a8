"""TextVAE: one continuous latent per token.

Encoder: token embedding -> bidirectional pre-norm Transformer (RoPE) -> per-token diagonal Gaussian; or
block-causal (`vae.encoder_block_size`): a latent sees its own block and earlier ones, for block-causal DiTs.
Decoder: latents -> bidirectional pre-norm Transformer -> vocabulary logits at every position in one
parallel pass (non-autoregressive). Trained with CE + beta * KL + lambda * REPA (training/objectives.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from textldm.config import VAEConfig
from textldm.models.layers import TransformerLayer, block_causal_attn_mask, padding_attn_mask, rope_angles
from textldm.models.lm import project_embeddings


class TextVAE(nn.Module):
    """One continuous latent per token: an encoder to a diagonal Gaussian per position, and a parallel (non-
    autoregressive) decoder from latents to vocabulary logits; REPA projector and latent statistics included."""
    def __init__(self, cfg: VAEConfig, vocab_size: int, teacher_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        w = cfg.width
        self.embed = nn.Embedding(vocab_size, w)
        self.encoder = nn.ModuleList(TransformerLayer(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth))
        self.encoder_norm = nn.LayerNorm(w, eps=1e-6)
        self.to_moments = nn.Linear(w, 2 * cfg.latent_channels)
        self.from_latent = nn.Linear(cfg.latent_channels, w)
        self.decoder = nn.ModuleList(TransformerLayer(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(w, eps=1e-6)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(w, vocab_size, bias=False)
        self.repa_proj = None
        if teacher_dim is not None and cfg.repa_weight > 0:
            source_dim = cfg.latent_channels if cfg.repa_source == "latent" else w
            self.repa_proj = nn.Sequential(nn.Linear(source_dim, cfg.repa_hidden), nn.SiLU(),
                                           nn.Linear(cfg.repa_hidden, teacher_dim))
        # per-channel statistics of the posterior means, filled in after training and saved with the VAE
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))
        # training-only table of each token's nearest neighbours, the hard negatives of the sampled softmax
        self.register_buffer("neighbors", None, persistent=False)
        self.initialize_weights()

    def initialize_weights(self):
        """Xavier-uniform linears, zero biases, N(0, width^-0.5) embeddings, a small initial posterior variance."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.embed.weight, std=self.cfg.width ** -0.5)
        nn.init.constant_(self.to_moments.bias[self.cfg.latent_channels:], self.cfg.logvar_init)

    @torch.no_grad()
    def init_embeddings_from(self, teacher_embeddings: torch.Tensor, seed: int = 0):
        """Token embedding = the teacher's embeddings projected to the VAE width (`project_embeddings`)."""
        if teacher_embeddings.shape[0] != self.vocab_size:
            raise ValueError(f"teacher vocabulary {teacher_embeddings.shape[0]} != VAE vocabulary {self.vocab_size}")
        self.embed.weight.copy_(project_embeddings(teacher_embeddings, self.cfg.width, seed))

    @torch.no_grad()
    def build_neighbor_table(self, k: int, chunk: int = 2048) -> None:
        """For every token, the k most similar other tokens by cosine of the output embeddings. Without them a
        sampled softmax rarely contrasts ' Sovereign' with ' sovereign', and exactly such near-duplicates are
        the reconstruction errors that remain."""
        w = F.normalize(self.output_weight().detach().float(), dim=-1)
        rows = []
        for i in range(0, w.shape[0], chunk):
            sim = w[i: i + chunk] @ w.t()
            sim[torch.arange(sim.shape[0]), torch.arange(i, i + sim.shape[0])] = -2.0  # not itself
            rows.append(sim.topk(k, dim=-1).indices)
        self.neighbors = torch.cat(rows)

    def _rope(self, L: int, device):
        return rope_angles(torch.arange(L, device=device), self.cfg.width // self.cfg.heads)

    def encoder_attn_mask(self, ids: torch.Tensor, mask: torch.Tensor | None):
        """Padding only (bidirectional), or block-causal with blocks of vae.encoder_block_size tokens."""
        if self.cfg.encoder_block_size == 0:
            return padding_attn_mask(mask)
        mask = torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if mask is None else mask
        return block_causal_attn_mask(mask, self.cfg.encoder_block_size)

    def encode_features(self, ids: torch.Tensor, mask: torch.Tensor | None = None):
        """-> (mean, logvar, the feature REPA aligns: an encoder layer's output or the latent mean)."""
        x = self.embed(ids)
        rope, attn_mask = self._rope(ids.shape[1], ids.device), self.encoder_attn_mask(ids, mask)
        repa_at = self.cfg.repa_layer % len(self.encoder)
        feature = None
        for i, layer in enumerate(self.encoder):
            x = layer(x, rope, attn_mask)
            if i == repa_at:
                feature = x
        mean, logvar = self.to_moments(self.encoder_norm(x)).float().chunk(2, dim=-1)
        if self.cfg.repa_source == "latent":
            feature = mean
        return mean, logvar.clamp(-30.0, 20.0), feature

    def encode(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior means: the latents the DiT is trained on and conditioned with."""
        return self.encode_features(ids, mask)[0]

    @torch.no_grad()
    def latents(self, ids: torch.Tensor, mask: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        """Token ids -> the clean latents a DiT reads: the posterior means, standardised (`normalize`) when the DiT
        uses dit.normalize_latents."""
        z = self.encode(ids, mask)
        return self.normalize(z) if normalize else z

    def decode_hidden(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, L, C) -> the decoder's final hidden states (B, L, width)."""
        x = self.from_latent(z.to(self.from_latent.weight.dtype))
        rope, attn_mask = self._rope(z.shape[1], z.device), padding_attn_mask(mask)
        for layer in self.decoder:
            x = layer(x, rope, attn_mask)
        return self.decoder_norm(x)

    def output_weight(self) -> torch.Tensor:
        """The output projection (the token embedding when tied)."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def decode(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """latents (B, L, C) -> logits (B, L, V)."""
        return self.decode_hidden(z, mask) @ self.output_weight().t()

    # latent normalisation used by the DiT -------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the DiT's per-channel standardised latents."""
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The DiT's standardised latents -> raw latents (the decoder's input)."""
        return z * self.latent_std + self.latent_mean
