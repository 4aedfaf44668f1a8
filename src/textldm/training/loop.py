"""One training stage, whatever the family, top to bottom: a `Stage` (its model, objective, batches, FLOPs, held-out
evaluation and how to save what it trained), `train_stage` (train with `fit`, evaluate, save on rank 0), the loop
`fit` every stage shares, and its helpers. The families' stages build Stages: `families/textldm/train.py`
(train_vae, train_dit), `families/ar/train.py` (train_ar), `families/masked/train.py`, `families/ssd/train.py`.

An *objective* is an nn.Module whose forward(batch) returns (loss, metrics); only its trainable
parameters are optimised, and it is what DDP wraps, so frozen helpers (teacher, frozen VAE) are kept
outside it. Batches come from a function of the step number that draws the *global* batch from a
generator seeded by (seed, step) and returns this rank's slice: the data a run sees does not depend on
the number of processes, which is what makes a DDP run comparable to a single-process one.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from textldm.config import Config, TrainConfig, to_dict
from textldm.errors import UserError
from textldm.models.layers import TransformerLayer
from textldm.runtime.distributed import barrier, is_main, rank, split_batch, world_size
from textldm.runtime.perf import Throughput, matmul_peak_flops
from textldm.runtime.precision import autocast_dtype, bf16_autocast
from textldm.training.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from textldm.training.tracking import TrainingLog
from textldm.utils import param_count

log = logging.getLogger(__name__)


# optimisation -----------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on biases, norms, embeddings' 1-d params); a parameter with an
    `lr_scale` attribute (a fine-tuned pretrained block: `FrozenLM.unfreeze`) steps at lr x lr_scale. The fused kernel
    on GPU, and on CPU where parameters are plain tensors (FSDP's sharded ones take the foreach path)."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.requires_grad]
    groups: dict[tuple[bool, float], list] = {}
    for p in params:
        groups.setdefault((p.dim() >= 2, getattr(p, "lr_scale", 1.0)), []).append(p)
    order = sorted(groups, key=lambda k: (k[1] != 1.0, not k[0], k[1]))  # decay, no decay (as checkpoints hold them)
    groups = [{"params": groups[k], "weight_decay": cfg.weight_decay if k[0] else 0.0, "lr_scale": k[1]} for k in order]
    fused = bool(params) and (params[0].is_cuda or not isinstance(params[0], DTensor))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused)


def lr_at(step: int, cfg: TrainConfig, budget_used: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at the last step - or, with a wall-clock or FLOPs
    budget, at the end of the budget if that comes first (`budget_used` = share of max_minutes or max_flops
    spent), so a budgeted run on a slow machine still ends with a decayed learning rate."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), budget_used)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP) tensor gathered whole - a collective: every rank calls it; plain tensors pass."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class EMA:
    """Exponential moving average of a model's state (kept sharded like the model under FSDP).

    The decay warms up: update n (counted from 0) uses min(decay, (1 + n) / (10 + n)), so early updates follow
    the live weights closely. Without it a decay of 0.9999 keeps a 5K-step run's weights ~61% at their
    initial values (0.9999^5000), which for an adaLN-Zero DiT means a model that outputs ~0."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.bind(model)

    def bind(self, model: nn.Module):
        """Pair each shadow tensor with the live tensor it follows, once (not a state_dict() per step)."""
        live = model.state_dict(keep_vars=True)
        self._groups: dict[type, tuple[list, list]] = {}  # sharded (DTensor) and plain tensors go apart
        self._others = []
        for k, v in self.shadow.items():
            if v.dtype.is_floating_point:
                shadows, lives = self._groups.setdefault(type(v), ([], []))
                shadows.append(v)
                lives.append(live[k].detach())
            else:
                self._others.append((v, live[k]))

    def decay_at(self, n: int) -> float:
        """The decay of update n: min(decay, (1 + n) / (10 + n))."""
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, n: int):
        """The n-th update (n = the optimizer step just taken, from 0; a resumed run continues the count)."""
        decay = self.decay_at(n)
        for shadows, lives in self._groups.values():  # one fused pass over all weights
            torch._foreach_lerp_(shadows, lives, 1 - decay)
        for shadow, live in self._others:
            shadow.copy_(live)

    def full_state(self) -> dict:
        """The averaged weights as full (unsharded) CPU tensors: a collective under FSDP."""
        return {k: _full(v).cpu() for k, v in self.shadow.items()}

    def load_full_state(self, state: dict):
        """Load full tensors (from `full_state`) into the shadow, re-sharding under FSDP."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        with torch.no_grad():
            for k, v in self.shadow.items():
                full = state[k].to(v.device)
                v.copy_(distribute_tensor(full, v.device_mesh, v.placements) if isinstance(v, DTensor) else full)


# the training loop ------------------------------------------------------------------------------------
def wrap_for_training(objective: nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the module to call, the module whose parameters are trained). One process: the objective itself.
    DDP: a DDP wrapper around it. FSDP2: a copy of it with every TransformerLayer and the root sharded
    (`fully_shard`); the trained weights are gathered back into `objective` at the end of `fit`."""
    inner = copy.deepcopy(objective) if cfg.parallel == "fsdp" and dist.is_initialized() else objective
    if cfg.compile:  # per layer, as torchtitan does: small graphs, compiled once, reused by every layer
        for m in inner.modules():
            if isinstance(m, TransformerLayer):
                m.compile()
    if not dist.is_initialized():  # under torchrun even one process is wrapped (the NCCL/gloo path runs)
        return inner, inner
    if cfg.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for m in inner.modules():
            if isinstance(m, TransformerLayer):
                fully_shard(m)
        fully_shard(inner)
        return inner, inner
    ddp = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    return ddp, inner


