"""The OpenAI-compatible routes of `textldm serve`, so existing clients, gateways and evaluation tools can take the
server as a base URL:

    GET  /v1/models           the served models: the TextLDM model and, when started with --ar, the AR baseline
    POST /v1/completions      prompt (a string or a list), max_tokens, n, seed, stop, stream; TextLDM's own sampler
                              settings (steps, cfg_scale, solver, grid, cfg_min_t, cfg_max_t, precision) as extra
                              fields; temperature / top_p reach the AR baseline (TextLDM samples by its ODE: it
                              accepts them and ignores them)

Answers have the OpenAI shapes (`text_completion` objects, `usage` counts, errors as {"error": {"message", "type",
"param", "code"}} with 400/401/404/413/429/503). stream=true sends one server-sent `data:` chunk per committed
window or block (as the web app's live view commits them), then `data: [DONE]`. The requests share the service's
admission limits, queue and deadline with the /api routes. There is no /v1/chat/completions: these are base
models that continue text; a chat template would be a format they never saw in training.
"""
import dataclasses
import json
import secrets
import time
from typing import Literal

from pydantic import ConfigDict, Field, create_model

from textldm.config import Grid, SampleConfig, SamplePrecision
from textldm.diffusion.sampling import SOLVERS, STOP
from textldm.errors import UserError
from textldm.serving.service import GenerationService, NotLoaded
from textldm.utils import cut_at, cut_at_stop

MAX_STOP = 4  # stop sequences per request, as OpenAI allows
UNSUPPORTED = {  # OpenAI fields without a meaning here: (the values that ask for nothing, why anything else fails)
    "echo": ((None, False), "echo is not supported (the prompt is not part of the answer)"),
    "logprobs": ((None,), "logprobs are not available: a diffusion LM has no per-token likelihood here"),
    "suffix": ((None, ""), "suffix (insertion) is not supported on /v1/completions; use POST /api/infill"),
    "best_of": ((None, 1), "best_of is not supported; ask for n choices")}


def completion_request(limits, defaults: dict):
    """The /v1/completions body for a server with these limits and these sampler defaults."""
    def optional(tp, **kw):
        return tp | None, Field(None, **kw)

    fields = {
        "model": optional(str, description="a served model id (GET /v1/models); default: the TextLDM model"),
        "prompt": (str | list[str], Field(..., description="text to continue, or a list of texts")),
        "max_tokens": (int, Field(min(defaults["length"], limits.max_length), ge=1, le=limits.max_length)),
        "n": (int, Field(1, ge=1, le=limits.max_choices, description="continuations per prompt")),
        "seed": optional(int, ge=0, le=2**31 - 1), "stop": optional(str | list[str]),
        "stream": (bool, Field(False)), "user": optional(str),
        "temperature": optional(float, ge=0.0, le=10.0, description="AR baseline only"),
        "top_p": optional(float, gt=0.0, le=1.0, description="AR baseline only"),
        "frequency_penalty": optional(float), "presence_penalty": optional(float), "logit_bias": optional(dict),
        **{name: optional(object) for name in UNSUPPORTED},
        # textldm's own sampler settings (None: the model's default, or the server's --precision)
        "steps": optional(int, ge=1, le=limits.max_steps),
        "cfg_scale": optional(float, ge=0.0, le=limits.max_cfg_scale, allow_inf_nan=False),
        "solver": optional(Literal[tuple(SOLVERS)]), "grid": optional(Grid),
        "cfg_min_t": optional(float, ge=0.0, le=1.0), "cfg_max_t": optional(float, ge=0.0, le=1.0),
        "precision": optional(SamplePrecision),
    }
    return create_model("CompletionRequest", __config__=ConfigDict(extra="forbid"), **fields)


# the request fields that are sampler settings (`SampleConfig`'s); each served model reads those of its family
SAMPLE_FIELDS = ("steps", "cfg_scale", "solver", "grid", "cfg_min_t", "cfg_max_t", "precision", "seed", "temperature",
                 "top_p")


