"""Presets, overrides and their errors."""
import pytest

from textldm.config import FULL_WINDOW, PRESET_DIR, Config, config_from_dict, load_config, parse_override, to_dict
from textldm.errors import UserError


def test_defaults_presets_and_overrides():
    cfg = load_config("demo", ["dit.depth=3", "vae_train.lr=3e-4", "sample.solver=heun", "data.max_documents=null"])
    assert isinstance(cfg, Config)
    assert cfg.dit.depth == 3 and cfg.vae_train.lr == 3e-4 and cfg.sample.solver == "heun"
    assert cfg.data.max_documents is None
    assert cfg.vae.softmax == "sampled"  # from the demo preset
    for preset in PRESET_DIR.glob("*.yaml"):
        load_config(preset.stem)  # every shipped preset is valid
    # paper-recipe is the paper's full window although its base, demo, trains block mode
    assert load_config("paper-recipe") == load_config("paper-recipe", list(FULL_WINDOW))
    assert load_config("demo").dit.mode == "blocks" and load_config("demo").dit.blocks.size == 1
    assert load_config("demo", list(FULL_WINDOW)).dit.mode == "window"


def test_round_trip_through_dict():
    cfg = load_config("demo", ["dit.t_conditioning=false"])
    assert config_from_dict(to_dict(cfg)) == cfg


def test_override_parsing():
    assert parse_override("a.b=1") == {"a": {"b": 1}}
    assert parse_override("out_dir=runs/x") == {"out_dir": "runs/x"}


@pytest.mark.parametrize("override,fragment", [
    ("dit.dpeth=3", "unknown config key 'dit.dpeth'"),
    ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
    ("dit.depth=three", "'dit.depth' must be int"),
    ("dit.t_conditioning=maybe", "'dit.t_conditioning' must be bool"),
    ("sample.solver=rk45", "must be one of euler, heun"),
    ("dit=3", "is a section"),
    ("dit.depth", "is not key=value"),
    ("=3", "is not a dotted config key"),
    ("dit.heads=5", "divisible"),
    ("data.val_fraction=1.5", "val_fraction"),
])
def test_bad_overrides_name_the_problem(override, fragment):
    with pytest.raises(UserError, match=None) as e:
        load_config("demo", [override])
    assert fragment in str(e.value)


def test_bad_preset_files(tmp_path):
    with pytest.raises(UserError, match="unknown preset"):
        load_config("nosuch")
    bad = tmp_path / "bad.yaml"
    bad.write_text("vae: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(str(bad))
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_literal_types_are_the_one_source_of_allowed_values(capsys):
    """The samplers, time grids and CLI choices implement exactly what the config's Literal types allow."""
    import typing

    from textldm.cli import _parser
    from textldm.config import Grid, SampleConfig, Solver
    from textldm.diffusion.flow import time_grid
    from textldm.diffusion.sampling import SOLVERS

    assert set(SOLVERS) == set(typing.get_args(Solver))
    for kind in typing.get_args(Grid):
        grid = time_grid(8, "logit_normal", 0.0, 1.5, kind, 3.0)
        assert float(grid[0]) == 0.0 and float(grid[-1]) == 1.0 and len(grid) == 9
        assert bool((grid[1:] > grid[:-1]).all()), kind
    generate = _parser()._subparsers._group_actions[0].choices["generate"]
    choices = {a.dest: a.choices for a in generate._actions if a.choices}
    assert tuple(choices["solver"]) == typing.get_args(typing.get_type_hints(SampleConfig)["solver"])
    assert tuple(choices["grid"]) == typing.get_args(Grid)
    with pytest.raises(UserError, match="must be one of schedule, uniform, shifted"):
        load_config("demo", ["sample.grid=cosine"])


def test_every_choice_can_be_given_as_typed():
    """Each allowed value of every choice field works as `key=value` on the command line and in a YAML file:
    a value YAML reads as something else ("null", "off", "yes") would be unreachable (dit.blocks.uncond=null was)."""
    import typing

    import yaml

    choices = [(key, value) for key, hint in config_fields() if typing.get_origin(hint) is typing.Literal
               for value in typing.get_args(hint)]
    assert ("dit.blocks.uncond", "null_latent") in choices and ("dit.mode", "context_lm") in choices
    for key, value in choices:
        name = key.rsplit(".", 1)[-1]
        assert yaml.safe_load(f"{name}: {value}") == {name: value}, f"{key}: {value!r}"
        cfg = load_config("demo", [f"{key}={value}"])
        for part in key.split("."):
            cfg = getattr(cfg, part)
        assert cfg == value, key


def config_fields(section=None, prefix: str = ""):
    """(dotted key, type hint) of every setting, sub-sections (dit.blocks, ...) included."""
    import dataclasses
    import typing

    section = section if section is not None else Config()
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from config_fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name]