def _uncompile(module: nn.Module):
    """Drop the per-block compiled forwards once training is over: evaluation and sampling run other shapes
    (and the KV cache), which would only trigger recompilations."""
    for m in module.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None


def _training_state(inner: nn.Module, optimizer, ema: EMA | None, next_step: int, time_used: float,
                    cfg: TrainConfig) -> dict:
    """Everything a resume needs, as full (unsharded) tensors; collective under FSDP, so every rank calls it.
    Only rank 0's return value is complete."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {"model": get_model_state_dict(inner, options=options),
             "optimizer": get_optimizer_state_dict(inner, optimizer, options=options),
             "ema": ema.full_state() if ema is not None else None,
             "step": next_step, "time_used": time_used, "world_size": world_size(), "train_config": asdict(cfg)}
    rngs = [rng_state()]
    if dist.is_initialized():
        rngs = [None] * world_size()
        dist.all_gather_object(rngs, rng_state())
    state["rng"] = rngs
    return state


def _restore(state: dict, inner: nn.Module, optimizer, ema: EMA | None):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(inner, state["model"], options=options)
    set_optimizer_state_dict(inner, optimizer, state["optimizer"], options=options)
    if ema is not None and state.get("ema") is not None:
        ema.load_full_state(state["ema"])
    rngs = state["rng"]
    set_rng_state(rngs[rank() % len(rngs)])  # exact when the world size is unchanged


@dataclass(kw_only=True)
class Stage:
    """What differs between training the VAE, the DiT and the AR baseline; `train_stage` does the rest."""
    name: str  # "vae", "dit", "ar", "masked": the log file <name>_log.jsonl, checkpoints/<name>, report keys <name>_*
    desc: str  # progress bar and log label
    model: nn.Module  # the trained network (its parameters are counted in the report)
    objective: nn.Module  # what `fit` trains (and DDP wraps)
    batches: Callable  # batches(step, micro, accum) -> this rank's micro-batch
    train_config: TrainConfig  # the stage's loop settings (vae_train, dit_train or ar_train)
    tokens_per_step: int
    flops_per_step: float
    evaluate: Callable[[], dict]  # held-out numbers (rank 0)
    save: Callable[[Path, dict], None]  # save(folder, report): the trained model's folder (the family's writer)
    export: str  # the folder under OUT_DIR
    after_fit: Callable[[], None] | None = None  # e.g. the VAE's latent statistics, before evaluation and saving
    report: dict | None = None  # extra report entries


def train_stage(cfg: Config, stage: Stage, progress: bool = True, resume: bool = False) -> dict:
    """Train, evaluate and save one stage; returns its report (parameters, training summary, held-out eval)."""
    out = Path(cfg.out_dir)
    log.info("%s: %.1fM parameters, %d steps of %d sequences", stage.desc, param_count(stage.model) / 1e6,
             stage.train_config.steps, stage.train_config.batch_size)

    def periodic_eval(step: int) -> dict:  # held-out numbers in the log every eval_every steps (rank 0)
        return stage.evaluate() if is_main() else {}

    summary = fit(stage.objective, stage.batches, stage.train_config, log_path=out / f"{stage.name}_log.jsonl",
                  desc=stage.desc, progress=progress, on_eval=periodic_eval, tokens_per_step=stage.tokens_per_step,
                  flops_per_step=stage.flops_per_step, precision=cfg.precision,
                  checkpoint_dir=checkpoint_dir(cfg, stage.name), resume=resume, run_config=to_dict(cfg))
    if stage.after_fit is not None:
        stage.after_fit()
    report = {f"{stage.name}_parameters": param_count(stage.model), f"{stage.name}_train": summary,
              **(stage.report or {})}
    if is_main():
        report[f"{stage.name}_eval"] = stage.evaluate()
        stage.save(out / stage.export, report)
    barrier()
    return report


def fit(objective: nn.Module, batches: Callable[[int, int, int], object], cfg: TrainConfig, *,
        log_path: Path | None = None, desc: str = "train", tokens_per_step: int | None = None,
        flops_per_step: float = 0.0, on_eval: Callable[[int], dict] | None = None, progress: bool = True,
        precision: str = "auto", checkpoint_dir: Path | None = None, resume: bool = False,
        run_config: dict | None = None) -> dict:
    """Train `objective` for cfg.steps (or until cfg.max_minutes). `batches(step, micro, accum)` returns this rank's
    `micro`-th part of step `step`'s global batch. `flops_per_step`: model FLOPs of one optimizer step over the
    global batch (FLOP/s, MFU). With `checkpoint_dir` the training state is saved every cfg.checkpoint_every steps
    and at the end; `resume` continues from the newest one. `run_config`: the run's resolved config, for the
    experiment tracker. Returns a summary; `objective` holds the trained (EMA, if on) weights afterwards."""
    device = next(objective.parameters()).device
    amp_dtype = autocast_dtype(precision, device)
    per_device, accum = split_batch(cfg.batch_size, cfg.micro_batch)
    model, inner = wrap_for_training(objective, cfg, device)
    if world_size() > 1:  # initialised alike on every rank (FSDP does not broadcast); from here, own RNG streams
        torch.manual_seed(torch.initial_seed() + rank())
    optimizer = make_optimizer(inner, cfg)
    ema = EMA(inner, cfg.ema) if cfg.ema > 0 else None
    found, first_step, time_offset = _resume(checkpoint_dir if resume else None, inner, optimizer, ema, desc)
    peak = cfg.peak_flops or (matmul_peak_flops(device, amp_dtype or torch.float32) if flops_per_step else 0.0)
    logger = TrainingLog(log_path, cfg, desc, run_config)
    logger.write({"event": "resume" if found is not None else "start", "desc": desc, "step": first_step,
                  **_run_facts(cfg, per_device, accum, amp_dtype, peak, flops_per_step)})
    start = time.time()
    bar = tqdm(total=cfg.steps, initial=first_step, desc=desc, disable=not (progress and is_main()),
               dynamic_ncols=True)
    meter = Throughput(tokens_per_step or 0, flops_per_step, peak, world_size())
    metrics, done, time_used, guard_fired = {}, first_step, time_offset, False
    used = max(time_used, _flops_used(cfg.max_flops, first_step, flops_per_step))
    inner.train()
    for step in range(first_step, cfg.steps):
        lr = lr_at(step, cfg, used)
        _set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        loss, metrics = _forward_backward(model, batches, step, accum, amp_dtype, device)
        grad_norm = _optimizer_step(inner, optimizer, ema, step, cfg.grad_clip)
        meter.step()
        bar.update(1)
        done, last = step + 1, step == cfg.steps - 1
        time_used = _budget_used(cfg.max_minutes, time_offset, start, loss.device)
        used = max(time_used, _flops_used(cfg.max_flops, done, flops_per_step))
        guard_fired = not last and _budget_used(cfg.guard_minutes, 0.0, start, loss.device) >= 1.0
        out_of_time = used >= 1.0 or guard_fired
        if step % cfg.log_every == 0 or last or out_of_time:
            metrics = _mean_over_ranks(metrics)
            _log_step(logger, bar, _step_record(step, lr, time.time() - start, metrics, grad_norm, device, meter))
        due = cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or last or out_of_time)
        if checkpoint_dir is not None and due:
            _save(checkpoint_dir, _training_state(inner, optimizer, ema, step + 1, time_used, cfg), step + 1, cfg)
            meter.reset()  # the write is not training time
        if on_eval is not None and cfg.eval_every and step > 0 and step % cfg.eval_every == 0 and not last:
            _evaluate(on_eval, step, logger, inner, meter)
        if out_of_time:
            _log_stop(desc, cfg, done, guard_fired)
            break
    bar.close()
    _finish(objective, inner, ema)
    return _close(logger, {"steps": done, "seconds": round(time.time() - start, 1), "first_step": first_step,
                           "flops": float(done * flops_per_step), "guard_fired": guard_fired,
                           "final": {k: float(v) for k, v in metrics.items()}})


def _log_stop(desc: str, cfg: TrainConfig, done: int, guard_fired: bool):
    """Why a run stops before cfg.steps: its budget (minutes or FLOPs), or the guard - a warning, since the run's
    numbers are then not the preset's."""
    if guard_fired:
        log.warning("%s: the %g-minute guard fired at step %d of %d: this run's numbers are not the preset's "
                    "(a slower or busier machine; raise %s_train.guard_minutes to finish)", desc, cfg.guard_minutes,
                    done, cfg.steps, desc.lower())
    else:
        log.info("%s: stopping at step %d (budget reached)", desc, done)


