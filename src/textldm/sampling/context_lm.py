"""The context-LM mode at sampling (dit.mode=context_lm): block mode whose clean prefix is a frozen causal LM's states
of the tokens so far, its KV cache carried from block to block (`LMPrefix`), so a committed block costs one LM
forward over its own tokens; with sample.lm_prior, each block's first token is decoded from the sampled latent and the
LM's own next-token probabilities together."""
from __future__ import annotations

import torch

from textldm.config import SampleConfig
from textldm.errors import UserError
from textldm.models.dit import TextDiT
from textldm.models.lm import FrozenLM
from textldm.sampling.blocks import BlockSampler
from textldm.utils import pad_rows


class LMPrefix:
    """The sampling prefix of the context-LM mode (`blocks.LatentPrefix`'s methods): the context LM's states, its KV
    cache carried from block to block, so a committed block costs one LM forward over its own tokens. At a window's
    start the LM reads each row's history (the last sample.lm_history tokens, or the window's alone), left-padded; the
    DiT reads its states of the window's positions. Carried: (the cache, the mask of the tokens it holds, the last
    token's features: the LM's view of the next token, `prior`)."""

    def __init__(self, lm: FrozenLM, prior_weight: float = 0.0):
        if prior_weight and not lm.final:
            raise UserError(f"sample.lm_prior reads the context LM's next-token probabilities at its last layer; this "
                            f"model's LM ends at layer {lm.layers_run} (dit.context_lm.layer): set sample.lm_prior=0")
        self.lm, self.prior_weight = lm, prior_weight

    def start(self, ids: torch.Tensor, mask: torch.Tensor, latents: torch.Tensor, history: list[list[int]]):
        width = max(ids.shape[1], max(len(h) for h in history))
        read, read_mask = pad_rows(history, width, device=ids.device)
        # in the sampler's precision (its autocast), as the DiT
        features, cache = self.lm.states(read, read_mask)
        return features[:, -ids.shape[1]:], (cache, read_mask, features[:, -1])

    def extend(self, carried, block_ids: torch.Tensor, mask: torch.Tensor, latents: torch.Tensor):
        cache, read_mask, _ = carried
        read_mask = torch.cat([read_mask, torch.ones(block_ids.shape, dtype=torch.bool, device=read_mask.device)], 1)
        features, cache = self.lm.states(block_ids, read_mask, cache)
        return features, (cache, read_mask, features[:, -1])

    def keep(self, carried, index: torch.Tensor):
        cache, read_mask, last = carried
        cache.batch_select_indices(index)
        return cache, read_mask[index], last[index]

    def prior(self, carried, vocab_size: int) -> torch.Tensor | None:
        """(N, vocab_size) what sample.lm_prior adds to the decoder's logits of a block's first token: the weight
        times the LM's log-probabilities of the next token (None at weight 0)."""
        if not self.prior_weight:
            return None
        return self.prior_weight * self.lm.next_token_logprobs(carried[2], vocab_size)


class ContextLMSampler(BlockSampler):
    """Block mode's loop with the context LM as the prefix encoder."""

    def __init__(self, dit: TextDiT, lm: FrozenLM):
        super().__init__(dit)
        self.lm = lm

    def prompt_tokens(self, s: SampleConfig) -> int:
        """The DiT's window or, with sample.lm_history, the longer history the LM reads (within the LM's positions:
        the history and a window's continuation)."""
        d, most = self.dit.cfg, getattr(self.lm.model.config, "max_position_embeddings", None)
        if most is not None and s.lm_history + d.target_max > most:
            raise UserError(f"sample.lm_history {s.lm_history} plus a window's {d.target_max} new tokens "
                            f"(dit.target_max) exceed the context LM's {most} positions; lower sample.lm_history "
                            f"to at most {most - d.target_max}")
        return max(d.context_max, s.lm_history)

    def prefix_encoder(self, s: SampleConfig) -> LMPrefix:
        return LMPrefix(self.lm, s.lm_prior)
