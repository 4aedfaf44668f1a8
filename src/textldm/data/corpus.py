"""Text sources -> documents (lists of strings).

(a) `embedded`: the ~5M-token English corpus built from registry packages (`data/embedded.py`).
(b) local .txt / .jsonl / .jsonl.gz / .jsonl.zst / .parquet files, uncompressed .tar archives of them (such as
    OpenWebText2's openwebtext2.jsonl.zst.tar), or a folder of any of these.
(c) any Hugging Face data set name (needs internet or a local HF cache).
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from textldm.data.embedded import SOURCES, embedded_documents
from textldm.errors import UserError, first_line
from textldm.utils import looks_like_path

log = logging.getLogger(__name__)

# local files: each file (or member of a .tar archive) is a *unit* read as a stream of documents -----------
TEXT_KINDS = (".jsonl.zst", ".jsonl.gz", ".jsonl", ".txt", ".parquet")


def file_kind(name: str) -> str | None:
    """The document format a file name says (".jsonl.zst", ...), ".tar" for an archive, None otherwise."""
    return next((k for k in TEXT_KINDS + (".tar",) if name.endswith(k)), None)


@dataclass(frozen=True)
class Unit:
    """An independently readable piece of a source, the grain of parallel tokenization: a file, a byte range
    of an uncompressed .tar archive (one member, e.g. one month of OpenWebText2), a shard of a streamed
    Hugging Face data set, or a list of texts."""
    path: str | None = None  # a file, or the HF data set's name (kind "hf")
    kind: str = ""
    offset: int = 0  # tar member: where its bytes start in the archive
    size: int = -1  # tar member: how many bytes (-1: the whole file)
    texts: tuple = ()
    hf: tuple = ()  # kind "hf": (configuration, split, shard index, number of shards)


class _ByteRange(io.RawIOBase):
    """Read-only view of bytes [offset, offset + size) of a file (a member inside a .tar)."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.left = f, size
        f.seek(offset)

    def readable(self):
        """Always readable."""
        return True

    def readinto(self, buffer) -> int:
        """Read into `buffer`, never past the range's end."""
        n = self.f.readinto(memoryview(buffer)[: max(0, min(len(buffer), self.left))])
        self.left -= n
        return n

    def close(self):
        """Close the underlying file."""
        self.f.close()
        super().close()


def _tar_units(path: Path) -> list[Unit]:
    try:
        with tarfile.open(path, "r:") as tar:  # uncompressed tar: members are plain byte ranges
            members = [m for m in tar.getmembers() if m.isfile() and file_kind(m.name) in TEXT_KINDS]
    except tarfile.ReadError as e:
        raise UserError(f"cannot read archive '{path}' ({e}); give an uncompressed .tar (such as "
                        f"openwebtext2.jsonl.zst.tar) or unpack it") from None
    return [Unit(str(path), file_kind(m.name), m.offset_data, m.size)
            for m in members if file_kind(m.name) != ".parquet"]


def local_units(source: str) -> list[Unit]:
    """A local file or folder (searched recursively, sorted by path) as units; .tar archives contribute one
    unit per text member."""
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    units = []
    for f in files:
        kind = file_kind(f.name)
        if kind == ".tar":
            units += _tar_units(f)
        elif kind is not None:
            units.append(Unit(str(f), kind))
        elif not path.is_dir():
            raise UserError(f"unsupported file type for {f}; use {', '.join(TEXT_KINDS)} files, a .tar of them, "
                            f"or a folder")
    if not units:
        raise UserError(f"'{source}' holds no {', '.join(TEXT_KINDS)} files (or .tar archives of them)")
    return units


def _text_lines(unit: Unit):
    raw = open(unit.path, "rb")
    stream = _ByteRange(raw, unit.offset, unit.size) if unit.size >= 0 else raw
    if unit.kind == ".jsonl.zst":
        try:
            import zstandard
        except ImportError:
            raise UserError("reading .zst archives needs `pip install zstandard`") from None
        stream = zstandard.ZstdDecompressor().stream_reader(stream)
    elif unit.kind == ".jsonl.gz":
        stream = gzip.GzipFile(fileobj=stream)
    return io.TextIOWrapper(io.BufferedReader(stream) if isinstance(stream, io.RawIOBase) else stream,
                            encoding="utf-8", errors="replace")


