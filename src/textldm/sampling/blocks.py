"""Block-causal mode at sampling (dit.mode=blocks): block after block, each of dit.blocks.size tokens sampled against
the DiT's cached clean prefix (`BlockState`); when the window is full, its last dit.context_max tokens start the next.
The prefix comes from a prefix encoder - the VAE's latents (`LatentPrefix`) or a context LM's states
(`context_lm.LMPrefix`)."""
from __future__ import annotations

import torch

from textldm.config import SampleConfig
from textldm.diffusion.sampling import integrate
from textldm.models.block_causal import BlockPrefix
from textldm.models.dit import TextDiT
from textldm.sampling.run import Sampler, SamplingRun
from textldm.utils import pad_rows


class LatentPrefix:
    """Block mode's sampling prefix: the VAE's clean latents themselves (`BlockState` asks it for the prefix of each
    new stretch of tokens; block-causal latents never change when later blocks join). A mode whose prefix is
    something else (a context LM's states: `context_lm.LMPrefix`) gives its own, with the same methods; `state` is
    whatever it carries from one block to the next (here nothing)."""

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
    def start(cls, codec, dit: TextDiT, history: list[list[int]], guided: bool, encoder=None) -> BlockState:
        """The state at a window's start of rows of prompt ids: the window holds the last dit.context_max tokens of
        each (`history`: all the encoder reads)."""
        d = dit.cfg
        ids, mask = pad_rows([h[-d.context_max:] for h in history], d.prefix_length, device=codec.device)
        latents = codec.latents(ids, mask)
        encoder = encoder or LatentPrefix()
        features, carried = encoder.start(ids, mask, latents, history)
        prefix = dit.extend_prefix(None, *cls._prefix_input(dit, features, mask, guided))
        return cls(ids, mask, latents, prefix, guided, d.window_tokens, d.blocks.size, encoder, carried)

    def has_room(self) -> bool:
        """Whether one more block fits in the window."""
        return self.ids.shape[1] + self.block <= self.window

    @staticmethod
    def _prefix_input(dit: TextDiT, features, mask, guided: bool):
        if not guided:
            return features, mask
        null, null_mask = dit.null_prefix_input(features, mask)
        return torch.cat([features, null]), torch.cat([mask, null_mask])

    def decode(self, codec, x: torch.Tensor) -> list[list[int]]:
        """Token ids of a block's latents x (n, B, C) for the state's first n rows, decoded beside their prefix."""
        n = x.shape[0]
        mask = torch.cat([self.mask[:n], torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)], 1)
        prior = self.encoder.prior(self.carried, codec.vocab_size)
        return codec.decode(torch.cat([self.latents[:n], x.to(self.latents.dtype)], 1), cut=False, mask=mask,
                            last=x.shape[1], prior=None if prior is None else prior[:n])

    def append(self, codec, dit: TextDiT, block_ids: torch.Tensor) -> BlockState:
        """The state after a generated block's tokens (N, B) join the window (their encoding joins the cache)."""
        ones = torch.ones(block_ids.shape, dtype=torch.bool, device=block_ids.device)
        ids, mask = torch.cat([self.ids, block_ids], 1), torch.cat([self.mask, ones], 1)
        new = codec.latents(ids, mask)[:, -block_ids.shape[1]:]  # block-causal: the rest is unchanged
        features, carried = self.encoder.extend(self.carried, block_ids, mask, new)
        prefix = dit.extend_prefix(self.prefix, *self._prefix_input(dit, features, ones, self.guided))
        return BlockState(ids, mask, torch.cat([self.latents, new], 1), prefix, self.guided, self.window,
                          self.block, self.encoder, carried)

    def keep(self, index: torch.Tensor) -> BlockState:
        """The state of these rows only (the others have ended)."""
        n = self.ids.shape[0]
        prefix = self.prefix.rows(torch.cat([index, index + n]) if self.guided else index)
        return BlockState(self.ids[index], self.mask[index], self.latents[index], prefix, self.guided, self.window,
                          self.block, self.encoder, self.encoder.keep(self.carried, index))


class BlockSampler(Sampler):
    """Block mode's loop: blocks against the cached clean prefix, window after window."""

    def generate(self, codec, prompt_ids: list[list[int]], run: SamplingRun) -> list[list[int]]:
        """Blocks of dit.blocks.size tokens, each sampled against the cached clean prefix; a row stops at its first
        end-of-text. Row i's noise for its k-th block: `noise_seed(seed, k, first_index + i)`."""
        d, s = self.dit.cfg, run.settings
        out, active, remaining, k = [[] for _ in prompt_ids], list(range(len(prompt_ids))), s.length, 0
        reads = self.prompt_tokens(s)  # at each window's start, the last tokens the prefix encoder reads
        with codec.autocast(s):
            while active and remaining > 0 and not run.stopped:
                state = BlockState.start(codec, self.dit, [(prompt_ids[i] + out[i])[-reads:] for i in active],
                                         s.guidance.on, self.prefix_encoder(s))
                while active and remaining > 0 and not run.stopped and state.has_room():
                    take = min(d.blocks.size, remaining)  # the last block may be cut: never show more
                    seeds = [run.noise_seed(k, i) for i in active]
                    rows = self.sample_block(codec, state, run, seeds, take)
                    for i, row in zip(active, rows):
                        out[i] += row[:take]
                    alive = [j for j, row in enumerate(rows) if codec.eot_id not in row]
                    active = [active[j] for j in alive]
                    state = state.append(codec, self.dit, torch.tensor(rows, device=codec.device))
                    state = state.keep(torch.tensor(alive, dtype=torch.long, device=codec.device))
                    remaining, k = remaining - d.blocks.size, k + 1
        return out

    def prefix_encoder(self, s: SampleConfig) -> LatentPrefix:
        """What turns the window's tokens into the DiT's clean prefix at sampling (`BlockState`), under settings `s`."""
        return LatentPrefix()

    def sample_block(self, codec, state: BlockState, run: SamplingRun, seeds: list[int],
                     take: int) -> list[list[int]]:
        """One block of latents after each row's cached prefix -> its raw token ids, decoded beside the prefix's
        latents (the decoder reads the whole window, as in training). The step callback's decoder shows the first
        `take` tokens of the block: what the text keeps."""
        B = self.dit.cfg.blocks.size
        x = run.start_noise(seeds, B, self.dit.latent_channels, codec.device)
        conditional = state.prefix.rows(torch.arange(len(seeds), device=codec.device)) if state.guided \
            else state.prefix

        def evaluate(x_t, t, guided: bool, self_cond):  # guided: the prefix holds [conditional ; unconditional] rows
            return self.dit.block_velocity(x_t, t, state.prefix if guided else conditional, self_cond)

        self_condition = torch.zeros_like(x) if self.dit.self_cond_proj is not None else None
        x = integrate(run.velocity(evaluate, self_condition), x, run.grid, run.settings.solver,
                      run.step_callback(lambda z: [row[:take] for row in state.decode(codec, z)]))
        return state.decode(codec, x)
