"""`textldm serve`: a local web app and JSON API over a trained TextLDM model, with the denoising trajectory
streamed step by step (server-sent events) and an AR baseline side by side.

    GET  /                      the page (static/index.html)
    GET  /api/health            liveness and load
    GET  /api/info              model facts, sampler defaults and the server's limits
    POST /api/generate          a continuation (JSON)
    POST /api/generate/stream   the same, as SSE: one `step` event per sampling step, then `done`
    POST /api/infill            the middle between two texts (models trained with dit.window.infill_prob > 0)
    POST /api/infill/stream     the same, streamed
    POST /api/ar/generate       the AR baseline's continuation (when started with --ar)
    GET  /v1/models, POST /v1/completions   the OpenAI-compatible API (`openai_api.py`)
    GET  /docs, /openapi.json   FastAPI's schema and its explorer

With an API key (`--api-key` or TEXTLDM_API_KEY), every route but the page and /api/health needs
`Authorization: Bearer KEY` (401 otherwise).

The routes only translate HTTP to the generation service (`service.py`: admission, queue, deadline, cancel)
and back. Every error is a JSON {"error": ...} with a 4xx/5xx status (`install_error_handlers`; on /v1, OpenAI's
{"error": {"message", "type", ...}}); requests are validated against the limits (`schemas.py`, stated in the
OpenAPI schema) before any work.
"""
# no `from __future__ import annotations` here: FastAPI reads the request models from the route functions'
# annotations, which must stay real classes (they are built per app, from its limits)
import contextlib
import errno
import hmac
import json
import logging
import os
import socket
import sys
from dataclasses import asdict
from importlib import resources
from importlib.metadata import PackageNotFoundError, version

from textldm.diffusion.sampling import SOLVERS
from textldm.errors import UserError
from textldm.families import load_pipeline
from textldm.families.textldm import TextLDMPipeline
from textldm.serving.openai_api import OpenAIFacade, completion_request, openai_error
from textldm.serving.service import Busy, GenerationService, JobTimeout, NotLoaded, ServeLimits
from textldm.utils import param_count, resolve_device

log = logging.getLogger(__name__)
SSE = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
             "description": "server-sent events: `step` per sampling step, then `done` (or `error`)"}}


def require_serve_packages():
    """FastAPI and uvicorn, or a UserError saying how to install them."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("`textldm serve` needs FastAPI and uvicorn: pip install 'textldm[serve]'") from None


def model_info(pipe, ar, model_path: str, ar_path: str | None, limits: ServeLimits, s) -> dict:
    """What /api/info answers: the model's facts, the sampler defaults `s` a request gets, the limits."""
    d = pipe.config.dit
    info = {"model": model_path or "textldm model",
            "parameters": {"vae": param_count(pipe.vae), "dit": param_count(pipe.dit)},
            "latent_channels": pipe.vae.cfg.latent_channels, "context_tokens": pipe.prompt_tokens(s),
            "window_tokens": d.target_max, "block_tokens": d.blocks.size if d.reads("blocks") else 0,
            "context_cache": d.reads("window") and d.window.context_cache,
            "precision": s.precision,
            "infill": pipe.dit.segment.num_embeddings >= 3, "solvers": list(SOLVERS),
            "defaults": {"length": min(s.length, limits.max_length), "steps": min(s.steps, limits.max_steps),
                         "cfg_scale": s.cfg_scale, "seed": s.seed, "solver": s.solver, "grid": s.grid,
                         "cfg_min_t": s.cfg_min_t, "cfg_max_t": s.cfg_max_t, "precision": s.precision},
            "limits": asdict(limits), "ar": None}
    if ar is not None:
        info["ar"] = {"model": ar_path, "parameters": ar.parameters(),
                      "max_length": ar.most_tokens() or limits.max_length}
    return info