def read_unit(unit: Unit, text_field: str = "text"):
    """Stream the documents of a unit."""
    if unit.path is None:
        yield from unit.texts
        return
    if unit.kind == "hf":
        for row in _hf_stream(unit.path, *unit.hf):
            if text_field not in row:
                raise UserError(f"data set '{unit.path}' has no column '{text_field}' (columns: {', '.join(row)}); "
                                f"set data.text_field=NAME")
            yield str(row[text_field])
        return
    where = unit.path + (f"@{unit.offset}" if unit.size >= 0 else "")
    if unit.kind == ".txt":  # one document per file, or several separated by <|endoftext|> lines
        yield from Path(unit.path).read_text(encoding="utf-8", errors="replace").split("\n<|endoftext|>\n")
    elif unit.kind == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(unit.path)
        if text_field not in table.column_names:
            raise UserError(f"{unit.path} has no column '{text_field}' (columns: {', '.join(table.column_names)}); "
                            f"set data.text_field=NAME")
        yield from (str(x) for x in table.column(text_field).to_pylist())
    else:
        with _text_lines(unit) as lines:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{where}:{n} is not valid JSON; each line of a .jsonl file must be one object") \
                        from None
                if not isinstance(row, dict) or text_field not in row:
                    raise UserError(f"{where}:{n} has no '{text_field}' field; set data.text_field=NAME")
                yield str(row[text_field])


def local_documents(source: str, text_field: str = "text") -> list[str]:
    """Every document of a local file or folder, in order."""
    return [doc for unit in local_units(source) for doc in read_unit(unit, text_field)]


def source_units(source: str, text_field: str = "text", hf_config: str | None = None, hf_split: str = "train",
                 texts_per_unit: int = 2000) -> list[Unit]:
    """Any source as units: local files and Hugging Face data sets stream (the corpus is never held in
    memory); the embedded corpus is read into memory and cut into units of `texts_per_unit` documents."""
    check_source(source)
    if Path(source).exists():
        return local_units(source)
    if source != "embedded" and not source.startswith("embedded:"):
        return hf_units(source, hf_config, hf_split, text_field)
    docs = load_documents(source, text_field, hf_config, hf_split)
    return [Unit(texts=tuple(docs[i: i + texts_per_unit])) for i in range(0, len(docs), texts_per_unit)]


def _hf_stream(name: str, config: str | None, split: str, index: int = 0, shards: int = 1):
    """The rows of a Hugging Face data set (a Hub name or a local data set folder), streamed: nothing is
    downloaded whole or held in memory. With `shards` > 1, shard `index` of its source files."""
    try:
        import datasets
    except ImportError:
        raise UserError("reading a Hugging Face data set needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # the hub raises many types (connection, not found, gated)
        reason = first_line(e)
        raise UserError(f"cannot load data set '{name}': {reason}; "
                        f"check the name and your internet access, or pass a local file") from None
    return ds.shard(num_shards=shards, index=index) if shards > 1 else ds


def hf_units(name: str, config: str | None, split: str, text_field: str) -> list[Unit]:
    """A Hugging Face data set as streamed units, one per source file shard (tokenized in parallel)."""
    ds = _hf_stream(name, config, split)
    columns = ds.column_names or list(ds.features or {})
    if columns and text_field not in columns:
        raise UserError(f"data set '{name}' has no column '{text_field}' (columns: {', '.join(columns)}); "
                        f"set data.text_field=NAME")
    shards = max(1, int(getattr(ds, "num_shards", 1) or 1))
    return [Unit(name, "hf", hf=(config, split, i, shards)) for i in range(shards)]


def hf_documents(name: str, config: str | None, split: str, text_field: str) -> list[str]:
    """A Hugging Face data set's texts as a list (for benchmarks; training streams them, `hf_units`)."""
    return [doc for unit in hf_units(name, config, split, text_field) for doc in read_unit(unit, text_field)]


def check_source(source: str) -> None:
    """Fail early (before any slow model loading) on a local path that does not exist."""
    if source == "embedded" or source.startswith("embedded:") or Path(source).exists():
        return
    if looks_like_path(source):
        raise UserError(f"data source '{source}' does not exist; give an existing file/folder, 'embedded', "
                        f"or a Hugging Face data set name")


def load_documents(source: str, text_field: str = "text", hf_config: str | None = None,
                   hf_split: str = "train") -> list[str]:
    """Every non-empty document of a source (embedded, local, or a Hugging Face data set), in order."""
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


