"""The latent-to-token interface, measured as the next token: on held-out windows, the first token a trained TextLDM
samples after a prompt, against the true next token and against the backbone LM's own top-1 (issue 30's yardstick:
>= 0.9x the LM's top-1 accuracy), for sampler settings side by side (noise scale, CFG, steps, the LM prior), the same
prompts and seeds for every setting.

    python bench/next_token.py --model runs/lm/model [--prompts 256] [--settings 1,3,5 | none] [--out FILE.json]

The LM is the model's teacher (its tokenizer's LM: for a context-encoder model, the conditioner itself). Printed per
setting: accuracy vs the true token, agreement with the LM's top-1, the LM's mean probability of the sampled token,
and the ratio accuracy / LM top-1 accuracy with its standard error (paired over the same prompts, delta method: at 128
prompts about +-0.1x, at 1,024 about +-0.04x); with sample.lm_prior, the share of sampled tokens the prior changed
(the decoder alone would have written another).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from textldm import TextLDMPipeline
from textldm.models.lm import resolve
from textldm.runtime.distributed import step_generator
from textldm.training.run import prepare_data

SETTINGS = [  # label, sampler overrides
    ("noise 1, cfg 1", {"noise_scale": 1.0, "cfg_scale": 1.0}),
    ("noise 1, cfg 2", {"noise_scale": 1.0, "cfg_scale": 2.0}),
    ("noise 0.5, cfg 1", {"noise_scale": 0.5, "cfg_scale": 1.0}),
    ("noise 0.5, cfg 2", {"noise_scale": 0.5, "cfg_scale": 2.0}),
    ("noise 0 (x0 = 0), cfg 1", {"noise_scale": 0.0, "cfg_scale": 1.0}),
    ("noise 0 (x0 = 0), cfg 2", {"noise_scale": 0.0, "cfg_scale": 2.0}),
    ("noise 0.5, cfg 1, 30 steps", {"noise_scale": 0.5, "cfg_scale": 1.0, "steps": 30}),
    ("noise 0.25, cfg 2", {"noise_scale": 0.25, "cfg_scale": 2.0}),
    ("noise 0 (x0 = 0), cfg 3", {"noise_scale": 0.0, "cfg_scale": 3.0}),
    ("noise 0 (x0 = 0), cfg 2, 30 steps", {"noise_scale": 0.0, "cfg_scale": 2.0, "steps": 30}),
    ("noise 0 (x0 = 0), cfg 2, heun 5", {"noise_scale": 0.0, "cfg_scale": 2.0, "steps": 5, "solver": "heun"}),
    ("noise 0.5, cfg 4", {"noise_scale": 0.5, "cfg_scale": 4.0}),
    ("noise 0.5, cfg 4, lm_prior 0.5", {"noise_scale": 0.5, "cfg_scale": 4.0, "lm_prior": 0.5}),
    ("noise 0.5, cfg 4, lm_prior 1", {"noise_scale": 0.5, "cfg_scale": 4.0, "lm_prior": 1.0}),
    ("noise 1, cfg 4, lm_prior 1", {"noise_scale": 1.0, "cfg_scale": 4.0, "lm_prior": 1.0}),
    ("noise 1, cfg 2, lm_prior 1", {"noise_scale": 1.0, "cfg_scale": 2.0, "lm_prior": 1.0}),
]


def held_out(pipe: TextLDMPipeline, n: int, prompt_len: int, seed: int):
    """n held-out prompts of prompt_len tokens (validation split) and their true next tokens."""
    _, _, _, val = prepare_data(pipe.config)
    windows = val.windows(n, prompt_len + 1, step_generator(seed, 0, 77))
    return windows[:, :prompt_len], windows[:, prompt_len]


@torch.no_grad()
def lm_probabilities(name: str, prompts: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """(n, vocab) next-token probabilities of the LM after each prompt."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(resolve(name), dtype=torch.float32).eval()
    return torch.cat([lm(input_ids=prompts[i: i + batch]).logits[:, -1].softmax(-1)
                      for i in range(0, len(prompts), batch)])


def count_prior_changes(pipe: TextLDMPipeline) -> dict:
    """Wraps the pipeline's decoder so that, where sample.lm_prior adds the LM's log-probabilities, it counts the
    decoded first tokens the prior changed (against the decoder alone on the same latents): {"changed", "tokens"}."""
    counts, decode = {"changed": 0, "tokens": 0}, pipe.codec.decode

    def decode_and_count(z, cut=True, mask=None, last=None, prior=None):
        ids = decode(z, cut, mask, last, prior)
        if prior is not None:
            alone = decode(z, cut, mask, last)
            counts["changed"] += sum(a[:1] != b[:1] for a, b in zip(ids, alone))
            counts["tokens"] += len(ids)
        return ids

    pipe.codec.decode = decode_and_count
    return counts


