"""Score a finished demo run's continuations again under other judge LMs (gen-PPL and prompt binding of the
generations and of the references, the demo's own rule: `demo.judged`), from its report.json - no retraining.

    python bench/rejudge.py runs/x/report.json [--judges smollm2-135m gemma3-270m] [--out F.json]

The backbone's own continuations as a ceiling row: `textldm eval --model hf:NAME metrics.second_judge=...` (the
interface study's table, bench/interface_study.sh).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from textldm.demo import judged


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--judges", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    samples = json.loads(Path(args.report).read_text())["continuations"]["samples"]
    prompts, gens, refs = ([s[k] for s in samples] for k in ("prompt", "generated", "reference"))
    rows = []
    for judge in args.judges:
        rows.append({"continuations": "run", **judged(prompts, gens, refs, judge)})
        r = rows[-1]
        print(f"{judge:16s} gen-PPL {r['gen_ppl']:8.1f} (references {r['reference_gen_ppl']:6.1f}, ratio "
              f"{r['gen_ppl'] / r['reference_gen_ppl']:.2f}x); binding {r['prompt_binding']:.3f} (references "
              f"{r['reference_prompt_binding']:.3f})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"report": args.report, "samples": len(samples),
                                              "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
