"""compare.py DIR_A DIR_B: every number and string of report.json and the *_log.jsonl files, timing keys skipped."""
import json
import sys
from pathlib import Path

SKIP = ("time", "minutes", "seconds", "sec", "per_s", "tokens_s", "/s", "wall", "elapsed", "mfu", "date", "version",
        "path", "dir", "host", "torch", "python", "git")


def flat(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat(v, f"{prefix}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def load(d):
    d = Path(d)
    out = {}
    rep = d / "report.json"
    if rep.exists():
        out.update({"report" + k: v for k, v in flat(json.loads(rep.read_text()))})
    for log in sorted(d.rglob("*_log.jsonl")):
        for i, line in enumerate(log.read_text().splitlines()):
            out.update({f"{log.name}[{i}]" + k: v for k, v in flat(json.loads(line))})
    return {k: v for k, v in out.items() if not any(s in k.lower() for s in SKIP)}


a, b = load(sys.argv[1]), load(sys.argv[2])
keys = sorted(set(a) | set(b))
diff = [k for k in keys if a.get(k) != b.get(k)]
print(f"{len(keys)} values compared, {len(diff)} differ")
for k in diff[:40]:
    print(f"  {k}: {a.get(k)!r} -> {b.get(k)!r}")
