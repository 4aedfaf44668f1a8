"""Block-causal mode (dit.mode=blocks, `dit.blocks.size` B; BD3-LM / Cola DLM): a window of dit.window_tokens tokens
is cut into blocks of
B tokens. Training: one masked forward over [clean latents ; noisy latents] of a whole window, each noisy block at its
own t, seeing the clean blocks before it (`TextDiT.forward_blocks`). Sampling: block after block against a cached
clean prefix (`BlockState`); when the window is full, its last dit.context_max tokens start the next.
"""
from __future__ import annotations

import torch

from textldm.config import Config, DiTConfig, SampleConfig
from textldm.data.shards import TokenStream
from textldm.diffusion.flow import interpolate, sample_t, velocity_error
from textldm.diffusion.sampling import integrate
from textldm.generation.modes import (
    HEAD_TOKENS,
    GenerationMode,
    SamplingRun,
    first_pass_estimate,
    stratified_t,
    trained_from_scratch,
)
from textldm.models.block_causal import BlockPrefix
from textldm.models.vae import TextVAE
from textldm.runtime.perf import TRAIN_FACTOR, dit_block_flops_per_sequence


def block_layout(d: DiTConfig) -> str:
    """The block layout in words, for a run's report."""
    return f"block-causal, {d.blocks.size} token{'s' * (d.blocks.size > 1)} a block"


