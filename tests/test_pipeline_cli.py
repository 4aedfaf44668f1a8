"""End to end on a tiny local model and corpus: train-vae -> train-dit -> generate, the checkpoint round trip,
and every bad-input case of the CLI (exit 2, one line, no traceback, nothing overwritten)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import tiny_overrides
from textldm import TextLDMPipeline, demo, load_config
from textldm.cli import main
from textldm.diffusion.flow import time_grid
from textldm.families.textldm.train import train_dit


def test_demo_writes_everything(trained):
    out, report = trained
    for name in ("config.yaml", "environment.json", "vae_log.jsonl", "dit_log.jsonl", "report.json", "report.md",
                 "vae/vae.safetensors", "vae/config.json", "model/dit.safetensors", "model/tokenizer"):
        assert (out / name).exists(), name
    assert 0 <= report["vae_eval"]["recon_acc"] <= 1 and "repa_cos" in report["vae_eval"]
    quarters = report["dit_eval"]["quarters"]
    assert len(quarters) == 4 and all(q["linear_gaussian"] > 0 for q in quarters)
    log = [json.loads(line) for line in (out / "dit_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["event"] == "end" and any("loss" in r for r in log)
    c = report["continuations"]
    assert all(0 <= c[k] <= 1 for k in ("rouge_l", "rouge_l_random_passage", "rouge_l_other_prompts_reference"))
    assert len(c["samples"]) == c["prompts_scored"] > 0
    assert 0 <= c["same_noise_agreement"] <= 1 and 0 <= c["reference_agreement"] <= 1 and c["agreement_prompts"] > 1
    assert c["gen_ppl"] > 1 and c["reference_gen_ppl"] > 1  # fluency of generations and references, same judge
    md = (out / "report.md").read_text()
    assert "with prompt" in md and "ROUGE-L" in md and "generative perplexity" in md
    meta = json.loads((out / "model/config.json").read_text())
    assert meta["environment"]["versions"]["torch"] and meta["config"]["seed"] == 0
    vae = TextLDMPipeline.from_pretrained(out / "model").vae  # the latent statistics were measured and saved
    assert not torch.all(vae.latent_mean == 0) and not torch.all(vae.latent_std == 1)
    assert c["prompt_binding"] > 0 and c["reference_prompt_binding"] > 0


def test_no_config_is_written_after_load(trained):
    """The demo (data, VAE, DiT, report) leaves the config it was given exactly as loaded: settings are resolved
    once, by the loader (batch sizes from batch_tokens) or into new objects (a call's sampler settings)."""
    from conftest import CONFIG_SNAPSHOTS

    assert CONFIG_SNAPSHOTS["after"] == CONFIG_SNAPSHOTS["before"]


def test_save_load_round_trip_gives_identical_outputs(trained, tmp_path):
    out, _ = trained
    pipe = TextLDMPipeline.from_pretrained(out / "model")
    a = pipe.generate(["The man said that"], length=6, steps=3, seed=1)
    pipe.save_pretrained(tmp_path / "copy")
    again = TextLDMPipeline.from_pretrained(tmp_path / "copy")
    assert again.generate(["The man said that"], length=6, steps=3, seed=1) == a
    for (k1, v1), (k2, v2) in zip(pipe.dit.state_dict().items(), again.dit.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert torch.equal(pipe.vae.latent_std, again.vae.latent_std)
    assert not torch.all(pipe.vae.latent_std == 1)  # statistics were computed and saved


def test_generate_respects_length_trimming_and_callbacks(trained):
    out, _ = trained
    pipe = TextLDMPipeline.from_pretrained(out / "model")
    steps = []
    ids = pipe.generate_ids(pipe.encode_prompts(["The man", "Time will come and"]), length=5, steps=4,
                            callback=lambda i, t, x: steps.append((i, t, tuple(x.shape))))
    assert [s[0] for s in steps] == [1, 2, 3, 4] and steps[-1][1] == 1.0 and steps[0][2] == (2, 5, 8)
    assert all(len(row) <= 5 and pipe.eot_id not in row for row in ids)
    # trimming at end-of-text
    z = torch.zeros(1, 4, pipe.vae.cfg.latent_channels)
    assert pipe.eot_id not in pipe.codec.decode(z)[0]


def test_any_length_batches_seeds_and_guidance_interval(trained, monkeypatch):
    """Past the trained window (dit.target_max = 12) the continuation comes in windows and has exactly the
    requested length when no end-of-text is produced; a prompt's continuation does not depend on its batch;
    the guidance interval halves the evaluations outside it."""
    out, _ = trained
    pipe = TextLDMPipeline.from_pretrained(out / "model")
    monkeypatch.setattr(pipe, "eot_id", -1)  # never produced: every row runs to the full length
    prompts = pipe.encode_prompts(["The man", "Time will come and", "It was the"])
    ids = pipe.generate_ids(prompts, length=30, steps=3, cfg_scale=3.0)
    assert [len(r) for r in ids] == [30, 30, 30]
    assert pipe.last_evaluations == 3 * 2 * 3  # 3 windows (12 + 12 + 6) x 3 steps x 2 (CFG)
    assert pipe.generate_ids(prompts[1:2], length=30, steps=3, cfg_scale=3.0, first_index=1) == ids[1:2]
    texts = pipe.generate(["The man", "Time will come and", "It was the"], length=8, steps=3, batch_size=2)
    assert texts == pipe.generate(["The man", "Time will come and", "It was the"], length=8, steps=3, batch_size=3)
    assert texts != pipe.generate(["The man", "Time will come and", "It was the"], length=8, steps=3, seed=99)
    grid = time_grid(4, pipe.config.dit.t_distribution, pipe.config.dit.t_mean, pipe.config.dit.t_std)
    guided = int(((grid[:-1] >= 0.5) & (grid[:-1] <= 1.0)).sum())
    pipe.generate_ids(prompts, length=8, steps=4, cfg_scale=3.0, cfg_min_t=0.5, cfg_max_t=1.0)
    assert pipe.last_evaluations == 4 + guided


def test_bf16_sampling_runs_under_autocast_deterministically(trained, monkeypatch):
    """sample.precision=bf16: the DiT's matrix products run in bf16 (seen by a hook), the result repeats for
    the same batch layout, and lengths and evaluation counts are those of fp32 sampling."""
    out, _ = trained
    pipe = TextLDMPipeline.from_pretrained(out / "model")
    monkeypatch.setattr(pipe, "eot_id", -1)
    prompts = pipe.encode_prompts(["The man", "Time will come and", "It was the"])
    dtypes = []
    pipe.dit.final.linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    fp32 = pipe.generate_ids(prompts, length=16, steps=3, cfg_scale=3.0)
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    bf16 = pipe.generate_ids(prompts, length=16, steps=3, cfg_scale=3.0, precision="bf16")
    assert set(dtypes) == {torch.bfloat16} and pipe.last_evaluations == 2 * 3 * 2
    assert [len(r) for r in bf16] == [len(r) for r in fp32] == [16, 16, 16]
    assert bf16 == pipe.generate_ids(prompts, length=16, steps=3, cfg_scale=3.0, precision="bf16")
    assert pipe.config.sample.precision == "fp32"  # a call's settings never write into the model's config
    with pytest.raises(Exception, match="sample.precision"):
        load_config("demo", ["sample.precision=fp16"])


def test_cli_generates_a_prompts_file_in_batches(capsys, trained, tmp_path):
    out, _ = trained
    (tmp_path / "p.txt").write_text("The man\nTime will come and\nIt was the\n")
    for batch in (1, 2):
        code, err = _cli(capsys, "generate", "--model", str(out / "model"), "--prompts-file", str(tmp_path / "p.txt"),
                         "--length", "6", "--steps", "3", "--batch-size", str(batch), "--seed", "5", "--solver", "ab2",
                         "--grid", "shifted", "--cfg-interval", "0,0.8", "--out", str(tmp_path / f"o{batch}.jsonl"))
        assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "o1.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["The man", "Time will come and", "It was the"]
    assert (tmp_path / "o1.jsonl").read_text() == (tmp_path / "o2.jsonl").read_text()


def test_train_dit_from_a_vae_checkpoint(trained, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    out, _ = trained
    monkeypatch.setenv("TEXTLDM_CACHE", str(out / "cache"))
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path))
                      + ["dit_train.steps=6", "dit_train.eval_every=2"])
    pipe, report = train_dit(cfg, vae_dir=str(out / "vae"), progress=False)
    assert report["dit_train"]["steps"] == 6 and (tmp_path / "model" / "dit.safetensors").exists()
    log = [json.loads(line) for line in (tmp_path / "dit_log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval" in r]  # the last step is evaluated by the report instead
    assert [r["step"] for r in evals] == [2, 4] and all("quarters" in r["eval"] for r in evals)


def test_cacheable_context_dit_trains_and_samples_the_same_with_and_without_its_cache(trained, tiny_model_dir,
                                                                                   tiny_corpus, tmp_path, monkeypatch):
    out, _ = trained
    monkeypatch.setenv("TEXTLDM_CACHE", str(out / "cache"))
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path))
                      + ["dit_train.steps=6", "dit.window.context_cache=true"])
    train_dit(cfg, vae_dir=str(out / "vae"), progress=False)
    pipe = TextLDMPipeline.from_pretrained(tmp_path / "model")
    assert pipe.dit.context_cond is not None
    finals = {}
    for use_cache in (True, False):
        states = []
        pipe.generate_ids(pipe.encode_prompts(["The man", "Time will come and"]), length=6, steps=4, cfg_scale=3.0,
                          callback=lambda i, t, x: states.append(x.clone()), context_cache=use_cache)
        finals[use_cache] = states[-1]
    assert torch.allclose(finals[True], finals[False], atol=1e-4)


