"""Generation speed of the context-encoder mode (issue 30): tokens/s of block sizes B against the backbone LM
sampling itself with its KV cache, at batch 1 and batch 32, measured in one run on this machine (ratios, not
absolute times). Speed does not depend on the weights, so the models are the demo preset's shapes with random
weights (the backbone is the real offline SmolLM2-135M); end-of-text is off, so every row writes every token.

    python bench/context_speed.py [--blocks 1 4 16] [--batches 1 32] [--prompt 32] [--new 32] [--steps 10]
                                  [--out bench/results/context_speed.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from textldm import TextLDMPipeline
from textldm.config import load_config
from textldm.families.textldm.modes import CONTEXT_LM
from textldm.models.lm import FrozenLM, load_tokenizer, resolve
from textldm.models.vae import TextVAE

BACKBONE = "smollm2-135m"


def timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up (allocations, kernels)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def lm_seconds(lm, prompts: torch.Tensor, new: int) -> float:
    """The backbone's own sampling: HF generate with its KV cache, `new` tokens per row (no early stop)."""
    return timed(lambda: lm.generate(prompts, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                                     pad_token_id=0, use_cache=True))


def mode_seconds(lm: FrozenLM, block: int, prompts: torch.Tensor, new: int, steps: int, cfg_scale: float) -> float:
    cfg = load_config("demo", ["dit.mode=context_lm", f"dit.blocks.size={block}", f"dit.context_lm.encoder={BACKBONE}"])
    vocab = len(load_tokenizer(cfg.teacher.name))
    vae = TextVAE(cfg.vae, vocab).eval()
    dit = CONTEXT_LM.build_dit(cfg.dit, cfg.vae.latent_channels).eval()
    pipe = TextLDMPipeline(cfg, None, vae, dit, eot_id=-1, parts={"lm": lm})  # one loaded backbone for every B
    ids = prompts.tolist()
    return timed(lambda: pipe.generate_ids(ids, length=new, steps=steps, cfg_scale=cfg_scale, seed=0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf_lm = AutoModelForCausalLM.from_pretrained(resolve(BACKBONE), dtype=torch.float32).eval()
    context_lm = FrozenLM(BACKBONE, -1)
    rows = []
    for batch in args.batches:
        prompts = torch.randint(100, 40000, (batch, args.prompt))
        base = args.new * batch / lm_seconds(hf_lm, prompts, args.new)
        rows.append({"model": f"{BACKBONE} sampling itself (KV cache)", "batch": batch, "tokens_per_s": base,
                     "vs_lm": 1.0})
        print(f"batch {batch:3d}  {rows[-1]['model']:40s} {base:8.1f} tokens/s  1.00x")
        for block in args.blocks:
            tps = args.new * batch / mode_seconds(context_lm, block, prompts, args.new, args.steps, args.cfg)
            rows.append({"model": f"context-LM mode B={block}", "block_size": block, "batch": batch,
                         "tokens_per_s": tps, "vs_lm": tps / base})
            print(f"batch {batch:3d}  {rows[-1]['model']:40s} {tps:8.1f} tokens/s  {tps / base:.2f}x")
    if args.out:
        out = {**vars(args), "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows}
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
