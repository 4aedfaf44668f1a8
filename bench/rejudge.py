"""Score a finished demo run's continuations again under other judge LMs (gen-PPL and prompt binding of the
generations and of the references, the demo's own rule: `demo.judged`), from its report.json - no retraining.

    python bench/rejudge.py runs/x/report.json [--judges smollm2-135m gemma3-270m] [--lm-samples smollm2-135m]
                            [--out F.json]

With --lm-samples, that LM also continues the same prompts itself (plain sampling at temperature 1, the run's
continuation length in its tokens, seed 0) and its continuations are scored beside the run's: the ceiling row.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from textldm.demo import judged
from textldm.models.teacher import load_tokenizer, resolve


@torch.no_grad()
def lm_continuations(name: str, prompts: list[str], length: int, batch: int = 25) -> list[str]:
    """The LM's own continuations of the prompts (left-padded batches, sampling at temperature 1, seed 0)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(name)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(resolve(name), dtype=torch.float32).eval()
    torch.manual_seed(0)
    out = []
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i: i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        ids = lm.generate(**enc, max_new_tokens=length, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                          pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--judges", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--lm-samples", default="", help="an LM whose own continuations are scored too")
    ap.add_argument("--length", type=int, default=32, help="tokens per LM continuation (the demo's sample.length)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    samples = json.loads(Path(args.report).read_text())["continuations"]["samples"]
    prompts, gens, refs = ([s[k] for s in samples] for k in ("prompt", "generated", "reference"))
    sets = {"run": gens} | ({f"{args.lm_samples} itself": lm_continuations(args.lm_samples, prompts, args.length)}
                            if args.lm_samples else {})
    rows = []
    for (what, texts), judge in ((item, judge) for item in sets.items() for judge in args.judges):
        rows.append({"continuations": what, **judged(prompts, texts, refs, judge)})
        r = rows[-1]
        print(f"{what:22s} {judge:16s} gen-PPL {r['gen_ppl']:8.1f} (references {r['reference_gen_ppl']:6.1f}, ratio "
              f"{r['gen_ppl'] / r['reference_gen_ppl']:.2f}x); binding {r['prompt_binding']:.3f} (references "
              f"{r['reference_prompt_binding']:.3f})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"report": args.report, "samples": len(samples),
                                              "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
