"""SSD-LM's pipeline: tokenizer + SimplexDenoiser + its block sampler (sampling/ssd.py), saved and loaded as one folder
(`export.py`). No tractable likelihood of given text (nor a bound computed here).

    pipe = SSDPipeline.from_pretrained("runs/demo/ssd")
    pipe.generate(["The President said that"], length=50, steps=100, top_p=0.2, seed=0)
    pipe.generate(["The President said that"], top_p=0.9, projection="sampling")  # the authors' other decode
"""
from __future__ import annotations

import dataclasses

import torch

from textldm import export
from textldm.config import Config, SampleConfig, TeacherConfig
from textldm.errors import UserError
from textldm.families.spec import NetworkPipeline, resolve_length, tokenize_prompts, truncate_prompts
from textldm.models.ssd import SimplexDenoiser
from textldm.sampling.run import TokenRun
from textldm.sampling.ssd import SSDSampler
from textldm.utils import cut_at, resolve_device


class SSDPipeline(NetworkPipeline):
    """Tokenizer + SimplexDenoiser (the same folder layout and guarantees as the other families): `generate`,
    `generate_ids`, and the `Pipeline` protocol. Its sampler reads sample.steps (per block), sample.top_p (the
    projection's nucleus), sample.projection, sample.seed and sample.length."""
    family, section, network, command = "ssd", "ssd", SimplexDenoiser, "train-ssd"
    streams = False
    sampler_settings = frozenset({"steps", "top_p", "projection", "seed", "length"})
    label = "SSD-LM"

    def __init__(self, config: Config, tokenizer, model: SimplexDenoiser, eot_id: int):
        super().__init__(config, tokenizer, model, eot_id)
        self.sampler = SSDSampler(model, config.ssd_seq_len, eot_id)
        self.last_evaluations: list[int] = []

    def generate_ids(self, prompt_ids: list[list[int]], length: int | None = None, steps: int | None = None,
                     top_p: float | None = None, seed: int | None = None, *, max_new_tokens: int | None = None,
                     projection: str | None = None, first_index: int = 0) -> list[list[int]]:
        """Up to `length` new tokens per prompt, cut at end-of-text; prompts keep the window's context (its last
        window - B tokens, with a warning). Prompt i's noise comes from (seed, block, first_index + i)."""
        s = self.settings(length=resolve_length(length, max_new_tokens, None), steps=steps, top_p=top_p, seed=seed,
                          projection=projection)
        prompts = truncate_prompts(prompt_ids, self.sampler.context, "the tokens it reads")
        run = TokenRun(s, first_index)
        rows = self.sampler.generate(prompts, run)
        self.last_evaluations = run.evaluations
        return cut_at([row[: s.length] for row in rows], self.eot_id)

    def generate(self, prompts: list[str] | str, length: int | None = None, steps: int | None = None,
                 top_p: float | None = None, seed: int | None = None, *,
                 max_new_tokens: int | None = None, projection: str | None = None) -> list[str]:
        rows = self.generate_ids(tokenize_prompts(self.tokenizer, prompts), length, steps, top_p, seed,
                                 max_new_tokens=max_new_tokens, projection=projection)
        return [self.tokenizer.decode(row) for row in rows]

    def card(self) -> export.CardText:
        return export.CardText(self.family, "an SSD-LM baseline (simplex diffusion over token blocks, Han et al. "
                               "2023) trained under TextLDM's settings", "SSDPipeline",
                               'pipe.generate(["The President said that"], length=50, steps=100, top_p=0.2)',
                               "simplex-diffusion")

    @classmethod
    def from_hub(cls, name: str, *, device: str | torch.device = "cpu", revision: str | None = None) -> SSDPipeline:
        """The published SSD-LM checkpoint (`xhan77/ssdlm`, or a folder in its layout: families/ssd/hub.py) driven by
        this project's sampler, in a window of 200 tokens (the paper's training length): a context of 175."""
        from textldm.families.ssd.hub import load_hub_simplex

        model, tokenizer = load_hub_simplex(name, resolve_device(device), revision)
        cfg = Config(ssd=dataclasses.replace(model.cfg, seq_len=200), teacher=TeacherConfig(name=name))
        return cls(cfg, tokenizer, model, tokenizer.eos_token_id)

    # the Pipeline protocol (families.spec) --------------------------------------------------------------
    def continue_ids(self, prompt_ids: list[list[int]], length: int, *, sample: SampleConfig | None = None,
                     first_index: int = 0, callback=None) -> list[list[int]]:
        s = sample or self.config.sample
        return self.generate_ids(prompt_ids, length, s.steps, s.top_p, s.seed, projection=s.projection,
                                 first_index=first_index)

    def prompt_window(self, length: int, sample: SampleConfig | None = None) -> int:
        return self.sampler.context

    def longest_continuation(self, requested: int) -> int:
        """At most half the window, as for the AR baseline (a prompt keeps the other half): every family is scored
        by the harness on equally long continuations."""
        return min(requested, self.sampler.window // 2)

    def token_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise UserError("an SSD-LM model has no tractable likelihood of given tokens: loglikelihood tasks are not "
                        "scored for it")

    def continuation_nll(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise UserError("an SSD-LM model has no tractable likelihood (nor a bound computed here) of given tokens")
