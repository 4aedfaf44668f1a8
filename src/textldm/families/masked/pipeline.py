"""The masked-diffusion baselines' pipeline (MDLM, BD3-LM): tokenizer + MaskedDenoiser + its ancestral sampler
(sampling/masked.py), saved and loaded as one folder (`export.py`); its likelihood of given text is a bound (the
NELBO, `nll_bound`), not exact.

    pipe = MaskedPipeline.from_pretrained("runs/demo/masked")
    pipe.generate(["The President said that"], length=48, steps=64, top_p=0.95, seed=0)
"""
from __future__ import annotations

import torch

from textldm import export
from textldm.config import (
    Config,
    DiTConfig,
    MaskedConfig,
    SampleConfig,
    TeacherConfig,
)
from textldm.diffusion.masking import antithetic_times, elbo_weight, mask_tokens
from textldm.errors import UserError
from textldm.families.spec import NetworkPipeline, resolve_length, tokenize_prompts, truncate_prompts
from textldm.models.masked import MaskedDenoiser
from textldm.sampling.masked import MaskedSampler
from textldm.sampling.run import TokenRun
from textldm.utils import cut_at, resolve_device

SETTINGS = ("steps", "temperature", "top_p", "seed", "length")  # the sample.* fields its sampler reads


class MaskedPipeline(NetworkPipeline):
    """Tokenizer + MaskedDenoiser (same folder layout and guarantees as the other families): `generate`,
    `generate_ids`, and the `Pipeline` protocol."""
    family, section, network, command = "masked", "masked", MaskedDenoiser, "train-masked"
    streams = False
    sampler_settings = frozenset(SETTINGS)

    def __init__(self, config: Config, tokenizer, model: MaskedDenoiser, eot_id: int):
        super().__init__(config, tokenizer, model, eot_id)
        self.sampler = MaskedSampler(model, config.masked_seq_len, self.prompt_tokens(), eot_id)
        self.last_evaluations: list[int] = []  # the forward passes each row of the last call needed (NFE)

    @property
    def label(self) -> str:
        """MDLM, or BD3-LM with its block size."""
        return "MDLM" if self.model.block == 0 else f"BD3-LM (B={self.model.block})"

    @property
    def window(self) -> int:
        """The training window: the longest prompt + continuation the model reads at once."""
        return self.config.masked_seq_len

    def prompt_tokens(self) -> int:
        """How many of a prompt's last tokens a window holds: the DiT's dit.context_max (the same layout as TextLDM),
        rounded up to whole blocks (BD3-LM), and at most the window less one block so a continuation always fits."""
        step = max(self.model.block, 1)
        return min(-(-self.config.dit.context_max // step) * step, (self.window - step) // step * step)

    def longest_continuation(self, requested: int) -> int:
        """One window's continuation (the window less the prompt it keeps): what the harness scores up to, as for
        TextLDM (dit.target_max) and the AR baseline (half its window), so that every family is scored on equally
        long continuations."""
        return min(requested, self.window - self.prompt_tokens())

    # generation ---------------------------------------------------------------------------------------------
    def generate_ids(self, prompt_ids: list[list[int]], length: int | None = None, steps: int | None = None,
                     temperature: float | None = None, top_p: float | None = None, seed: int | None = None, *,
                     max_new_tokens: int | None = None, first_index: int = 0) -> list[list[int]]:
        """Up to `length` new tokens per prompt, cut at end-of-text; prompts keep their last `prompt_tokens()`
        tokens (with a warning). `steps`: ancestral steps per window (MDLM) or per block (BD3-LM). Prompt i's draws
        come from (seed, first_index + i): the same text whatever its batch."""
        s = self.settings(length=resolve_length(length, max_new_tokens, None), steps=steps, temperature=temperature,
                          top_p=top_p, seed=seed)
        prompts = truncate_prompts(prompt_ids, self.prompt_tokens(), "the tokens it reads")
        run = TokenRun(s, first_index)
        rows = self.sampler.generate(prompts, run)
        self.last_evaluations = run.evaluations
        return cut_at([row[: s.length] for row in rows], self.eot_id)

    def generate(self, prompts: list[str] | str, length: int | None = None, steps: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, seed: int | None = None, *,
                 max_new_tokens: int | None = None) -> list[str]:
        """Continue text prompts (the arguments mean what they mean for the other families)."""
        ids = tokenize_prompts(self.tokenizer, prompts)
        rows = self.generate_ids(ids, length, steps, temperature, top_p, seed, max_new_tokens=max_new_tokens)
        return [self.tokenizer.decode(row) for row in rows]

    # likelihood -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def nll_bound(self, context: list[int], continuation: list[int], draws: int = 16, seed: int = 0) -> float:
        """An estimate of the NELBO of `continuation` given `context` (nats, summed over its tokens): an upper bound
        on -log p(continuation | context) in expectation, averaged over `draws` stratified times per block. The
        context (its last prompt_tokens() tokens) stays clean; the continuation is scored window after window, each
        window's blocks at their own times (BD3-LM) or one time (MDLM)."""
        total, done, g = 0.0, 0, torch.Generator().manual_seed(seed)
        while done < len(continuation):
            left = (context + continuation[:done])[-self.prompt_tokens():]
            step = max(self.model.block, 1)
            pad = -len(left) % step
            n = min(len(continuation) - done, self.window - pad - len(left))
            tail = -(pad + len(left) + n) % step  # BD3-LM: the last block filled out with padding
            ids = torch.tensor([[0] * pad + left + continuation[done: done + n] + [0] * tail] * draws,
                               device=self.device)
            keys = torch.ones_like(ids, dtype=torch.bool)
            keys[:, :pad] = False
            keys[:, ids.shape[1] - tail:] = False
            total += self._window_nelbo(ids, keys, pad + len(left), g)
            done += n
        return total

    def _window_nelbo(self, ids: torch.Tensor, keys: torch.Tensor, start: int, g: torch.Generator) -> float:
        """The mean over rows (draws) of the NELBO terms of positions start.. of ids (draws, L)."""
        draws, L = ids.shape
        B = self.model.block or L
        t = antithetic_times(draws * (L // B), g).view(draws, L // B)
        per_token = t.repeat_interleave(B, dim=1).to(ids.device)
        uniforms = torch.rand(ids.shape, generator=g).to(ids.device)
        uniforms[:, :start] = 1.0  # the context is never masked, nor padding
        uniforms[~keys] = 1.0
        x_t, masked = mask_tokens(ids, per_token, uniforms, self.model.mask_id)
        weights = torch.where(masked, elbo_weight(per_token), torch.zeros_like(per_token)) / draws
        return self.model.weighted_nll(x_t, t.to(ids.device), ids, weights, key_mask=keys,
                                       clean=ids if self.model.block else None).item()

    # persistence ------------------------------------------------------------------------------------------
    def card(self) -> export.CardText:
        return export.CardText(self.family, f"a masked-diffusion baseline ({self.label}: absorbing-state discrete "
                               "diffusion) trained under TextLDM's settings", "MaskedPipeline",
                               'pipe.generate(["The President said that"], length=48, steps=64)', "masked-diffusion")

    @classmethod
    def from_hub(cls, name: str, *, device: str | torch.device = "cpu", revision: str | None = None,
                 context: int | None = None) -> MaskedPipeline:
        """A published MDLM / BD3-LM checkpoint by Hub id or folder (kuleshov-group's format: families/masked/hub.py)
        driven by this project's sampler and bound; `context`: the prompt tokens a window keeps (default: half its
        length)."""
        from textldm.families.masked.hub import load_hub_denoiser

        model, tokenizer = load_hub_denoiser(name, resolve_device(device), revision)
        L, step = model.length, max(model.block, 1)
        context = context or L // 2 // step * step
        cfg = Config(masked=MaskedConfig(block_size=model.block, seq_len=L),
                     dit=DiTConfig(context_min=1, context_max=context, target_min=1, target_max=L - context),
                     teacher=TeacherConfig(name=name))
        return cls(cfg, tokenizer, model, tokenizer.eos_token_id)

    # the Pipeline protocol (families.spec) --------------------------------------------------------------
    def continue_ids(self, prompt_ids: list[list[int]], length: int, *, sample: SampleConfig | None = None,
                     first_index: int = 0, callback=None) -> list[list[int]]:
        """`generate_ids` at `sample`'s steps, temperature, top-p and seed."""
        s = sample or self.config.sample
        return self.generate_ids(prompt_ids, length, s.steps, s.temperature, s.top_p, s.seed,
                                 first_index=first_index)

    def prompt_window(self, length: int, sample: SampleConfig | None = None) -> int:
        return self.prompt_tokens()

    def continuation_nll(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """A bound: the NELBO estimate `nll_bound` (16 stratified times per block)."""
        return self.nll_bound(context, continuation), False

    def token_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise UserError("a masked-diffusion model's likelihood of given tokens is a bound (the NELBO, "
                        "MaskedPipeline.nll_bound), not exact: loglikelihood tasks are not scored for it")
