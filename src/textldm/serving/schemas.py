"""The API's bodies. Responses are fixed; requests take their bounds from the server's limits and their defaults
from the model's sampler settings, so the OpenAPI schema states exactly what a request may ask for."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from textldm.config import Grid, SamplePrecision
from textldm.diffusion.sampling import SOLVERS
from textldm.serving.service import ServeLimits

STRICT = ConfigDict(extra="forbid", strict=True)
MAX_SEED = 2**31 - 1


class Continuation(BaseModel):
    """The answer to /api/generate."""
    prompt: str
    continuation: str
    tokens: int
    evaluations: int
    seconds: float


class Infill(BaseModel):
    """The answer to /api/infill."""
    left: str
    middle: str
    right: str
    evaluations: int
    seconds: float


class ARContinuation(BaseModel):
    """The answer to /api/ar/generate."""
    prompt: str
    continuation: str
    tokens: int
    seconds: float


class ErrorBody(BaseModel):
    """Every error: a one-line message (and the validation details for 422)."""
    error: str
    detail: list | None = None


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one app (their bounds come from its limits)."""
    generate: type[BaseModel]
    infill: type[BaseModel]
    ar: type[BaseModel]


def request_models(limits: ServeLimits, defaults: dict, window: int) -> RequestModels:
    """The request bodies for a server with these limits, a model with these sampler `defaults` (length, steps,
    cfg_scale, seed, solver, grid, cfg_min_t, cfg_max_t, precision, temperature) and a DiT window of `window`
    tokens (the longest infill)."""
    def text(what: str):
        return str, Field(min_length=1, max_length=limits.max_prompt_chars, description=what)

    def length(top: int, what: str):
        return int, Field(min(defaults["length"], top), ge=1, le=top, description=what)

    def seed():
        return int, Field(defaults["seed"], ge=0, le=MAX_SEED)

    def unit_interval(name: str, what: str):
        return float, Field(defaults[name], ge=0.0, le=1.0, allow_inf_nan=False, description=what)

    def sampling() -> dict:
        return {"steps": (int, Field(defaults["steps"], ge=1, le=limits.max_steps, description="sampling steps")),
                "cfg_scale": (float, Field(defaults["cfg_scale"], ge=0.0, le=limits.max_cfg_scale, allow_inf_nan=False,
                                           description="classifier-free guidance scale (1 = none)")),
                "seed": seed(), "solver": (Literal[tuple(SOLVERS)], Field(defaults["solver"])),
                "grid": (Grid, Field(defaults["grid"], description="sampling time grid")),
                "cfg_min_t": unit_interval("cfg_min_t", "guidance only for t >= this (t = 0 noise, 1 data)"),
                "cfg_max_t": unit_interval("cfg_max_t", "guidance only for t <= this"),
                "precision": (SamplePrecision, Field(defaults["precision"], description="bf16: faster, not exact"))}

    return RequestModels(
        generate=create_model("GenerateRequest", __config__=STRICT, prompt=text("text to continue"),
                              length=length(limits.max_length, "continuation tokens"), **sampling()),
        infill=create_model("InfillRequest", __config__=STRICT, left=text("text before the gap"),
                            right=text("text after the gap"),
                            length=length(min(limits.max_length, window), "gap length in tokens"), **sampling()),
        ar=create_model("ARRequest", __config__=STRICT, prompt=text("text to continue"),
                        length=length(limits.max_length, "continuation tokens"), seed=seed(),
                        temperature=(float, Field(defaults["temperature"], ge=0.0, le=10.0, allow_inf_nan=False))))