def test_textldm_config_prints_the_resolved_config_and_every_key(capsys):
    import yaml

    from textldm.cli import run

    assert run(["config", "--config", "demo", "vae.width=128", "sample.steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert config_from_dict(printed) == load_config("demo", ["vae.width=128", "sample.steps=7"])
    assert run(["config", "--keys", "dit.depth=3"]) == 0
    keys = capsys.readouterr().out.splitlines()
    fields = [line.split(" ", 1)[0] for line in keys]
    assert len(fields) == len(set(fields)) and "vae_train.max_flops" in fields and "sample.solver" in fields
    line = next(k for k in keys if k.startswith("dit.depth "))
    assert line.startswith("dit.depth (int) = 3")  # the resolved value, with its type
    solver = next(k for k in keys if k.startswith("sample.solver "))
    assert "(euler|heun|ab2)" in solver and "2 evaluations a step" in solver  # allowed values and the field's comment
    noise = next(k for k in keys if k.startswith("vae.decoder_noise "))
    assert "robust to generated latents" in noise and "0 = off" in noise  # comment above + trailing comment


def test_every_cli_option_has_help_and_training_help_says_where_the_keys_are():
    import argparse

    from textldm.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {a.dest}" for name, sub in commands.items() for a in sub._actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing
    assert "textldm config --keys" in commands["train-vae"].format_help()
    # the main job trains on the pretrained LM's states; the training commands' preset stays the from-scratch one
    assert commands["demo"].parse_args([]).config == "context-lm"
    assert commands["train-vae"].parse_args([]).config == "demo"


@pytest.mark.parametrize("override,fragment", [
    ("dit.depth=0", "dit.depth must be in [1, inf), got 0"), ("dit.depth=-1", "dit.depth must be in [1, inf)"),
    ("vae.width=0", "vae.width must be in [2, inf)"), ("dit.heads=0", "dit.heads must be in [1, inf)"),
    ("vae.truncate_prob=2", "vae.truncate_prob must be in [0, 1]"), ("vae.kl_weight=-1", "vae.kl_weight"),
    ("dit.t_mean=nan", "dit.t_mean must be a finite number"), ("sample.cfg_scale=inf", "cfg_scale must be a finite"),
    ("out_dir=", "out_dir is empty"), ("device=banana", "device 'banana' is not a device name"),
    ("data.source=", "data.source is empty"), ("teacher.layer=0", "teacher.layer 0"),
    ("vae.repa_layer=2", "vae.repa_layer 2 is not one of the 2 encoder layers"), ("ar.seq_len=1", "ar.seq_len"),
    ("dit_train.ema=1", "dit_train.ema must be in [0, 1)"), ("vae_train.log_every=0", "vae_train.log_every"),
    ("eval.val_batches=0", "eval.val_batches"), ("seed=-1", "seed must be in [0, inf)"),
])
def test_out_of_range_and_non_finite_values_are_refused_by_name(override, fragment):
    with pytest.raises(UserError) as e:
        load_config("demo", [override])
    assert fragment in str(e.value)


ANY_VALUE = {"dit.t_mean", "vae.logvar_init", "teacher.layer", "vae.repa_layer",
             "dit.context_lm.layer"}  # negative values mean something (the layers: checked against the LM when loaded)


def numeric_keys():
    import typing

    for key, hint in config_fields():
        tp = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)][0]
        if tp in (int, float):
            yield key, tp


