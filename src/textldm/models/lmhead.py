"""Output projection + cross-entropy in one pass over row chunks, for the VAE decoder and the AR baseline.

The (tokens x vocabulary) logits are the largest tensor of either training step (16 x 128 x 49,152 fp32 =
400 MB on the CPU demo; 16 x 1024 x 151,936 = 10 GB at the paper's shape). Here the fp32 logits never exist
whole: each chunk of rows gets its logits, log-softmax, loss, argmax and its gradient (softmax - one-hot,
times the token's loss weight) at once, in chunks small enough to stay in cache; only the gradient of the
logits is kept, in the compute dtype. Same matrix products and the same numbers as
`F.cross_entropy(hidden @ weight.T)` (logits from a matmul in the autocast dtype, softmax in fp32). The loss
is a weighted sum over tokens, so the gradients can be formed in the forward (the upstream gradient is one
scalar).
"""
from __future__ import annotations

import torch


def _chunk_rows(vocab: int, device: torch.device) -> int:
    budget = 2**28 if device.type == "cuda" else 2**22  # fp32 logits per chunk: 1 GB on GPU, 16 MB on CPU
    return max(8, budget // vocab)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, compute_dtype, need_grad):
        """The weighted CE summed over row chunks, and each token's correctness."""
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.empty(targets.shape, dtype=torch.bool, device=hidden.device)
        # d loss / d logits, in the compute dtype: the one (tokens x vocabulary) tensor kept, as autograd would
        grad_logits = torch.empty(h.shape[0], w.shape[0], dtype=compute_dtype, device=h.device) if need_grad else None
        rows = _chunk_rows(weight.shape[0], hidden.device)
        for start in range(0, h.shape[0], rows):
            sl = slice(start, start + rows)
            t, tw = targets[sl], token_weights[sl].float()
            logp = torch.log_softmax((h[sl] @ w.t()).float(), dim=-1)
            loss -= (logp.gather(1, t[:, None]).squeeze(1) * tw).sum()
            correct[sl] = logp.argmax(-1) == t
            if need_grad:  # softmax - one-hot, times the token's weight
                probs = logp.exp_()
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                torch.mul(probs, tw[:, None], out=grad_logits[sl])
        if need_grad:  # two large products instead of one per chunk
            ctx.save_for_backward(grad_logits @ w, (grad_logits.t() @ h).float())
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        """Recompute each chunk's logits for its gradient: nothing of size (tokens x vocabulary) is kept."""
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h.to(ctx.dtypes[0]) * grad_loss, (grad_w * grad_loss).to(ctx.dtypes[1]), None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         token_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i token_weights[i] * CE(hidden[i] @ weight.T, targets[i]), and whether each row's argmax is its
    target. hidden (N, D), weight (V, D), targets (N,), token_weights (N,) (e.g. mask / mask.sum() for a
    masked mean). Matrix products run in the autocast dtype when autocast is on, else in fp32."""
    device = hidden.device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, token_weights.detach(), dtype, need_grad)