class OpenAIFacade:
    """Translates /v1 requests into the generation service's jobs and their answers into OpenAI's shapes. The served
    models are the service's (the page's model, and the one beside it), each by its id or by its family's name."""

    def __init__(self, service: GenerationService, model_id: str, ar_id: str | None, defaults):
        self.service, self.defaults, self.main_id = service, defaults, model_id
        self.served = {model_id: service.pipe, **({ar_id: service.ar} if ar_id else {})}
        self.created = int(time.time())

    def models(self) -> dict:
        """GET /v1/models."""
        return {"object": "list", "data": [{"id": i, "object": "model", "created": self.created, "owned_by": "textldm"}
                                           for i in self.served]}

    def served_id(self, model: str | None) -> str:
        """The served model a request names - its id, its family's name ("textldm", "ar"), or None for the page's
        model - or NotLoaded (404)."""
        if model is None:
            return self.main_id
        if model in self.served:
            return model
        by_family = {}
        for served_id, pipe in self.served.items():
            by_family.setdefault(pipe.family, served_id)
        if model in by_family:
            return by_family[model]
        raise NotLoaded(f"model '{model}' is not served here; GET /v1/models lists {', '.join(self.served)}")

    def pipeline(self, model: str | None):
        """The pipeline that answers requests for `model`: its completions are its `continue_ids`."""
        return self.served[self.served_id(model)]

    def streams(self, model: str | None) -> bool:
        """Whether `model` answers stream=true (a model that streams its steps: TextLDM, window by window)."""
        return self.pipeline(model).streams

    def sample(self, req, pipe) -> SampleConfig:
        """The request's sampler settings over the model's own (each model reads its family's: TextLDM the diffusion
        ones, the AR baseline temperature and top-p), checked now: a 400 before admission, e.g. cfg_min_t >
        cfg_max_t. The server's --precision is the default precision."""
        given = {k: getattr(req, k) for k in SAMPLE_FIELDS}
        given["precision"] = given["precision"] or self.defaults.precision
        return dataclasses.replace(pipe.default_sample(), length=req.max_tokens,
                                   **{k: v for k, v in given.items() if v is not None})

    def check(self, req) -> tuple[str, list[str], list[str]]:
        """(served model id, prompts, stop sequences) of a request, or a UserError (400) before any work."""
        for name, (harmless, why) in UNSUPPORTED.items():
            if getattr(req, name) not in harmless:
                raise UserError(f"{name}: {why}")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) * req.n > self.service.limits.max_choices:
            raise UserError(f"give 1..{self.service.limits.max_choices} choices in all (prompts x n); got "
                            f"{len(prompts)} x {req.n}")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise UserError(f"stop: at most {MAX_STOP} non-empty sequences")
        if req.stream and (len(prompts) > 1 or req.n > 1):
            raise UserError("stream=true streams one continuation: give one prompt and n=1")
        served = self.served_id(req.model)
        if req.stream and not self.served[served].streams:
            raise UserError(f"stream=true is for a model that streams its steps (the TextLDM model); '{served}' "
                            f"answers whole")
        return served, prompts, stops

    def job(self, req):
        """The job answering a non-streamed request (checked now)."""
        served, prompts, stops = self.check(req)
        pipe = self.served[served]
        sample = self.sample(req, pipe)
        prompt_ids = [self.service.prompt_ids(p, pipe=pipe, length=req.max_tokens, sample=sample) for p in prompts]
        rows = [ids for ids in prompt_ids for _ in range(req.n)]

        def job(callback):
            out = pipe.continue_ids(rows, req.max_tokens, sample=sample, callback=callback if pipe.streams else None)
            choices = [choice(pipe.tokenizer, i, row, req.max_tokens, stops) for i, row in enumerate(out)]
            return self.answer(served, choices, sum(len(ids) for ids in prompt_ids))  # a prompt once, whatever n
        return job

    @staticmethod
    def answer(model: str, choices: list[dict], prompt_tokens: int) -> dict:
        """The completion object; `usage` as OpenAI defines it: prompt_tokens = the tokens of each prompt the model
        read (after the context cut), once per prompt; completion_tokens = the tokens of every choice's text."""
        completion = sum(c.pop("_tokens") for c in choices)
        return {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    def stream(self, req):
        """The server-sent chunks of a streamed request (checked now, before admission)."""
        served, prompts, stops = self.check(req)
        pipe = self.served[served]
        sample = self.sample(req, pipe)
        ids = self.service.prompt_ids(prompts[0], pipe=pipe, length=req.max_tokens, sample=sample)
        cid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())

        def chunk(text: str, reason: str | None) -> dict:
            return {"id": cid, "object": "text_completion", "created": created, "model": served,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}]}

        def job(callback):
            row = pipe.continue_ids([ids], req.max_tokens, sample=sample, callback=callback)[0]
            return callback.finish(row)

        def encode(kind: str, data: dict) -> str:
            if kind == "chunk":
                return sse_data(chunk(data["text"], None))
            if kind == "done":
                return sse_data(chunk(data["text"], data["finish_reason"])) + "data: [DONE]\n\n"
            return sse_data(openai_error(500, data["error"])) + "data: [DONE]\n\n"  # a failure mid-stream

        def make_callback(emit, check):
            return CommittedText(pipe, stops, req.max_tokens, emit, check)

        return self.service.stream_events(job, make_callback, encode)


