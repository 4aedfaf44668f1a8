"""Continuation benchmarks: any text source turned into a fixed, seeded set of (prompt, reference) items.

Each item is a passage of human text cut at a word boundary whose position is drawn uniformly among the
word boundaries in 40-60% of the passage (the paper's protocol). Prompt + reference is the original
passage: the reference keeps its leading whitespace. Items are saved as JSONL with a sidecar
`.meta.json` (source, seed, settings), so every model is scored on identical items.

Cutting is by words, not tokens, so the benchmark does not depend on any model's tokenizer. Passages
start at a sentence start and hold at most `passage_words` words (0 = whole documents). Every item also
carries `second_reference`: the continuation of an independent passage drawn from the same source, which
the evaluation uses as the human-reference row (human text vs human text: the MAUVE ceiling, and the
ROUGE / BERTScore a fluent but prompt-blind writer reaches).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from textldm.data.corpus import load_documents
from textldm.data.shards import is_validation
from textldm.errors import UserError
from textldm.utils import atomic_write_text, cache_dir, write_json

CUT_RANGE = (0.4, 0.6)
MIN_WORDS = 8  # shortest passage: leaves at least 3 prompt and 3 reference words


@dataclass
class BenchmarkSpec:
    """How to build a continuation benchmark from a text source: passage length, cut points, split."""
    source: str  # "embedded", a local file/folder, or an HF data set name (see data.corpus)
    text_field: str = "text"
    hf_config: str | None = None
    hf_split: str = "train"
    heldout_fraction: float | None = None  # keep only the documents of the training code's validation split
    passage_words: int = 0  # 0 = whole documents
    description: str = ""


# The paper's four sets (from the HF hub when the user has access; or point --source at local files) and
# the embedded default's held-out split (the same hash split as training: never seen in training).
PRESETS = {
    "embedded": BenchmarkSpec("embedded", heldout_fraction=0.05, passage_words=48,
                              description="held-out split of the embedded demo corpus (SOTU, Austen, Wikipedia)"),
    "wikisource": BenchmarkSpec("wikimedia/wikisource", hf_config="20231201.en", hf_split="train[:20000]",
                                passage_words=128, description="English Wikisource"),
    "wikipedia": BenchmarkSpec("wikimedia/wikipedia", hf_config="20231101.en", hf_split="train[:20000]",
                               passage_words=128, description="English Wikipedia"),
    "tinystories": BenchmarkSpec("roneneldan/TinyStories", hf_split="validation", description="TinyStories stories"),
    "lm1b": BenchmarkSpec("dvruette/lm1b", hf_split="test", description="One Billion Words sentences"),
}


def shortest_cut() -> tuple[int, int]:
    """(words, words): the fewest words a prompt and a reference of any benchmark can have (a passage of
    MIN_WORDS cut at the 40-60% rule). A word is at least one token, so a DiT meant for every preset must be
    trained on prompts and continuations that short (dit.context_min / target_min)."""
    prompt = int(np.ceil(CUT_RANGE[0] * MIN_WORDS))
    return prompt, MIN_WORDS - int(np.floor(CUT_RANGE[1] * MIN_WORDS))


def _passage_starts(doc: str, passage_words: int) -> list[int]:
    """Character offsets where a passage may start: the document start and (for passages shorter than the
    document) every sentence start that leaves at least MIN_WORDS words."""
    if passage_words <= 0:
        return [0]
    starts = [0] + [m.end() for m in re.finditer(r"[.!?][\"')\]]*\s+(?=[A-Z\"'(\[])|\n\s*\n\s*", doc)]
    word_starts = [m.start() for m in re.finditer(r"\S+", doc)]
    limit = word_starts[-MIN_WORDS] if len(word_starts) >= MIN_WORDS else -1
    return [s for s in starts if s <= limit]


def _cut(doc: str, start: int, passage_words: int, rng: np.random.Generator) -> dict | None:
    spans = [m.span() for m in re.finditer(r"\S+", doc[start:])]
    if passage_words > 0:
        spans = spans[:passage_words]
    n = len(spans)
    if n < MIN_WORDS:
        return None
    lo, hi = int(np.ceil(CUT_RANGE[0] * n)), int(np.floor(CUT_RANGE[1] * n))
    k = int(rng.integers(lo, hi + 1))  # the prompt holds the first k words
    end = start + spans[-1][1]
    cut = start + spans[k - 1][1]
    return {"prompt": doc[start:cut], "reference": doc[cut:end], "cut_fraction": k / n, "words": n}


def build_benchmark(spec: BenchmarkSpec, n: int = 1000, seed: int = 0,
                    documents: list[str] | None = None) -> list[dict]:
    """n items (plus n independent second references). Deterministic in (documents, spec, n, seed)."""
    if n < 1:
        raise UserError(f"a benchmark needs at least 1 sample, got {n}")
    docs = documents if documents is not None else load_documents(spec.source, spec.text_field, spec.hf_config,
                                                                  spec.hf_split)
    if spec.heldout_fraction is not None:
        docs = [d for d in docs if is_validation(d, spec.heldout_fraction)]
    candidates = [(d, s) for d, doc in enumerate(docs) for s in _passage_starts(doc, spec.passage_words)]
    rng = np.random.default_rng(seed)
    drawn: list[dict] = []
    order = rng.permutation(len(candidates))
    replace = len(candidates) < 2 * n
    if replace:  # too few distinct passages: draw with replacement (cuts still differ), and say so
        order = rng.integers(0, len(candidates), size=8 * n) if candidates else order
    for idx in order:
        d, s = candidates[int(idx)]
        item = _cut(docs[d], s, spec.passage_words, rng)
        if item is not None:
            drawn.append({**item, "doc": d})
        if len(drawn) == 2 * n:
            break
    if len(drawn) < 2 * n:
        raise UserError(f"source '{spec.source}' gave {len(drawn)} usable passages (>= {MIN_WORDS} words), need "
                        f"{2 * n} (n={n} items + n second references); use more documents or fewer samples")
    items, seconds = drawn[:n], drawn[n:]
    return [{"id": i, **item, "second_reference": second["reference"], "with_replacement": replace}
            for i, (item, second) in enumerate(zip(items, seconds))]


def save_benchmark(items: list[dict], path: Path | str, meta: dict) -> Path:
    """Write benchmark items as JSONL with a header line (atomically)."""
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    write_json(path.with_suffix(".meta.json"), meta)
    return path


def read_benchmark(path: Path | str) -> list[dict]:
    """Read a benchmark JSONL file (header + items), checked."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"cannot read benchmark '{path}': {e.strerror}") from None
    items = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"benchmark '{path}' line {i + 1} is not JSON") from None
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("prompt", "reference")):
            raise UserError(f"benchmark '{path}' line {i + 1} needs string fields 'prompt' and 'reference'")
        items.append(item)
    if not items:
        raise UserError(f"benchmark '{path}' holds no items")
    return items


