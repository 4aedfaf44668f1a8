"""How the masked-diffusion baselines write text: ancestral sampling (diffusion/masking.py's `reverse_step`) of the
continuation's masks, window after window (MDLM: the prompt's last tokens clean, the continuation masked, one
bidirectional pass a step) or block after block (BD3-LM: each block of B masks against the cached clean blocks
before it, `MaskedDenoiser.extend_prefix` / `block_logits`).

The caching sampler: a time-agnostic denoiser's output depends only on its input, so a row whose tokens did not
change since its last evaluation reuses its logits (MDLM's and BD3-LM's caching sampler); `evaluations` counts the
forward passes each row needed (NFE). Each row's draws come from its own generator, seeded by (seed, window or
block, row): a row writes the same text whatever batch it is in.
"""
from __future__ import annotations

import torch

from textldm.diffusion.masking import reverse_step
from textldm.models.block_causal import BlockPrefix
from textldm.models.masked import MaskedDenoiser
from textldm.sampling.run import TokenRun
from textldm.utils import pad_rows


def denoise(x: torch.Tensor, start: int, logits_of, run: TokenRun, rows: list[int], unit: int, mask_id: int,
            time_agnostic: bool) -> torch.Tensor:
    """The masks of x (N, n) at positions start.. unmasked in settings.steps ancestral steps from t = 1 to 0.
    `logits_of(x, index, t)` gives the logits (len(index), n - start, V) of the rows `index` at level t; a
    time-agnostic model's rows are evaluated again only once their tokens changed. `rows`: each row's index in the
    call (its generator and evaluation count)."""
    s = run.settings
    gens = [run.generator(unit, r) for r in rows]
    cached, stale = [None] * len(rows), torch.ones(len(rows), dtype=torch.bool)
    for i in range(s.steps):
        t, t_next = 1.0 - i / s.steps, 1.0 - (i + 1) / s.steps
        masked = (x[:, start:] == mask_id).any(1).cpu()
        need = (stale | (not time_agnostic)) & masked
        if need.any():
            index = need.nonzero().flatten().to(x.device)
            logits = logits_of(x, index, t)
            for j, row_logits in zip(index.tolist(), logits):
                cached[j] = row_logits
                run.evaluations[rows[j]] += 1
        for j in masked.nonzero().flatten().tolist():
            new = reverse_step(x[j, start:], cached[j], t, t_next, gens[j], mask_id, s.temperature, s.top_p)
            stale[j] = not torch.equal(new, x[j, start:])
            x[j, start:] = new
    return x


class MaskedSampler:
    """The sampler of a `MaskedDenoiser` trained on windows of `window` tokens, reading a prompt's last `context`
    tokens (a multiple of the block size) at each window's start; `eot_id` ends a row."""

    def __init__(self, model: MaskedDenoiser, window: int, context: int, eot_id: int):
        self.model, self.window, self.context, self.eot_id = model, window, context, eot_id

    @property
    def time_agnostic(self) -> bool:
        return self.model.time is None

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], run: TokenRun) -> list[list[int]]:
        """`run.settings.length` tokens per prompt (raw, not cut at end-of-text; a row stops after the window or
        block that wrote its first end-of-text)."""
        run.evaluations = [0] * len(prompt_ids)
        loop = self._windows if self.model.block == 0 else self._blocks
        return loop(prompt_ids, run)

    def _rows_of(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's last `context` tokens, left-padded to `context` positions (padding masked out of attention):
        every window has the same layout whatever the batch."""
        device = next(self.model.parameters()).device
        return pad_rows([h[-self.context:] for h in ids], self.context, device=device)

    def _windows(self, prompt_ids: list[list[int]], run: TokenRun) -> list[list[int]]:
        """MDLM: each window holds the last `context` tokens so far (left-padded) and the rest of the trained window
        in masks, all denoised at once; row i's draws in its w-th window come from noise_seed(seed, w,
        first_index + i)."""
        out, active, remaining, w = [[] for _ in prompt_ids], list(range(len(prompt_ids))), run.settings.length, 0
        while active and remaining > 0:
            prompt, key_mask = self._rows_of([prompt_ids[i] + out[i] for i in active])
            n = self.window - self.context  # the trained layout, the last window too (its extra tokens are cut)
            masks = torch.full((len(active), n), self.model.mask_id, dtype=torch.long, device=prompt.device)
            x = torch.cat([prompt, masks], 1)
            keys = torch.cat([key_mask, torch.ones_like(masks, dtype=torch.bool)], 1)
            start = prompt.shape[1]

            def logits_of(x, index, t, keys=keys, start=start):
                t_in = torch.full((len(index), 1), t, device=x.device)
                return self.model(x[index], t_in, key_mask=keys[index])[:, start:]

            x = denoise(x, start, logits_of, run, active, w, self.model.mask_id, self.time_agnostic)
            for i, row in zip(active, x[:, start:].tolist()):
                out[i] += row[:remaining]
            active = [i for i in active if self.eot_id not in out[i]]
            remaining, w = remaining - n, w + 1
        return out

    def _blocks(self, prompt_ids: list[list[int]], run: TokenRun) -> list[list[int]]:
        """BD3-LM: blocks of B masks, each denoised against the cached clean prefix and then appended to it; a new
        window (the last tokens so far) once the trained window is full. Row i's draws in its k-th block come from
        noise_seed(seed, k, first_index + i)."""
        B = self.model.block
        out, active, remaining, k = [[] for _ in prompt_ids], list(range(len(prompt_ids))), run.settings.length, 0
        while active and remaining > 0:
            prompt, key_mask = self._rows_of([prompt_ids[i] + out[i] for i in active])
            prefix = self.model.extend_prefix(None, prompt, key_mask)
            while active and remaining > 0 and prefix.length + B <= self.window:
                block = self._block(prefix, run, active, k)
                for i, row in zip(active, block.tolist()):
                    out[i] += row[:min(B, remaining)]
                prefix = self.model.extend_prefix(prefix, block, torch.ones_like(block, dtype=torch.bool))
                alive = [j for j, i in enumerate(active) if self.eot_id not in out[i]]
                active = [active[j] for j in alive]
                prefix = prefix.rows(torch.tensor(alive, dtype=torch.long, device=block.device))
                remaining, k = remaining - B, k + 1
        return out

    def _block(self, prefix: BlockPrefix, run: TokenRun, rows: list[int], k: int) -> torch.Tensor:
        """One block of B tokens after each row's cached prefix."""
        B = self.model.block
        x = torch.full((len(rows), B), self.model.mask_id, dtype=torch.long, device=prefix.key_mask.device)

        def logits_of(x, index, t):
            part = prefix if len(index) == len(rows) else prefix.rows(index)
            return self.model.block_logits(x[index], part, torch.full((len(index),), t, device=x.device))

        return denoise(x, 0, logits_of, run, rows, k, self.model.mask_id, self.time_agnostic)
