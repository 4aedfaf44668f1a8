"""Where training runs in bf16: the autocast policy of the training loop and of the frozen REPA teacher."""
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


def teacher_context(device: torch.device):
    """The teacher runs under bf16 autocast where bf16 is native (GPUs, CPUs with bf16 matrix units): ~3x faster,
    and a cosine target needs no more. Elsewhere in fp32: emulated bf16 made it 5.4x slower on a CPU without it."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_dtype("auto", device) is not None)
