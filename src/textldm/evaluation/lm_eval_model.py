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

import json
import logging
from collections import defaultdict

import torch
import torch.nn.functional as F

from textldm.errors import UserError
from textldm.pipeline import ARPipeline, load_pipeline
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
    def is_ar(self) -> bool:
        return isinstance(self.pipe, ARPipeline)

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
        """Continuations of one batch; a TextLDM row's noise is that of its place in the task's requests
        (`first_index` + row), so answers do not depend on the batch size."""
        if self.is_ar:
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            return self.pipe.generate(contexts, length=min(length, self.pipe.seq_len - 1), temperature=temperature,
                                      seed=self.sampler.get("seed"))
        rows = self.pipe.generate_ids(self.pipe.encode_prompts(contexts), length, first_index=first_index,
                                      **self.sampler)
        return [self.pipe.tokenizer.decode(row) for row in rows]

    # likelihoods ----------------------------------------------------------------------------------------
    def _refuse(self, what: str):
        raise UserError(f"{what}: a TextLDM model has no tractable likelihood of given tokens here, so loglikelihood "
                        f"tasks (multiple choice, perplexity) are not scored for it; run generate_until tasks, or "
                        f"score its AR baseline (the same class reads either kind of model)")

    @torch.no_grad()
    def _token_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log p(continuation | context) under the AR baseline (a non-empty context), and whether greedy decoding gives
        it exactly. Scored in pieces of at most the model's window, each read after the tokens just before it (up to
        a window in all), so a continuation of any length is scored whole."""
        ids, window, total, greedy = context + continuation, self.pipe.seq_len, 0.0, True
        for start in range(len(context), len(ids), window):
            end = min(start + window, len(ids))
            x = torch.tensor([ids[max(0, end - 1 - window): end - 1]], device=self.pipe.device)
            logp = F.log_softmax(self.pipe.model(x).float()[0, start - end:], dim=-1)  # predicts ids[start:end]
            target = torch.tensor(ids[start:end], device=logp.device)
            total += float(logp.gather(1, target[:, None]).sum())
            greedy = greedy and bool((logp.argmax(-1) == target).all())
        return total, greedy

    def _encode(self, text: str) -> list[int]:
        return self.pipe.tokenizer(text, add_special_tokens=False)["input_ids"]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy match) per request: the AR baseline only."""
        if not self.is_ar:
            self._refuse("loglikelihood")
        out = []
        for request in requests:
            context, continuation = request.args
            prefix = self._encode(context) or [self.pipe.eot_id]  # an empty context: predicted from end-of-text
            out.append(self._token_logprobs(prefix, self._encode(continuation)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) per request, after end-of-text, in windows of the AR baseline's context, each token once."""
        if not self.is_ar:
            self._refuse("loglikelihood_rolling")
        return [self._token_logprobs([self.pipe.eot_id], self._encode(r.args[0]))[0] for r in requests]
