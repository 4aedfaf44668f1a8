"""The saved-model folder: what `save_pretrained` writes and `from_pretrained` reads (TextLDM and AR).

Layout (written atomically: a temporary folder renamed into place):
    config.json            format, model_type, the full run config, vocab size, tokenizer, environment, report
    README.md              the model card (what it is, how it was trained, its numbers, how to load it)
    <module>.safetensors   weights per module (vae, dit / ar)
    tokenizer/             the tokenizer files, so a saved model is self-contained

Not to be confused with the resumable *training* state (`training/checkpoint.py`).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from textldm.errors import UserError, first_line
from textldm.utils import atomic_dir, environment, looks_like_path

FORMAT = "textldm-checkpoint-v1"


def _state(module: torch.nn.Module | dict) -> dict:
    state = module if isinstance(module, dict) else module.state_dict()
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


@dataclass(frozen=True)
class CardText:
    """What a family's model card says of one saved folder: its model type, what it is (a sentence), the class that
    loads it, a line that samples from it and its Hub tag."""
    kind: str
    what: str
    loader: str
    sample: str
    tag: str


def write_model_folder(path: Path | str, meta: dict, modules: dict[str, torch.nn.Module | dict], tokenizer,
                       card: CardText) -> None:
    """One folder, written atomically: config.json (`meta` + format + environment), `<name>.safetensors`
    per module (or dict of tensors), the tokenizer files and the model card (README.md, from `card`)."""
    meta = {"format": FORMAT, "environment": environment(), **meta}
    with atomic_dir(path) as tmp:
        for name, module in modules.items():
            save_file(_state(module), str(tmp / f"{name}.safetensors"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        (tmp / "README.md").write_text(model_card(meta, card))


def read_tokenizer(path: Path):
    """The tokenizer saved in a model folder's tokenizer/ subfolder."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    except (OSError, ValueError):
        raise UserError(f"cannot read the tokenizer in '{path}/tokenizer'; re-create the checkpoint") from None


def read_model_config(path: Path | str) -> dict:
    """A model folder's config.json, checked (present, JSON, this format)."""
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
    """The family (a registry name: `families.FAMILIES`) a saved folder's config.json names; 0.1-era folders name
    none and are TextLDM's."""
    return read_model_config(path).get("model_type", "textldm")


def legacy_names(state: dict, renamed: tuple[tuple[str, str], ...]) -> dict:
    """A state dict with the weight names of an earlier version renamed (`renamed`: (old prefix, new prefix) pairs,
    a module's `RENAMED_WEIGHTS`; 0.5's DiT and AR held their layers as `blocks.N`, now `layers.N`)."""
    def rename(key: str) -> str:
        return next((new + key[len(old):] for old, new in renamed if key.startswith(old)), key)
    return {rename(k): v for k, v in state.items()}


def load_weights(module: torch.nn.Module, file: Path):
    """Load `file` (safetensors) into `module`, exactly: missing or unexpected weights are a UserError. Weights saved
    under an earlier version's names (the module's `RENAMED_WEIGHTS`) are read under today's."""
    try:
        state = legacy_names(load_file(str(file)), getattr(module, "RENAMED_WEIGHTS", ()))
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


# the Hugging Face Hub ---------------------------------------------------------------------------------------
def could_be_repo_id(name: str) -> bool:
    """'name' or 'owner/name' (Hub ids); whatever `looks_like_path` is local."""
    return not looks_like_path(name) and all(name.split("/"))


def locate_model_folder(name_or_path: Path | str, revision: str | None = None, train_hint: str = "") -> Path:
    """A local folder as it is; otherwise a Hub repo id, fetched with `huggingface_hub.snapshot_download` (its
    local cache first; with HF_HUB_OFFLINE=1 the cache only). `revision`: a branch, tag or commit."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if not could_be_repo_id(str(name_or_path)):
        raise UserError(f"model folder '{path}' does not exist{train_hint}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), revision=revision))
    except Exception as e:  # offline without a cached copy, no such repo, gated, network errors
        reason = first_line(e)
        raise UserError(f"'{name_or_path}' is neither a local model folder nor a loadable Hub repo ({reason}); "
                        f"check the path or the repo id (and your network, or HF_HUB_OFFLINE with a cached copy)"
                        ) from None


def is_textldm_folder(path: Path | str) -> bool:
    """Whether a folder holds a saved textldm model (its config.json names this format)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("format", "").startswith("textldm")
    except (OSError, ValueError):
        return False


def hub_textldm_folder(repo_id: str, revision: str | None = None) -> Path | None:
    """The local folder of a textldm model on the Hub (its config.json is fetched first, so another kind of repo -
    an HF causal LM - is never downloaded here), or None: not a textldm repo, or not reachable."""
    from huggingface_hub import hf_hub_download

    try:
        config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception:  # offline without a cached copy, no such repo, network errors: the caller falls back
        return None
    return locate_model_folder(repo_id, revision) if is_textldm_folder(config.parent) else None