def test_infilling_between_two_texts(trained, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    from textldm.errors import UserError

    out, _ = trained
    monkeypatch.setenv("TEXTLDM_CACHE", str(out / "cache"))
    with pytest.raises(UserError, match="infill_prob"):
        TextLDMPipeline.from_pretrained(out / "model").infill("The man", "of the day.")
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path))
                      + ["dit_train.steps=6", "dit.window.infill_prob=0.5"])
    train_dit(cfg, vae_dir=str(out / "vae"), progress=False)
    pipe = TextLDMPipeline.from_pretrained(tmp_path / "model")
    middles = pipe.infill(["The man", "It was"], ["of the day.", "said that"], length=5, steps=3)
    assert len(middles) == 2 and all(isinstance(m, str) for m in middles)
    assert pipe.last_evaluations == 3 * 2
    assert middles == pipe.infill(["The man", "It was"], ["of the day.", "said that"], length=5, steps=3)
    with pytest.raises(UserError, match="one right per left"):
        pipe.infill(["The man", "It was"], ["of the day."], length=5)


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    captured = capsys.readouterr()
    _cli.stdout = captured.out
    return e.value.code, captured.err.strip()


@pytest.mark.parametrize("args,fragment", [
    (["demo", "dit.dpeth=2"], "unknown config key 'dit.dpeth'"),
    (["demo", "vae.width=wide"], "'vae.width' must be int"),
    (["train-vae", "--config", "nosuch"], "unknown preset 'nosuch'"),
    (["train-vae", "data.source=./missing/data.jsonl"], "data source './missing/data.jsonl' does not exist"),
    (["train-vae", "teacher.name=./no/such/model"], "model folder './no/such/model' does not exist"),
    (["train-vae", "teacher.name=someuser/no-such-model"], "cannot load tokenizer 'someuser/no-such-model'"),
])
def test_cli_bad_training_input(capsys, args, fragment, cache_home, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("previous run")
    code, err = _cli(capsys, *args, f"out_dir={run}")
    assert (run / "config.yaml").read_text() == "previous run" and len(list(run.iterdir())) == 1
    assert code == 2 and "Traceback" not in err
    assert fragment in err.splitlines()[-1] and err.splitlines()[-1].startswith("textldm: error:")


def test_one_prompt_length_policy_cut_from_the_left_with_a_warning(capsys, caplog, trained):
    """A prompt longer than dit.context_max (12) keeps its last 12 tokens, with a warning, in the Python API, the
    CLI, the server's prompt reader and the harness alike (`pipeline.truncate_prompts`)."""
    import logging

    from textldm.evaluation.harness import _continue_with
    from textldm.serving.service import GenerationService

    out, _ = trained
    pipe = TextLDMPipeline.from_pretrained(out / "model")
    long = " ".join(["time"] * 30) + " the man said that it was"
    ids = pipe.tokenizer(long, add_special_tokens=False)["input_ids"]
    with caplog.at_level(logging.WARNING):
        assert pipe.encode_prompts([long]) == [ids[-12:]]
        assert GenerationService(pipe).prompt_ids(long) == ids[-12:]
        seen = []
        pipe.continue_ids = lambda rows, n, **kw: seen.extend(rows) or [[0] * n for _ in rows]
        _continue_with(pipe, [{"prompt": long, "reference": "a b"}], pipe.config.sample, 4, 1)
        del pipe.continue_ids
        assert seen == [ids[-12:]]
    assert caplog.text.count("keeps its last 12 tokens") == 3
    expected = pipe.generate_ids([ids[-12:]], length=5, steps=2)
    assert pipe.generate([long], length=5, steps=2) == [pipe.tokenizer.decode(expected[0])]
    code, err = _cli(capsys, "generate", "--model", str(out / "model"), "--prompt", long, "--length", "5",
                     "--steps", "2", "--json")
    assert code == 0 and json.loads(_cli.stdout)["continuation"] == pipe.tokenizer.decode(expected[0])


def test_cli_noise_scale_and_lm_history_reach_the_sampler(capsys, trained):
    """--noise-scale 0 starts every seed from x0 = 0 (one continuation for any seed), as the API's noise_scale=0;
    --lm-history on a model without a context LM reads the DiT's window, as the API does."""
    out, _ = trained
    pipe = TextLDMPipeline.from_pretrained(out / "model")
    texts = []
    for seed in ("1", "2"):
        code, _ = _cli(capsys, "generate", "--model", str(out / "model"), "--prompt", "The man said", "--length", "5",
                       "--steps", "2", "--seed", seed, "--noise-scale", "0", "--lm-history", "64", "--json")
        assert code == 0
        texts.append(json.loads(_cli.stdout)["continuation"])
    assert texts[0] == texts[1] == pipe.generate(["The man said"], length=5, steps=2, seed=3, noise_scale=0.0)[0]


def test_cli_bad_generation_input(capsys, trained, tmp_path):
    out, _ = trained
    model = str(out / "model")
    before = {p: p.stat().st_mtime_ns for p in (out / "model").rglob("*")}
    cases = [
        (["--prompt", "   "], "prompt 1 is empty"),
        (["--prompt", "The man", "--length", "0"], "length must be in [1, inf), got 0"),
        (["--prompt", "The man", "--steps", "0"], "steps must be in [1, inf), got 0"),
        ([], "no prompt given"),
        (["--prompts-file", str(tmp_path / "none.txt")], "cannot read prompts file"),
        (["--prompt", "The man", "--noise-scale", "-1"], "noise_scale must be in [0, inf), got -1"),
        (["--prompt", "The man", "--lm-history", "-1"], "lm_history must be in [0, inf), got -1"),
        (["--prompt", "The man", "--lm-prior", "-0.5"], "lm_prior must be in [0, inf), got -0.5"),
        (["--prompt", "The man", "--projection", "sampling"], "--projection: not a setting of a textldm model"),
    ]
    for extra, fragment in cases:
        code, err = _cli(capsys, "generate", "--model", model, *extra)
        assert code == 2 and fragment in err and len(err.splitlines()) == 1, (extra, err)
    assert {p: p.stat().st_mtime_ns for p in (out / "model").rglob("*")} == before  # nothing overwritten
    code, err = _cli(capsys, "generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert code == 2 and "does not exist" in err
    code, err = _cli(capsys, "generate", "--model", str(out / "vae"), "--prompt", "x")
    assert code == 2 and "holds only a VAE" in err


def test_cli_unreadable_checkpoint(capsys, trained, tmp_path):
    import shutil

    out, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(out / "model", broken)
    (broken / "dit.safetensors").write_bytes(b"\x00garbage")
    code, err = _cli(capsys, "generate", "--model", str(broken), "--prompt", "The man")
    assert code == 2 and "cannot read" in err and "dit.safetensors" in err
    (broken / "config.json").write_text("{not json")
    code, err = _cli(capsys, "generate", "--model", str(broken), "--prompt", "The man")
    assert code == 2 and "corrupt" in err


def test_cli_generate_prints_continuations(capsys, trained):
    out, _ = trained
    code, _ = _cli(capsys, "generate", "--model", str(out / "model"), "--prompt", "The man", "--steps", "2", "--json")
    assert code == 0
    row = json.loads(_cli.stdout.strip().splitlines()[-1])
    assert row["prompt"] == "The man" and isinstance(row["continuation"], str)


def test_console_script_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "TEXTLDM_CACHE": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "textldm", "demo", "vae.depth=2"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unknown config key 'vae.depth'" in r.stderr


def test_unknown_hf_dataset_is_a_clear_error(capsys, tiny_model_dir, cache_home, tmp_path):
    pytest.importorskip("datasets")
    code, err = _cli(capsys, "train-vae", f"teacher.name={tiny_model_dir}", "data.source=someuser/no-such-dataset",
                     f"out_dir={tmp_path}")
    assert code == 2 and "cannot load data set 'someuser/no-such-dataset'" in err.splitlines()[-1]


def test_demo_can_reuse_a_vae(trained, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    out, first = trained
    monkeypatch.setenv("TEXTLDM_CACHE", str(out / "cache"))
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path)) + ["dit_train.steps=2"])
    report = demo.demo(cfg, progress=False, vae_dir=str(out / "vae"))
    assert report["vae_eval"] == first["vae_eval"] and report["dit_train"]["steps"] == 2
    assert (tmp_path / "model" / "dit.safetensors").exists() and not (tmp_path / "vae").exists()


