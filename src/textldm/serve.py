"""`textldm serve`: a local web app and JSON API over a trained TextLDM model, with the denoising trajectory
streamed step by step (server-sent events) and an AR baseline side by side.

    GET  /                      the page (static/index.html)
    GET  /api/health            liveness and load
    GET  /api/info              model facts, sampler defaults and the server's limits
    POST /api/generate          a continuation (JSON)
    POST /api/generate/stream   the same, as SSE: one `step` event per sampling step, then `done`
    POST /api/infill            the middle between two texts (models trained with dit.infill_prob > 0)
    POST /api/infill/stream     the same, streamed
    POST /api/ar/generate       the AR baseline's continuation (when started with --ar)
    GET  /docs, /openapi.json   FastAPI's schema and its explorer

One generation runs at a time on a worker thread (the model is compute-bound; two at once would only share
the cores). At most `max_queue` more wait; beyond that a request is answered 503 "busy" at once. Every job
has a deadline (the per-request timeout, queueing included) checked between sampling steps, and a streamed
job stops at the next step when its client goes away. Every error is a JSON {"error": ...} with a 4xx/5xx
status; requests are validated against the limits (which the OpenAPI schema states) before any work.
"""

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Callable, Literal

import torch

from .errors import UserError
from .sampling import SOLVERS
from .utils import cut_at
from .vae import param_count

log = logging.getLogger(__name__)


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


class Busy(Exception):
    pass


class JobTimeout(Exception):
    pass


class Cancelled(Exception):
    pass


def require_serve_packages():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("`textldm serve` needs FastAPI and uvicorn: pip install 'textldm[serve]'") from None


class Worker:
    """One job at a time on a worker thread, at most 1 + max_queue admitted; each job has a deadline."""

    def __init__(self, max_queue: int, timeout_s: float):
        self.capacity, self.timeout_s = 1 + max_queue, timeout_s
        self.admitted, self.completed = 0, 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textldm-generate")

    def admit(self):
        with self._lock:
            if self.admitted >= self.capacity:
                raise Busy(f"busy: {self.admitted} requests are running or queued (limit {self.capacity}); "
                           f"retry in a few seconds")
            self.admitted += 1

    def release(self):
        with self._lock:
            self.admitted -= 1
            self.completed += 1

    def submit(self, job: Callable[[Callable[[], None]], object], cancelled: threading.Event):
        """Run `job(check)` on the worker; `check()` raises once the deadline passed or the job was cancelled.
        The caller must have `admit`ted; the slot is released when the job ends."""
        deadline = time.monotonic() + self.timeout_s

        def check():
            if cancelled.is_set():
                raise Cancelled("the client went away")
            if time.monotonic() > deadline:
                raise JobTimeout(f"the request ran past the server's {self.timeout_s:g} s limit; ask for fewer "
                                 f"steps or a shorter length")

        def run():
            try:
                check()
                return job(check)
            finally:
                self.release()

        return self._executor.submit(run)

    def shutdown(self):
        self._executor.shutdown(wait=False, cancel_futures=True)


class Trajectory:
    """Turns the sampler's per-step latents of one row into step events: the decoded tokens of the current
    window, how far each token's latent moved in that step (RMS over channels), and which token ids flipped."""

    def __init__(self, pipe, steps: int, emit: Callable[[dict], None], check: Callable[[], None]):
        self.pipe, self.steps, self.emit, self.check = pipe, steps, emit, check
        self.window, self.committed, self.previous_x, self.previous_ids = -1, [], None, None

    def __call__(self, step: int, t: float, x: torch.Tensor):
        self.check()
        x = x[:1].float()
        if step == 1:  # a window starts from fresh noise (the sampler does not show us that noise)
            self.window, self.previous_x, self.previous_ids = self.window + 1, None, None
        ids = self.pipe.decode_latents(x, cut=False)[0]
        if self.previous_x is None:
            change = [0.0] * len(ids)
        else:
            change = (x - self.previous_x)[0].pow(2).mean(-1).sqrt().tolist()
        flipped = [True] * len(ids) if self.previous_ids is None else [a != b for a, b in zip(ids, self.previous_ids)]
        tok, eot = self.pipe.tokenizer, self.pipe.eot_id
        shown = len(cut_at([ids], eot)[0])
        self.emit({"window": self.window, "step": step, "steps": self.steps, "t": round(float(t), 4),
                   "tokens": token_pieces(tok, ids[:shown]),
                   "change": [round(c, 4) for c in change[:shown]], "flipped": flipped[:shown],
                   "text": tok.decode(cut_at([self.committed + ids], eot)[0])})
        self.previous_x, self.previous_ids = x, ids
        if step == self.steps:
            self.committed += ids


