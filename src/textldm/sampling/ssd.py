"""How SSD-LM writes text: block after block, each block's logit vectors denoised from w_T = K eps along a decreasing
grid of `sample.steps` times - at each one the network's logits projected (`sample.projection`: +K on their whole
top-p nucleus, or on one token drawn from it) and noised to the next time with fresh noise (diffusion/simplex.py);
the block's tokens are the last prediction's argmax. Every
evaluation runs the whole context again (attention is bidirectional: the context's states depend on the block), so
nothing is cached; a row's noise comes from its own generator, seeded by (seed, block, row).
"""
from __future__ import annotations

import torch

from textldm.diffusion.simplex import alpha_bar, project, project_sampled, time_grid
from textldm.models.ssd import SimplexDenoiser
from textldm.sampling.run import TokenRun
from textldm.utils import pad_rows


class SSDSampler:
    """The sampler of a `SimplexDenoiser` trained on windows of `window` tokens: a context of window - B tokens, then
    the block; `eot_id` ends a row."""

    def __init__(self, model: SimplexDenoiser, window: int, eot_id: int):
        self.model, self.window, self.eot_id = model, window, eot_id

    @property
    def context(self) -> int:
        return self.window - self.model.cfg.block_size

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], run: TokenRun) -> list[list[int]]:
        """`run.settings.length` tokens per prompt (raw, not cut at end-of-text; a row stops after the block that
        wrote its first end-of-text). Row i's k-th block draws from noise_seed(seed, k, first_index + i)."""
        B = self.model.cfg.block_size
        run.evaluations = [0] * len(prompt_ids)
        out, active, remaining, k = [[] for _ in prompt_ids], list(range(len(prompt_ids))), run.settings.length, 0
        while active and remaining > 0:
            block = self.block([prompt_ids[i] + out[i] for i in active], run, active, k)
            for i, row in zip(active, block.tolist()):
                out[i] += row[:min(B, remaining)]
                run.evaluations[i] += run.settings.steps
            active = [i for i in active if self.eot_id not in out[i]]
            remaining, k = remaining - B, k + 1
        return out

    def block(self, histories: list[list[int]], run: TokenRun, rows: list[int], k: int) -> torch.Tensor:
        """The next block of each row (ids (N, B)) after the last `context` tokens of its history."""
        cfg, device = self.model.cfg, next(self.model.parameters()).device
        K, V, s = cfg.simplex_k, self.model.vocab_size, run.settings
        context, ctx_mask = pad_rows([h[-self.context:] for h in histories], self.context, device=device)
        key_mask = torch.cat([ctx_mask, torch.ones(len(rows), cfg.block_size, dtype=torch.bool, device=device)], 1)
        gens = [run.generator(k, r) for r in rows]

        def noise() -> torch.Tensor:
            return torch.stack([torch.randn(cfg.block_size, V, generator=g) for g in gens]).to(device)

        def projection(logits: torch.Tensor) -> torch.Tensor:
            if s.projection == "multi-hot":
                return project(logits, s.top_p, K)
            uniforms = torch.stack([torch.rand(cfg.block_size, generator=g, dtype=torch.float64) for g in gens])
            return project_sampled(logits, s.top_p, K, uniforms.to(device))

        w = K * noise()
        grid = time_grid(s.steps, cfg.diffusion_steps)
        for t, t_next in zip(grid, grid[1:]):
            logits = self.model(context, w, torch.full((len(rows),), t, device=device), key_mask)
            if t_next == 0:
                break  # the last prediction is the block: no projection, no re-noising
            a = float(alpha_bar(t_next, cfg.diffusion_steps))
            w = a ** 0.5 * projection(logits) + (1 - a) ** 0.5 * K * noise()
        return logits.argmax(-1)