def _close(logger: TrainingLog, summary: dict) -> dict:
    """The run's last log record, the summary `fit` returns."""
    logger.write({"event": "end", **summary})
    logger.close()
    return summary


def _optimizer_step(inner: nn.Module, optimizer, ema: EMA | None, step: int, grad_clip: float):
    """Clip (if on), step, update the EMA; returns the gradient norm before clipping (None without clipping)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(inner.parameters(), grad_clip) if grad_clip > 0 else None
    optimizer.step()
    if ema is not None:
        ema.update(step)
    return grad_norm


def _set_lr(optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _run_facts(cfg: TrainConfig, per_device: int, accum: int, amp_dtype, peak: float, flops_per_step: float) -> dict:
    """What the start (or resume) record of the log says about the run's layout and accounting."""
    return {"config": asdict(cfg), "world_size": world_size(), "per_device_batch": per_device,
            "grad_accumulation": accum, "parallel": cfg.parallel if dist.is_initialized() else "none",
            "autocast": str(amp_dtype), "peak_flops": peak, "flops_per_step": flops_per_step}


def _evaluate(on_eval, step: int, logger: TrainingLog, inner: nn.Module, meter):
    """A periodic held-out evaluation into the log; its time is not training time."""
    logger.write({"step": step, "eval": on_eval(step)})
    inner.train()
    meter.reset()


