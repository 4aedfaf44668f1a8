"""Training FLOPs from the model shape, a measured matrix-product peak, and the throughput meter that
turns both into tokens/s, achieved FLOP/s and MFU for the training log.

FLOPs are *model* FLOPs of the network being trained: every matrix product counted as 2 * m * n * k,
attention scores and weighted values as 4 * L_kv * width per token (the full square, causal or not, as in
PaLM's MFU), backward = 2x forward. Frozen helpers (the REPA teacher, the frozen VAE that encodes the
DiT's latents) are real work but not counted: MFU says how well the trained network uses the machine.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

TRAIN_FACTOR = 3  # forward + backward (2x forward)


def linear_flops(*layers: nn.Linear) -> float:
    """Forward FLOPs per row pushed through each of these linear layers."""
    return float(sum(2 * layer.in_features * layer.out_features for layer in layers))


def layer_flops(layer, kv_len: int) -> float:
    """Forward FLOPs per token of one TransformerLayer attending over kv_len keys (per-token products only;
    the adaLN modulation is per sequence and counted by the DiT)."""
    width = layer.attn.proj.out_features
    return linear_flops(layer.attn.qkv, layer.attn.proj, layer.mlp.fc1, layer.mlp.fc2) + 4.0 * kv_len * width


def vae_flops_per_sequence(vae, length: int, softmax_rows: int, repa_fraction: float) -> float:
    """Forward FLOPs of the VAE on one training sequence: encoder, latent heads, decoder, the output
    softmax over `softmax_rows` candidates, and the REPA projector on `repa_fraction` of the sequences."""
    per_token = sum(layer_flops(b, length) for b in (*vae.encoder, *vae.decoder))
    per_token += linear_flops(vae.to_moments, vae.from_latent) + 2.0 * vae.cfg.width * softmax_rows
    if vae.repa_proj is not None:
        per_token += repa_fraction * linear_flops(*[m for m in vae.repa_proj if isinstance(m, nn.Linear)])
    return per_token * length


def dit_flops_per_sequence(dit, context_len: int, target_len: int) -> float:
    """Forward FLOPs of the DiT on one [context ; target] sequence (padded lengths: that is what runs)."""
    L = context_len + target_len
    per_token = linear_flops(dit.in_proj) + sum(layer_flops(b, L) for b in dit.layers)
    per_sequence = per_token * L + _target_io_flops(dit) * target_len
    return per_sequence + _conditioner_flops(dit, target=True, context=True)


def dit_block_flops_per_sequence(dit, length: int) -> float:
    """Forward FLOPs of a block-mode DiT on one window of `length` tokens: the [clean ; noisy] pass over 2 x length
    tokens (every key counted, as for causal attention), outputs for the noisy half, and the adaLN work once per
    condition (the clean one and each block's)."""
    per_token = linear_flops(dit.in_proj) + sum(layer_flops(b, 2 * length) for b in dit.layers)
    conditions = 1 + length // dit.cfg.blocks.size
    return per_token * 2 * length + _target_io_flops(dit) * length + conditions * _conditioner_flops(dit, True, False)


def dit_block_sampling_flops(dit, prefix_len: int, block: int) -> tuple[float, float]:
    """Block-mode DiT at sampling, one block after `prefix_len` cached positions: (the block's clean pass that
    joins the cache, once; one evaluation of the noisy block)."""
    kv = prefix_len + block
    per_token = linear_flops(dit.in_proj) + sum(layer_flops(b, kv) for b in dit.layers)
    return block * per_token + _conditioner_flops(dit, True, False), \
        block * (per_token + _target_io_flops(dit)) + _conditioner_flops(dit, True, False)


def _target_io_flops(dit) -> float:
    """Per target token, besides the layers and the input projection: the output layer and, with
    self-conditioning, the estimate's input projection."""
    sc = getattr(dit, "self_cond_proj", None)
    return linear_flops(dit.final.linear) + (linear_flops(sc) if sc is not None else 0.0)


def _conditioner_flops(dit, target: bool, context: bool) -> float:
    """The per-sequence adaLN work: the layers' modulation for each condition used, plus its embedders."""
    layers = []
    if target:
        layers += [b.modulation[-1] for b in dit.layers] + [dit.final.modulation[-1]]
        layers += [m for m in dit.t_embedder.mlp if isinstance(m, nn.Linear)] if dit.t_embedder is not None else []
    if context and dit.context_pool is not None:
        layers += [m for m in dit.context_pool if isinstance(m, nn.Linear)]
    if context and getattr(dit, "context_cond", None) is not None:
        layers += [b.modulation[-1] for b in dit.layers]  # the context's own, t-free modulation
    return linear_flops(*layers)


def dit_cached_flops_per_sequence(dit, context_len: int, target_len: int) -> tuple[float, float]:
    """Cacheable-context DiT at sampling: (the context pass, once per generation; one target-only pass)."""
    context = context_len * (linear_flops(dit.in_proj) + sum(layer_flops(b, context_len) for b in dit.layers))
    L = context_len + target_len
    per_target_token = linear_flops(dit.in_proj) + _target_io_flops(dit) + sum(layer_flops(b, L) for b in dit.layers)
    target = target_len * per_target_token
    return context + _conditioner_flops(dit, False, True), target + _conditioner_flops(dit, True, False)


def masked_flops_per_sequence(model, length: int) -> float:
    """Forward FLOPs of the masked-diffusion denoiser on one window of `length` tokens: MDLM's one bidirectional pass,
    or BD3-LM's [clean ; noisy] pass over 2 x length tokens (every key counted); the tied head on the noisy tokens;
    the time embedding once per condition when it reads t."""
    tokens = length if model.block == 0 else 2 * length
    per_token = sum(layer_flops(b, tokens) for b in model.layers)
    flops = per_token * tokens + 2.0 * model.cfg.width * model.vocab_size * length
    if model.time is not None:
        conditions = 1 if model.block == 0 else 1 + length // model.block
        modulations = [b.modulation[-1] for b in model.layers]
        flops += conditions * linear_flops(*[m for m in model.time.mlp if isinstance(m, nn.Linear)], *modulations)
    return flops


def ssd_flops_per_sequence(model, length: int) -> float:
    """Forward FLOPs of SSD-LM's network on one training window of `length` tokens (context and block, every
    position run: a short context's left padding too): the layers over the window, and on the block's B tokens the
    simplex input (softmax(w_t) x the embedding matrix), the timestep projection and the tied head."""
    per_token = sum(layer_flops(b, length) for b in model.layers)
    block = model.cfg.block_size * (4.0 * model.cfg.width * model.vocab_size + linear_flops(model.time))
    return per_token * length + block


def ar_flops_per_sequence(model, length: int) -> float:
    """Forward FLOPs of the causal LM on one sequence of `length` tokens (tied output head included)."""
    per_token = sum(layer_flops(b, length) for b in model.layers) + 2.0 * model.cfg.width * model.vocab_size
    return per_token * length


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int | None = None,
                      repeats: int = 5) -> float:
    """FLOP/s of a square matrix product measured on `device` now - the denominator of MFU. On a GPU an
    8192^3 product (bf16 at ~800 TFLOP/s on an H100), on a CPU 2048^3."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2.0 * size**3 * repeats / (time.perf_counter() - start)


class Throughput:
    """Accumulates optimizer steps between two log records; `read()` gives the window's rates."""

    def __init__(self, tokens_per_step: float, flops_per_step: float, peak_flops: float, devices: int):
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.peak_flops, self.devices = peak_flops, devices
        self.reset()

    def reset(self):
        """Restart the clock (after time that is not training: checkpoint writes, evaluation)."""
        self.start, self.steps = time.perf_counter(), 0

    def step(self):
        """Count one optimizer step."""
        self.steps += 1

    def read(self) -> dict:
        """tokens/s over all devices; FLOP/s and MFU per device."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {}
        if self.tokens_per_step:
            out["tokens_per_s"] = float(f"{self.tokens_per_step * self.steps / elapsed:.5g}")
        if self.flops_per_step:
            per_device = self.flops_per_step * self.steps / elapsed / self.devices
            out["tflops_per_s"] = float(f"{per_device / 1e12:.4g}")  # 4 significant digits, also for tiny models
            if self.peak_flops:
                out["mfu"] = float(f"{per_device / self.peak_flops:.4g}")
        self.reset()
        return out
