"""Text sources, the document split, token shards and window reading."""
import json
import re

import numpy as np
import pytest
import torch

from conftest import make_corpus
from textldm.config import DataConfig
from textldm.data import shards
from textldm.data.corpus import load_documents
from textldm.data.embedded import _austen_chapters, strip_wiki_markup
from textldm.data.shards import TokenStream, is_validation, tokenize_corpus
from textldm.errors import UserError
from textldm.models.lm import end_of_text_id, load_tokenizer


def test_local_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n<|endoftext|>\nsecond doc")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "third doc"}) + "\n\n")
    docs = load_documents(str(tmp_path), text_field="body")
    assert docs == ["first doc", "second doc", "third doc"]
    with pytest.raises(UserError, match="no 'text' field"):
        load_documents(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="c.jsonl:1 is not valid JSON"):
        load_documents(str(tmp_path / "c.jsonl"))
    with pytest.raises(UserError, match="does not exist"):
        load_documents("./no/such/file.jsonl")
    with pytest.raises(UserError, match="unknown embedded source"):
        load_documents("embedded:nosuch")


def test_parquet_source(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "d.parquet")
    assert load_documents(str(tmp_path / "d.parquet")) == ["one", "two"]


def test_split_is_a_fixed_function_of_the_document():
    docs = [f"document number {i}" for i in range(2000)]
    flags = [is_validation(d, 0.1) for d in docs]
    assert flags == [is_validation(d, 0.1) for d in reversed(docs)][::-1]
    assert 0.07 < np.mean(flags) < 0.13


def test_tokenize_shards_and_windows(tiny_model_dir, tiny_corpus, cache_home, monkeypatch):
    tok = load_tokenizer(tiny_model_dir)
    eot = end_of_text_id(tok)
    assert eot == 0
    monkeypatch.setattr(shards, "SHARD_TOKENS", 500)  # force several shards
    folder = tokenize_corpus(DataConfig(source=tiny_corpus, val_fraction=0.1), tok, tiny_model_dir, eot)
    meta = json.loads((folder / "meta.json").read_text())
    assert len(meta["splits"]["train"]["files"]) > 2
    train, val = TokenStream(folder, "train"), TokenStream(folder, "val")
    assert len(train) == meta["splits"]["train"]["tokens"] and len(val) > 0
    all_tokens = np.concatenate([np.asarray(p) for p in train.parts])
    assert all_tokens.dtype == np.uint16 and (all_tokens == eot).sum() == meta["splits"]["train"]["documents"]
    # documents round-trip through the shards
    first = all_tokens[: int(np.flatnonzero(all_tokens == eot)[0])]
    first_train_doc = next(d for d in make_corpus() if not is_validation(d, 0.1))
    assert re.findall(r"\w+", tok.decode(first.tolist())) == re.findall(r"\w+", first_train_doc)
    long = train.windows(64, 450, torch.Generator().manual_seed(1))  # near a shard's size: never past its end
    text = [np.asarray(part).tolist() for part in train.parts]
    assert all(any(_contains(part, row.tolist()) for part in text) for row in long[:8])
    w1 = train.windows(16, 20, torch.Generator().manual_seed(0))
    w2 = train.windows(16, 20, torch.Generator().manual_seed(0))
    assert w1.shape == (16, 20) and torch.equal(w1, w2)
    # a second call hits the cache (same folder, nothing rewritten)
    mtime = (folder / "meta.json").stat().st_mtime_ns
    assert tokenize_corpus(DataConfig(source=tiny_corpus, val_fraction=0.1), tok, tiny_model_dir, eot) == folder
    assert (folder / "meta.json").stat().st_mtime_ns == mtime


def test_too_few_documents(tmp_path, tiny_model_dir, cache_home):
    (tmp_path / "one.txt").write_text("just one document")
    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(UserError, match="too few for a train/validation split"):
        tokenize_corpus(DataConfig(source=str(tmp_path / "one.txt")), tok, tiny_model_dir, 0)


def test_markup_helpers():
    text = "'''Anarchism''' is a [[political philosophy|philosophy]]{{cite}}<ref>x</ref>.\n== History ==\n* item"
    assert strip_wiki_markup(text) == "Anarchism is a philosophy.\nHistory\nitem"
    lines = ["TITLE", "", "CHAPTER I", "", "First para", "goes on.", "", "Second para." + " x" * 120,
             "", "CHAPTER II", "", "Too short."]
    chapters = _austen_chapters(lines)
    assert len(chapters) == 1 and chapters[0].startswith("First para goes on.\nSecond para.")


def _zst(path, docs):
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": d, "meta": {"n": i}}) + "\n" for i, d in enumerate(docs)).encode()))


