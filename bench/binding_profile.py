"""Where along a continuation the prompt stops mattering: prompt binding (the judge's perplexity of a continuation
after ANOTHER item's prompt over its perplexity after its own, `metrics.prompt_binding`) per stretch of continuation
positions, for the generations `textldm eval` saved (OUT/generations/BENCH/MODEL.jsonl), side by side.

    python bench/binding_profile.py runs/eval/generations/embedded/m.jsonl [more.jsonl ...] [--judge smollm2-135m]
        [--stretch 8] [--out FILE.json]

Each position's log-ratio is averaged over the items, then exponentiated: the first stretch is how much the prompt
decides a continuation's first tokens, the later ones how much of it is still followed. The "other" prompt is the
next item's, as in `prompt_binding`; prompts are read after the judge's leading special tokens (a BOS), as there.
Tokens are the judge's; every row scores its first 40 tokens.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from textldm.evaluation.metrics import leading_special_ids
from textldm.models.lm import load_hf_model

TOKENS = 40


@torch.no_grad()
def token_nlls(tok, model, prompt: str, continuation: str) -> list[float]:
    """The judge's negative log-likelihood of each continuation token after the prompt."""
    p = leading_special_ids(tok) + tok(prompt, add_special_tokens=False)["input_ids"]  # a BOS where the judge has one
    c = tok(continuation, add_special_tokens=False)["input_ids"][:TOKENS]
    if not c:
        return []
    logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1: -1]
    return (-logits.log_softmax(-1).gather(1, torch.tensor(c)[:, None])[:, 0]).tolist()


def profile(rows: list[dict], tok, model, stretch: int) -> list[float]:
    """Binding per stretch of `stretch` positions: exp(mean over its tokens of nll(other prompt) - nll(own))."""
    sums: dict[int, list[float]] = {}
    for i, row in enumerate(rows):
        other = rows[(i + 1) % len(rows)]["prompt"]
        own, after_other = token_nlls(tok, model, row["prompt"], row["generated"]), \
            token_nlls(tok, model, other, row["generated"])
        for j, (a, b) in enumerate(zip(own, after_other)):
            sums.setdefault(j // stretch, []).append(b - a)
    return [math.exp(sum(v) / len(v)) for _, v in sorted(sums.items())]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("generations", nargs="+", type=Path, help="generations .jsonl files written by textldm eval")
    p.add_argument("--judge", default="smollm2-135m")
    p.add_argument("--stretch", type=int, default=8, help="positions per reported stretch")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    tok, model = load_hf_model(args.judge, role="judge LM")
    results = {"judge": args.judge, "stretch": args.stretch, "profiles": {}}
    for path in args.generations:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        values = profile(rows, tok, model, args.stretch)
        results["profiles"][str(path)] = values
        print(f"{path}: " + "  ".join(f"{k * args.stretch}-{(k + 1) * args.stretch - 1}: {v:.2f}"
                                      for k, v in enumerate(values)))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
