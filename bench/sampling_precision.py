"""fp32 vs bf16-autocast sampling (`sample.precision`), in one run: seconds per continuation for TextLDM
(default DiT and cacheable DiT with its cache, Euler 10, CFG 7) and, on equal terms, for the AR baseline
with a KV cache under the same autocast. Same shapes and random weights as bench/sampling.py (23.6M
parameters each side, 256-token prompts).

    python bench/sampling_precision.py [--lengths 256] [--batches 1,16] [--device cpu] [--out bench/results]

bf16 autocast pays where the hardware has bf16 matrix units (GPUs; x86 CPUs with AMX / AVX-512 BF16).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sampling import PROMPT, VOCAB, textldm_pipeline, timed  # bench/sampling.py
from textldm.config import ARConfig
from textldm.models.ar import CausalLM
from textldm.models.ar import generate as ar_generate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--lengths", default="256")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="timings per cell (the fastest is kept)")
    args = ap.parse_args()
    device = torch.device(args.device)
    default, cacheable = textldm_pipeline(False).to(device), textldm_pipeline(True).to(device)
    torch.manual_seed(0)
    ar = CausalLM(ARConfig(width=256, depth=14, heads=4), VOCAB).eval().to(device)
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = torch.randint(0, VOCAB, (batch, PROMPT), generator=g).tolist()
        for length in [int(n) for n in args.lengths.split(",")]:
            jobs = {"TextLDM, euler 10": lambda p: default.generate_ids(prompts, length, 10, 7.0, "euler", 0,
                                                                        precision=p),
                    "TextLDM cached ctx, euler 10":
                        lambda p: cacheable.generate_ids(prompts, length, 10, 7.0, "euler", 0, precision=p),
                    "AR, KV cache": lambda p: ar_generate(ar, prompts, length, temperature=1.0, top_p=0.95, seed=0)}
            for name, run in jobs.items():
                seconds = {}
                for precision in ("fp32", "bf16"):
                    job = lambda: run(precision)  # noqa: E731
                    # the pipelines apply the precision setting themselves; the AR baseline gets the same autocast
                    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                              enabled=precision == "bf16" and name.startswith("AR"))
                    with torch.no_grad(), autocast:
                        job()  # warm-up
                        seconds[precision] = min(timed(job) for _ in range(args.repeats)) / batch
                rows.append({"model": name, "length": length, "batch": batch, "fp32_s": seconds["fp32"],
                             "bf16_s": seconds["bf16"], "speedup": seconds["fp32"] / seconds["bf16"]})
                print(rows[-1], flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    lines = [f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads, seconds per continuation", "",
             "| model / sampler | length | batch | fp32 s | bf16 autocast s | bf16 speed-up |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['length']} | {r['batch']} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} "
              f"| {r['speedup']:.2f}x |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    (out / f"sampling_precision{suffix}.md").write_text("\n".join(lines) + "\n")
    (out / f"sampling_precision{suffix}.json").write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
