"""The user-facing pipelines: TextLDMPipeline (tokenizer + frozen TextVAE + TextDiT) and ARPipeline (tokenizer +
the AR baseline), each saved and loaded as one folder (`export.py` holds the folder format).

    pipe = TextLDMPipeline.from_pretrained("runs/demo/model")
    pipe.generate(["The President said that"], length=48, steps=10, cfg_scale=2.0, seed=0)
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from textldm.config import Config, SampleConfig, config_from_dict, to_dict
from textldm.diffusion.flow import clean_estimate, time_grid
from textldm.diffusion.sampling import STOP, Callback, integrate
from textldm.errors import UserError
from textldm.export import (
    HubMixin,
    load_weights,
    locate_model_folder,
    read_model_config,
    read_tokenizer,
    resolve_dtype,
    write_model_folder,
)
from textldm.models.ar import CausalLM, generate
from textldm.models.dit import TextDiT
from textldm.models.vae import TextVAE
from textldm.utils import cut_at, derive_seed, resolve_device

log = logging.getLogger(__name__)


def fit_prompts(rows: list[list[int]], limit: int, what: str) -> list[list[int]]:
    """The one prompt-length policy (the Python API, the CLI, the server and the evaluation harness): a prompt
    longer than the model's context keeps its last `limit` tokens - the ones next to the continuation - with a
    warning saying how many prompts were cut."""
    cut = sum(len(r) > limit for r in rows)
    if cut:
        log.warning("%d of %d prompts are longer than the model's context of %d tokens (%s); each keeps its last %d "
                    "tokens", cut, len(rows), limit, what, limit)
    return [r[-limit:] for r in rows]


def noise_seed(seed: int, window: int, row: int) -> int:
    """The seed of the starting noise of prompt `row` in generation window `window` (infilling: window 0)."""
    return derive_seed("noise", seed, window, row)


class TextLDMPipeline(HubMixin):
    """Tokenizer + frozen TextVAE + TextDiT: `from_pretrained` / `save_pretrained` / `push_to_hub`, and
    `generate` (text in, text out), `generate_ids`, `infill`."""

    def __init__(self, config: Config, tokenizer, vae: TextVAE, dit: TextDiT | None, eot_id: int):
        self.config, self.tokenizer, self.vae, self.dit, self.eot_id = config, tokenizer, vae, dit, eot_id

    @property
    def device(self) -> torch.device:
        """The device the networks are on."""
        return next(self.vae.parameters()).device

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextLDMPipeline:
        """Move (and with `dtype`, cast) the networks; bf16 weights sample under bf16 autocast."""
        for module in (self.vae, self.dit):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    def autocast(self, s: SampleConfig):
        """bf16 autocast for settings with precision bf16, or for bf16 weights; otherwise a no-op context."""
        bf16 = s.precision == "bf16" or self.vae.embed.weight.dtype == torch.bfloat16
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    # persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, path: Path | str, extra: dict | None = None) -> None:
        """Write the model folder (atomically): config.json, vae/dit safetensors, tokenizer, model card. `extra`: more
        entries for config.json (e.g. the training report, which the card shows)."""
        meta = {"model_type": "textldm", "config": to_dict(self.config), "vocab_size": self.vae.vocab_size,
                "teacher_dim": None if self.vae.repa_proj is None else self.vae.repa_proj[-1].out_features,
                "tokenizer": self.config.teacher.name, "eot_id": self.eot_id, **(extra or {})}
        modules = {"vae": self.vae} if self.dit is None else {"vae": self.vae, "dit": self.dit}
        write_model_folder(path, meta, modules, self.tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: Path | str, device: str | torch.device = "cpu", require_dit: bool = True,
                        dtype: torch.dtype | str | None = None, revision: str | None = None) -> TextLDMPipeline:
        """Load a saved model: a local folder or a Hugging Face Hub repo id (`revision`: branch, tag or commit;
        the local HF cache is used, and with HF_HUB_OFFLINE=1 only it). `dtype` torch.bfloat16 (or "bf16")
        casts the weights and samples under bf16 autocast; the default keeps the saved float32."""
        device = resolve_device(device)
        path = locate_model_folder(name_or_path, revision, "; train one with `textldm demo` or `textldm train-dit`")
        meta = read_model_config(path)
        if meta.get("model_type", "textldm") != "textldm":
            raise UserError(f"'{path}' is a {meta['model_type']} checkpoint, not a TextLDM one; load it with "
                            f"textldm.ARPipeline")
        config = config_from_dict(meta["config"])
        vae = TextVAE(config.vae, meta["vocab_size"], meta["teacher_dim"])
        load_weights(vae, path / "vae.safetensors")
        dit = None
        if (path / "dit.safetensors").exists():
            dit = TextDiT(config.dit, config.vae.latent_channels)
            load_weights(dit, path / "dit.safetensors")
        elif require_dit:
            raise UserError(f"'{path}' holds only a VAE; train a DiT on it with `textldm train-dit --vae {path}`")
        pipe = cls(config, read_tokenizer(path), vae.eval(), None if dit is None else dit.eval(), meta["eot_id"])
        return pipe.to(device, resolve_dtype(dtype))

    # generation ----------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Text prompts -> token ids: each non-empty, and cut to its last dit.context_max tokens (`fit_prompts`)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise UserError("no prompts given")
        out = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise UserError(f"prompt {i + 1} is empty; give some text to continue")
            out.append(self.tokenizer(p, add_special_tokens=False)["input_ids"])
        return fit_prompts(out, self.config.dit.context_max, "dit.context_max")

    @torch.no_grad()
    def generate_ids(self, prompt_ids: list[list[int]], length: int | None = None, steps: int | None = None,
                     cfg_scale: float | None = None, solver: str | None = None, seed: int | None = None,
                     callback: Callback | None = None, first_index: int = 0, *,
                     max_new_tokens: int | None = None, **settings) -> list[list[int]]:
        """Continue each prompt (token ids) by up to `length` tokens (`max_new_tokens`: the same, Hugging Face's
        name); returns ids trimmed at end-of-text. `settings`: any other sampler setting (grid, shift, cfg_min_t,
        cfg_max_t, precision, context_cache; see `SampleConfig`).

        Any length: past the DiT's trained window (dit.target_max) the continuation is generated in windows,
        each conditioned on the last dit.context_max tokens of prompt + text so far; a row stops at its first
        end-of-text. Row i's noise in window w comes from `noise_seed(seed, w, first_index + i)`, so a prompt
        gets the same continuation whatever batch it is in. Settings not given come from config.sample
        (`settings`). `callback(step, t, x)` sees the latents after every sampling step; it may return new
        latents (used from then on) or `STOP` (decode now, no further windows). `self.last_evaluations`: the
        network evaluations per row of the last call."""
        if self.dit is None:
            raise UserError("this checkpoint has no DiT; train one with `textldm train-dit`")
        s = self.settings(length=_length(length, max_new_tokens, None), steps=steps, cfg_scale=cfg_scale,
                          solver=solver, seed=seed, **settings)
        stopped = []

        def step(i: int, t: float, x: torch.Tensor):
            result = callback(i, t, x)
            if isinstance(result, str) and result == STOP:
                stopped.append(i)
            return result

        self.last_evaluations = 0
        generate = self._generate_blocks if self.config.dit.block_size else self._generate_windows
        out = generate(prompt_ids, s, step if callback else None, stopped, first_index)
        return cut_at([row[: s.length] for row in out], self.eot_id)

    def _generate_windows(self, prompt_ids, s: SampleConfig, callback, stopped: list, first_index: int):
        """The full-window recipe: windows of up to dit.target_max tokens, each after the last dit.context_max
        tokens of prompt + text so far."""
        d, grid, remaining = self.config.dit, self.time_grid(s), s.length
        out, active, window = [[] for _ in prompt_ids], list(range(len(prompt_ids))), 0
        while active and remaining > 0 and not stopped:
            n = min(d.target_max, remaining)
            contexts = [(prompt_ids[i] + out[i])[-d.context_max:] for i in active]
            seeds = [noise_seed(s.seed, window, first_index + i) for i in active]
            rows = self._sample_window(contexts, n, grid, s, seeds, callback)
            for i, row in zip(active, rows):
                out[i] += row
            active = [i for i, row in zip(active, rows) if self.eot_id not in row]
            remaining -= n
            window += 1
        return out

    def _generate_blocks(self, prompt_ids, s: SampleConfig, callback, stopped: list, first_index: int):
        """Block mode: blocks of dit.block_size tokens, each sampled against the cached clean prefix. A window holds
        dit.context_max + dit.target_max tokens; when it is full, the last dit.context_max tokens start the next.
        Row i's noise for its k-th block comes from `noise_seed(seed, k, first_index + i)`."""
        d, grid = self.config.dit, self.time_grid(s)
        out, active, remaining, k = [[] for _ in prompt_ids], list(range(len(prompt_ids))), s.length, 0
        with self.autocast(s):
            while active and remaining > 0 and not stopped:
                state = self._block_state = BlockState(self, [(prompt_ids[i] + out[i])[-d.context_max:]
                                                              for i in active], guided=s.cfg_scale != 1.0)
                while active and remaining > 0 and not stopped and state.has_room():
                    state.take = min(d.block_size, remaining)  # the last block may be cut: never show more
                    rows = self._sample_block(state, grid, s, [noise_seed(s.seed, k, first_index + i) for i in active],
                                              callback)
                    for i, row in zip(active, rows):
                        out[i] += row[: state.take]
                    alive = [j for j, row in enumerate(rows) if self.eot_id not in row]
                    active = [active[j] for j in alive]
                    state.append(torch.tensor(rows, device=self.device))
                    state.keep(torch.tensor(alive, dtype=torch.long, device=self.device))
                    remaining, k = remaining - d.block_size, k + 1
        self._block_state = None
        return out

    def decode_step(self, x: torch.Tensor) -> list[list[int]]:
        """Token ids of the latents a step callback sees (the first rows of the current window, or of the current
        block: decoded beside its prefix, as the final text will be, and cut to the tokens the text keeps)."""
        state = getattr(self, "_block_state", None)
        if not self.config.dit.block_size or state is None:
            return self.decode_latents(x, cut=False)
        n = x.shape[0]
        mask = torch.cat([state.mask[:n], torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)], 1)
        ids = self.decode_latents(torch.cat([state.latents[:n], x.to(state.latents.dtype)], 1), cut=False, mask=mask,
                                  last=x.shape[1])
        return [row[: state.take] for row in ids]

    def _sample_block(self, state: BlockState, grid: torch.Tensor, s: SampleConfig, seeds: list[int],
                      callback) -> list[list[int]]:
        """One block of latents after each row's cached prefix -> its raw token ids, decoded beside the prefix's
        latents (the decoder reads the whole window, as in training)."""
        B, C = self.config.dit.block_size, self.vae.cfg.latent_channels
        x = torch.stack([torch.randn(B, C, generator=torch.Generator().manual_seed(k)) for k in seeds]).to(self.device)
        conditional = state.prefix.rows(torch.arange(len(seeds), device=self.device)) if state.guided else state.prefix

        def velocity(x_t, t):
            guided = state.guided and s.cfg_min_t <= float(t[0]) <= s.cfg_max_t
            self.last_evaluations += 2 if guided else 1
            if guided:
                return self.dit.guided_block_velocity(x_t, t, state.prefix, s.cfg_scale)
            return self.dit.block_velocity(x_t, t, conditional)

        x = integrate(velocity, x, grid, s.solver, callback)
        mask = torch.cat([state.mask, torch.ones(x.shape[:2], dtype=torch.bool, device=self.device)], 1)
        return self.decode_latents(torch.cat([state.latents, x], 1), cut=False, mask=mask, last=B)

    def settings(self, **overrides) -> SampleConfig:
        """The sampler settings of one call, resolved once: config.sample with the given ones (None = the model's
        default) in their place, checked (`SampleConfig.check`). Frozen, passed down the sampler; the model's
        config is never written."""
        names = {f.name for f in dataclasses.fields(SampleConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserError(f"unknown sampler setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self.config.sample, **{k: v for k, v in overrides.items() if v is not None})

    def time_grid(self, s: SampleConfig) -> torch.Tensor:
        """The sampling time grid of these settings (the training timestep distribution's, for grid=schedule)."""
        d = self.config.dit
        return time_grid(s.steps, d.t_distribution, d.t_mean, d.t_std, s.grid, s.shift)

    def _encode(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists -> (clean DiT-space latents (B, L, C), mask), right-padded."""
        device = self.device
        ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long, device=device)
        mask = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, device=device)
            mask[i, : len(r)] = True
        return self.latents(ids, mask), mask

    def latents(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, L) -> the clean latents the DiT reads (posterior means, standardised when it uses that)."""
        z = self.vae.encode(ids, mask)
        return self.vae.normalize(z) if self.config.dit.normalize_latents else z

    def _sample_window(self, contexts: list[list[int]], length: int, grid: torch.Tensor, s: SampleConfig,
                       seeds: list[int], callback, rights: list[list[int]] | None = None) -> list[list[int]]:
        """One window of `length` latents after each context (and before each right context, when infilling)
        -> raw token ids (not cut at end-of-text). Under bf16 autocast with precision bf16."""
        device, C, cfg_scale = self.device, self.vae.cfg.latent_channels, s.cfg_scale
        with self.autocast(s):
            context, ctx_mask = self._encode(contexts)
            right, right_mask = self._encode(rights) if rights is not None else (None, None)
            x = torch.stack([torch.randn(length, C, generator=torch.Generator().manual_seed(k)) for k in seeds])
            x = x.to(device)
            cache = None
            if self.dit.context_cond is not None and s.context_cache and right is None:  # context K/V once a window
                cache = self.dit.cache_for_guidance(context, ctx_mask) if cfg_scale != 1.0 else \
                    self.dit.cache_context(context, ctx_mask)

            estimate = torch.zeros_like(x) if self.dit.self_cond_proj is not None else None

            def velocity(x_t, t):
                nonlocal estimate
                guided = cfg_scale != 1.0 and s.cfg_min_t <= float(t[0]) <= s.cfg_max_t
                self.last_evaluations += 2 if guided else 1
                v = self.dit.guided_velocity(x_t, t, context, ctx_mask, None, cfg_scale if guided else 1.0,
                                             cache, right, right_mask, self_cond=estimate)
                if estimate is not None:  # self-conditioning: the next evaluation reads this clean-target estimate
                    estimate = clean_estimate(x_t, t, v)
                return v

            return self.decode_latents(integrate(velocity, x, grid, s.solver, callback), cut=False)

    @torch.no_grad()
    def infill(self, left: list[str] | str, right: list[str] | str, length: int | None = None,
               steps: int | None = None, cfg_scale: float | None = None, solver: str | None = None,
               seed: int | None = None, callback=None, **settings) -> list[str]:
        """The `length` tokens between each left and right text, both given to the DiT as clean latents (a model
        trained with dit.infill_prob > 0). Returns the middles; left + middle + right is the filled text.
        `callback(step, t, x)` sees the latents after every sampling step; `settings` as in `generate_ids`."""
        if self.dit is None or self.dit.segment.num_embeddings < 3:
            raise UserError("this model was not trained for infilling; train the DiT with dit.infill_prob > 0 "
                            "(e.g. 0.3)")
        lefts, rights = self.encode_prompts(left), self.encode_prompts(right)
        if len(lefts) != len(rights):
            raise UserError(f"{len(lefts)} left texts but {len(rights)} right texts; give one right per left")
        s = self.settings(length=length, steps=steps, cfg_scale=cfg_scale, solver=solver, seed=seed, **settings)
        if s.length > self.config.dit.target_max:
            raise UserError(f"infill length {s.length} is outside 1..{self.config.dit.target_max} (dit.target_max)")
        self.last_evaluations = 0
        rows = self._sample_window(lefts, s.length, self.time_grid(s), s,
                                   [noise_seed(s.seed, 0, i) for i in range(len(lefts))], callback, rights)
        return [self.tokenizer.decode(r) for r in cut_at(rows, self.eot_id)]

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, cut: bool = True, mask: torch.Tensor | None = None,
                       last: int | None = None) -> list[list[int]]:
        """DiT-space latents (B, L, C) (`mask`: True at real positions) -> token ids per row (of the `last`
        positions only, when given: the decoder still reads them all), cut at the first end-of-text (if `cut`)."""
        if self.config.dit.normalize_latents:
            z = self.vae.denormalize(z)
        hidden = self.vae.decode_hidden(z, mask)
        hidden = hidden if last is None else hidden[:, -last:]
        ids = (hidden @ self.vae.output_weight().t()).argmax(-1).tolist()
        return cut_at(ids, self.eot_id) if cut else ids

    def generate(self, prompts: list[str] | str, length: int | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, solver: str | None = None, seed: int | None = None,
                 callback: Callback | None = None, batch_size: int = 16, progress: bool = False, *,
                 max_new_tokens: int | None = None, **settings) -> list[str]:
        """Continue text prompts, `batch_size` at a time (with a progress bar if `progress`). Deterministic in
        `seed` and independent of the batch size: prompt i always gets the noise of (seed, i)."""
        ids = self.encode_prompts(prompts)
        out = []
        for start in tqdm(range(0, len(ids), batch_size), desc="generate", unit="batch", disable=not progress):
            out += self.generate_ids(ids[start: start + batch_size], length, steps, cfg_scale, solver, seed, callback,
                                     first_index=start, max_new_tokens=max_new_tokens, **settings)
        return [self.tokenizer.decode(row) for row in out]


class BlockState:
    """Block-mode sampling state of a batch of rows within one window: its tokens (left-padded to whole blocks, the
    same layout for any batch), their clean latents, and the DiT's cached prefix - [conditional rows ;
    unconditional rows] when guided. Each generated block is decoded, re-encoded and appended: the prefix the DiT
    reads always comes from the (block-causal) encoder, as in training, never from its own samples."""

    def __init__(self, pipe: TextLDMPipeline, rows: list[list[int]], guided: bool):
        d, device = pipe.config.dit, pipe.device
        start = -(-d.context_max // d.block_size) * d.block_size
        self.pipe, self.guided, self.window = pipe, guided, d.context_max + d.target_max
        self.take = d.block_size  # how many of the current block's tokens the text keeps (fewer in a cut last block)
        self.ids = torch.zeros(len(rows), start, dtype=torch.long, device=device)
        self.mask = torch.zeros(self.ids.shape, dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            self.ids[i, start - len(r):] = torch.tensor(r, dtype=torch.long, device=device)
            self.mask[i, start - len(r):] = True
        self.latents = pipe.latents(self.ids, self.mask)
        self.prefix = pipe.dit.extend_prefix(None, *self._prefix_input(self.latents, self.mask))

    def has_room(self) -> bool:
        """Whether one more block fits in the window."""
        return self.ids.shape[1] + self.pipe.config.dit.block_size <= self.window

    def _prefix_input(self, latents, mask):
        if not self.guided:
            return latents, mask
        null, null_mask = self.pipe.dit.null_prefix_input(latents, mask)
        return torch.cat([latents, null]), torch.cat([mask, null_mask])

    def append(self, block_ids: torch.Tensor) -> None:
        """A generated block's tokens (N, B) join the window; their encoding joins the prefix cache."""
        ones = torch.ones(block_ids.shape, dtype=torch.bool, device=block_ids.device)
        self.ids, self.mask = torch.cat([self.ids, block_ids], 1), torch.cat([self.mask, ones], 1)
        new = self.pipe.latents(self.ids, self.mask)[:, -block_ids.shape[1]:]  # block-causal: the rest is unchanged
        self.latents = torch.cat([self.latents, new], 1)
        self.prefix = self.pipe.dit.extend_prefix(self.prefix, *self._prefix_input(new, ones))

    def keep(self, index: torch.Tensor) -> None:
        """Keep these rows only (the others have ended)."""
        n = self.ids.shape[0]
        self.ids, self.mask, self.latents = self.ids[index], self.mask[index], self.latents[index]
        self.prefix = self.prefix.rows(torch.cat([index, index + n]) if self.guided else index)


class ARPipeline(HubMixin):
    """Tokenizer + CausalLM, saved and loaded as one folder (same layout and guarantees as TextLDMPipeline)."""

    def __init__(self, config: Config, tokenizer, model: CausalLM, eot_id: int):
        self.config, self.tokenizer, self.model, self.eot_id = config, tokenizer, model, eot_id

    @property
    def seq_len(self) -> int:
        """The training window: the longest prompt + continuation the AR baseline reads."""
        return self.config.ar.seq_len or self.config.dit.context_max + self.config.dit.target_max

    @property
    def device(self) -> torch.device:
        """The device the model is on."""
        return next(self.model.parameters()).device

    def save_pretrained(self, path: Path | str, extra: dict | None = None) -> None:
        """Write the model folder (atomically): config.json, ar.safetensors, tokenizer, model card."""
        meta = {"model_type": "ar", "config": to_dict(self.config), "vocab_size": self.model.vocab_size,
                "tokenizer": self.config.teacher.name, "eot_id": self.eot_id, **(extra or {})}
        write_model_folder(path, meta, {"ar": self.model}, self.tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: Path | str, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, revision: str | None = None) -> ARPipeline:
        """A saved AR baseline from a local folder or a Hub repo id (as TextLDMPipeline.from_pretrained)."""
        device = resolve_device(device)
        path = locate_model_folder(name_or_path, revision, "; train one with `textldm train-ar`")
        meta = read_model_config(path)
        if meta.get("model_type") != "ar":
            raise UserError(f"'{path}' is not an AR baseline checkpoint (model_type {meta.get('model_type')!r})")
        config = config_from_dict(meta["config"])
        model = CausalLM(config.ar, meta["vocab_size"])
        load_weights(model, path / "ar.safetensors")
        return cls(config, read_tokenizer(path), model.eval().to(device=device, dtype=resolve_dtype(dtype)),
                   meta["eot_id"])

    def generate_ids(self, prompt_ids: list[list[int]], length: int | None = None, temperature: float | None = None,
                     top_k: int | None = None, top_p: float | None = None, seed: int | None = None, *,
                     max_new_tokens: int | None = None) -> list[list[int]]:
        """Up to `length` new tokens per prompt (`max_new_tokens`: the same, Hugging Face's name), trimmed at
        end-of-text; prompts are left-truncated to fit the training window. Settings not given: config.sample."""
        s = self.config.sample
        length = _length(length, max_new_tokens, s.length)
        if not 1 <= length < self.seq_len:
            raise UserError(f"length {length} must be in 1..{self.seq_len - 1} (ar.seq_len)")
        keep = self.seq_len - length
        prompts = [p[-keep:] for p in prompt_ids]
        bf16 = next(self.model.parameters()).dtype == torch.bfloat16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = generate(self.model, prompts, length, s.temperature if temperature is None else temperature,
                           s.top_k if top_k is None else top_k, s.top_p if top_p is None else top_p,
                           s.seed if seed is None else seed).tolist()
        return cut_at(out, self.eot_id)

    def generate(self, prompts: list[str] | str, length: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None, *,
                 max_new_tokens: int | None = None) -> list[str]:
        """Continue text prompts (the same arguments as TextLDMPipeline.generate where they mean the same)."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if not ids or any(not row for row in ids):
            raise UserError("every prompt needs at least one token; give some text")
        rows = self.generate_ids(ids, length, temperature, top_k, top_p, seed, max_new_tokens=max_new_tokens)
        return [self.tokenizer.decode(row) for row in rows]


def load_pipeline(name_or_path: Path | str, device: str | torch.device = "cpu", revision: str | None = None,
                  dtype: torch.dtype | str | None = None) -> TextLDMPipeline | ARPipeline:
    """A saved textldm model of either kind - TextLDM or the AR baseline, as its config.json says - from a model
    folder, a run folder (its model/, else its ar/) or a Hub repo id."""
    path = Path(name_or_path)
    if path.is_dir() and not (path / "config.json").exists():
        path = next((path / sub for sub in ("model", "ar") if (path / sub / "config.json").exists()), path)
    folder = locate_model_folder(path if path.exists() else name_or_path, revision, "")
    cls = ARPipeline if read_model_config(folder).get("model_type") == "ar" else TextLDMPipeline
    return cls.from_pretrained(folder, device=device, dtype=dtype)


def _length(length: int | None, max_new_tokens: int | None, default: int | None) -> int | None:
    """`length` and its Hugging Face name `max_new_tokens` are the same argument; give one."""
    if length is not None and max_new_tokens is not None and length != max_new_tokens:
        raise UserError(f"length={length} and max_new_tokens={max_new_tokens} disagree; give one of them")
    return next((v for v in (length, max_new_tokens) if v is not None), default)
