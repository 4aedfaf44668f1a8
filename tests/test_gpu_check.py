"""bench/gpu_check.py, the script a lent GPU runs: its dry run (every stage at tiny shapes on the CPU) passes, a stage
that fails or hangs is recorded and the others still run, and the GPU plan fits in nine minutes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def check(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """The packed assets (the tests' tiny LM and corpus, the packaged MiniLM's config) and one whole dry run."""
    root = tmp_path_factory.mktemp("gpu-check")
    packed = check("--pack", str(root / "assets"), "--lm", tiny_model_dir, "--corpus", tiny_corpus,
                   "--bench-items", "12")
    assert packed.returncode == 0, packed.stderr[-2000:]
    r = check("--dry-run", "--assets", str(root / "assets"), "--out", str(root / "out"), "--work", str(root / "work"))
    return root, r


@pytest.mark.slow
def test_the_dry_run_passes_every_stage_and_records_what_it_measured(dry_run):
    root, r = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert sorted(p.name for p in (root / "out").iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    summary = json.loads((root / "out" / "gpu_check.json").read_text())
    stages = summary["stages"]
    assert list(stages) == [s.name for s in gpu_check.STAGES]
    assert {name: s["status"] for name, s in stages.items()} == {s.name: "ok" for s in gpu_check.STAGES}
    for name in ("train_vae", "train_dit_window", "train_dit_blocks", "train_dit_context_lm", "train_ar"):
        t = stages[name]
        assert t["loss_fell"] and t["loss_last"] < t["loss_first"] and len(t["curve"]) >= 4, name
        assert t["tokens_per_s"] > 0 and t["mfu"] > 0 and t["steps"] > 0, name
    torchrun = stages["torchrun"]
    assert torchrun["ddp"]["parallel"] == "ddp" and torchrun["fsdp"]["parallel"] == "fsdp"
    k = torchrun["kill_resume"]
    assert 0 < k["killed_after_checkpoint_of_step"] < k["resumed_to"] and k["max_loss_difference_after_resume"] < 1e-4
    sampled = {row["model"] for row in stages["sampling"]["rows"]}
    assert {"window, euler 3", "block 4, euler 3", "block 1, euler 3", "context-LM, block 1, lm_prior 1",
            "its LM alone (HF generate, KV cache)", "AR baseline (KV cache)"} <= sampled
    plan = gpu_check.sampling_plan(gpu_check.DRY, sorted(sampled))
    assert len(stages["sampling"]["rows"]) == len(plan) and not stages["sampling"]["skipped_for_time"]
    window = [row for row in stages["sampling"]["rows"] if row["model"] == "window, euler 3"]
    assert all(row["nfe"] > 0 and row["tokens_per_s"] > 0 for row in window)
    assert stages["serve"]["completion_tokens"] > 0 and stages["serve"]["stream_events"] > 1
    assert set(stages["eval"]["rows"]) == {"textldm", "ar", "human (2nd reference)"}
    assert all(row["second_judge_gen_ppl"] > 0 for row in stages["eval"]["rows"].values())
    md = (root / "out" / "gpu_check.md").read_text()
    assert all(f"| {s.name} | ok |" in md for s in gpu_check.STAGES)


@pytest.mark.slow
def test_a_failing_or_hanging_stage_is_recorded_and_the_next_ones_run(dry_run):
    """A hung stage is killed at its cap, a failing one keeps its error, a stage after them runs, a stage that needs a
    failed one is skipped; the exit status says something failed."""
    root, _ = dry_run
    r = check("--dry-run", "--assets", str(root / "assets"), "--out", str(root / "planted"), "--work",
              str(root / "work"), "--only", "sampling,train_ar,serve,eval", "--plant", "sampling=hang",
              "--cap", "sampling=6", "--plant", "train_ar=error")
    assert r.returncode == 1
    stages = json.loads((root / "planted" / "gpu_check.json").read_text())["stages"]
    assert stages["sampling"]["status"] == "timeout" and stages["sampling"]["wall_seconds"] < 30
    assert stages["train_ar"]["status"] == "failed" and "planted failure" in stages["train_ar"]["error"]
    assert stages["serve"]["status"] == stages["eval"]["status"] == "skipped"
    assert "train_ar" in stages["serve"]["error"]
    assert "planted failure" in (root / "planted" / "gpu_check.log").read_text()


def test_the_gpu_plan_fits_in_nine_minutes_and_each_training_stage_in_its_cap(tmp_path, capsys):
    assert sum(gpu_check.GPU.caps.values()) <= 9 * 60
    assert set(gpu_check.GPU.caps) == set(gpu_check.DRY.caps) == set(gpu_check.BY_NAME)
    assert gpu_check.print_plan(type("A", (), {"assets": str(tmp_path), "out": str(tmp_path)})()) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    for row in plan["rows"]:
        assert row["gpu_estimate_s"] <= row["cap_s"], row
    assert plan["caps_total_s"] == sum(gpu_check.GPU.caps.values())
    assert "| all |" in capsys.readouterr().out


def test_the_sampling_plan_measures_bf16_first_and_per_token_samplers_last_at_the_long_length():
    names = ["window, euler 10", "block 1, euler 10", "AR baseline (KV cache)"]
    plan = gpu_check.sampling_plan(gpu_check.GPU, names)
    assert plan[0] == ("bf16", 256, 32, "window, euler 10")
    assert len(plan) == len(set(plan)) == 2 * 2 * 2 * len(names)  # every precision, length, batch and sampler once
    long_block1 = [i for i, p in enumerate(plan) if p[1] == 1024 and p[3].startswith("block 1")]
    assert min(long_block1) > max(i for i, p in enumerate(plan) if p[3] != "block 1, euler 10")


@pytest.mark.slow
def test_a_gpu_run_fills_the_what_ran_where_and_gpu_tables(dry_run, tmp_path, monkeypatch):
    """bench/tables.py reads the GPU check's results: a capability whose stages passed on a GPU is measured there (on
    several GPUs when torchrun had more than one process); a dry run changes nothing."""
    import shutil

    import tables

    root, _ = dry_run
    (tmp_path / "gpu").mkdir()
    shutil.copy(ROOT / "bench" / "results" / "ran_where.json", tmp_path / "ran_where.json")
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    run = json.loads((root / "out" / "gpu_check.json").read_text())
    (tmp_path / "gpu" / "dry.json").write_text(json.dumps(run))
    before = tables.ran_where()
    assert "gpu_check" not in before and "no GPU check has run yet" in tables.gpu_check_training()
    run["kind"], run["stages"]["env"]["device"], run["date"] = "GPU", "NVIDIA H100 80GB HBM3", "2026-12-07"
    run["stages"]["torchrun"]["processes"] = 2
    run["stages"]["eval"]["status"] = "failed"
    (tmp_path / "gpu" / "h100.json").write_text(json.dumps(run))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in tables.ran_where().splitlines()[2:]}
    measured = "measured (bench/gpu_check.py, NVIDIA H100 80GB HBM3, 2026-12-07)"
    assert rows["block-causal mode (the demo's)"][1] == measured
    assert rows["DDP (torchrun)"][1] == rows["DDP (torchrun)"][2] == measured
    assert rows["block-causal mode (the demo's)"][2] == "never run"  # one process did not train it on several GPUs
    assert rows["textldm eval (ROUGE, BERTScore, MAUVE, gen-PPL, two judges)"][1] == "never run"  # its stage failed
    training = tables.gpu_check_training()
    assert "DiT, context-LM mode (block 1)" in training and "NVIDIA H100 80GB HBM3, 2026-12-07" in training
    assert "AR baseline (KV cache)" in tables.gpu_check_sampling()
