"""How a block-mode model's generated blocks are decoded (issue 20): the sampler decodes each finished block beside
its prefix's latents, once (what it returns). Two alternatives, measured on the same latents: decoding each block
alone (no prefix), and decoding the whole continuation once at the end (every block beside all the others, later
ones included). The table gives the share of tokens each alternative changes, and the judge's perplexity of each
decoding.

    python bench/block_decoding.py --model runs/scaling/block8/5e+13-s0/model --prompts 64 [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from textldm import TextLDMPipeline
from textldm.evaluation.benchmark import benchmark
from textldm.evaluation.metrics import generative_perplexity
from textldm.sampling import BlockState


def decodings(pipe: TextLDMPipeline, prompt: list[int], length: int, seed: int) -> dict[str, list[int]]:
    """The three decodings of one continuation (within one window) from the same sampled latents."""
    blocks = []
    committed = pipe.generate_ids([prompt], length, seed=seed,
                                  callback=lambda i, t, x: blocks.append(x.clone()) if t >= 1.0 else None)[0]
    B, n = pipe.config.dit.blocks.size, len(committed) // pipe.config.dit.blocks.size
    blocks = blocks[:max(n, 1)]
    with torch.no_grad():
        alone = [tok for x in blocks for tok in pipe.codec.decode(x, cut=False)[0]]
        prefix = BlockState.start(pipe.codec, pipe.dit, [prompt[-pipe.config.dit.context_max:]], guided=False)
        latents = torch.cat([prefix.latents, *blocks], 1)
        mask = torch.cat([prefix.mask, torch.ones(1, latents.shape[1] - prefix.mask.shape[1], dtype=torch.bool)], 1)
        joint = pipe.codec.decode(latents, cut=False, mask=mask, last=B * len(blocks))[0]
    k = len(committed)
    return {"committed (beside the prefix, once)": committed, "each block alone": alone[:k],
            "all at the end (later blocks too)": joint[:k]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--length", type=int, default=None, help="tokens (default: the model's dit.target_max)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/block_mode"))
    args = ap.parse_args(argv)
    pipe = TextLDMPipeline.from_pretrained(args.model)
    if not pipe.config.dit.reads("blocks"):
        raise SystemExit(f"{args.model} is a full-window model; give a block-mode one")
    length = args.length or pipe.config.dit.target_max
    _, items = benchmark("embedded", args.prompts, 0)
    prompts = pipe.encode_prompts([it["prompt"] for it in items])
    rows = {}
    for i, prompt in enumerate(prompts):
        for name, ids in decodings(pipe, prompt, length, seed=i).items():
            rows.setdefault(name, []).append(ids)
    base = rows["committed (beside the prefix, once)"]
    texts = [it["prompt"] for it in items]
    lines = [f"Block decoding, `{args.model}` (B = {pipe.config.dit.blocks.size}), {len(prompts)} embedded-benchmark "
             f"prompts, {length} tokens each.", "", "| decoding | tokens differing from the committed ones | gen-PPL |",
             "|---|---|---|"]
    report = {}
    for name, ids in rows.items():
        differ = sum(a != b for r, s in zip(ids, base) for a, b in zip(r, s)) / max(1, sum(len(r) for r in base))
        ppl = generative_perplexity(texts, [pipe.tokenizer.decode(r) for r in ids], pipe.config.metrics.judge)
        report[name] = {"differ": differ, "gen_ppl": ppl}
        lines.append(f"| {name} | {100 * differ:.1f}% | {ppl:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "block_decoding.json").write_text(json.dumps({"model": args.model, "rows": report}, indent=2))
    (args.out / "block_decoding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
