"""Presets, overrides and their errors."""
import pytest

from textldm.config import Config, PRESET_DIR, config_from_dict, load_config, parse_override, to_dict
from textldm.errors import UserError


def test_defaults_presets_and_overrides():
    cfg = load_config("demo", ["dit.depth=3", "vae_train.lr=3e-4", "sample.solver=heun", "data.max_documents=null"])
    assert isinstance(cfg, Config)
    assert cfg.dit.depth == 3 and cfg.vae_train.lr == 3e-4 and cfg.sample.solver == "heun"
    assert cfg.data.max_documents is None
    assert cfg.vae.softmax == "sampled"  # from the demo preset
    for preset in PRESET_DIR.glob("*.yaml"):
        load_config(preset.stem)  # every shipped preset is valid


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
