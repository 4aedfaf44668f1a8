"""Record a finished `make demo` (or `make long`: `--preset cpu-long`) run for the docs: its report (8 samples kept),
how long it took and where, into bench/results/PRESET/NAME.json; `python bench/tables.py` then puts it in the
README's and docs' table of that preset's runs.

    python bench/record_demo.py runs/demo --name 2026-12-03-quiet --label "make demo, fresh clone" \
        --minutes 14.2 --machine "2 cores, quiet"
"""
from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the demo's run folder (report.json, environment.json)")
    p.add_argument("--name", required=True, help="file name under bench/results/demo/")
    p.add_argument("--label", required=True, help="what the run was, for the table's first column")
    p.add_argument("--minutes", type=float, required=True, help="its wall-clock minutes, as measured outside it")
    p.add_argument("--machine", required=True, help="cores and load, e.g. '2 cores, quiet'")
    p.add_argument("--date", default=str(date.today()))
    p.add_argument("--preset", default="demo", choices=["demo", "cpu-long"], help="whose table the run joins")
    args = p.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    report["continuations"]["samples"] = report["continuations"]["samples"][:8]
    env = json.loads((args.run / "environment.json").read_text())
    meta = {"label": args.label, "minutes": args.minutes, "machine": args.machine, "date": args.date,
            "environment": env}
    out = ROOT / "bench" / "results" / args.preset / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "report": report}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
