"""What a model family is to the rest of textldm: a `Family` entry (its name - the model_type a saved folder's
config.json names -, its pipeline class, its training commands) and the `Pipeline` protocol every family's pipeline
follows, so the CLI, the evaluation harness, the server, the OpenAI endpoint, lm-eval and the model card dispatch
through the registry (`families.FAMILIES`) and never branch on a kind of model; what the single-network families
share (`NetworkPipeline`); and the one prompt check and prompt-length policy (`tokenize_prompts`,
`truncate_prompts`)."""
from __future__ import annotations

import abc
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Protocol, runtime_checkable

import torch

from textldm import export
from textldm.config import Config, SampleConfig, config_from_dict, to_dict
from textldm.errors import UserError
from textldm.utils import param_count, resolve_device

log = logging.getLogger(__name__)


def tokenize_prompts(tokenizer, prompts: list[str] | str) -> list[list[int]]:
    """Text prompts -> token ids, each prompt non-empty (the one check of the Python API, the CLI and the server)."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not prompts:
        raise UserError("no prompts given")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"prompt {i + 1} is empty; give some text to continue")
        out.append(tokenizer(p, add_special_tokens=False)["input_ids"])
    return out


def truncate_prompts(rows: list[list[int]], limit: int, what: str) -> list[list[int]]:
    """The one prompt-length policy (the Python API, the CLI, the server and the evaluation harness): a prompt
    longer than the model's context keeps its last `limit` tokens - the ones next to the continuation - with a
    warning saying how many prompts were cut."""
    cut = sum(len(r) > limit for r in rows)
    if cut:
        log.warning("%d of %d prompts are longer than the model's context of %d tokens (%s); each keeps its last %d "
                    "tokens", cut, len(rows), limit, what, limit)
    return [r[-limit:] for r in rows]


def resolve_length(length: int | None, max_new_tokens: int | None, default: int | None) -> int | None:
    """`length` and its Hugging Face name `max_new_tokens` are the same argument; give one."""
    if length is not None and max_new_tokens is not None and length != max_new_tokens:
        raise UserError(f"length={length} and max_new_tokens={max_new_tokens} disagree; give one of them")
    return next((v for v in (length, max_new_tokens) if v is not None), default)


@runtime_checkable
class Pipeline(Protocol):
    """A model of any family as the harness, the server and lm-eval use it: token ids in, token ids out, under the
    sampler settings of a `SampleConfig` (each family reads the settings that mean something to it: TextLDM the
    diffusion ones, the AR baseline and HF models temperature, top-k and top-p; `sample.seed` for all)."""
    family: ClassVar[str]  # the registry's name for it (a saved folder's model_type)
    streams: ClassVar[bool]  # whether `continue_ids` calls `callback` step by step (the OpenAI stream, the live view)
    sampler_settings: ClassVar[frozenset[str]]  # the SampleConfig fields it reads (a sweep over another is refused)
    tokenizer: object

    def default_sample(self) -> SampleConfig:
        """The model's own sampler settings (a saved model's config.sample)."""

    def continue_ids(self, prompt_ids: list[list[int]], length: int, *, sample: SampleConfig | None = None,
                     first_index: int = 0, callback=None) -> list[list[int]]:
        """Up to `length` new tokens after each prompt (cut at end-of-text), sampled with `sample` (default: the
        model's own); row i is prompt number first_index + i (its noise, where the family seeds per row)."""

    def prompt_window(self, length: int, sample: SampleConfig | None = None) -> int:
        """How many of a prompt's last tokens the model reads when it continues by `length` tokens."""

    def longest_continuation(self, requested: int) -> int:
        """The most tokens one call continues by, for a request of `requested`: what the harness scores up to."""

    def parameters(self) -> int:
        """The parameters it writes text with."""

    def most_tokens(self) -> int | None:
        """The most new tokens one call can write after a prompt of one token (None: any number, window after
        window)."""

    def trained_lengths(self) -> tuple[int, int] | None:
        """(the shortest prompt, the shortest continuation) it was trained on, where that bounds what it was trained
        for (a DiT's windows); None when any length is its own (an AR model's)."""

    def token_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """(log p(continuation | context), whether greedy decoding gives it), or a UserError saying why the family
        has none."""

    def continuation_nll(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """(-log p(continuation | context) in nats, or an upper bound on it; whether it is exact): the held-out
        likelihood `textldm eval` reports (AR models exact, masked diffusion its NELBO), or a UserError where the
        family has neither."""


class OpenEnded:
    """The `Pipeline` protocol's answers for a model that writes any number of tokens after any prompt and holds its
    network as `self.model` (the diffusion baselines, an HF causal LM)."""

    def longest_continuation(self, requested: int) -> int:
        return requested

    def parameters(self) -> int:
        return param_count(self.model)

    def most_tokens(self) -> int | None:
        """Any length: window after window, or block after block."""
        return None

    def trained_lengths(self) -> tuple[int, int] | None:
        return None


class NetworkPipeline(OpenEnded, export.HubMixin, abc.ABC):
    """What the pipelines over one network and a textldm config share (the AR, masked-diffusion and SSD-LM
    families): the model folder (config.json naming the family, `<section>.safetensors`, the tokenizer, the card),
    the sampler settings, and the `Pipeline` protocol's common answers. A family sets `family`, `section` (its config
    section: the network is `network(config.<section>, vocab_size)` and its weights file `<section>.safetensors`),
    `network`, `command` (the one that trains it) and `card()`."""
    family: ClassVar[str]
    section: ClassVar[str]
    network: ClassVar[type]
    command: ClassVar[str]

    def __init__(self, config: Config, tokenizer, model, eot_id: int):
        self.config, self.tokenizer, self.model, self.eot_id = config, tokenizer, model, eot_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def settings(self, **overrides) -> SampleConfig:
        """config.sample with the given settings replaced (None: keep), checked."""
        return dataclasses.replace(self.config.sample, **{k: v for k, v in overrides.items() if v is not None})

    @abc.abstractmethod
    def card(self) -> export.CardText:
        """The model card's family-specific text (what the model is, its class, a usage line)."""

    def save_pretrained(self, path: Path | str, extra: dict | None = None) -> None:
        """Write the model folder (atomically): config.json, <section>.safetensors, tokenizer, model card. `extra`:
        more entries for config.json (e.g. the training report, which the card shows)."""
        meta = {"model_type": self.family, "config": to_dict(self.config), "vocab_size": self.model.vocab_size,
                "tokenizer": self.config.teacher.name, "eot_id": self.eot_id, **(extra or {})}
        export.write_model_folder(path, meta, {self.section: self.model}, self.tokenizer, self.card())

    @classmethod
    def from_pretrained(cls, name_or_path: Path | str, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, revision: str | None = None):
        """A saved model of this family from a local folder or a Hub repo id (`revision`: branch, tag or commit)."""
        device = resolve_device(device)
        path = export.locate_model_folder(name_or_path, revision, f"; train one with `textldm {cls.command}`")
        meta = export.read_model_config(path)
        if meta.get("model_type") != cls.family:
            raise UserError(f"'{path}' is a {meta.get('model_type')} checkpoint, not a {cls.family} one; load it "
                            f"with textldm.load_pipeline")
        config = config_from_dict(meta["config"])
        model = cls.network(getattr(config, cls.section), meta["vocab_size"])
        export.load_weights(model, path / f"{cls.section}.safetensors")
        model = model.eval().to(device=device, dtype=export.resolve_dtype(dtype))
        return cls(config, export.read_tokenizer(path), model, meta["eot_id"])

    def default_sample(self) -> SampleConfig:
        return self.config.sample


@dataclass(frozen=True)
class Command:
    """A command line command a family adds (`textldm NAME`): its help, the extra arguments it takes (name, keyword
    arguments of `add_argument`), and what it runs with the parsed arguments and the resolved config."""
    name: str
    help: str
    run: Callable  # run(args, cfg)
    arguments: tuple[tuple[str, dict], ...] = ()
    resume: bool = True  # takes --resume


@dataclass(frozen=True)
class Family:
    """A model family: its name (the model_type of its saved folders), what it is in a sentence, its pipeline class
    (`from_pretrained`, `save_pretrained`, the `Pipeline` protocol), its commands and its run-folder subfolder.
    `saves`: whether it has a textldm folder format (an HF causal LM has its own)."""
    name: str
    description: str
    pipeline: type
    commands: tuple[Command, ...] = field(default_factory=tuple)
    saves: bool = True
    folder: str = ""  # where its training stage saves the trained model in a run folder (OUT_DIR/<folder>)
    label: str = ""  # its name in a table's row (a contestant named after its folder: "demo (TextLDM)")