TINY_TRAIN = ["vae_train.steps=1", "dit_train.steps=1", "device=cpu"]
MISTAKES = [  # issue 28's table: (command line; MODEL = the trained model folder, RUN = a fresh out_dir), the line
    ("serve --model MODEL --port 99999", "--port 99999 is not a port number"),
    ("serve --model MODEL --port -1", "--port -1 is not a port number"),
    ("serve --model MODEL --host 999.1.1.1", "give --host an address of this machine"),
    ("generate --model MODEL --prompt the --device cuda:7", "--device 'cuda:7'"),
    ("serve --model MODEL --device cuda:7", "--device 'cuda:7'"),
    ("generate --model MODEL --prompt the --device banana", "--device 'banana' is not a device name"),
    ("eval --model MODEL device=cuda:7 out_dir=RUN", "device 'cuda:7'"),
    ("train-vae device=banana out_dir=RUN", "device 'banana' is not a device name"),
    ("config device=banana", "device 'banana' is not a device name"),
    ("config dit.depth=0", "dit.depth must be in [1, inf), got 0"),
    ("config vae.width=0", "vae.width must be in [2, inf), got 0"),
    ("config vae.truncate_prob=2", "vae.truncate_prob must be in [0, 1]"),
    ("config vae.kl_weight=-1", "vae.kl_weight must be in [0, inf)"),
    ("config dit.t_mean=nan", "dit.t_mean must be a finite number"),
    ("config out_dir=", "out_dir is empty"),
    ("train-dit --vae VAE --resume out_dir=RUN", "dit_train.checkpoint_every is 0"),
    ("eval --model ./nosuch out_dir=RUN", "--model './nosuch' does not exist"),
    ("train-vae data.source=missing.jsonl out_dir=RUN", "data source 'missing.jsonl' does not exist"),
    ("build-bench --source missing.jsonl --out RUN/b.jsonl", "data source 'missing.jsonl' does not exist"),
    ("push-to-hub --model MODEL --repo someone/x --token hf_unused", "cannot push to the Hub repo 'someone/x'"),
    ("lm-eval --model textldm --model_args pretrained=MODEL --tasks lambada_openai", "Couldn't reach"),
]


