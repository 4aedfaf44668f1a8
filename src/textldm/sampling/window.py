"""The paper's full window at sampling (dit.mode=window): each window of up to dit.target_max latents denoised at once
after the clean latents of the last dit.context_max tokens of prompt + text so far; infilling between two contexts."""
from __future__ import annotations

import torch

from textldm.diffusion.sampling import integrate
from textldm.sampling.run import Sampler, SamplingRun, noise_seed


class WindowSampler(Sampler):
    """Window after window: the context's latents, the target's starting noise, the guided ODE over the time grid."""

    def generate(self, codec, prompt_ids: list[list[int]], run: SamplingRun) -> list[list[int]]:
        """Windows of up to dit.target_max tokens, each after the last dit.context_max tokens of prompt + text so
        far; a row stops at its first end-of-text. Row i's noise in window w: `noise_seed(seed, w, first_index +
        i)`."""
        d, s = self.dit.cfg, run.settings
        out, active, remaining, window = [[] for _ in prompt_ids], list(range(len(prompt_ids))), s.length, 0
        while active and remaining > 0 and not run.stopped:
            n = min(d.target_max, remaining)
            contexts = [(prompt_ids[i] + out[i])[-d.context_max:] for i in active]
            rows = self.sample_window(codec, contexts, n, run,
                                      [run.noise_seed(window, i) for i in active])
            for i, row in zip(active, rows):
                out[i] += row
            active = [i for i, row in zip(active, rows) if codec.eot_id not in row]
            remaining -= n
            window += 1
        return out

    def sample_window(self, codec, contexts: list[list[int]], length: int, run: SamplingRun, seeds: list[int],
                      rights: list[list[int]] | None = None) -> list[list[int]]:
        """One window of `length` latents after each context (and before each right context, when infilling)
        -> raw token ids (not cut at end-of-text). Under bf16 autocast with precision bf16."""
        with codec.autocast(run.settings):
            context, ctx_mask = codec.encode_rows(contexts)
            right, right_mask = codec.encode_rows(rights) if rights is not None else (None, None)
            x = run.start_noise(seeds, length, self.dit.latent_channels, codec.device)
            conditions = {"context": context, "context_mask": ctx_mask, "right": right, "right_mask": right_mask}
            velocity = self.window_velocity(run, x, conditions)
            x = integrate(velocity, x, run.grid, run.settings.solver,
                          run.step_callback(lambda z: codec.decode(z, cut=False)))
            return codec.decode(x, cut=False)

    def window_velocity(self, run: SamplingRun, x: torch.Tensor, conditions: dict):
        """The guided velocity of the window's latents: guided steps run [conditional ; unconditional] rows in one
        batch, the context's keys/values computed once (a dit.window.context_cache model, sample.context_cache); a
        self-conditioning DiT reads the previous evaluation's clean estimate."""
        dit, n = self.dit, x.shape[0]
        every = torch.ones(n, dtype=torch.bool, device=x.device)
        doubled = {"context": torch.cat([conditions["context"], dit.drop_context(conditions["context"], every)]),
                   "context_mask": torch.cat([conditions["context_mask"]] * 2), "right": None, "right_mask": None}
        if conditions["right"] is not None:  # infilling: the right context is dropped with the prompt
            doubled["right"] = torch.cat([conditions["right"], dit.drop_context(conditions["right"], every)])
            doubled["right_mask"] = torch.cat([conditions["right_mask"]] * 2)
        both = doubled if run.settings.guidance.on else conditions
        cache = None
        if dit.context_cond is not None and run.settings.context_cache and conditions["right"] is None:
            cache = dit.cache_context(both["context"], both["context_mask"])  # context K/V once a window

        def evaluate(x_t, t, guided: bool, self_cond):
            if cache is not None:
                return dit.forward_cached(x_t, t, cache if guided else cache.head(n), self_cond=self_cond)
            return dit(x_t, t, **(doubled if guided else conditions), self_cond=self_cond)

        return run.velocity(evaluate, torch.zeros_like(x) if dit.self_cond_proj is not None else None)

    def infill(self, codec, lefts: list[list[int]], rights: list[list[int]], run: SamplingRun) -> list[list[int]]:
        """The run's length of tokens between each left and right context (row i's noise: `noise_seed(seed, 0, i)`)."""
        seeds = [noise_seed(run.settings.seed, 0, i) for i in range(len(lefts))]
        return self.sample_window(codec, lefts, run.settings.length, run, seeds, rights)
