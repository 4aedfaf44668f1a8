"""Processes and ranks: joining the process group under torchrun, who is rank 0, how a global batch splits
over ranks and accumulation steps, and the per-step generator every rank shares."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from textldm.errors import UserError
from textldm.utils import resolve_device, seeded_generator


def setup_distributed(device_pref: str = "auto"):
    """(rank, world_size, device). Under torchrun (RANK/WORLD_SIZE set) joins the process group: nccl on GPU, gloo
    on CPU - with one process too (torchrun's TORCHELASTIC_RUN_ID), so `--nproc_per_node 1` runs the DDP/FSDP2 path."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_pref)
    if device.type == "cuda" and device.index is None and world > 1:  # one GPU per process
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if (world > 1 or "TORCHELASTIC_RUN_ID" in os.environ) and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def is_main() -> bool:
    """Whether this is rank 0 (always, without a process group)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def split_batch(global_batch: int, micro_batch: int = 0, world: int | None = None) -> tuple[int, int]:
    """(sequences per forward on each device, gradient-accumulation steps) for a global batch:
    micro_batch 0 = each device's whole share in one forward."""
    world = world or world_size()
    if global_batch % world:
        raise UserError(f"the global batch of {global_batch} sequences is not divisible by the {world} processes; "
                        f"change batch_size (or batch_tokens)")
    share = global_batch // world
    if micro_batch <= 0 or micro_batch >= share:
        return share, 1
    if share % micro_batch:
        raise UserError(f"micro_batch {micro_batch} does not divide the {share} sequences each of the {world} "
                        f"processes gets per step; choose a divisor of {share}")
    return micro_batch, share // micro_batch


def local_slice(global_batch: int, micro: int = 0, accum: int = 1) -> slice:
    """This rank's `micro`-th share of a global batch (rank r holds micro-batches r*accum ... r*accum+accum-1)."""
    parts = world_size() * accum
    if global_batch % parts:
        raise UserError(f"the global batch of {global_batch} sequences does not split into {parts} equal parts "
                        f"({world_size()} processes x {accum} accumulation steps); change batch_size or micro_batch")
    per = global_batch // parts
    index = rank() * accum + micro
    return slice(index * per, (index + 1) * per)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The same generator on every rank for a given (seed, step, stream); distinct triples never share draws."""
    return seeded_generator("batch", seed, step, stream)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """Let every rank wait for rank 0's last writes, then leave the process group cleanly."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
