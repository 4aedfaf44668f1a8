"""Any Hugging Face causal LM (a Hub name or a local folder) behind the `Pipeline` protocol, for evaluation beside the
textldm families (`textldm eval --model hf:NAME`): HF's `generate` with a KV cache, left-padded batches."""
from __future__ import annotations

import torch

from textldm.config import SampleConfig
from textldm.errors import UserError
from textldm.families.spec import OpenEnded
from textldm.models.lm import load_hf_model
from textldm.utils import cut_at, pad_rows


class HFPipeline(OpenEnded):
    """(tokenizer, frozen causal LM) of an HF model; its sampler settings are the evaluation's (temperature, top-k,
    top-p, seed), `max_new_tokens` its longest continuation."""
    family = "hf"
    streams = False
    sampler_settings = frozenset({"temperature", "top_k", "top_p", "seed", "length"})

    def __init__(self, name: str, tokenizer, model, max_new_tokens: int = 128):
        self.name, self.tokenizer, self.model, self.max_new_tokens = name, tokenizer, model, max_new_tokens

    @classmethod
    def from_pretrained(cls, name: str, *, device: str | torch.device = "cpu", max_new_tokens: int = 128,
                        **_unused) -> HFPipeline:
        tok, model = load_hf_model(name, str(device), causal=True,
                                   role="HF causal LM (not a textldm checkpoint either)")
        return cls(name, tok, model, max_new_tokens)

    @property
    def eot_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def default_sample(self) -> SampleConfig:
        return SampleConfig()

    @torch.no_grad()
    def continue_ids(self, prompt_ids: list[list[int]], length: int, *, sample: SampleConfig | None = None,
                     first_index: int = 0, callback=None) -> list[list[int]]:
        s, tok = sample or self.default_sample(), self.tokenizer
        device = next(self.model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        ids, mask = pad_rows(prompt_ids, fill=pad)  # left padding
        torch.manual_seed(s.seed)
        sampling = {"do_sample": False} if s.temperature == 0 else \
            {"do_sample": True, "temperature": s.temperature, "top_k": s.top_k or None, "top_p": s.top_p}
        P = ids.shape[1]
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.long().to(device),
                                  max_new_tokens=length, min_new_tokens=1, pad_token_id=pad, **sampling)[:, P:].tolist()
        return cut_at(out, tok.eos_token_id)

    def prompt_window(self, length: int, sample: SampleConfig | None = None) -> int:
        """The LM's positions less the longest continuation asked of it."""
        return getattr(self.model.config, "max_position_embeddings", 1024) - self.max_new_tokens

    def token_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise UserError(f"'{self.name}' is an HF model: score its likelihoods with lm-eval's own hf model class")

    @torch.no_grad()
    def continuation_nll(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Exact, in one forward over the context's last tokens that fit beside the continuation (its positions)."""
        room = getattr(self.model.config, "max_position_embeddings", 1024) - len(continuation)
        if room < 1:
            raise UserError(f"a continuation of {len(continuation)} tokens does not fit '{self.name}''s positions")
        ids = (context[-room:] if context else [self.eot_id or 0]) + continuation
        x = torch.tensor([ids], device=next(self.model.parameters()).device)
        logp = self.model(input_ids=x).logits[0, -len(continuation) - 1: -1].float().log_softmax(-1)
        return -float(logp.gather(1, x[0, -len(continuation):, None]).sum()), True
