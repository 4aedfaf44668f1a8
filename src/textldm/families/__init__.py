"""The model families, chosen by name from one registry (`FAMILIES`): the TextLDM family, the AR baseline, any HF causal
LM for evaluation - and the families added later. A saved folder's config.json names its family (model_type);
`load_pipeline` reads it and loads the folder with that family's pipeline, so nothing else branches on a kind of
model. docs/design.md, "How to add a model family", walks through adding one."""
from __future__ import annotations

from pathlib import Path

import torch

from textldm.errors import UserError
from textldm.export import locate_model_folder, model_type
from textldm.families import ar, hf, masked, ssd, textldm
from textldm.families.spec import Command, Family, Pipeline, resolve_length, truncate_prompts

# a new family: its FAMILY here (the order: a run folder's saved models are looked for in it)
FAMILIES: dict[str, Family] = {f.name: f for f in (textldm.FAMILY, ar.FAMILY, masked.FAMILY, ssd.FAMILY, hf.FAMILY)}


def family(name: str) -> Family:
    """The family registered under `name`."""
    if name not in FAMILIES:
        raise UserError(f"no model family '{name}'; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def run_subfolders() -> list[str]:
    """The subfolders of a run folder that hold a saved model, one per family that trains one (registry order)."""
    return [f.folder for f in FAMILIES.values() if f.saves and f.folder]


def saved_folder(name_or_path: Path | str, revision: str | None = None) -> Path:
    """The folder of a saved textldm model: a model folder, a run folder (the first of its saved models, in the
    registry's order: its model/, then ar/) or a Hub repo id."""
    path = Path(name_or_path)
    if path.is_dir() and not (path / "config.json").exists():
        path = next((path / sub for sub in run_subfolders() if (path / sub / "config.json").exists()), path)
    return locate_model_folder(path if path.exists() else name_or_path, revision, "")


def load_pipeline(name_or_path: Path | str, device: str | torch.device = "cpu", *, revision: str | None = None,
                  dtype: torch.dtype | str | None = None, **options) -> Pipeline:
    """A saved textldm model of any family - as its config.json says - from a model folder, a run folder or a Hub
    repo id (`options`: the family pipeline's own, e.g. require_dit=False for a TextLDM VAE folder)."""
    folder = saved_folder(name_or_path, revision)
    return family(model_type(folder)).pipeline.from_pretrained(folder, device=device, dtype=dtype, **options)


__all__ = ["FAMILIES", "Command", "Family", "Pipeline", "family", "load_pipeline", "resolve_length", "run_subfolders",
           "saved_folder", "truncate_prompts"]
