"""refactor_0.6_weights.py DIR_A DIR_B: every *.safetensors under two run folders, tensor for tensor (0.5's DiT and
AR layer names `blocks.N` read as today's `layers.N`); prints how many tensors are bitwise equal."""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def renamed(key: str) -> str:
    return "layers." + key[len("blocks."):] if key.startswith("blocks.") else key


def main(a: str, b: str) -> int:
    files = sorted(p.relative_to(a) for p in Path(a).rglob("*.safetensors"))
    total = equal = 0
    for rel in files:
        x = {renamed(k): v for k, v in load_file(str(Path(a) / rel)).items()}
        y = load_file(str(Path(b) / rel))
        assert x.keys() == y.keys(), (rel, sorted(x.keys() ^ y.keys())[:5])
        total += len(x)
        equal += sum(torch.equal(x[k], y[k]) for k in x)
    print(f"{len(files)} weight files, {equal} / {total} tensors bitwise equal")
    return 0 if equal == total else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
