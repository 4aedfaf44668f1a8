"""SSD-LM's pipeline: tokenizer + SimplexDenoiser + its block sampler (sampling/ssd.py), saved and loaded as one folder
(`export.py`). No tractable likelihood of given text (nor a bound computed here).

    pipe = SSDPipeline.from_pretrained("runs/demo/ssd")
    pipe.generate(["The President said that"], length=50, steps=100, top_p=0.2, seed=0)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from textldm import export
from textldm.config import Config, SampleConfig, config_from_dict, to_dict
from textldm.errors import UserError
from textldm.families.spec import resolve_length, tokenize_prompts, truncate_prompts
from textldm.models.ssd import SimplexDenoiser
from textldm.sampling.run import TokenRun
from textldm.sampling.ssd import SSDSampler
from textldm.utils import cut_at, param_count, resolve_device


class SSDPipeline(export.HubMixin):
    """Tokenizer + SimplexDenoiser (the same folder layout and guarantees as the other families): `generate`,
    `generate_ids`, and the `Pipeline` protocol. Its sampler reads sample.steps (per block), sample.top_p (the
    projection's nucleus), sample.seed and sample.length."""
    family = "ssd"
    streams = False
    sampler_settings = frozenset({"steps", "top_p", "seed", "length"})
    label = "SSD-LM"

    def __init__(self, config: Config, tokenizer, model: SimplexDenoiser, eot_id: int):
        self.config, self.tokenizer, self.model, self.eot_id = config, tokenizer, model, eot_id
        self.sampler = SSDSampler(model, config.ssd_seq_len, eot_id)
        self.last_evaluations: list[int] = []

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def settings(self, **overrides) -> SampleConfig:
        return dataclasses.replace(self.config.sample, **{k: v for k, v in overrides.items() if v is not None})

    def generate_ids(self, prompt_ids: list[list[int]], length: int | None = None, steps: int | None = None,
                     top_p: float | None = None, seed: int | None = None, *, max_new_tokens: int | None = None,
                     first_index: int = 0) -> list[list[int]]:
        """Up to `length` new tokens per prompt, cut at end-of-text; prompts keep the window's context (its last
        window - B tokens, with a warning). Prompt i's noise comes from (seed, block, first_index + i)."""
        s = self.settings(length=resolve_length(length, max_new_tokens, None), steps=steps, top_p=top_p, seed=seed)
        prompts = truncate_prompts(prompt_ids, self.sampler.context, "the tokens it reads")
        run = TokenRun(s, first_index)
        rows = self.sampler.generate(prompts, run)
        self.last_evaluations = run.evaluations
        return cut_at([row[: s.length] for row in rows], self.eot_id)

    def generate(self, prompts: list[str] | str, length: int | None = None, steps: int | None = None,
                 top_p: float | None = None, seed: int | None = None, *,
                 max_new_tokens: int | None = None) -> list[str]:
        rows = self.generate_ids(tokenize_prompts(self.tokenizer, prompts), length, steps, top_p, seed,
                                 max_new_tokens=max_new_tokens)
        return [self.tokenizer.decode(row) for row in rows]

    def save_pretrained(self, path: Path | str, extra: dict | None = None) -> None:
        """Write the model folder (atomically): config.json, ssd.safetensors, tokenizer, model card."""
        meta = {"model_type": self.family, "config": to_dict(self.config), "vocab_size": self.model.vocab_size,
                "tokenizer": self.config.teacher.name, "eot_id": self.eot_id, **(extra or {})}
        card = export.CardText(self.family, "an SSD-LM baseline (simplex diffusion over token blocks, Han et al. 2023) "
                               "trained under TextLDM's settings", "SSDPipeline",
                               'pipe.generate(["The President said that"], length=50, steps=100, top_p=0.2)',
                               "simplex-diffusion")
        export.write_model_folder(path, meta, {"ssd": self.model}, self.tokenizer, card)

    @classmethod
    def from_pretrained(cls, name_or_path: Path | str, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, revision: str | None = None) -> SSDPipeline:
        device = resolve_device(device)
        path = export.locate_model_folder(name_or_path, revision, "; train one with `textldm train-ssd`")
        meta = export.read_model_config(path)
        if meta.get("model_type") != cls.family:
            raise UserError(f"'{path}' is not an SSD-LM checkpoint (model_type {meta.get('model_type')!r})")
        config = config_from_dict(meta["config"])
        model = SimplexDenoiser(config.ssd, meta["vocab_size"])
        export.load_weights(model, path / "ssd.safetensors")
        model = model.eval().to(device=device, dtype=export.resolve_dtype(dtype))
        return cls(config, export.read_tokenizer(path), model, meta["eot_id"])

    # the Pipeline protocol (families.spec) --------------------------------------------------------------
    def default_sample(self) -> SampleConfig:
        return self.config.sample

    def continue_ids(self, prompt_ids: list[list[int]], length: int, *, sample: SampleConfig | None = None,
                     first_index: int = 0, callback=None) -> list[list[int]]:
        s = sample or self.config.sample
        return self.generate_ids(prompt_ids, length, s.steps, s.top_p, s.seed, first_index=first_index)

    def prompt_window(self, length: int, sample: SampleConfig | None = None) -> int:
        return self.sampler.context

    def longest_continuation(self, requested: int) -> int:
        return requested

    def parameters(self) -> int:
        return param_count(self.model)

    def most_tokens(self) -> int | None:
        return None

    def trained_lengths(self) -> tuple[int, int] | None:
        return None

    def token_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise UserError("an SSD-LM model has no tractable likelihood of given tokens: loglikelihood tasks are not "
                        "scored for it")

    def continuation_nll(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise UserError("an SSD-LM model has no tractable likelihood (nor a bound computed here) of given tokens")
