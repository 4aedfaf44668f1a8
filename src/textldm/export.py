"""The saved-model folder: what `save_pretrained` writes and `from_pretrained` reads (TextLDM and AR).

Layout (written atomically: a temporary folder renamed into place):
    config.json            format, model_type, the full run config, vocab size, tokenizer, environment, report
    <module>.safetensors   weights per module (vae, dit / ar)
    tokenizer/             the tokenizer files, so a saved model is self-contained

Not to be confused with the resumable *training* state (`training/checkpoint.py`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from textldm.errors import UserError
from textldm.utils import atomic_dir, environment

FORMAT = "textldm-checkpoint-v1"


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def write_model_folder(path: Path | str, meta: dict, modules: dict[str, torch.nn.Module], tokenizer) -> None:
    """One folder, written atomically: config.json (`meta` + format + environment), `<name>.safetensors`
    per module, and the tokenizer files."""
    meta = {"format": FORMAT, "environment": environment(), **meta}
    with atomic_dir(path) as tmp:
        for name, module in modules.items():
            save_file(_state(module), str(tmp / f"{name}.safetensors"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    except (OSError, ValueError):
        raise UserError(f"cannot read the tokenizer in '{path}/tokenizer'; re-create the checkpoint") from None


def read_model_config(path: Path | str) -> dict:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"'{path}' is not a textldm checkpoint (no config.json); give the folder written by "
                        f"train-vae, train-dit or demo")
    try:
        meta = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError:
        raise UserError(f"'{path}/config.json' is corrupt (not JSON); re-create the checkpoint") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"'{path}' has checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def model_type(path: Path | str) -> str:
    """"textldm" (VAE [+ DiT]) or "ar" (the autoregressive baseline)."""
    return read_model_config(path).get("model_type", "textldm")


def load_weights(module: torch.nn.Module, file: Path):
    try:
        state = load_file(str(file))
        result = module.load_state_dict(state, strict=False)
    except FileNotFoundError:
        raise UserError(f"checkpoint file '{file}' is missing; re-create the checkpoint") from None
    except (RuntimeError, OSError, ValueError, SafetensorError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(e).__name__)
        raise UserError(f"cannot read '{file}': {detail}; the checkpoint is damaged or from another config") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"cannot read '{file}': its weights do not match the model its config.json describes "
                        f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}); "
                        f"the checkpoint is from another textldm version or config")