@pytest.mark.slow
def test_jsonl_zst_archive_gives_identical_shards_with_one_or_several_workers(tmp_path, tiny_model_dir, monkeypatch):
    """OpenWebText2's layout - a .tar of .jsonl.zst files - tokenized by 1 and by 3 processes."""
    import tarfile

    docs = make_corpus(90, seed=4)
    src = tmp_path / "owt"
    src.mkdir()
    for k in range(3):
        _zst(src / f"2019-0{k + 1}.jsonl.zst", docs[30 * k: 30 * k + 30])
    with tarfile.open(tmp_path / "archive.tar", "w") as tar:
        for k in range(3):
            tar.add(src / f"2019-0{k + 1}.jsonl.zst", arcname=f"2019-0{k + 1}.jsonl.zst")
    tok = load_tokenizer(tiny_model_dir)
    monkeypatch.setattr(shards, "SHARD_TOKENS", 700)  # several shards per split
    folders = {}
    for source in (str(src), str(tmp_path / "archive.tar")):
        for workers in (1, 3):
            monkeypatch.setenv("TEXTLDM_CACHE", str(tmp_path / f"cache-{len(folders)}"))
            folders[source, workers] = tokenize_corpus(DataConfig(source=source, val_fraction=0.2), tok,
                                                       tiny_model_dir, 0, workers=workers)
    reference = folders[str(src), 1]
    names = sorted(p.name for p in reference.iterdir())
    assert len([n for n in names if n.startswith("train-")]) > 3
    for folder in folders.values():
        assert sorted(p.name for p in folder.iterdir()) == names
        for name in names:
            if name != "meta.json":
                assert (folder / name).read_bytes() == (reference / name).read_bytes(), (folder, name)
    # every document is there once, in source order, in its hash-fixed split, each shard's header counting it
    stream = TokenStream(reference, "train")
    tokens = np.concatenate([np.asarray(p) for p in stream.parts])
    texts = tok.decode(tokens.tolist()).split("<|endoftext|>")
    expected = [d for d in docs if not is_validation(d, 0.2)]
    assert [re.findall(r"\w+", t) for t in texts if t.strip()] == [re.findall(r"\w+", d) for d in expected]
    for name in stream.meta["splits"]["train"]["files"]:
        dtype, n_tokens, n_docs = shards.read_header(reference / name)
        assert dtype == np.uint16 and n_tokens == len(np.fromfile(reference / name, dtype=np.uint16)) - 32
    # data.max_documents keeps the first N documents of the source
    monkeypatch.setenv("TEXTLDM_CACHE", str(tmp_path / "cache-cut"))
    cut = tokenize_corpus(DataConfig(source=str(src), val_fraction=0.2, max_documents=40), tok, tiny_model_dir, 0,
                          workers=2)
    meta = json.loads((cut / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 40
    assert meta["splits"]["val"]["documents"] == sum(is_validation(d, 0.2) for d in docs[:40])


def test_unreadable_archives_are_clear_errors(tmp_path, tiny_model_dir, cache_home):
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(UserError, match="cannot read archive"):
        tokenize_corpus(DataConfig(source=str(tmp_path / "bad.tar")), tok, tiny_model_dir, 0)
    _zst(tmp_path / "x.jsonl.zst", ["a b c"])
    with pytest.raises(UserError, match="no 'body' field"):
        tokenize_corpus(DataConfig(source=str(tmp_path / "x.jsonl.zst"), text_field="body"), tok, tiny_model_dir, 0)


def test_hub_data_sets_are_streamed_shard_by_shard(tiny_model_dir, tmp_path, cache_home, monkeypatch):
    """A Hugging Face data set is read with streaming=True, one unit per source shard, and gives the same token
    shards as the same documents in a local file. The Hub is replaced by a local data set folder, loaded
    through the same `datasets.load_dataset` call a Hub name takes."""
    datasets = pytest.importorskip("datasets")
    docs = make_corpus(60, seed=3)
    repo = tmp_path / "someone-corpus"
    (repo / "data").mkdir(parents=True)
    for i in range(3):  # three source files: three shards
        (repo / "data" / f"train-{i}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[i::3]))
    (tmp_path / "same.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for i in range(3) for d in docs[i::3]))
    real, calls = datasets.load_dataset, []

    def hub(name, *args, **kwargs):
        calls.append((name, kwargs.get("streaming")))
        return real(str(repo) if name == "someone/corpus" else name, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    from textldm.data.corpus import source_units

    units = source_units("someone/corpus")
    assert [u.kind for u in units] == ["hf"] * 3 and all(streaming for _, streaming in calls)
    tok = load_tokenizer(tiny_model_dir)
    eot = end_of_text_id(tok)
    # one process: the stand-in Hub lives in this one (worker processes would look for the real one)
    streamed = tokenize_corpus(DataConfig(source="someone/corpus", val_fraction=0.1, num_workers=1), tok,
                               tiny_model_dir, eot)
    local = tokenize_corpus(DataConfig(source=str(tmp_path / "same.jsonl"), val_fraction=0.1), tok, tiny_model_dir, eot)
    for split in ("train", "val"):
        a, b = TokenStream(streamed, split), TokenStream(local, split)
        assert np.array_equal(np.concatenate([np.asarray(p) for p in a.parts]),
                              np.concatenate([np.asarray(p) for p in b.parts]))
    with pytest.raises(UserError, match="no column 'body'"):
        source_units("someone/corpus", text_field="body")


def _contains(seq: list[int], window: list[int]) -> bool:
    n = len(window)
    return any(seq[i: i + n] == window for i in range(len(seq) - n + 1))