def _resume(checkpoint_dir: Path | None, inner: nn.Module, optimizer, ema: EMA | None, desc: str):
    """(the checkpoint resumed from or None, first step, share of the time budget already used)."""
    found = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if found is None:
        return None, 0, 0.0
    state = load_checkpoint(found)
    try:
        _restore(state, inner, optimizer, ema)
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"checkpoint {found} does not fit this model/optimizer ({str(e).splitlines()[0][:200]}); "
                        f"resume with the configuration the run was started with") from None
    log.info("%s: resuming from %s (step %d)", desc, found, state["step"])
    return found, state["step"], state["time_used"]


def _forward_backward(model: nn.Module, batches, step: int, accum: int, amp_dtype, device) -> tuple:
    """One optimizer step's gradients over `accum` micro-batches: (last loss, metrics averaged over them)."""
    totals = {}
    for micro in range(accum):
        sync = micro == accum - 1  # reduce gradients across ranks once, after the last micro-batch
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(sync)
        no_sync = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) and not sync \
            else contextlib.nullcontext()
        batch = batches(step, micro, accum)
        with no_sync:
            with bf16_autocast(device, amp_dtype is not None):
                loss, metrics = model(batch, step)
            (loss / accum).backward()
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v.detach() / accum if torch.is_tensor(v) else v
    return loss, totals