@pytest.mark.parametrize("line,fragment", MISTAKES, ids=[m[0].split(" --")[0] + ":" + m[1][:24] for m in MISTAKES])
def test_every_ordinary_mistake_is_one_line_exit_2_and_writes_nothing(line, fragment, capsys, trained, tmp_path,
                                                                        tiny_model_dir, tiny_corpus, monkeypatch):
    out, _ = trained
    monkeypatch.setenv("TEXTLDM_CACHE", str(out / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("previous run")
    args = [a.replace("MODEL", str(out / "model")).replace("VAE", str(out / "vae")).replace("RUN", str(run))
            for a in line.split()]
    if args[0] in ("train-vae", "train-dit", "eval"):  # the tiny shapes first (the line's own settings win)
        args[1:1] = tiny_overrides(tiny_model_dir, tiny_corpus, str(run))[1:] + TINY_TRAIN
    before = {p: p.stat().st_mtime_ns for p in (out / "model").rglob("*")}
    if args[0] == "lm-eval":  # its own process: the harness binds logging handlers to the streams it first sees
        r = subprocess.run([sys.executable, "-m", "textldm", *args], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        code, err = r.returncode, r.stderr.strip()
    else:
        code, err = _cli(capsys, *args)
    last = err.splitlines()[-1] if err else ""
    assert code == 2 and "Traceback" not in err and last.startswith("textldm: error:") and fragment in last, err
    if args[0] != "lm-eval":  # the harness logs its own progress lines before
        assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert (run / "config.yaml").read_text() == "previous run"
    assert {p: p.stat().st_mtime_ns for p in (out / "model").rglob("*")} == before


def test_resume_without_a_checkpoint_warns_and_starts_fresh_when_the_run_saves_them(trained, tiny_model_dir,
                                                                                    tiny_corpus, tmp_path, monkeypatch,
                                                                                    caplog):
    import logging

    out, _ = trained
    monkeypatch.setenv("TEXTLDM_CACHE", str(out / "cache"))
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path)) +
                      ["dit_train.steps=2", "dit_train.checkpoint_every=1"])
    with caplog.at_level(logging.WARNING):
        _, report = train_dit(cfg, vae_dir=str(out / "vae"), progress=False, resume=True)
    assert "no checkpoint in" in caplog.text and "starts from step 0" in caplog.text
    assert report["dit_train"]["first_step"] == 0 and report["dit_train"]["steps"] == 2
    _, again = train_dit(cfg, vae_dir=str(out / "vae"), progress=False, resume=True)
    assert again["dit_train"]["first_step"] == 2  # the checkpoints it saved are resumed
