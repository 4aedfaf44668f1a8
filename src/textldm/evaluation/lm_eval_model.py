"""textldm models in EleutherAI's lm-evaluation-harness: the model class `textldm`, for TextLDM models and the AR
baseline alike (what the folder's config.json says), loaded from a folder, a run folder or a Hub repo id.

    textldm lm-eval --model textldm --model_args pretrained=runs/demo --tasks TASKS [lm-eval's options]
    python -c "import textldm.evaluation.lm_eval_model, lm_eval; lm_eval.simple_evaluate(model='textldm', ...)"

(lm-eval discovers no model plugins by itself: importing this module registers the class, after lm-eval's own.)

- generate_until: batched (`batch_size`), each request's stop sequences (`until`) cut the text, `max_gen_toks`
  its length. TextLDM samples by its ODE: `do_sample` / `temperature` do not apply to it; its sampler settings
  come from model_args (steps, cfg_scale, solver, seed) or the model's defaults. The AR baseline samples greedily
  unless a task asks for `do_sample` with a temperature.
- loglikelihood / loglikelihood_rolling: the AR baseline computes them exactly. TextLDM refuses, by name: a
  continuous latent diffusion model has no tractable likelihood of given tokens here (an ELBO over the flow would be
  a bound of an unknown gap, not comparable with AR log-likelihoods), so multiple-choice and perplexity tasks are
  not scored for it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict

import torch

from textldm.errors import UserError
from textldm.families import load_pipeline, truncate_prompts
from textldm.utils import cut_at_stop

try:
    import lm_eval.models  # noqa: F401  (the harness's own models first: lm-eval imports them only into an empty registry)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the message is what a user without the package sees
    raise UserError("the lm-evaluation-harness integration needs lm-eval: pip install 'textldm[lm-eval]'") from None

log = logging.getLogger(__name__)
SAMPLER_ARGS = ("steps", "cfg_scale", "solver", "seed")


@register_model("textldm")
class TextLDMHarnessModel(LM):
    """A textldm model (TextLDM or the AR baseline) as an lm-evaluation-harness LM."""

    def __init__(self, pretrained: str, device: str = "cpu", batch_size: int | str = 16, revision: str | None = None,
                 max_gen_toks: int = 256, steps: int | None = None, cfg_scale: float | None = None,
                 solver: str | None = None, seed: int | None = None, **_harness_kwargs):
        super().__init__()
        if str(device).startswith("cuda") and not torch.cuda.is_available():  # lm-eval's default device is cuda
            log.warning("no CUDA device here: running %s on the CPU", pretrained)
            device = "cpu"
        self.pipe = load_pipeline(pretrained, device=device, revision=revision)
        self.batch = int(batch_size) if str(batch_size).isdigit() else 16  # "auto" has no meaning on a CPU here
        self.max_gen_toks = int(max_gen_toks)
        self.sampler = {k: v for k, v in zip(SAMPLER_ARGS, (steps, cfg_scale, solver, seed)) if v is not None}
        for key, cast in (("steps", int), ("cfg_scale", float), ("seed", int)):
            if key in self.sampler:
                self.sampler[key] = cast(self.sampler[key])

    @property
    def tokenizer_name(self) -> str:
        return self.pipe.config.teacher.name

    # generation -----------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation, cut at its first stop sequence; requests with the same generation settings
        run in batches. Noise rows are numbered over all requests (grouped by settings, in order of first
        appearance), so no two requests share noise."""
        out: list[str | None] = [None] * len(requests)
        groups = defaultdict(list)
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            groups[json.dumps(gen_kwargs, sort_keys=True, default=str)].append((i, context))
        offset = 0  # the noise row of a group's first request
        for key, items in groups.items():
            kwargs = json.loads(key)
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            length = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            for start in range(0, len(items), self.batch):
                chunk = items[start: start + self.batch]
                texts = self._generate([c for _, c in chunk], length, kwargs, first_index=offset + start)
                for (i, _), text in zip(chunk, texts):
                    out[i] = cut_at_stop(text, until)[0]
            offset += len(items)
        return out

    def _generate(self, contexts: list[str], length: int, kwargs: dict, first_index: int) -> list[str]:
        """Continuations of one batch under the model_args' sampler settings (a task's do_sample temperature for the
        models that sample by one); a TextLDM row's noise is that of its place in the task's requests (`first_index` +
        row), so answers do not depend on the batch size."""
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        sample = dataclasses.replace(self.pipe.default_sample(), **self.sampler, temperature=temperature)
        most = self.pipe.most_tokens()
        length = length if most is None else min(length, most)
        ids = [self._encode(c) for c in contexts]
        if any(not row for row in ids):
            raise UserError("a generate_until request has an empty context; every prompt needs at least one token")
        ids = truncate_prompts(ids, self.pipe.prompt_window(length, sample), "the tokens it reads")
        rows = self.pipe.continue_ids(ids, length, sample=sample, first_index=first_index)
        return [self.pipe.tokenizer.decode(row) for row in rows]

    # likelihoods ----------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.pipe.tokenizer(text, add_special_tokens=False)["input_ids"]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy match) per request, from the model's `token_logprobs` (a family
        without a likelihood says why: TextLDM)."""
        out = []
        for request in requests:
            context, continuation = request.args
            prefix = self._encode(context) or [self.pipe.eot_id]  # an empty context: predicted from end-of-text
            out.append(self._logprobs("loglikelihood", prefix, self._encode(continuation)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) per request, after end-of-text, in windows of the model's context, each token once."""
        return [self._logprobs("loglikelihood_rolling", [self.pipe.eot_id], self._encode(r.args[0]))[0]
                for r in requests]

    def _logprobs(self, what: str, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        try:
            return self.pipe.token_logprobs(context, continuation)
        except UserError as e:
            raise UserError(f"{what}: {e}") from None