def upload_model_folder(folder: Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                        commit_message: str = "Upload textldm model", revision: str | None = None) -> str:
    """Create the Hub repo if needed and upload a saved model folder; returns the commit URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 revision=revision)
    except Exception as e:  # offline, no token, no access, network errors: one line, never a traceback
        raise UserError(f"cannot push to the Hub repo '{repo_id}' ({first_line(e)}); check the network (and that "
                        f"HF_HUB_OFFLINE is unset) and the token: `hf auth login`, HF_TOKEN or --token"
                        ) from None
    return str(getattr(info, "commit_url", info))


class HubMixin:
    """`push_to_hub` for anything with `save_pretrained(path)` (both pipelines)."""

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload textldm model", revision: str | None = None,
                    extra: dict | None = None) -> str:
        """Save to a temporary folder (weights, config.json, tokenizer, model card) and upload it to `repo_id`;
        returns the commit URL. Load it back with `from_pretrained(repo_id)`."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder, extra=extra)
            return upload_model_folder(folder, repo_id, private=private, token=token, commit_message=commit_message,
                                       revision=revision)


# dtype -------------------------------------------------------------------------------------------------------
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """torch.float32 / torch.bfloat16 or their names; None keeps the saved fp32 weights."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise UserError(f"dtype {dtype!r} is not supported; use float32 or bfloat16")


# the model card (README.md of every saved model) -------------------------------------------------------------
def model_card(meta: dict, card: CardText) -> str:
    """A Hub model card from a saved model's config.json contents and its family's words (`card`): what it is, how it
    was trained, its measured numbers, how to load and sample it, license and citation."""
    cfg, report = meta["config"], meta.get("report", {})
    lines = ["---", "license: apache-2.0", "library_name: textldm", "pipeline_tag: text-generation",
             f"tags: [textldm, text-generation, {card.tag}]",
             "---", "", f"# {Path(cfg.get('out_dir', 'textldm')).name} ({card.kind})", "",
             f"This is {card.what}, made with [textldm](https://pypi.org/project/textldm/) "
             f"{meta.get('environment', {}).get('versions', {}).get('textldm', '')}.", "",
             "## Training", "", f"- data: `{cfg['data']['source']}`; tokenizer and REPA teacher: "
             f"`{cfg['teacher']['name']}` (layer {cfg['teacher']['layer']}); vocabulary {meta.get('vocab_size')}"]
    lines += _card_stages(report) + ["", "## Measured (held-out text of the training corpus)", ""]
    lines += _card_numbers(report) or ["- no held-out numbers were recorded with this model"]
    lines += ["", "## Use", "", "```python", f"from textldm import {card.loader}", "",
              f'pipe = {card.loader}.from_pretrained("REPO_OR_FOLDER")  # a local folder or a Hub repo id',
              card.sample, "```", "", "The full configuration is in `config.json`; `textldm generate --model "
              "REPO_OR_FOLDER --prompt TEXT` samples from the command line.", "", "## License and citation", "",
              "Apache-2.0. TextLDM: \"TextLDM: Language Modeling with Continuous Latent Diffusion\", "
              "arXiv:2605.07748 (2026); the software: see CITATION.cff in the textldm repository.", ""]
    return "\n".join(lines)


def _card_stages(report: dict) -> list[str]:
    lines = []
    for stage, name in (("vae", "TextVAE"), ("dit", "TextDiT"), ("ar", "AR baseline")):
        train = report.get(f"{stage}_train")
        if train:
            lines.append(f"- {name}: {report.get(f'{stage}_parameters', 0) / 1e6:.1f}M parameters, "
                         f"{train['steps']} steps in {train['seconds']:.0f} s, {train.get('flops', 0):.3g} FLOPs")
    return lines


def _card_numbers(report: dict) -> list[str]:
    v, d, a = report.get("vae_eval", {}), report.get("dit_eval", {}), report.get("ar_eval", {})
    lines = []
    if v:
        lines.append(f"- TextVAE token reconstruction accuracy: {100 * v['recon_acc']:.2f}%"
                     + (f"; REPA cosine with the teacher: {v['repa_cos']:.3f}" if "repa_cos" in v else ""))
    if d:
        lines.append(f"- TextDiT velocity loss: {d['with_prompt']:.4f} with the prompt, {d['prompt_dropped']:.4f} "
                     f"with it dropped (a linear Gaussian predictor: {d['linear_gaussian']:.4f})")
    if a:
        lines.append(f"- AR next-token loss {a['loss']:.4f} nats (perplexity {a['perplexity']:.1f}), accuracy "
                     f"{100 * a['next_token_acc']:.1f}%")
    return lines
