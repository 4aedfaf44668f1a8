"""The docs name only what exists (tests/docs_check.py), and the checker catches each kind of stale name."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import docs_check  # noqa: E402


def test_the_docs_name_only_keys_flags_modules_and_files_that_exist():
    assert docs_check.problems() == []


@pytest.mark.parametrize("line, why", [
    ("set `train.compile` to compile", "no section 'train'"),
    ("set `dit_train.compile=true`", None),
    ("set `<stage>_train.compile`", None),
    ("set `<stage>_train.compiled`", "TrainConfig has no 'compiled'"),
    ("the key `metrics.prompt_binding`", "does not exist"),
    ("a derived value: `dit.window`", None),
    ("```bash\ntextldm demo --config demo vae.widht=128\n```", "'vae.widht' does not exist"),
    ("```bash\ntextldm demo --bogus\n```", "no such option"),
    ("```bash\ntextldm train-dit --config demo \\\n    --vea runs/a/vae\n```", "`textldm train-dit --vea`"),
    ("```bash\ntextldm frobnicate\n```", "no such subcommand"),
    ("```bash\npython bench/scaling.py run --minutes 3\n```", "the script has no such option"),
    ("```bash\nhuggingface-cli download x\n```", "no such command here"),
    ("```bash\nmake everything\n```", "no such Makefile target"),
    ("see `textldm.metrics`", "does not import"),
    ("```python\nfrom textldm.evaluation.metrics import rouge_l, not_there\n```", "not_there` does not import"),
    ("`textldm.evaluation.metrics.rouge_l`", None),
    ("`bench/nothing_here.py`", "does not exist"),
    ("`tests/nothing_here.png`", "does not exist"),
    ("`tests/artifacts/not_written_yet.png`", None),  # a test writes it (git-ignored): no clean clone has it
    ("`training/nothing.py`", "is not a file of src/textldm/"),
    ("`training/loop.py` and `training.loop.fit`", None),
    ("`training.loop.no_such_function`", "does not import"),
    ("files: `bench/results/gpu_steps_h100*.json`", None),
    ("[link](nowhere.md)", "link (nowhere.md) does not exist"),
])
def test_the_checker_flags_each_kind_of_stale_name(tmp_path, line, why):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# A doc\n\n{line}\n")
    found = docs_check.problems([str(doc)])
    if why is None:
        assert found == []
    else:
        assert len(found) == 1 and why in found[0], found


def test_from_pretrained_takes_its_options_by_keyword_only():
    """A dtype passed third used to land in require_dit, silently (docs/api.md states the keyword-only form)."""
    from textldm import ARPipeline, TextLDMPipeline

    for cls in (TextLDMPipeline, ARPipeline):
        with pytest.raises(TypeError):
            cls.from_pretrained("runs/none", "cpu")


def test_the_citation_file_names_this_version_and_the_paper():
    import yaml

    from textldm.version import __version__

    cff = yaml.safe_load((docs_check.ROOT / "CITATION.cff").read_text())
    assert cff["version"] == __version__
    assert "2605.07748" in cff["preferred-citation"]["journal"]


# The only hand-written tables: maps of the code, the config, the API and the tests, and costs derived from shapes.
# A table of measurements is generated (bench/tables.py) from a file under bench/results/.
NOT_MEASUREMENTS = {
    "README.md": {"| concept | file |"},
    "docs/design.md": {"| what | window (`window.py`) | blocks (`blocks.py`) |", "| what | choice | why |"},
    "docs/evaluation.md": {"| preset | source | passages |", "| metric | package | setting (default) |"},
    "docs/performance.md": {
        "| | on the fly (default) | precomputed (`vae.teacher_cache=auto`, `textldm cache-teacher`) |"},
    "docs/serve.md": {"| method, path | body | answer |", "| limit | default (flag) | answer when crossed |",
                      "| method, path | what |"},
    "docs/testing.md": {"| layer | files | what it catches |", "| issue 21 item | test | mutants |",
                        "| behaviour | test (tests/test_contracts.py) | mutant |"},
}


def test_the_generated_tables_match_their_result_files_and_no_doc_has_a_hand_written_measurement_table():
    sys.path.insert(0, str(docs_check.ROOT / "bench"))
    import tables

    assert tables.stale() == []
    for doc in tables.DOCS:
        name = str(doc.relative_to(docs_check.ROOT))
        extra = set(tables.hand_written_tables(doc)) - NOT_MEASUREMENTS.get(name, set())
        assert not extra, f"{name}: a hand-written table {sorted(extra)}: write its numbers to bench/results/ and " \
                          f"render it with bench/tables.py (include:PATH#N)"


def test_a_generated_table_edited_by_hand_is_stale(tmp_path):
    sys.path.insert(0, str(docs_check.ROOT / "bench"))
    import tables

    doc = tmp_path / "doc.md"
    fresh = tables.render(f"{tables.BEGIN.format('ran_where')}\n{tables.END}\n")
    doc.write_text(fresh)
    assert tables.stale([doc]) == [] and "| never run |" in fresh
    doc.write_text(fresh.replace("never run", "measured", 1))
    assert tables.stale([doc]) == [str(doc)]


def test_an_included_table_is_the_result_files_own():
    sys.path.insert(0, str(docs_check.ROOT / "bench"))
    import tables

    spec = "include:bench/results/ema_warmup.md#0"
    doc = tables.render(f"{tables.BEGIN.format(spec)}\n| stale |\n{tables.END}\n")
    table = doc.split("\n", 1)[1].rsplit(tables.END, 1)[0]
    assert table.startswith("|") and table in (docs_check.ROOT / "bench/results/ema_warmup.md").read_text()


def test_an_include_keeps_only_the_rows_its_where_names():
    sys.path.insert(0, str(docs_check.ROOT / "bench"))
    import tables

    table = tables.included("include:bench/results/scaling/scaling.md#0 where design=ar,full; budget (FLOPs)=5e+13")
    rows = table.splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["ar", "full"]
