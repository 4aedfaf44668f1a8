"""The AR baseline's training objective: next-token cross-entropy."""
from __future__ import annotations

import torch
import torch.nn as nn

from textldm.models.ar import CausalLM
from textldm.models.lmhead import linear_cross_entropy


class ARObjective(nn.Module):
    """Next-token cross-entropy (softmax in fp32), head and loss fused (`linear_cross_entropy`)."""

    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, step: int):
        """(loss, metrics) of one micro-batch: next-token CE."""
        hidden = self.model.hidden(batch["ids"][:, :-1]).flatten(0, 1)
        targets = batch["ids"][:, 1:].flatten()
        weights = torch.full(targets.shape, 1.0 / targets.numel(), device=targets.device)
        loss, _ = linear_cross_entropy(hidden, self.model.embed.weight, targets, weights)
        return loss, {"loss": loss.detach()}