def benchmark(name: str, n: int = 1000, seed: int = 0, source: str | None = None) -> tuple[str, list[dict]]:
    """(benchmark name, items) for a preset name (built once and cached) or a JSONL file path (its first `n` items,
    as a preset gives `n`). `source` replaces a preset's source, e.g. a local copy of TinyStories."""
    if name not in PRESETS:
        path = Path(name)
        if path.suffix != ".jsonl" and not path.exists():
            raise UserError(f"unknown benchmark '{name}'; presets: {', '.join(PRESETS)}, or a .jsonl file")
        return path.stem, read_benchmark(path)[:n]
    spec = PRESETS[name]
    if source is not None:
        spec = BenchmarkSpec(**{**asdict(spec), "source": source, "hf_split": "train" if Path(source).exists()
                                else spec.hf_split})
    key = f"{name}-n{n}-s{seed}"
    if source is not None:
        key += "-" + hashlib.sha1(source.encode()).hexdigest()[:10]
    path = cache_dir() / "benchmarks" / f"{key}.jsonl"
    if not path.exists():
        items = build_benchmark(spec, n, seed)
        save_benchmark(items, path, {"preset": name, "spec": asdict(spec), "n": n, "seed": seed,
                                     "cut_range": CUT_RANGE, "format": "textldm-benchmark-v1"})
    return name, read_benchmark(path)