@pytest.mark.parametrize("key,tp", list(numeric_keys()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_numeric_key_has_a_range(key, tp):
    """Each number in the config is refused far below its range (all but the few whose every value means
    something), and as nan when it is a float: a new key without its rule fails here."""
    if key not in ANY_VALUE:
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}=-1000000"])
    if tp is float:
        with pytest.raises(UserError, match="finite"):
            load_config(None, [f"{key}=.nan"])


def test_every_mode_says_what_it_trains_and_where_its_text_s_knowledge_comes_from():
    """The report's first line (`demo.what_it_is`), from the mode the config selects."""
    from textldm.demo import what_it_is

    full, block = what_it_is(load_config("demo", list(FULL_WINDOW))), what_it_is(load_config("demo"))
    assert full.startswith("the full window") and "trained from scratch on 'embedded'" in full
    assert block.startswith("block-causal, 1 token a block; the VAE and the DiT are trained from scratch")
    assert "4 tokens a block" in what_it_is(load_config("demo", ["dit.blocks.size=4", "vae.encoder_block_size=4"]))
    lm = what_it_is(load_config("context-lm"))
    assert "frozen LM smollm2-135m" in lm and "next-token prediction (top 32)" in lm and "LM's pretraining" in lm
    assert lm.endswith("(the from-scratch demo: --config demo)") and "from scratch on" not in lm
    assert "next-token probabilities together (sample.lm_prior 1)" in lm  # the preset's decoding reads the LM


BLOCKS = ["vae.encoder_block_size=1", "dit.context_max=8", "dit.target_min=8", "dit.target_max=8", "vae.max_len=16"]


@pytest.mark.parametrize("old,new", [
    (["dit.block_size=4"], ["dit.mode=blocks", "dit.blocks.size=4"]),
    (["dit.block_size=2", "dit.block_uncond=null_latent", "dit.block_t=shared"],
     ["dit.mode=blocks", "dit.blocks.size=2", "dit.blocks.uncond=null_latent", "dit.blocks.t=shared"]),
    (["dit.context_encoder=my-lm", "dit.block_size=1", "dit.context_prediction=8"],  # either order: the LM's mode
     ["dit.mode=context_lm", "dit.context_lm.encoder=my-lm", "dit.blocks.size=1", "dit.context_lm.prediction=8"]),
    (["dit.block_size=1", "dit.context_encoder=my-lm", "dit.context_layer=-2", "dit.context_train_layers=2"],
     ["dit.mode=context_lm", "dit.context_lm.encoder=my-lm", "dit.context_lm.layer=-2",
      "dit.context_lm.train_layers=2"]),
    (["dit.block_size=4", "dit.block_size=0"], ["dit.mode=window"]),
    (["dit.context_encoder=my-lm", "dit.block_size=1", "dit.context_encoder="], ["dit.mode=blocks"]),
    (["dit.block_size=0", "dit.infill_prob=0.3", "dit.context_cache=true", "dit.pooled_context=false"],
     ["dit.window.infill_prob=0.3", "dit.window.context_cache=true", "dit.window.pooled_context=false"]),
])
def test_05_dit_keys_are_read_as_the_mode_and_its_section(old, new):
    """0.4/0.5's flags (the mode inferred from dit.block_size and dit.context_encoder) still work: as overrides in any
    order they give the config today's keys give."""
    assert load_config(None, BLOCKS + old) == load_config(None, BLOCKS + new)


def test_a_05_saved_config_is_read_as_its_mode_and_drops_what_that_mode_ignored():
    """A whole 0.5 DiT section (a saved model's config.json: every key present): the mode from block_size and
    context_encoder, and a mode's settings that 0.5 ignored in the other modes dropped (not refused)."""
    import json
    from pathlib import Path

    saved = json.loads((Path(__file__).parent / "fixtures/legacy_0_5/context_lm/config.json").read_text())["config"]
    assert saved["dit"]["block_size"] == 1 and "mode" not in saved["dit"]
    cfg = config_from_dict(saved)
    assert cfg.dit.mode == "context_lm" and cfg.dit.context_lm.prediction == 4 and cfg.dit.blocks.size == 1
    window = json.loads((Path(__file__).parent / "fixtures/legacy_0_5/window_levers/config.json").read_text())
    window["config"]["dit"]["block_uncond"] = "null_latent"  # ignored by 0.5's full window
    cfg = config_from_dict(window["config"])
    assert cfg.dit.mode == "window" and cfg.dit.window.infill_prob == 0.3 and cfg.dit.blocks.uncond == "empty"
    assert config_from_dict(to_dict(cfg)) == cfg  # today's dict round-trips


@pytest.mark.parametrize("preset,override,section", [
    ("demo", "dit.window.infill_prob=0.3", "dit.window"), (None, "dit.blocks.size=4", "dit.blocks"),
    (None, "dit.context_lm.layer=-2", "dit.context_lm"), ("demo", "dit.context_lm.features=auto", "dit.context_lm")])
def test_a_mode_refuses_the_settings_of_a_mode_it_is_not(preset, override, section):
    with pytest.raises(UserError, match=f"{section} settings are not read by dit.mode="):
        load_config(preset, BLOCKS * (preset is None) + [override])