class Blocks(GenerationMode):
    """Block mode: the batch is whole windows encoded once by the block-causal VAE, noise and one time per block; the
    loss is every noisy block's velocity MSE against its clean prefix."""
    name = "blocks"

    @staticmethod
    def describe(config: Config) -> str:
        return f"{block_layout(config.dit)}; {trained_from_scratch(config)}"

    # training ----------------------------------------------------------------------------------------------
    def batch(self, stream: TokenStream, vae: TextVAE, batch_size: int, g: torch.Generator, rows: slice,
              device: torch.device, t: torch.Tensor | None = None) -> dict:
        """The `rows` of a global batch drawn from `g`: windows of the stream, laid out by `lay_out`."""
        return self.lay_out(stream.windows(batch_size, self.dit.cfg.window_tokens, g), vae, g, rows, device, t)

    def lay_out(self, ids: torch.Tensor, vae: TextVAE, g: torch.Generator, rows: slice, device: torch.device,
                t: torch.Tensor | None = None) -> dict:
        """The `rows` of a global batch of windows `ids` (N, L): encoded once by the block-causal VAE (the clean
        latents of every block), noise, one time per block (N, L / B) - or one per window repeated, with
        dit.blocks.t=shared - and the CFG drop per window, drawn from `g`. The first block is left-padded by 0..B-1
        tokens, as a prompt that does not fill whole blocks is at sampling. `t`: given (N, L / B) times. With
        self-conditioning, "self_cond" (N,): the windows whose blocks read a first pass's estimate (`errors`)."""
        d, C = self.dit.cfg, vae.cfg.latent_channels
        B, L, batch_size = d.blocks.size, d.window_tokens, ids.shape[0]
        pad = torch.randint(0, B, (batch_size,), generator=g)
        if t is None:
            per_window = 1 if d.blocks.t == "shared" else L // B
            t = sample_t(batch_size * per_window, d.t_distribution, d.t_mean, d.t_std, generator=g)
            t = t.view(batch_size, per_window).expand(batch_size, L // B)
        drop = torch.rand(batch_size, generator=g) < d.p_uncond
        noise = torch.randn(batch_size, L, C, generator=g)
        mask = (torch.arange(L)[None] >= pad[:, None])[rows].to(device)
        ids = torch.where(mask, ids[rows].to(device), 0)
        # "clean": the window's latents - the data end of every block's path, and the prefix the later blocks read
        batch = {"clean": vae.latents(ids, mask, d.normalize_latents), "mask": mask, "noise": noise[rows].to(device),
                 "t": t[rows].to(device), "drop": drop[rows].to(device), "ids": ids}
        if d.self_condition_prob > 0:  # drawn last, so the other draws do not depend on the setting
            batch["self_cond"] = (torch.rand(batch_size, generator=g) < d.self_condition_prob)[rows].to(device)
        return batch

    def loss_mask(self, batch: dict) -> torch.Tensor:
        """The positions the loss averages over: every real token of the window."""
        return batch["mask"]

    def prefix(self, batch: dict) -> torch.Tensor:
        """What the noisy blocks read as their clean prefix: the window's clean latents."""
        return batch["clean"]

    def errors(self, batch: dict, drop: torch.Tensor | None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """(N, L) squared velocity errors of every noisy block, each against its clean prefix (none, or the null
        prefix, in the rows where `drop`: dit.blocks.uncond); `self_cond` (N,): the windows whose blocks read a
        first pass's clean estimate (a self-conditioning DiT)."""
        x0, x1, t = batch["noise"], batch["clean"], batch["t"]
        per_token = t.repeat_interleave(self.dit.cfg.blocks.size, dim=1)
        x_t = interpolate(x0, x1, per_token)
        prefix, mask = self.prefix(batch), batch["mask"]

        def velocity(rows=slice(None), estimate=None):
            return self.dit.forward_blocks(x_t[rows], t[rows], clean=prefix[rows], mask=mask[rows],
                                           drop=None if drop is None else drop[rows], self_cond=estimate)

        estimate = None
        if self.dit.self_cond_proj is not None and self_cond is not None:
            estimate = first_pass_estimate(velocity, x_t, per_token, self_cond)
        return velocity_error(velocity(estimate=estimate), x0, x1)

    def heldout_times(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """A held-out batch's (N, L / B) block times: stratified, the quarters dealt out at random over the blocks
        (never tied to a block's index)."""
        per_window = self.dit.cfg.window_tokens // self.dit.cfg.blocks.size
        n = batch_size * per_window
        return stratified_t(n, g)[torch.randperm(n, generator=g)].view(batch_size, per_window)

    @torch.no_grad()
    def heldout(self, batch: dict) -> dict:
        """Per block that has a prefix (a window's first block has none): t, the velocity MSE with its clean prefix
        and with the prefix dropped, the same on the block's first HEAD_TOKENS tokens, and the latents."""
        B, mask = self.dit.cfg.blocks.size, batch["mask"]
        N, L = mask.shape
        head = mask & (torch.arange(L, device=mask.device) % B < HEAD_TOKENS)

        def per_block(e, m):  # (N, L) squared errors -> (N * (nb - 1),) block means, the first block left out
            m = m.float().view(N, -1, B)
            return ((e.view(N, -1, B) * m).sum(-1) / m.sum(-1).clamp_min(1.0))[:, 1:].flatten().cpu()

        out, every = {"t": batch["t"][:, 1:].flatten().cpu()}, torch.ones(N, dtype=torch.bool, device=mask.device)
        for name, drop in (("with_prompt", None), ("prompt_dropped", every)):
            err = self.errors(batch, drop, every)  # as sampling reads it: a self-conditioning DiT, its own estimate
            out[name], out[f"head_{name}"] = per_block(err, mask), per_block(err, head)
        out["latents"] = batch["clean"][mask].cpu()
        return out

    def tokens_per_sequence(self) -> int:
        """Tokens a training sequence holds: every token of the window is a target."""
        return self.dit.cfg.window_tokens

    def train_flops(self, batch_size: int) -> float:
        """Counted FLOPs of one optimizer step over `batch_size` windows: forward + backward, and the
        self-conditioning windows' gradient-free first pass."""
        return (TRAIN_FACTOR + self.dit.cfg.self_condition_prob) * batch_size * \
            dit_block_flops_per_sequence(self.dit, self.dit.cfg.window_tokens)

    # sampling ----------------------------------------------------------------------------------------------
    def generate(self, pipe, prompt_ids: list[list[int]], run: SamplingRun) -> list[list[int]]:
        """Blocks of dit.blocks.size tokens, each sampled against the cached clean prefix; a row stops at its first
        end-of-text. Row i's noise for its k-th block: `noise_seed(seed, k, first_index + i)`."""
        d, s = self.dit.cfg, run.settings
        out, active, remaining, k = [[] for _ in prompt_ids], list(range(len(prompt_ids))), s.length, 0
        reads = self.prompt_tokens(s)  # at each window's start, the last tokens the prefix encoder reads
        with pipe.autocast(s):
            while active and remaining > 0 and not run.stopped:
                state = BlockState.start(pipe, [(prompt_ids[i] + out[i])[-reads:] for i in active],
                                         s.guidance.on, self.prefix_encoder(s))
                while active and remaining > 0 and not run.stopped and state.has_room():
                    take = min(d.blocks.size, remaining)  # the last block may be cut: never show more
                    seeds = [run.noise_seed(k, i) for i in active]
                    rows = self.sample_block(pipe, state, run, seeds, take)
                    for i, row in zip(active, rows):
                        out[i] += row[:take]
                    alive = [j for j, row in enumerate(rows) if pipe.eot_id not in row]
                    active = [active[j] for j in alive]
                    state = state.append(pipe, torch.tensor(rows, device=pipe.device))
                    state = state.keep(torch.tensor(alive, dtype=torch.long, device=pipe.device))
                    remaining, k = remaining - d.blocks.size, k + 1
        return out

    def prefix_encoder(self, s: SampleConfig) -> LatentPrefix:
        """What turns the window's tokens into the DiT's clean prefix at sampling (`BlockState`), under settings `s`."""
        return LatentPrefix()

    def sample_block(self, pipe, state: BlockState, run: SamplingRun, seeds: list[int], take: int) -> list[list[int]]:
        """One block of latents after each row's cached prefix -> its raw token ids, decoded beside the prefix's
        latents (the decoder reads the whole window, as in training). The step callback's decoder shows the first
        `take` tokens of the block: what the text keeps."""
        B = self.dit.cfg.blocks.size
        x = run.start_noise(seeds, B, self.dit.latent_channels, pipe.device)
        conditional = state.prefix.rows(torch.arange(len(seeds), device=pipe.device)) if state.guided \
            else state.prefix

        def evaluate(x_t, t, guided: bool, self_cond):  # guided: the prefix holds [conditional ; unconditional] rows
            return self.dit.block_velocity(x_t, t, state.prefix if guided else conditional, self_cond)

        self_condition = torch.zeros_like(x) if self.dit.self_cond_proj is not None else None
        x = integrate(run.velocity(evaluate, self_condition), x, run.grid, run.settings.solver,
                      run.step_callback(lambda z: [row[:take] for row in state.decode(pipe, z)]))
        return state.decode(pipe, x)


class LatentPrefix:
    """Block mode's sampling prefix: the VAE's clean latents themselves (`BlockState` asks it for the prefix of each
    new stretch of tokens; block-causal latents never change when later blocks join). A mode whose prefix is
    something else (a context LM's states: `lm_blocks.LMPrefix`) gives its own, with the same three methods;
    `state` is whatever it carries from one block to the next (here nothing)."""

    def start(self, ids: torch.Tensor, mask: torch.Tensor, latents: torch.Tensor, history: list[list[int]]):
        """A window's first tokens (N, P) -> (their prefix features (N, P, C), the state to carry). `history`: each
        row's last tokens so far (the window's and any before it the mode reads; the VAE reads none)."""
        return latents, None

    def extend(self, state, block_ids: torch.Tensor, mask: torch.Tensor, latents: torch.Tensor):
        """A committed block's tokens (N, B) (mask: the whole window's so far) -> (their features, new state)."""
        return latents, state

    def keep(self, state, index: torch.Tensor):
        """The carried state of these rows only."""
        return state

    def prior(self, state, vocab_size: int) -> torch.Tensor | None:
        """(N, vocab_size) added to the decoder's logits of a block's first token, or None (here always)."""
        return None


class BlockState:
    """Block-mode sampling state of a batch of rows within one window: its tokens (left-padded to whole blocks, the
    same layout for any batch), their clean latents, and the DiT's cached prefix - [conditional rows ; unconditional
    rows] when guided. Each generated block is decoded, re-encoded and appended: the prefix the DiT reads always comes
    from the encoder (`encoder`: the block-causal VAE's latents, or a context LM's states), as in training, never from
    the DiT's own samples. Passed explicitly: `append` and `keep` return the next state (an encoder's carried state,
    such as an LM's KV cache, moves on to it: the old state is not to be used again)."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, latents: torch.Tensor, prefix: BlockPrefix,
                 guided: bool, window: int, block: int, encoder=None, carried=None):
        self.ids, self.mask, self.latents, self.prefix = ids, mask, latents, prefix
        self.guided, self.window, self.block = guided, window, block
        self.encoder, self.carried = encoder or LatentPrefix(), carried

    @classmethod
    def start(cls, pipe, history: list[list[int]], guided: bool, encoder=None) -> BlockState:
        """The state at a window's start of rows of prompt ids: the window holds the last dit.context_max tokens of
        each (`history`: all the encoder reads)."""
        d, device = pipe.config.dit, pipe.device
        rows = [h[-d.context_max:] for h in history]
        start = d.prefix_length
        ids = torch.zeros(len(rows), start, dtype=torch.long, device=device)
        mask = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            ids[i, start - len(r):] = torch.tensor(r, dtype=torch.long, device=device)
            mask[i, start - len(r):] = True
        latents = pipe.latents(ids, mask)
        encoder = encoder or LatentPrefix()
        features, carried = encoder.start(ids, mask, latents, history)
        prefix = pipe.dit.extend_prefix(None, *cls._prefix_input(pipe.dit, features, mask, guided))
        return cls(ids, mask, latents, prefix, guided, d.window_tokens, d.blocks.size, encoder, carried)

    def has_room(self) -> bool:
        """Whether one more block fits in the window."""
        return self.ids.shape[1] + self.block <= self.window

    @staticmethod
    def _prefix_input(dit, features, mask, guided: bool):
        if not guided:
            return features, mask
        null, null_mask = dit.null_prefix_input(features, mask)
        return torch.cat([features, null]), torch.cat([mask, null_mask])

    def decode(self, pipe, x: torch.Tensor) -> list[list[int]]:
        """Token ids of a block's latents x (n, B, C) for the state's first n rows, decoded beside their prefix."""
        n = x.shape[0]
        mask = torch.cat([self.mask[:n], torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)], 1)
        prior = self.encoder.prior(self.carried, pipe.vae.vocab_size)
        return pipe.decode_latents(torch.cat([self.latents[:n], x.to(self.latents.dtype)], 1), cut=False, mask=mask,
                                   last=x.shape[1], prior=None if prior is None else prior[:n])

    def append(self, pipe, block_ids: torch.Tensor) -> BlockState:
        """The state after a generated block's tokens (N, B) join the window (their encoding joins the cache)."""
        ones = torch.ones(block_ids.shape, dtype=torch.bool, device=block_ids.device)
        ids, mask = torch.cat([self.ids, block_ids], 1), torch.cat([self.mask, ones], 1)
        new = pipe.latents(ids, mask)[:, -block_ids.shape[1]:]  # block-causal: the rest is unchanged
        features, carried = self.encoder.extend(self.carried, block_ids, mask, new)
        prefix = pipe.dit.extend_prefix(self.prefix, *self._prefix_input(pipe.dit, features, ones, self.guided))
        return BlockState(ids, mask, torch.cat([self.latents, new], 1), prefix, self.guided, self.window,
                          self.block, self.encoder, carried)

    def keep(self, index: torch.Tensor) -> BlockState:
        """The state of these rows only (the others have ended)."""
        n = self.ids.shape[0]
        prefix = self.prefix.rows(torch.cat([index, index + n]) if self.guided else index)
        return BlockState(self.ids[index], self.mask[index], self.latents[index], prefix, self.guided, self.window,
                          self.block, self.encoder, self.encoder.keep(self.carried, index))
