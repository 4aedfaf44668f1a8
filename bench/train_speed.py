"""Training-step throughput of the demo-sized VAE and DiT on this machine, each variant next to its
baseline in the same run (ratios, not absolute times, are what to compare across machines).

    python bench/train_speed.py [--steps 5]

VAE: full-vocabulary softmax vs sampled softmax (batch tokens + hard + random negatives), fp32 vs bf16.
DiT: fp32 vs bf16 autocast.
"""
from __future__ import annotations

import argparse
import time

import torch

from textldm.config import DiTConfig, VAEConfig
from textldm.diffusion.flow import flow_loss, interpolate
from textldm.models.dit import TextDiT
from textldm.models.vae import TextVAE
from textldm.training.objectives import vae_loss


def timed(step, n: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def vae_step_fn(softmax: str, bf16: bool, vocab: int = 49152, batch: int = 32, length: int = 64):
    torch.manual_seed(0)
    vae = TextVAE(VAEConfig(width=256, encoder_depth=2, decoder_depth=2, heads=4, max_len=length, softmax=softmax),
                  vocab, teacher_dim=576)
    if softmax == "sampled":
        vae.build_neighbor_table(4)
    opt = torch.optim.AdamW(vae.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    # Zipf-like token ids, as in real text
    ranks = torch.multinomial(1.0 / torch.arange(1, vocab + 1).float(), batch * length, replacement=True, generator=g)
    ids = ranks.view(batch, length)
    mask = torch.ones_like(ids, dtype=torch.bool)
    teacher = torch.randn(batch // 4, length, 576)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = vae_loss(vae, ids, mask, teacher, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, batch * length


def dit_step_fn(bf16: bool, batch: int = 64, length: int = 32):
    torch.manual_seed(0)
    dit = TextDiT(DiTConfig(width=256, depth=6, heads=4), 64)
    opt = torch.optim.AdamW(dit.parameters(), 1e-3)
    ctx, x0, x1, t = (torch.randn(batch, length, 64), torch.randn(batch, length, 64), torch.randn(batch, length, 64),
                      torch.rand(batch))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            v = dit(interpolate(x0, x1, t), t, context=ctx)
        loss = flow_loss(v, x0, x1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, batch * length


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    rows = []
    base = None
    for softmax, bf16 in (("full", False), ("sampled", False), ("sampled", True)):
        step, tokens = vae_step_fn(softmax, bf16)
        tps = tokens / timed(step, args.steps)
        base = base or tps
        rows.append((f"VAE 16M, {softmax} softmax, {'bf16' if bf16 else 'fp32'}", tps, tps / base))
    base = None
    for bf16 in (False, True):
        step, tokens = dit_step_fn(bf16)
        tps = tokens / timed(step, args.steps)
        base = base or tps
        rows.append((f"DiT 7.4M (context 32 + target 32), {'bf16' if bf16 else 'fp32'}", tps, tps / base))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| training step | tokens/s | vs first row of its model |")
    print("|---|---|---|")
    for name, tps, ratio in rows:
        print(f"| {name} | {tps:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
