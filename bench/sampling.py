"""Sampling cost, honestly: seconds per continuation, tokens/s, network evaluations and FLOPs of TextLDM
(several solvers and step counts, with and without context caching) and of the AR baseline with a KV cache,
at equal parameter count, continuation lengths 64 / 256 / 1024, batch 1 and 16 - in one run on this machine.
Writes a table (stdout + --out/sampling.md), sampling.json and the plot sampling.png (evaluations, FLOPs and
wall-clock vs length: the paper's Figure 2 with the two axes it left out).

    python bench/sampling.py [--out bench/results] [--lengths 64,256,1024] [--batches 1,16]

Random weights (speed does not depend on them), end-of-text disabled so every continuation has the full
length. Shapes: TextLDM = the demo VAE (w256, 2+2 blocks, SmolLM2's 49,152-token vocabulary) + a w256 d6
DiT with a 256-token context and 256-token window (longer continuations: windows of 256, each conditioned
on the last 256 tokens); AR = w256 d14 causal LM, same vocabulary (23.6M parameters each side). Prompts
are 256 tokens. CFG scale 7 doubles the rows of every evaluation; "evaluations" counts velocity calls
(each a batched CFG pair), "forwards" counts network passes per sequence as the paper's Figure 2 does.

Block mode (--blocks 16,8,4,1; dit.blocks.size B on a causal VAE): the same shapes, a 512-token window (the
256-token prompt, then 256 / B blocks against the cached prefix; longer continuations slide to the last 256
tokens), Euler 10 per block. Its FLOPs count the DiT (each block's clean pass into the cache and its noisy
evaluations), the VAE's re-encoding of the window and the decoder pass per block, and the output head on the
block's tokens only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from textldm import TextLDMPipeline
from textldm.config import ARConfig, BlocksConfig, Config, DiTConfig, SampleConfig, VAEConfig, WindowConfig
from textldm.diffusion.sampling import evaluations
from textldm.families.textldm.modes import mode_of
from textldm.models.ar import CausalLM
from textldm.models.ar import generate as ar_generate
from textldm.models.vae import TextVAE
from textldm.runtime.perf import (
    ar_flops_per_sequence,
    dit_block_sampling_flops,
    dit_cached_flops_per_sequence,
    dit_flops_per_sequence,
    layer_flops,
)
from textldm.utils import param_count

VOCAB, PROMPT, WINDOW = 49_152, 256, 256
SOLVERS = [("euler", 50), ("euler", 10), ("heun", 5), ("ab2", 9)]


def textldm_pipeline(cacheable: bool, block: int = 0) -> TextLDMPipeline:
    cfg = Config()
    cfg.vae = VAEConfig(width=256, encoder_depth=2, decoder_depth=2, heads=4, max_len=1024,
                        encoder_block_size=1 if block else 0)
    cfg.dit = DiTConfig(width=256, depth=6, heads=4, context_max=PROMPT, target_max=WINDOW,
                        mode="blocks" if block else "window", window=WindowConfig(context_cache=cacheable),
                        blocks=BlocksConfig(size=block or 1))
    cfg.sample = SampleConfig(cfg_scale=7.0)
    torch.manual_seed(0)
    vae, dit = TextVAE(cfg.vae, VOCAB), mode_of(cfg.dit).build_dit(cfg.dit, cfg.vae.latent_channels)
    with torch.no_grad():  # leave the adaLN-Zero start (identity blocks), as a trained model would
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return TextLDMPipeline(cfg, None, vae.eval(), dit.eval(), eot_id=-1)


def vae_flops(vae, context: int, length: int) -> float:
    """Encoding a context and decoding `length` latents (with the output head)."""
    enc = context * sum(layer_flops(b, context) for b in vae.encoder)
    dec = length * (sum(layer_flops(b, length) for b in vae.decoder) + 2.0 * vae.cfg.width * vae.vocab_size)
    return enc + dec


def textldm_flops(pipe, length: int, solver: str, steps: int, cached: bool) -> float:
    """Per continuation, CFG included."""
    total, left = 0.0, length
    while left > 0:
        n = min(WINDOW, left)
        calls = evaluations(solver, steps)
        if cached:
            context_pass, target_pass = dit_cached_flops_per_sequence(pipe.dit, PROMPT, n)
            total += 2 * context_pass + 2 * calls * target_pass
        else:
            total += 2 * calls * dit_flops_per_sequence(pipe.dit, PROMPT, n)
        total += vae_flops(pipe.vae, PROMPT, n)
        left -= n
    return total


def block_mode_flops(pipe, length: int, steps: int) -> float:
    """Per continuation in block mode, CFG included (every DiT pass runs a conditional and a null row)."""
    B, vae = pipe.config.dit.blocks.size, pipe.vae
    total, left = 0.0, length
    while left > 0:
        prefix = PROMPT
        total += 2 * dit_block_sampling_flops(pipe.dit, 0, PROMPT)[0] + vae_flops(vae, PROMPT, 0)
        while left > 0 and prefix + B <= PROMPT + WINDOW:
            clean_pass, noisy_pass = dit_block_sampling_flops(pipe.dit, prefix, B)
            window = prefix + B
            head = B * 2.0 * vae.cfg.width * vae.vocab_size  # the output head on the new block only
            decode = window * sum(layer_flops(b, window) for b in vae.decoder) + head
            encode = window * sum(layer_flops(b, window) for b in vae.encoder)
            total += 2 * steps * noisy_pass + 2 * clean_pass + decode + encode
            prefix, left = window, left - B
    return total


def ar_flops(model, length: int) -> float:
    per_token_head = 2.0 * model.cfg.width * model.vocab_size
    decode = sum(sum(layer_flops(b, PROMPT + i + 1) for b in model.layers) + per_token_head for i in range(length))
    return ar_flops_per_sequence(model, PROMPT) + decode


def timed(fn) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--lengths", default="64,256,1024")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--blocks", default="16,8,4,1", help="block-mode block sizes to time ('' = none)")
    return ap.parse_args(argv)


def write_report(out: Path, device_name: str, params: dict, rows: list[dict]) -> None:
    """sampling.json, and sampling.md: the table and the context-caching speed-ups."""
    (out / "sampling.json").write_text(json.dumps({"device": device_name, "params": params, "rows": rows}, indent=2))
    lines = ["| model / sampler | length | batch | s / continuation | tokens/s | evaluations | forwards "
             "| GFLOP / continuation |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['length']} | {r['batch']} | {r['seconds_per_continuation']:.3f} "
                     f"| {r['tokens_per_s']:,.0f} | {r['evaluations']} | {r['forwards']} "
                     f"| {r['gflops_per_continuation']:,.1f} |")
    ratio = {}
    for r in rows:
        if r["model"] in ("TextLDM cacheable, cache off, euler 10", "TextLDM cached ctx, euler 10"):
            ratio.setdefault((r["length"], r["batch"]), {})[r["model"]] = r["seconds_per_continuation"]
    lines.append("")
    for (length, batch), pair in sorted(ratio.items()):
        if len(pair) == 2:
            speedup = pair['TextLDM cacheable, cache off, euler 10'] / pair['TextLDM cached ctx, euler 10']
            lines.append(f"context caching, length {length}, batch {batch}: {speedup:.2f}x "
                         f"faster per step (same model, cache on vs off)")
    (out / "sampling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default, cacheable = textldm_pipeline(False).to(args.device), textldm_pipeline(True).to(args.device)
    blocks = {int(b): textldm_pipeline(False, int(b)).to(args.device) for b in filter(None, args.blocks.split(","))}
    torch.manual_seed(0)
    ar = CausalLM(ARConfig(width=256, depth=14, heads=4), VOCAB).eval().to(args.device)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    params = {"textldm": param_count(default.vae) + param_count(default.dit), "ar": param_count(ar)}
    print(f"{device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads; parameters: TextLDM "
          f"{params['textldm'] / 1e6:.1f}M (VAE + DiT), AR {params['ar'] / 1e6:.1f}M", flush=True)
    g = torch.Generator().manual_seed(0)
    warm = torch.randint(0, VOCAB, (1, PROMPT), generator=g).tolist()
    with torch.no_grad():  # kernels, allocator and (on GPU) library initialisation out of the timings
        for pipe in (default, cacheable, *blocks.values()):
            pipe.generate_ids(warm, 8, 2, 7.0, "euler", 0)
        ar_generate(ar, warm, 8)
    rows = []
    for batch in batches:
        prompts = torch.randint(0, VOCAB, (batch, PROMPT), generator=g).tolist()
        for length in lengths:
            def add(name, seconds, evals, forwards, flops):
                rows.append({"model": name, "length": length, "batch": batch, "seconds_per_continuation":
                             seconds / batch, "tokens_per_s": batch * length / seconds, "evaluations": evals,
                             "forwards": forwards, "gflops_per_continuation": flops / 1e9})
                print(f"  b{batch} L{length} {name}: {seconds / batch:.3f} s/continuation, "
                      f"{batch * length / seconds:,.0f} tokens/s, {evals} evaluations", flush=True)

            windows = -(-length // WINDOW)
            for solver, steps in SOLVERS:
                for pipe, use_cache, label in ((default, False, "TextLDM"), (cacheable, True, "TextLDM cached ctx")):
                    if use_cache and (solver, steps) not in (("euler", 50), ("euler", 10)):
                        continue
                    with torch.no_grad():
                        s = timed(lambda: pipe.generate_ids(prompts, length, steps, 7.0, solver, 0,
                                                            context_cache=use_cache))
                    evals = windows * evaluations(solver, steps)
                    add(f"{label}, {solver} {steps}", s, evals, 2 * evals,
                        textldm_flops(pipe, length, solver, steps, use_cache))
            # the same cacheable model with its cache off: the per-step gain of caching alone
            with torch.no_grad():
                s = timed(lambda: cacheable.generate_ids(prompts, length, 10, 7.0, "euler", 0, context_cache=False))
            add("TextLDM cacheable, cache off, euler 10", s, windows * 10, windows * 20,
                textldm_flops(cacheable, length, "euler", 10, False))
            for block, pipe in blocks.items():
                with torch.no_grad():
                    s = timed(lambda: pipe.generate_ids(prompts, length, 10, 7.0, "euler", 0))
                n = -(-length // block)
                add(f"TextLDM block {block}, euler 10", s, 10 * n, 20 * n, block_mode_flops(pipe, length, 10))
            with torch.no_grad():
                s = timed(lambda: ar_generate(ar, prompts, length, temperature=1.0, top_p=0.95, seed=0))
            add("AR, KV cache", s, length, length, ar_flops(ar, length))
    write_report(out, device_name, params, rows)
    plot(rows, out / "sampling.png")


def plot(rows, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in dict.fromkeys(r["model"] for r in rows):
        series = sorted((r["length"], r) for r in rows if r["model"] == name and r["batch"] == 1)
        if not series:
            continue
        xs = [x for x, _ in series]
        for ax, key in zip(axes, ("forwards", "gflops_per_continuation", "seconds_per_continuation")):
            ax.plot(xs, [r[key] for _, r in series], marker="o", label=name)
    for ax, title in zip(axes, ("network forwards per continuation", "GFLOP per continuation",
                                "seconds per continuation (batch 1, this CPU)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("continuation length (tokens)")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