def token_pieces(tokenizer, ids: list[int], context: int = 4) -> list[str]:
    """The text each token adds: decode(up to `context` tokens before it + it) minus decode(those before), so
    word-initial spaces and merged characters survive (decoding tokens alone loses them) and the pieces join
    to the decoded text. Tokens that leave a character incomplete (its bytes spread over several tokens) add
    "", and their text shows with the token that completes it. Short windows keep this linear in the row
    length (it runs at every streamed step)."""
    pieces, start = [], 0  # ids[start:] are the tokens whose text has not been given out yet
    for k in range(len(ids)):
        lo = max(0, start - context)
        full = tokenizer.decode(ids[lo: k + 1])
        if full.endswith("\ufffd") and k + 1 < len(ids):
            pieces.append("")
            continue
        left = tokenizer.decode(ids[lo:start])
        pieces.append(full[len(os.path.commonprefix([full, left])):])
        start = k + 1
    return pieces


def _model_info(pipe, ar, model_path: str, ar_path: str | None, limits: ServeLimits) -> dict:
    s, d = pipe.config.sample, pipe.config.dit
    info = {"model": model_path or "textldm model",
            "parameters": {"vae": param_count(pipe.vae), "dit": param_count(pipe.dit)},
            "latent_channels": pipe.vae.cfg.latent_channels, "context_tokens": d.context_max,
            "window_tokens": d.target_max, "context_cache": bool(d.context_cache), "precision": s.precision,
            "infill": pipe.dit.segment.num_embeddings >= 3, "solvers": list(SOLVERS),
            "defaults": {"length": min(s.length, limits.max_length), "steps": min(s.steps, limits.max_steps),
                         "cfg_scale": s.cfg_scale, "seed": s.seed, "solver": s.solver},
            "limits": asdict(limits), "ar": None}
    if ar is not None:
        info["ar"] = {"model": ar_path, "parameters": param_count(ar.model), "max_length": ar.seq_len - 1}
    return info


