"""The generation service behind the routes: admission, the queue, each job's deadline and cancellation in one
place, and the jobs themselves (continue, infill, the AR baseline).

One generation runs at a time on a worker thread (the model is compute-bound; two at once would only share the
cores). At most `max_queue` more wait; beyond that `admit` raises Busy at once. Every job has a deadline (the
per-request timeout, queueing included) checked between sampling steps; a cancelled job (its streaming client
went away) stops at its next step.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from textldm.errors import UserError
from textldm.families import truncate_prompts
from textldm.serving.trajectory import Trajectory

log = logging.getLogger(__name__)
Job = Callable[[Callable], dict]  # job(callback) -> the JSON answer; callback(step, t, x) after every sampling step


@dataclass
class ServeLimits:
    """What one request may ask for; anything outside is a 4xx before any work is done."""
    max_prompt_chars: int = 4000
    max_length: int = 256  # continuation tokens
    max_steps: int = 200
    max_cfg_scale: float = 30.0
    max_body_bytes: int = 65536
    max_queue: int = 4  # requests waiting behind the one running
    timeout_s: float = 120.0  # per request, queueing included
    max_choices: int = 16  # continuations in one /v1/completions request (prompts x n)


class Busy(Exception):
    """Every slot is taken (503)."""


class JobTimeout(Exception):
    """The request ran past the server's time limit (504)."""


class Cancelled(Exception):
    """The client went away."""


class NotLoaded(Exception):
    """The request needs a model the server was not started with (404)."""


EXPECTED = (UserError, JobTimeout, Cancelled)  # job failures answered with their own message


