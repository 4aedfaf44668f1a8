"""The AR baseline's pipeline: tokenizer + CausalLM, saved and loaded as one folder (`export.py`), sampled with
temperature / top-k / top-p (`models.ar.generate`), its likelihood of given text exact (`token_logprobs`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from textldm import export
from textldm.config import SampleConfig
from textldm.errors import UserError
from textldm.families.spec import NetworkPipeline, resolve_length
from textldm.models.ar import CausalLM, generate
from textldm.runtime.precision import bf16_autocast
from textldm.utils import cut_at


class ARPipeline(NetworkPipeline):
    """Tokenizer + CausalLM, saved and loaded as one folder (same layout and guarantees as TextLDMPipeline)."""
    family, section, network, command = "ar", "ar", CausalLM, "train-ar"
    streams = False
    sampler_settings = frozenset({"temperature", "top_k", "top_p", "seed", "length"})

    @property
    def seq_len(self) -> int:
        """The training window: the longest prompt + continuation the AR baseline reads."""
        return self.config.ar_seq_len

    def card(self) -> export.CardText:
        return export.CardText(self.family, "the autoregressive baseline (a causal Transformer) trained under "
                               "TextLDM's settings", "ARPipeline",
                               'pipe.generate(["The President said that"], length=48, top_p=0.95)', "autoregressive")

    def generate_ids(self, prompt_ids: list[list[int]], length: int | None = None, temperature: float | None = None,
                     top_k: int | None = None, top_p: float | None = None, seed: int | None = None, *,
                     max_new_tokens: int | None = None) -> list[list[int]]:
        """Up to `length` new tokens per prompt (`max_new_tokens`: the same, Hugging Face's name), trimmed at
        end-of-text; prompts are left-truncated to fit the training window. Settings not given: config.sample."""
        s = self.config.sample
        length = resolve_length(length, max_new_tokens, s.length)
        if not 1 <= length < self.seq_len:
            raise UserError(f"length {length} must be in 1..{self.seq_len - 1} (ar.seq_len)")
        keep = self.seq_len - length
        prompts = [p[-keep:] for p in prompt_ids]
        bf16 = next(self.model.parameters()).dtype == torch.bfloat16
        with bf16_autocast(self.device, bf16):
            out = generate(self.model, prompts, length, s.temperature if temperature is None else temperature,
                           s.top_k if top_k is None else top_k, s.top_p if top_p is None else top_p,
                           s.seed if seed is None else seed).tolist()
        return cut_at(out, self.eot_id)

    def generate(self, prompts: list[str] | str, length: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None, *,
                 max_new_tokens: int | None = None) -> list[str]:
        """Continue text prompts (the same arguments as TextLDMPipeline.generate where they mean the same)."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if not ids or any(not row for row in ids):
            raise UserError("every prompt needs at least one token; give some text")
        rows = self.generate_ids(ids, length, temperature, top_k, top_p, seed, max_new_tokens=max_new_tokens)
        return [self.tokenizer.decode(row) for row in rows]

    # the Pipeline protocol (families.spec) --------------------------------------------------------------
    def continue_ids(self, prompt_ids: list[list[int]], length: int, *, sample: SampleConfig | None = None,
                     first_index: int = 0, callback=None) -> list[list[int]]:
        """`generate_ids` at `sample`'s temperature, top-k, top-p and seed (one generator for the batch: the AR
        baseline's draws depend on the batch, unlike TextLDM's per-row noise)."""
        s = sample or self.config.sample
        return self.generate_ids(prompt_ids, length, s.temperature, s.top_k, s.top_p, s.seed)

    def prompt_window(self, length: int, sample: SampleConfig | None = None) -> int:
        """The training window less the continuation: what fits before `length` new tokens."""
        return self.seq_len - length

    def longest_continuation(self, requested: int) -> int:
        """At most half the training window, so that a prompt keeps the other half."""
        return min(requested, self.seq_len // 2)

    def most_tokens(self) -> int | None:
        """The training window, less one prompt token."""
        return self.seq_len - 1

    def continuation_nll(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Exact: -`token_logprobs`."""
        return -self.token_logprobs(context, continuation)[0], True

    @torch.no_grad()
    def token_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log p(continuation | context) (a non-empty context), and whether greedy decoding gives it exactly. Scored
        in pieces of at most the model's window, each read after the tokens just before it (up to a window in all),
        so a continuation of any length is scored whole."""
        ids, window, total, greedy = context + continuation, self.seq_len, 0.0, True
        for start in range(len(context), len(ids), window):
            end = min(start + window, len(ids))
            x = torch.tensor([ids[max(0, end - 1 - window): end - 1]], device=self.device)
            logp = F.log_softmax(self.model(x).float()[0, start - end:], dim=-1)  # predicts ids[start:end]
            target = torch.tensor(ids[start:end], device=logp.device)
            total += float(logp.gather(1, target[:, None]).sum())
            greedy = greedy and bool((logp.argmax(-1) == target).all())
        return total, greedy