def create_app(pipe, ar=None, limits: ServeLimits | None = None, model_path: str = "", ar_path: str | None = None):
    """The FastAPI app serving `pipe` (a TextLDMPipeline) and optionally `ar` (an ARPipeline)."""
    require_serve_packages()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()
    s = pipe.config.sample
    info = _model_info(pipe, ar, model_path, ar_path, limits)
    worker = Worker(limits.max_queue, limits.timeout_s)
    strict = ConfigDict(extra="forbid", strict=True)
    Solver = Literal[tuple(SOLVERS)]  # noqa: N806

    class Sampling(BaseModel):
        model_config = strict
        length: int = Field(info["defaults"]["length"], ge=1, le=limits.max_length,
                            description="continuation tokens")
        steps: int = Field(info["defaults"]["steps"], ge=1, le=limits.max_steps, description="sampling steps")
        cfg_scale: float = Field(s.cfg_scale, ge=0.0, le=limits.max_cfg_scale, allow_inf_nan=False,
                                 description="classifier-free guidance scale (1 = none)")
        seed: int = Field(s.seed, ge=0, le=2**31 - 1)
        solver: Solver = Field(s.solver)

    class GenerateRequest(Sampling):
        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars, description="text to continue")

    class InfillRequest(Sampling):
        left: str = Field(min_length=1, max_length=limits.max_prompt_chars, description="text before the gap")
        right: str = Field(min_length=1, max_length=limits.max_prompt_chars, description="text after the gap")
        length: int = Field(min(info["defaults"]["length"], info["window_tokens"]), ge=1,
                            le=min(limits.max_length, info["window_tokens"]), description="gap length in tokens")

    class ARRequest(BaseModel):
        model_config = strict
        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars)
        length: int = Field(info["defaults"]["length"], ge=1, le=limits.max_length)
        seed: int = Field(s.seed, ge=0, le=2**31 - 1)
        temperature: float = Field(s.temperature, ge=0.0, le=10.0, allow_inf_nan=False)

    class Continuation(BaseModel):
        prompt: str
        continuation: str
        tokens: int
        evaluations: int
        seconds: float

    class Infill(BaseModel):
        left: str
        middle: str
        right: str
        evaluations: int
        seconds: float

    class ARContinuation(BaseModel):
        prompt: str
        continuation: str
        tokens: int
        seconds: float

    class ErrorBody(BaseModel):
        error: str
        detail: list | None = None

    errors = {code: {"model": ErrorBody} for code in (400, 404, 413, 422, 503, 504)}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.shutdown()

    app = FastAPI(title="textldm", version=_version(), lifespan=lifespan,
                  description="TextLDM generation with the denoising trajectory streamed step by step.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.state.worker = worker

    def error(status: int, message: str, detail=None, headers=None) -> JSONResponse:
        body = {"error": message} if detail is None else {"error": message, "detail": detail}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(422, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')}); "
                              f"send a JSON object", detail)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error(422, f"invalid request: {where}: {first.get('msg', 'invalid value')}", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # logged in full, answered in one line
        log.exception("unexpected error on %s", request.url.path)
        return error(500, f"internal error: {type(exc).__name__}; see the server log")

    def prompt_ids(text: str, what: str = "prompt") -> list[int]:
        """Token ids of a prompt, keeping its last context_tokens (the model sees no more)."""
        ids = pipe.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids or not text.strip():
            raise UserError(f"the {what} has no tokens; give some text")
        return ids[-info["context_tokens"]:]

    async def run_job(job, cancelled: threading.Event | None = None):
        """Admit (or answer busy), run on the worker, map the job's failures to JSON errors."""
        try:
            worker.admit()
        except Busy as e:
            return None, error(503, str(e), headers={"Retry-After": "2"})
        future = worker.submit(job, cancelled or threading.Event())
        try:
            return await asyncio.wrap_future(future), None
        except UserError as e:
            return None, error(400, str(e))
        except JobTimeout as e:
            return None, error(504, str(e))

    def sampler_args(req: Sampling) -> dict:
        return {"steps": req.steps, "cfg_scale": req.cfg_scale, "solver": req.solver, "seed": req.seed}

    def generate_job(req: GenerateRequest, ids: list[int], callback=None):
        def job(check):
            start = time.perf_counter()
            step = callback(check) if callback else (lambda *_: check())
            row = pipe.generate_ids([ids], req.length, callback=step, **sampler_args(req))[0]
            return {"prompt": req.prompt, "continuation": pipe.tokenizer.decode(row), "tokens": len(row),
                    "evaluations": pipe.last_evaluations, "seconds": round(time.perf_counter() - start, 4)}
        return job

    def infill_job(req: InfillRequest, callback=None):
        if not info["infill"]:
            raise UserError("this model was not trained for infilling; train its DiT with dit.infill_prob > 0")

        def job(check):
            start = time.perf_counter()
            step = callback(check) if callback else (lambda *_: check())
            middle = pipe.infill(req.left, req.right, req.length, callback=step, **sampler_args(req))[0]
            return {"left": req.left, "middle": middle, "right": req.right, "evaluations": pipe.last_evaluations,
                    "seconds": round(time.perf_counter() - start, 4)}
        return job

    def stream(make_job, steps: int):
        """Run `make_job(callback_factory)` with per-step events pushed to an SSE response."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def emit(kind: str, data: dict):
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))

        def callback(check):
            return Trajectory(pipe, steps, lambda d: emit("step", d), check)

        try:
            worker.admit()
        except Busy as e:
            return error(503, str(e), headers={"Retry-After": "2"})
        future = worker.submit(make_job(callback), cancelled)

        def finished(f):
            if f.cancelled():
                emit("error", {"error": "cancelled"})
            elif f.exception() is not None:
                e = f.exception()
                if not isinstance(e, (UserError, JobTimeout, Cancelled)):
                    log.error("generation failed", exc_info=e)
                emit("error", {"error": str(e) if isinstance(e, (UserError, JobTimeout, Cancelled))
                               else f"internal error: {type(e).__name__}; see the server log"})
            else:
                emit("done", f.result())

        future.add_done_callback(finished)

        async def body():
            try:
                while True:
                    kind, data = await events.get()
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
                    if kind in ("done", "error"):
                        return
            finally:  # the client went away (or the stream ended): stop the job at its next step
                cancelled.set()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    sse = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                 "description": "server-sent events: `step` per sampling step, then `done` (or `error`)"}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("textldm").joinpath("static/index.html").read_text())

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok", "admitted": worker.admitted, "capacity": worker.capacity,
                "completed": worker.completed}

    @app.get("/api/info")
    async def model_info() -> dict:
        return info

    @app.post("/api/generate", response_model=Continuation, responses=errors)
    async def generate(req: GenerateRequest):
        try:
            ids = prompt_ids(req.prompt)
        except UserError as e:
            return error(400, str(e))
        result, failure = await run_job(generate_job(req, ids))
        return failure or result

    @app.post("/api/generate/stream", responses={**errors, **sse})
    async def generate_stream(req: GenerateRequest):
        try:
            ids = prompt_ids(req.prompt)
        except UserError as e:
            return error(400, str(e))
        return stream(lambda cb: generate_job(req, ids, cb), req.steps)

    @app.post("/api/infill", response_model=Infill, responses=errors)
    async def infill(req: InfillRequest):
        try:
            prompt_ids(req.left, "left text"), prompt_ids(req.right, "right text")
            job = infill_job(req)
        except UserError as e:
            return error(400, str(e))
        result, failure = await run_job(job)
        return failure or result

    @app.post("/api/infill/stream", responses={**errors, **sse})
    async def infill_stream(req: InfillRequest):
        try:
            prompt_ids(req.left, "left text"), prompt_ids(req.right, "right text")
            infill_job(req)
        except UserError as e:
            return error(400, str(e))
        return stream(lambda cb: infill_job(req, cb), req.steps)

    @app.post("/api/ar/generate", response_model=ARContinuation, responses=errors)
    async def ar_generate(req: ARRequest):
        if ar is None:
            return error(404, "no AR baseline is loaded; start the server with --ar DIR (a `textldm train-ar` "
                              "checkpoint)")
        if req.length > info["ar"]["max_length"]:
            return error(400, f"length {req.length} exceeds the AR baseline's window ({info['ar']['max_length']})")
        ids = ar.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        if not ids or not req.prompt.strip():
            return error(400, "the prompt has no tokens; give some text")

        def job(check):
            start = time.perf_counter()
            row = ar.generate_ids([ids], req.length, temperature=req.temperature, seed=req.seed)[0]
            return {"prompt": req.prompt, "continuation": ar.tokenizer.decode(row), "tokens": len(row),
                    "seconds": round(time.perf_counter() - start, 4)}

        result, failure = await run_job(job)
        return failure or result

    return app


class BodyLimit:
    """ASGI middleware: request bodies over `max_bytes` get a 413 JSON answer before the app parses them
    (by the declared Content-Length, or by counting a chunked body)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send, status: int, message: str):
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = f"request body over the server's limit of {self.max_bytes} bytes; send a shorter prompt"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._reject(send, 400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                return await self._reject(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("textldm")
    except PackageNotFoundError:
        return "0"


def check_port_free(host: str, port: int):
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another with --port") from None


def serve(model: str, ar: str | None = None, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          precision: str | None = None, limits: ServeLimits | None = None) -> None:
    """Load the model(s) and serve until interrupted."""
    require_serve_packages()
    import uvicorn

    from .ar import ARPipeline
    from .pipeline import TextLDMPipeline

    check_port_free(host, port)
    pipe = TextLDMPipeline.from_pretrained(model, device=device)
    if precision:
        pipe.config.sample.precision = precision
    ar_pipe = ARPipeline.from_pretrained(ar, device=device) if ar else None
    app = create_app(pipe, ar_pipe, limits, model_path=str(model), ar_path=ar)
    print(f"textldm serve: open http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/ "
          f"(API docs at /docs); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