def create_app(pipe, ar=None, limits: ServeLimits | None = None, model_path: str = "", ar_path: str | None = None,
               settings: dict | None = None, api_key: str | None = None):
    """The FastAPI app serving `pipe` (a TextLDMPipeline) and optionally `ar` (a model of any family beside it: the AR
    baseline by default). `settings`: the
    sampler defaults a request gets where they differ from the model's (e.g. {"precision": "bf16"}). `api_key`:
    required as `Authorization: Bearer KEY` on every route but the page and /api/health (None: no key)."""
    require_serve_packages()
    from fastapi import FastAPI

    from textldm.serving.schemas import request_models

    limits = limits or ServeLimits()
    service = GenerationService(pipe, ar, limits)
    defaults = pipe.settings(**(settings or {}))
    info = model_info(pipe, ar, model_path, ar_path, limits, defaults)
    requests = request_models(limits, {**info["defaults"], "temperature": defaults.temperature}, info["window_tokens"])

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.shutdown()

    app = FastAPI(title="textldm", version=_version(), lifespan=lifespan,
                  description="TextLDM generation with the denoising trajectory streamed step by step.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)
    app.state.service = service
    install_error_handlers(app)
    add_routes(app, service, info, requests)
    facade = OpenAIFacade(service, model_id(model_path, "textldm"), model_id(ar_path, "ar") if ar else None, defaults)
    app.state.openai = facade
    add_openai_routes(app, facade, completion_request(limits, info["defaults"]))
    return app


def model_id(path: str | None, fallback: str) -> str:
    """The id /v1/models gives a served model: its folder's name (the run folder's, for a run's model/ or ar/),
    or its Hub repo id."""
    from pathlib import Path

    from textldm.families import run_subfolders

    if not path:
        return fallback
    p = Path(str(path))
    if p.exists():
        return (p.parent.name if p.name in run_subfolders() else p.name) or fallback
    return str(path)


def add_openai_routes(app, facade: OpenAIFacade, request_model) -> None:
    """GET /v1/models and POST /v1/completions (streamed when asked)."""
    from fastapi.responses import StreamingResponse

    @app.get("/v1/models")
    async def models() -> dict:
        return facade.models()

    async def completions(req: request_model):
        if req.stream:
            return StreamingResponse(facade.stream(req), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        return await facade.service.run(facade.job(req))

    app.post("/v1/completions", name="completions")(completions)


def add_routes(app, service: GenerationService, info: dict, requests) -> None:
    """The page, health, info and the job routes (generate, infill, AR; streamed variants) of `create_app`."""
    from fastapi.responses import HTMLResponse

    from textldm.serving.schemas import ARContinuation, Continuation, ErrorBody, Infill

    errors = {code: {"model": ErrorBody} for code in (400, 404, 413, 422, 503, 504)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("textldm.serving").joinpath("static/index.html").read_text())

    @app.get("/api/health")
    async def health() -> dict:
        return service.health()

    @app.get("/api/info")
    async def model_facts() -> dict:
        return info

    _job_routes(app, "/api/generate", "generate", requests.generate, service.generate_job, Continuation, errors,
                service)
    _job_routes(app, "/api/infill", "infill", requests.infill, service.infill_job, Infill, errors, service)
    _job_routes(app, "/api/ar/generate", "ar_generate", requests.ar, service.ar_job, ARContinuation, errors, service,
                stream=False)


def _job_routes(app, path: str, name: str, request_model, make_job, response_model, errors: dict,
                service: GenerationService, stream: bool = True) -> None:
    """POST `path`: the job's JSON answer; POST `path`/stream (if `stream`): the same job as server-sent events."""
    from fastapi.responses import StreamingResponse

    async def answer(req: request_model):
        return await service.run(make_job(req))

    async def events(req: request_model):
        return StreamingResponse(service.stream(make_job(req), req.steps), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    app.post(path, response_model=response_model, responses=errors, name=name)(answer)
    if stream:
        app.post(f"{path}/stream", responses={**errors, **SSE}, name=f"{name}_stream")(events)


def install_error_handlers(app) -> None:
    """Every failure as a JSON {"error": one line}: invalid requests 422, the service's failures by kind
    (UserError 400, NotLoaded 404, Busy 503, JobTimeout 504), HTTP errors as they are, anything else 500."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    statuses = {UserError: 400, NotLoaded: 404, Busy: 503, JobTimeout: 504}
    openai_statuses = {**statuses, Busy: 429, JobTimeout: 503}  # what OpenAI clients retry on

    async def known(request, exc):
        headers = {"Retry-After": "2"} if isinstance(exc, Busy) else None
        table = openai_statuses if request.url.path.startswith("/v1/") else statuses
        return _error(table[type(exc)], str(exc), headers=headers, path=request.url.path)

    for kind in statuses:
        app.add_exception_handler(kind, known)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = exc.errors()[0] if exc.errors() else {}
        path = request.url.path
        status = 400 if path.startswith("/v1/") else 422  # OpenAI answers invalid parameters with 400
        if first.get("type") == "json_invalid":
            return _error(status, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')}); "
                                  f"send a JSON object", detail, path=path)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(status, f"invalid request: {where}: {first.get('msg', 'invalid value')}", detail, path=path,
                      param=where)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # logged in full, answered in one line
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}; see the server log", path=request.url.path)


def error_body(status: int, message: str, detail=None, path: str = "", param: str | None = None) -> dict:
    """{"error": one line (, "detail")} - or OpenAI's {"error": {"message", "type", "param", "code"}} on /v1."""
    if path.startswith("/v1/"):
        return openai_error(status, message, param)
    return {"error": message} if detail is None else {"error": message, "detail": detail}


def _error(status: int, message: str, detail=None, headers=None, path: str = "", param: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(status, message, detail, path, param), status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: request bodies over `max_bytes` get a 413 JSON answer before the app parses them
    (by the declared Content-Length, or by counting a chunked body)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send, status: int, message: str, path: str = ""):
        body = json.dumps(error_body(status, message, path=path)).encode()
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
                return await self._reject(send, 400, "invalid Content-Length header", scope["path"])
            if int(declared) > self.max_bytes:
                return await self._reject(send, 413, too_big, scope["path"])
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(send, 413, too_big, scope["path"])
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


class ApiKey:
    """ASGI middleware: with a key set, every route but the page and /api/health needs `Authorization: Bearer KEY`
    (compared in constant time); anything else gets a 401 JSON answer (OpenAI's shape on /v1)."""
    OPEN = ("/", "/api/health")

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.OPEN:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        token = given[7:] if given[:7].lower() == b"bearer " else b""
        if hmac.compare_digest(token, self.key):
            return await self.app(scope, receive, send)
        message = "missing or wrong API key: send 'Authorization: Bearer KEY' (the key the server was started with)"
        body = json.dumps(error_body(401, message, path=scope["path"])).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


def _version() -> str:
    try:
        return version("textldm")
    except PackageNotFoundError:
        return "0"


def check_listen_address(host: str, port: int):
    """A UserError now (not a traceback later) when host:port cannot be bound, naming which option to change."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number; give one in 1..65535 (e.g. 8000)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except socket.gaierror as e:
            raise UserError(f"cannot listen on host '{host}' ({e.strerror}); give --host an address of this "
                            f"machine, e.g. 127.0.0.1 or 0.0.0.0") from None
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"'{host}' is not an address of this machine; give --host one that is, e.g. 127.0.0.1 "
                                f"or 0.0.0.0") from None
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another with --port") from None


API_KEY_ENV = "TEXTLDM_API_KEY"


def serve(model: str, ar: str | None = None, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          precision: str | None = None, limits: ServeLimits | None = None, api_key: str | None = None) -> None:
    """Load the model(s) and serve until interrupted. `api_key` (or $TEXTLDM_API_KEY): required on every route but
    the page and /api/health."""
    require_serve_packages()
    import uvicorn

    check_listen_address(host, port)
    device = resolve_device(device, "--device")  # both checked before any warning and the (slow) model loading

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach this port can generate; set --api-key "
                    "(or %s)", host, API_KEY_ENV)
        print(f"warning: serving on {host} without an API key; set --api-key or {API_KEY_ENV}", file=sys.stderr)
    pipe = TextLDMPipeline.from_pretrained(model, device=device)
    ar_pipe = load_pipeline(ar, device=device) if ar else None  # beside it: a model of any family (the AR baseline)
    app = create_app(pipe, ar_pipe, limits, model_path=str(model), ar_path=ar, settings={"precision": precision},
                     api_key=api_key)
    print(f"textldm serve: open http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/ "
          f"(API docs at /docs); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
