"""Where inside a block the text goes wrong: for each position of the first N sampled tokens after held-out prompts,
the backbone LM's probability of the token the model wrote there, given the prompt and the model's own tokens before
it (issue 30: why a block size B > 1 is not yet as good as B = 1). With a context LM the DiT reads the LM's state
before each block only, so inside a block of B tokens positions 2..B are the DiT's own language modelling.

    python bench/block_positions.py --model runs/interface/b16/model --model runs/interface/base/model \
        [--prompts 256] [--tokens 16] [--out bench/results/interface/positions.json]

Printed per model: the LM's mean probability of the written token at each position, and the mean over positions
1, 2..4, 5..N; the same for the LM's own greedy continuation (its top-1 at every position) as the ceiling.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from next_token import held_out
from textldm import TextLDMPipeline
from textldm.models.lm import resolve


@torch.no_grad()
def lm_prob_of_written(lm, prompts: torch.Tensor, written: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """(n, N) the LM's probability of written[:, j] after prompt + written[:, :j]."""
    P = prompts.shape[1]
    out = []
    for i in range(0, len(prompts), batch):
        ids = torch.cat([prompts[i: i + batch], written[i: i + batch]], 1)
        probs = lm(input_ids=ids).logits[:, P - 1: -1].float().softmax(-1)
        out.append(probs.gather(2, written[i: i + batch, :, None])[..., 0])
    return torch.cat(out)


@torch.no_grad()
def lm_greedy(lm, prompts: torch.Tensor, n: int) -> torch.Tensor:
    """(n_prompts, n) the LM's own top-1 continuation."""
    return lm.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                       do_sample=False, pad_token_id=0)[:, prompts.shape[1]:]


def summary(p: torch.Tensor, written: torch.Tensor | None = None, block_size: int = 0) -> dict:
    """Per-position means (over the rows that reached the position: `written` >= 0), the means over position 1,
    2..4 and 5..N, and with a block size B > 1 the mean at each position inside a block (sampling starts at a block
    boundary: the prompt is left-padded to whole blocks)."""
    mask = torch.ones_like(p) if written is None else (written >= 0).float()
    per = ((p * mask).sum(0) / mask.sum(0).clamp_min(1)).tolist()
    out = {"per_position": per, "first": per[0], "2-4": sum(per[1:4]) / len(per[1:4]),
           "5-": sum(per[4:]) / max(1, len(per[4:]))}
    if block_size > 1:
        inside = torch.arange(p.shape[1]) % block_size
        out["within_block"] = [((p * mask)[:, inside == k].sum() / mask[:, inside == k].sum().clamp_min(1)).item()
                               for k in range(min(block_size, p.shape[1]))]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="a trained model folder (repeatable)")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--noise-scale", type=float, default=0.0, help="the sampler's starting noise (0: from x0 = 0)")
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    results, lm, prompts = {}, None, None
    for folder in args.model:
        pipe = TextLDMPipeline.from_pretrained(folder)
        if lm is None:  # the same prompts and judge for every model: the first model's data and teacher
            prompts, _ = held_out(pipe, args.prompts, args.prompt_len, args.seed)
            lm = AutoModelForCausalLM.from_pretrained(resolve(pipe.config.teacher.name), dtype=torch.float32).eval()
            greedy = lm_greedy(lm, prompts, args.tokens)
            results["backbone greedy"] = summary(lm_prob_of_written(lm, prompts, greedy))
        start = time.time()
        rows = pipe.generate_ids(prompts.tolist(), length=args.tokens, seed=args.seed,
                                 noise_scale=args.noise_scale, cfg_scale=args.cfg_scale)
        written = torch.tensor([r + [-1] * (args.tokens - len(r)) for r in rows])  # -1 after an end-of-text
        p = lm_prob_of_written(lm, prompts, written.clamp_min(0))
        B = pipe.config.dit.blocks.size
        results[folder] = {"block_size": B, "seconds": time.time() - start, **summary(p, written, B)}
    for name, r in results.items():
        print(f"{name:40s} LM p(written): position 1 {r['first']:.3f}, 2-4 {r['2-4']:.3f}, 5-{args.tokens} "
              f"{r['5-']:.3f}" + (f"; inside a block: {' '.join(f'{v:.3f}' for v in r['within_block'])}"
                                  if "within_block" in r else ""))
    if args.out:
        Path(args.out).write_text(json.dumps({"prompts": args.prompts, "prompt_len": args.prompt_len,
                                              "tokens": args.tokens, "noise_scale": args.noise_scale,
                                              "cfg_scale": args.cfg_scale, "date": time.strftime("%Y-%m-%d"),
                                              "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