def choice(tokenizer, index: int, ids: list[int], max_tokens: int, stops: list[str]) -> dict:
    """One `choices` entry (and its token count, popped by `answer`): the text cut at the first stop sequence."""
    text, reason = cut_at_stop(tokenizer.decode(ids), stops)
    if reason is None:
        reason = "length" if len(ids) >= max_tokens else "stop"  # shorter: an end-of-text ended it
    return {"text": text, "index": index, "logprobs": None, "finish_reason": reason,
            "_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"])}


class CommittedText:
    """The step callback of a streamed completion: at each window's or block's last step it decodes what that
    window committed (beside its prefix, as the final text will be) and emits the new text; once a stop sequence
    appears it emits the text before it and stops the sampler."""

    def __init__(self, pipe, stops: list[str], max_tokens: int, emit, check):
        self.pipe, self.stops, self.max_tokens, self.emit, self.check = pipe, stops, max_tokens, emit, check
        self.ids, self.sent, self.stopped = [], "", False

    reads_tokens = True  # the sampler passes the step's decoder (`sampling.SamplingRun`)

    def __call__(self, step: int, t: float, x, decode):
        self.check()
        if t < 1.0:  # every time grid ends at t = 1: that step commits the window (or block)
            return None
        self.ids += decode(x[:1])[0]
        text, reason = cut_at_stop(self.pipe.tokenizer.decode(cut_at([self.ids], self.pipe.eot_id)[0]), self.stops)
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.emit("chunk", {"text": text[len(self.sent):]})
            self.sent = text
        if reason == "stop" or self.pipe.eot_id in self.ids:
            self.stopped = True
            return STOP
        return None

    def finish(self, row: list[int]) -> dict:
        """The last chunk: whatever of the final text was not sent yet, and why the text ended."""
        text, reason = cut_at_stop(self.pipe.tokenizer.decode(row), self.stops)
        rest = text[len(self.sent):] if text.startswith(self.sent) else ""
        if reason is None:
            reason = "length" if len(row) >= self.max_tokens and not self.stopped else "stop"
        return {"text": rest, "finish_reason": reason}


def sse_data(payload: dict) -> str:
    """One server-sent `data:` line, as OpenAI streams them."""
    return f"data: {json.dumps(payload)}\n\n"


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error", 504: "server_error"}


def openai_error(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}.get(status)}}