class GenerationService:
    """`pipe` (a TextLDMPipeline: the model the page shows denoising) and optionally `ar` (a model of any family beside
    it: `families.Pipeline`; the AR baseline by default), one job at a time, at most 1 + max_queue admitted."""

    def __init__(self, pipe, ar=None, limits: ServeLimits | None = None):
        self.pipe, self.ar, self.limits = pipe, ar, limits or ServeLimits()
        self.capacity, self.admitted, self.completed = 1 + self.limits.max_queue, 0, 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textldm-generate")

    # admission, deadline, cancellation ------------------------------------------------------------------
    def health(self) -> dict:
        """What /api/health answers: admitted, capacity, completed."""
        return {"status": "ok", "admitted": self.admitted, "capacity": self.capacity, "completed": self.completed}

    def admit(self) -> None:
        """Take a slot, or raise Busy when 1 + max_queue are running or waiting."""
        with self._lock:
            if self.admitted >= self.capacity:
                raise Busy(f"busy: {self.admitted} requests are running or queued (limit {self.capacity}); "
                           f"retry in a few seconds")
            self.admitted += 1

    def _release(self) -> None:
        with self._lock:
            self.admitted -= 1
            self.completed += 1

    def submit(self, job: Job, cancelled: threading.Event, on_step: Callable | None = None) -> Future:
        """Run `job` on the worker (the caller has admitted it; its slot is freed when it ends). Its step callback
        raises once the deadline passed or the job was cancelled; `on_step(check)` may build a richer one."""
        deadline = time.monotonic() + self.limits.timeout_s

        def check():
            if cancelled.is_set():
                raise Cancelled("the client went away")
            if time.monotonic() > deadline:
                raise JobTimeout(f"the request ran past the server's {self.limits.timeout_s:g} s limit; ask for fewer "
                                 f"steps or a shorter length")

        callback = on_step(check) if on_step else (lambda *_: check())

        def run():
            try:
                check()
                return job(callback)
            finally:
                self._release()

        return self._executor.submit(run)

    async def run(self, job: Job) -> dict:
        """Admit (or raise Busy), run on the worker, return its answer (or raise its failure)."""
        self.admit()
        return await asyncio.wrap_future(self.submit(job, threading.Event()))

    def stream(self, job: Job, steps: int) -> AsyncIterator[str]:
        """Admit (or raise Busy) now; the returned iterator yields server-sent events: a `step` per sampling step,
        then `done` with the answer (or `error`). Closing it early cancels the job at its next step."""
        return self.stream_events(job, lambda emit, check: Trajectory(self.pipe, steps, lambda d: emit("step", d),
                                                                      check), sse_event)

    def stream_events(self, job: Job, make_callback: Callable,
                      encode: Callable[[str, dict], str]) -> AsyncIterator[str]:
        """Admit (or raise Busy) now; run `job` with the step callback `make_callback(emit, check)` builds, and yield
        `encode(kind, data)` for each event it emits, then for ("done", answer) or ("error", {"error": line})."""
        self.admit()
        loop, events, cancelled = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def emit(kind: str, data: dict):
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))

        future = self.submit(job, cancelled, lambda check: make_callback(emit, check))
        future.add_done_callback(lambda f: emit(*_outcome(f)))

        async def body():
            try:
                while True:
                    kind, data = await events.get()
                    text = encode(kind, data)
                    if text:
                        yield text
                    if kind in ("done", "error"):
                        return
            finally:  # the client went away (or the stream ended): stop the job at its next step
                cancelled.set()

        return body()

    def shutdown(self) -> None:
        """Stop the worker thread (pending jobs are cancelled)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # the jobs ---------------------------------------------------------------------------------------------
    def prompt_ids(self, text: str, what: str = "prompt", pipe=None, length: int = 0, sample=None) -> list[int]:
        """Token ids of a prompt for `pipe` (default: the page's model), cut to what it reads before `length` new
        tokens as everywhere (`families.truncate_prompts`)."""
        pipe = pipe or self.pipe
        ids = pipe.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids or not text.strip():
            raise UserError(f"the {what} has no tokens; give some text")
        return truncate_prompts([ids], pipe.prompt_window(length, sample), "the tokens it reads")[0]

    def sampler_args(self, req) -> dict:
        """A request's sampler settings, checked now (a 400 before admission, e.g. cfg_min_t > cfg_max_t)."""
        args = {"steps": req.steps, "cfg_scale": req.cfg_scale, "solver": req.solver, "seed": req.seed,
                "grid": req.grid, "cfg_min_t": req.cfg_min_t, "cfg_max_t": req.cfg_max_t, "precision": req.precision}
        self.pipe.settings(length=req.length, **args)
        return args

    def generate_job(self, req) -> Job:
        """The job continuing `req.prompt` (its prompt is checked now, before admission)."""
        ids, args = self.prompt_ids(req.prompt), self.sampler_args(req)

        def job(callback):
            start = time.perf_counter()
            row = self.pipe.generate_ids([ids], req.length, callback=callback, **args)[0]
            return {"prompt": req.prompt, "continuation": self.pipe.tokenizer.decode(row), "tokens": len(row),
                    "evaluations": self.pipe.last_evaluations, "seconds": _since(start)}
        return job

    def infill_job(self, req) -> Job:
        """The job filling the gap between `req.left` and `req.right` (checked now)."""
        if self.pipe.dit.segment.num_embeddings < 3:
            raise UserError("this model was not trained for infilling; train its DiT with dit.window.infill_prob > 0")
        self.prompt_ids(req.left, "left text"), self.prompt_ids(req.right, "right text")
        args = self.sampler_args(req)

        def job(callback):
            start = time.perf_counter()
            middle = self.pipe.infill(req.left, req.right, req.length, callback=callback, **args)[0]
            return {"left": req.left, "middle": middle, "right": req.right, "evaluations": self.pipe.last_evaluations,
                    "seconds": _since(start)}
        return job

    def ar_job(self, req) -> Job:
        """The side model's job continuing `req.prompt` (checked now), at its own sampler settings with the request's
        temperature and seed."""
        side = self.ar
        if side is None:
            raise NotLoaded("no AR baseline is loaded; start the server with --ar DIR (a `textldm train-ar` "
                              "checkpoint)")
        most = side.most_tokens()
        if most is not None and req.length > most:
            raise UserError(f"length {req.length} exceeds what the side model writes after a prompt ({most} tokens)")
        given = {"temperature": req.temperature, "seed": req.seed}
        sample = dataclasses.replace(side.default_sample(), **{k: v for k, v in given.items() if v is not None})
        ids = self.prompt_ids(req.prompt, pipe=side, length=req.length, sample=sample)

        def job(callback):
            start = time.perf_counter()
            row = side.continue_ids([ids], req.length, sample=sample)[0]
            return {"prompt": req.prompt, "continuation": side.tokenizer.decode(row), "tokens": len(row),
                    "seconds": _since(start)}
        return job


def sse_event(kind: str, data: dict) -> str:
    """One server-sent event of the /api streams."""
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 4)


def _outcome(future: Future) -> tuple[str, dict]:
    """A finished job as its last event: ("done", answer) or ("error", {"error": one line})."""
    if future.cancelled():
        return "error", {"error": "cancelled"}
    e = future.exception()
    if e is None:
        return "done", future.result()
    if not isinstance(e, EXPECTED):
        log.error("generation failed", exc_info=e)
        return "error", {"error": f"internal error: {type(e).__name__}; see the server log"}
    return "error", {"error": str(e)}
