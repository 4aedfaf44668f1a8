"""Where bf16 is used: the one bf16 autocast context (`bf16_autocast`), and the policies that switch it on - the
training loop's (`autocast_dtype`) and a frozen LM's (`frozen_lm_context`, the REPA teacher's and the context LM's)."""
from __future__ import annotations

import torch


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for training where it pays: on GPUs, and on CPUs with native bf16 matrix units
    (2-2.5x faster steps here). Losses, norms and the cosine are computed in fp32 inside the models."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if native else None


def bf16_autocast(device: torch.device | str, enabled: bool = True):
    """The bf16 autocast context on `device` (a no-op context when not `enabled`): every bf16 region of textldm -
    training steps, frozen LMs, sampling, the judges - opens this one."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def frozen_lm_context(device: torch.device):
    """A frozen LM runs under bf16 autocast where bf16 is native (GPUs, CPUs with bf16 matrix units): ~3x faster,
    and a cosine target needs no more. Elsewhere in fp32: emulated bf16 made it 5.4x slower on a CPU without it."""
    return bf16_autocast(device, autocast_dtype("auto", device) is not None)
