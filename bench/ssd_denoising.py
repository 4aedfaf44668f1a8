"""Does a trained SSD-LM read its block? For held-out blocks of the embedded benchmark (a full window: the block's clean
tokens after the context), noised to time t: how often the model's argmax is the clean token, and what share of its
predictions is its single commonest one - beside the same accuracy for the noised input's own argmax (what copying
the input gives: 1 at small t, ~0 near T). A model that has learned the task beats the input's argmax at large t and
matches it at small t; one that predicts near-unigram logits writes one token everywhere whatever its input, and its
sampler collapses to repeating it (issue 48's SSD-LM at <= 5e13 FLOPs).

    python bench/ssd_denoising.py --model runs/baselines/ssdlm/2.5e+13-s1/ssd [--model ...] [--items 200]
        [--out bench/results/baselines/ssdlm_denoising.md]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from textldm.diffusion.simplex import noised, simplex_of
from textldm.evaluation.benchmark import benchmark
from textldm.families.ssd import SSDPipeline

TIMES = (1, 50, 500, 2500, 4500)  # of the paper's T = 5000; scaled to a model's own T


def held_out_blocks(pipe: SSDPipeline, items: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(context (N, C), key mask (N, C + B), clean block (N, B)): the first window of each of the benchmark's prompt
    + reference texts that fills one (a full context of C tokens, then the block)."""
    B, C = pipe.model.cfg.block_size, pipe.sampler.context
    _, rows = benchmark("embedded", items)
    ids = [r[: C + B] for r in (pipe.tokenizer.encode(it["prompt"] + it["reference"]) for it in rows)
           if len(r) >= C + B]
    if not ids:
        raise SystemExit(f"no benchmark text fills the model's window of {C + B} tokens: use more --items")
    windows = torch.tensor(ids)
    return windows[:, :C], torch.ones(len(ids), C + B, dtype=torch.bool), windows[:, C:]


@torch.no_grad()
def reading(pipe: SSDPipeline, items: int, seed: int = 0) -> list[dict]:
    """Per time: the model's argmax accuracy, its commonest prediction's share and text, the input's own accuracy."""
    model = pipe.model
    K, T, V = model.cfg.simplex_k, model.cfg.diffusion_steps, model.vocab_size
    context, mask, block = held_out_blocks(pipe, items)
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in sorted({max(1, round(x * T / 5000)) for x in TIMES}):
        times = torch.full((len(block),), t)
        w = noised(simplex_of(block, V, K), times, torch.randn(*block.shape, V, generator=g), T, K)
        pred = model(context, w, times, mask).argmax(-1)
        top = pred.flatten().mode().values
        out.append({"t": t, "accuracy": float((pred == block).float().mean()),
                    "input_accuracy": float((w.argmax(-1) == block).float().mean()),
                    "commonest_share": float((pred == top).float().mean()),
                    "commonest": pipe.tokenizer.decode([int(top)]), "blocks": len(block)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="an SSD-LM model folder (repeatable)")
    ap.add_argument("--items", type=int, default=200, help="benchmark items read for blocks")
    ap.add_argument("--out", help="also write the table here (markdown)")
    args = ap.parse_args()
    lines = ["| model | t | blocks | model's argmax = clean token | input's argmax = clean token | "
             "commonest prediction's share |", "|---|---|---|---|---|---|"]
    for path in args.model:
        for r in reading(SSDPipeline.from_pretrained(path), args.items):
            lines.append(f"| {path} | {r['t']} | {r['blocks']} | {r['accuracy']:.3f} | {r['input_accuracy']:.3f} | "
                         f"{r['commonest_share']:.3f} ({r['commonest']!r}) |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