def ratio_se(sampled_ok: torch.Tensor, lm_ok: torch.Tensor) -> float:
    """Standard error of mean(sampled_ok) / mean(lm_ok), both 0/1 over the same prompts (delta method)."""
    a, b = sampled_ok.float(), lm_ok.float()
    if b.mean() == 0:
        return float("nan")
    r = a.mean() / b.mean()
    return ((a - r * b).std() / (len(a) ** 0.5 * b.mean())).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    ap.add_argument("--settings", default="", help="comma-separated indices into SETTINGS (default: all; the "
                    "interface table's three: 1,3,5; none: the LM's rows only)")
    args = ap.parse_args()
    if args.settings == "none":
        settings = []
    elif args.settings:
        settings = [SETTINGS[int(i)] for i in args.settings.split(",")]
    else:
        settings = SETTINGS
    pipe = TextLDMPipeline.from_pretrained(args.model)
    prompts, truth = held_out(pipe, args.prompts, args.prompt_len, args.seed)
    probs = lm_probabilities(pipe.config.teacher.name, prompts)
    vocab = probs.shape[1]
    lm_top1 = probs.argmax(-1)
    lm_acc = (lm_top1 == truth).float().mean().item()
    p_true = probs.gather(1, truth[:, None])[:, 0]
    rows = [{"setting": "backbone LM top-1", "accuracy": lm_acc, "agrees_with_lm": 1.0,
             "lm_prob_of_sample": probs.max(-1).values.mean().item(), "vs_lm_top1": 1.0},
            {"setting": "backbone LM sampling itself (temperature 1, expected)", "accuracy": p_true.mean().item(),
             "agrees_with_lm": probs.max(-1).values.mean().item(),
             "lm_prob_of_sample": probs.pow(2).sum(-1).mean().item(), "vs_lm_top1": p_true.mean().item() / lm_acc,
             "vs_lm_top1_se": ratio_se(p_true, lm_top1 == truth)}]
    print(f"{args.prompts} held-out prompts of {args.prompt_len} tokens; LM top-1 accuracy {lm_acc:.3f}, LM p(true) "
          f"{p_true.mean().item():.3f} (= the LM sampling itself: {rows[1]['vs_lm_top1']:.2f}x its top-1), "
          f"LM p(its own sample) {rows[1]['lm_prob_of_sample']:.3f}")
    counts = count_prior_changes(pipe)
    for label, overrides in settings:
        start, counts["changed"], counts["tokens"] = time.time(), 0, 0
        sampled = torch.tensor([r[0] if r else -1 for r in
                                pipe.generate_ids(prompts.tolist(), length=1, seed=args.seed, **overrides)])
        ok = sampled.clamp(0, vocab - 1)
        acc = (sampled == truth).float().mean().item()
        row = {"setting": label, **overrides, "accuracy": acc,
               "agrees_with_lm": (sampled == lm_top1).float().mean().item(),
               "lm_prob_of_sample": probs.gather(1, ok[:, None]).mean().item(),
               "vs_lm_top1": acc / lm_acc if lm_acc else None,
               "vs_lm_top1_se": ratio_se(sampled == truth, lm_top1 == truth),
               "seconds": time.time() - start}
        changed = ""
        if counts["tokens"]:  # sample.lm_prior: the share of tokens the LM's prior decided
            row["prior_changed"] = counts["changed"] / counts["tokens"]
            changed = f", the prior changed {row['prior_changed']:.3f}"
        rows.append(row)
        ratio = "n/a" if row["vs_lm_top1"] is None else f"{row['vs_lm_top1']:.2f}x +- {row['vs_lm_top1_se']:.2f}"
        print(f"{label:30s} acc {acc:.3f} = {ratio} LM top-1, agrees with the LM "
              f"{row['agrees_with_lm']:.3f}, LM p(sample) {row['lm_prob_of_sample']:.3f}{changed} "
              f"({row['seconds']:.0f} s)")
    if args.out:
        out = {"model": args.model, "prompts": args.prompts, "prompt_len": args.prompt_len, "seed": args.seed,
               "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d"), "rows": rows}
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