def _mean_over_ranks(metrics: dict) -> dict:
    """The step's metrics averaged over the ranks (each holds its shard's): the log shows the global batch's loss,
    as one process would. A collective: every rank calls it at the same steps."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    if not dist.is_initialized() or not keys:
        return metrics
    values = torch.stack([metrics[k].detach().float() for k in keys])
    dist.all_reduce(values)
    return {**metrics, **dict(zip(keys, values / world_size()))}


def _budget_used(max_minutes: float | None, time_offset: float, start: float, device) -> float:
    """The share of the wall-clock budget used (`time_offset` before a resume; stays there without a budget), the
    same on every rank (the slowest one's): one clock for all ranks gives the same learning rate and stopping step."""
    if max_minutes is None:
        return time_offset
    local = time_offset + (time.time() - start) / (60 * max_minutes)
    if not dist.is_initialized():
        return local
    shared = torch.tensor([local], device=device)
    dist.all_reduce(shared, op=dist.ReduceOp.MAX)
    return float(shared.item())


def _flops_used(max_flops: float | None, steps_done: int, flops_per_step: float) -> float:
    """The share of a FLOPs budget spent after `steps_done` steps (0 without one): unlike the clock, the same
    on every machine and under any load."""
    if not max_flops:
        return 0.0
    if not flops_per_step:
        raise ValueError("max_flops needs the FLOPs of one step (flops_per_step)")
    return steps_done * flops_per_step / max_flops


def _step_record(step: int, lr: float, elapsed: float, metrics: dict, grad_norm, device, meter) -> dict:
    """One log line: losses and metrics, learning rate, gradient norm, GPU memory, tokens/s, FLOP/s and MFU."""
    record = {"step": step, "lr": lr, "elapsed_s": round(elapsed, 3),
              **{k: round(float(v), 6) for k, v in metrics.items()}}
    if grad_norm is not None:
        record["grad_norm"] = round(float(_full(grad_norm)), 4)
    if device.type == "cuda":
        torch.cuda.synchronize()
        record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return {**record, **meter.read()}


def _log_step(logger: TrainingLog, bar, record: dict):
    """One step's record into the log, its headline numbers onto the progress bar."""
    logger.write(record)
    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "acc", "repa_cos", "ce")})


def _save(checkpoint_dir: Path, state: dict, next_step: int, cfg: TrainConfig):
    """Rank 0 writes the (collectively gathered) training state; every rank waits for it."""
    if is_main():
        save_checkpoint(checkpoint_dir, next_step, state, cfg.keep_checkpoints)
    if dist.is_initialized():
        dist.barrier()


def _finish(objective: nn.Module, inner: nn.Module, ema: EMA | None):
    """Leave the trained weights (the EMA's, if on) in `objective` as plain tensors on every rank, in eval mode."""
    if inner is not objective:  # FSDP: gather the sharded copy into the caller's module
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True))
        objective.load_state_dict({k: _full(v) for k, v in full.items()})
    _uncompile(objective)
    if ema is not None:
        objective.load_state_dict(ema.full_state())
    objective.eval()
