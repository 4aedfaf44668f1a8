"""Fit with the ecosystem: loading by Hub id (offline, from a Hub-layout cache), model cards, push_to_hub,
W&B offline runs, dtype, step callbacks that stop or edit, argument names, version and run metadata."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import tiny_overrides
from textldm import ARPipeline, TextLDMPipeline, load_config
from textldm.diffusion.sampling import STOP
from textldm.errors import UserError
from textldm.families.ar.train import train_ar
from textldm.version import __version__


def hub_cache_entry(cache, repo_id: str, folder, commit: str = "a" * 40):
    """`folder` laid out as huggingface_hub's cache holds a downloaded repo: models--owner--name/ with
    snapshots/<commit>/ (the files) and refs/main (the commit)."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return root


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache in tmp_path with the network off (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_saved_model_loads_by_hub_id_offline(trained, offline_hub):
    out, _ = trained
    hub_cache_entry(offline_hub, "someone/tiny-textldm", out / "model")
    by_id = TextLDMPipeline.from_pretrained("someone/tiny-textldm")
    local = TextLDMPipeline.from_pretrained(out / "model")
    prompts = ["the man said that"]
    assert by_id.generate(prompts, steps=2, length=6) == local.generate(prompts, steps=2, length=6)
    assert TextLDMPipeline.from_pretrained("someone/tiny-textldm", revision="a" * 40).dit is not None
    with pytest.raises(UserError, match="neither a local model folder nor a loadable Hub repo"):
        TextLDMPipeline.from_pretrained("someone/not-cached")
    with pytest.raises(UserError, match="does not exist"):  # a path that cannot be a repo id stays a path
        TextLDMPipeline.from_pretrained("./runs/nowhere/model")


def test_every_saved_model_has_a_model_card_with_its_numbers(trained):
    out, report = trained
    card = (out / "model" / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: textldm")
    assert f"{100 * report['vae_eval']['recon_acc']:.2f}%" in card  # measured numbers of this model
    assert f"{report['dit_eval']['with_prompt']:.4f}" in card
    assert f"{report['dit_train']['steps']} steps" in card and "TextLDMPipeline.from_pretrained" in card
    vae_card = (out / "vae" / "README.md").read_text()
    assert "no DiT yet" in vae_card and f"{100 * report['vae_eval']['recon_acc']:.2f}%" in vae_card


def test_push_to_hub_uploads_the_saved_folder(trained, monkeypatch):
    """No network here: HfApi is replaced by a recorder; what would be uploaded is checked."""
    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            from pathlib import Path

            seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            seen["config"] = json.loads((Path(folder_path) / "config.json").read_text())
            return "https://huggingface.co/someone/x/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    pipe = TextLDMPipeline.from_pretrained(trained[0] / "model")
    url = pipe.push_to_hub("someone/x", private=True, token="t")
    assert url.endswith("/commit/1") and seen["repo"] == ("someone/x", True, True) and seen["token"] == "t"
    assert seen["files"] == ["README.md", "config.json", "dit.safetensors", "tokenizer", "vae.safetensors"]
    assert seen["config"]["environment"]["versions"]["textldm"] == __version__
    from textldm.cli import run

    assert run(["push-to-hub", "--model", str(trained[0] / "vae"), "--repo", "someone/vae-only"]) == 0
    assert seen["repo"] == ("someone/vae-only", None, True) and "dit.safetensors" not in seen["files"]


def test_wandb_offline_run_directory(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch, cache_home):
    """train.wandb_project writes a W&B run (offline here) beside the JSONL log, with the same numbers."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    out = tmp_path / "run"
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(out)) + [
        "ar_train.steps=4", "ar_train.batch_size=4", "ar_train.log_every=1", "ar.width=32", "ar.heads=2",
        "ar.depth=1", "ar_train.wandb_project=textldm-test"])
    train_ar(cfg, progress=False)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")  # offline, everything is in this binary log until `wandb sync`
    data = log.read_bytes()
    for piece in ("textldm-test", "ar_train", "environment", __version__, "train/loss", "train/lr", "run/AR"):
        assert piece.encode() in data, piece  # the project, resolved config, environment, metrics, run name
    logged = [json.loads(line) for line in (out / "ar_log.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in logged) == 4  # the JSONL log is written as before


def test_from_pretrained_dtype(trained):
    pipe = TextLDMPipeline.from_pretrained(trained[0] / "model", dtype="bf16")
    assert {p.dtype for p in pipe.dit.parameters()} == {torch.bfloat16}
    dtypes = []
    pipe.dit.final.linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    text = pipe.generate(["the man said that"], steps=2, length=6)  # bf16 weights sample under bf16 autocast
    assert set(dtypes) == {torch.bfloat16}
    assert len(text) == 1 and isinstance(text[0], str)
    with pytest.raises(UserError, match="float32 or bfloat16"):
        TextLDMPipeline.from_pretrained(trained[0] / "model", dtype="int8")


def test_a_step_callback_may_stop_the_sampler_or_replace_its_latents(trained):
    pipe = TextLDMPipeline.from_pretrained(trained[0] / "model")
    d = pipe.config.dit
    seen = []

    def stop_at_two(step, t, x):
        seen.append(step)
        return STOP if step == 2 else None

    pipe.generate_ids([[5, 6, 7]], length=2 * d.target_max, steps=4, callback=stop_at_two)
    assert seen == [1, 2]  # stopped inside the first window, and no second window was started
    replaced = pipe.generate_ids([[5, 6, 7]], length=4, steps=4, callback=lambda s, t, x: torch.zeros_like(x))
    zeros = pipe.codec.decode(torch.zeros(1, 4, pipe.vae.cfg.latent_channels))
    assert replaced == zeros  # the last step's replacement is what gets decoded
    with pytest.raises(ValueError, match="latents of shape"):
        pipe.generate_ids([[5, 6, 7]], length=4, steps=2, callback=lambda s, t, x: torch.zeros(3))


def test_argument_names_are_shared_by_both_pipelines(trained, tiny_model_dir, tiny_corpus, tmp_path, cache_home):
    pipe = TextLDMPipeline.from_pretrained(trained[0] / "model")
    same = pipe.generate_ids([[5, 6, 7]], length=5, steps=2)
    assert pipe.generate_ids([[5, 6, 7]], max_new_tokens=5, steps=2) == same
    with pytest.raises(UserError, match="disagree"):
        pipe.generate_ids([[5, 6, 7]], length=4, max_new_tokens=5)
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path / "ar")) + [
        "ar_train.steps=2", "ar_train.batch_size=4", "ar.width=32", "ar.heads=2", "ar.depth=1"])
    ar, _ = train_ar(cfg, progress=False)
    loaded = ARPipeline.from_pretrained(tmp_path / "ar" / "ar")
    a = loaded.generate(["the man said"], length=5, seed=3)
    assert a == loaded.generate(["the man said"], max_new_tokens=5, seed=3)
    assert a == [ar.tokenizer.decode(r) for r in ar.generate_ids([ar.tokenizer("the man said")["input_ids"]], 5,
                                                                  seed=3)]


def test_version_and_run_metadata(trained):
    out, _ = trained
    cli = subprocess.run([sys.executable, "-m", "textldm", "--version"], capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip() == f"textldm {__version__}"
    env = json.loads((out / "environment.json").read_text())
    assert env["versions"]["textldm"] == __version__ and isinstance(env["command"], list)
    assert env["devices"]["cpu_count"] >= 1 and "cuda" in env["devices"]
    saved = json.loads((out / "model" / "config.json").read_text())["environment"]
    assert saved["versions"]["textldm"] == __version__
    git = env["git"]
    assert git is None or len(git["commit"]) == 40  # a git checkout records its revision


# --- every network-touching command fails with one clear line offline -------------------------------------
def _one_line_exit_2(capsys, args) -> str:
    from textldm.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_push_to_hub_offline_or_without_a_token_is_one_line(trained, capsys, monkeypatch, tmp_path):
    """`textldm push-to-hub` with the Hub unreachable (HF_HUB_OFFLINE here; a refused connection or a missing token
    the same way): one line naming the network and the token, exit 2, nothing written beside the model."""
    import huggingface_hub

    model = trained[0] / "model"
    before = sorted(p.name for p in model.parent.iterdir())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _one_line_exit_2(capsys, ["push-to-hub", "--model", str(model), "--repo", "someone/tiny"])
    assert "cannot push to the Hub repo 'someone/tiny'" in err and "network" in err and "token" in err

    class NoToken:
        def __init__(self, token=None):
            pass

        def create_repo(self, *a, **k):
            raise huggingface_hub.errors.LocalTokenNotFoundError("Token is required (`token=True`), but no token found")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoToken)
    err = _one_line_exit_2(capsys, ["push-to-hub", "--model", str(model), "--repo", "someone/tiny"])
    assert "no token found" in err and "hf auth login" in err
    assert sorted(p.name for p in model.parent.iterdir()) == before


def test_hub_ids_and_hub_data_offline_are_one_line(capsys, cache_home, tiny_model_dir, tmp_path):
    """A model, a teacher and a data set named by Hub id with the Hub unreachable: one line each, exit 2."""
    err = _one_line_exit_2(capsys, ["generate", "--model", "nobody/no-such-model", "--prompt", "x"])
    assert "neither a local model folder nor a loadable Hub repo" in err
    err = _one_line_exit_2(capsys, ["train-vae", "--config", "demo", "teacher.name=nobody/no-such-lm",
                                    f"out_dir={tmp_path / 'a'}"])
    assert "nobody/no-such-lm" in err
    err = _one_line_exit_2(capsys, ["train-vae", "--config", "demo", "data.source=nobody/no-such-data",
                                    f"teacher.name={tiny_model_dir}", f"out_dir={tmp_path / 'b'}"])
    assert "nobody/no-such-data" in err


def test_wandb_without_a_login_is_one_line(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch, capsys, cache_home):
    """train.wandb_project with no W&B login, online: one line saying how to log in or go offline."""
    import wandb

    wandb.teardown()  # a run earlier in this process (offline) leaves W&B's settings behind
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    err = _one_line_exit_2(capsys, ["train-ar", "--quiet", *tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path)),
                                    "ar_train.steps=2", "ar.width=32", "ar.heads=2", "ar.depth=1",
                                    "ar_train.wandb_project=textldm-test"])
    assert "cannot start the W&B run" in err and "wandb login" in err and "WANDB_MODE=offline" in err


def test_eval_resolves_textldm_repos_by_hub_id_before_hf_causal_lms(trained, models, offline_hub, tmp_path):
    """`textldm eval --model owner/name`: a Hub repo holding a textldm model (TextLDM or AR) is loaded as one; a name
    that is no textldm repo falls through to the HF causal-LM loader (here: not cached, one clear line)."""
    from textldm.evaluation.harness import load_contestant

    out, _ = trained
    hub_cache_entry(offline_hub, "someone/tiny-textldm", out / "model")
    models[1].save_pretrained(tmp_path / "ar")
    hub_cache_entry(offline_hub, "someone/tiny-ar", tmp_path / "ar")
    ldm, ar = load_contestant("someone/tiny-textldm"), load_contestant("mine=someone/tiny-ar")
    assert (ldm.kind, ar.kind, ar.name) == ("textldm", "ar", "mine")
    assert ldm.pipeline.generate(["the man"], steps=2, length=4) == \
        TextLDMPipeline.from_pretrained(out / "model").generate(["the man"], steps=2, length=4)
    with pytest.raises(UserError, match="HF causal LM"):
        load_contestant("someone/not-cached")


def test_load_pipeline_picks_the_family_its_folder_names(trained, models, tmp_path):
    """load_pipeline reads config.json's model_type and loads the folder with that family's pipeline: a model
    folder, a run folder (its model/ first, then ar/: the registry's order) or a VAE folder; an unknown family is
    refused by name, with the known ones."""
    from textldm import load_pipeline

    run, _ = trained
    assert type(load_pipeline(run)) is TextLDMPipeline and type(load_pipeline(run / "model")) is TextLDMPipeline
    assert load_pipeline(run / "vae", require_dit=False).dit is None
    models[1].save_pretrained(tmp_path / "ar_run" / "ar")
    assert type(load_pipeline(tmp_path / "ar_run")) is ARPipeline  # a run folder of the AR baseline alone
    assert type(load_pipeline(tmp_path / "ar_run" / "ar")) is ARPipeline
    shutil.copytree(run / "model", tmp_path / "ar_run" / "model")
    assert type(load_pipeline(tmp_path / "ar_run")) is TextLDMPipeline  # both: the TextLDM model first
    unknown = tmp_path / "unknown"
    shutil.copytree(run / "model", unknown)
    meta = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**meta, "model_type": "mystery"}))
    with pytest.raises(UserError, match="no model family 'mystery'; known: textldm, ar, masked, ssd, hf"):
        load_pipeline(unknown)
