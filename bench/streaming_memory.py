"""Peak memory of tokenizing a Hugging Face data set as the corpus grows: streamed (what `data.source=NAME`
does now) vs read whole into memory first (what it did before), in the same run.

    python bench/streaming_memory.py [--docs 4000,16000,64000] [--out bench/results/streaming_memory.md]

Each measurement runs in a fresh process (peak RSS is per process); the data set is a local folder of JSONL
files loaded through the same `datasets.load_dataset(..., streaming=True)` call a Hub name takes, so no
network is needed. Tokenizer: the offline default (smollm2-135m); one tokenization process.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("the of and to a in that is was he for it with as his on be at by this had not are but from or have an "
         "they which one you were her all she there would their we him been has when who will more no if out").split()


def make_dataset(folder: Path, n_docs: int, files: int = 8, words: int = 250) -> int:
    """`n_docs` documents of `words` random words in `files` JSONL files; returns the text's size in bytes."""
    rng, size = random.Random(0), 0
    (folder / "data").mkdir(parents=True)
    handles = [open(folder / "data" / f"train-{i:02d}.jsonl", "w") for i in range(files)]
    for d in range(n_docs):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        size += len(text)
        handles[d % files].write(json.dumps({"text": text}) + "\n")
    for h in handles:
        h.close()
    return size


def measure(folder: Path, mode: str, cache: Path) -> dict:
    """Tokenize in a child process; its peak RSS (MB) and tokens."""
    out = subprocess.run([sys.executable, __file__, "--child", str(folder), mode, str(cache)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(folder: str, mode: str, cache: str) -> None:
    import os

    os.environ["TEXTLDM_CACHE"] = cache
    import datasets

    from textldm.config import DataConfig
    from textldm.data import corpus, shards
    from textldm.models.lm import end_of_text_id, load_tokenizer

    real = datasets.load_dataset
    datasets.load_dataset = lambda name, *a, **k: real(folder if name == "bench/corpus" else name, *a, **k)
    if mode == "in-memory":  # the old path: every document in a list before tokenization
        stream_units = corpus.source_units
        corpus_docs = lambda: [d for u in stream_units("bench/corpus") for d in corpus.read_unit(u)]  # noqa: E731
        shards.source_units = lambda *a, **k: [corpus.Unit(texts=tuple(corpus_docs()))]
    tok = load_tokenizer("smollm2-135m")
    before, sampler = rss_mb(), RssSampler()  # the imports' own transient peak is not the tokenizer's
    folder_out = shards.tokenize_corpus(DataConfig(source="bench/corpus", num_workers=1), tok, "smollm2-135m",
                                        end_of_text_id(tok))
    meta = json.loads((folder_out / "meta.json").read_text())
    print(json.dumps({"peak_mb": round(sampler.stop()), "before_mb": round(before),
                      "tokens": meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]}))


def rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


class RssSampler:
    """The highest resident memory seen every 10 ms until `stop()` (a thread; ru_maxrss would include the
    imports' transient peak, which is larger than what tokenization adds)."""

    def __init__(self):
        import threading

        self.peak, self.done = rss_mb(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return max(self.peak, rss_mb())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", default="4000,16000,64000", help="corpus sizes in documents (~1.2 KB each)")
    p.add_argument("--out", type=Path, default=Path("bench/results/streaming_memory.md"))
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    rows = ["| documents | text MB | tokens | streamed: peak RSS during tokenization, MB (+ over its start) "
            "| read whole first: the same |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.docs.split(",")]:
            folder = Path(tmp) / f"corpus-{n}"
            size = make_dataset(folder, n)
            streamed = measure(folder, "streamed", Path(tmp) / f"cache-s-{n}")
            whole = measure(folder, "in-memory", Path(tmp) / f"cache-m-{n}")
            cells = [f"{r['peak_mb']:,} (+{r['peak_mb'] - r['before_mb']:,})" for r in (streamed, whole)]
            rows.append(f"| {n:,} | {size / 2**20:.1f} | {streamed['tokens']:,} | {cells[0]} | {cells[1]} |")
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head = ["# Tokenizing a data set: peak memory vs corpus size", "",
            "`python bench/streaming_memory.py` (one process per measurement)", ""]
    args.out.write_text("\n".join(head + rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
