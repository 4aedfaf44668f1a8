"""The user-facing pipelines: TextLDMPipeline (tokenizer + frozen TextVAE + TextDiT), a thin front over the
generation mode that samples (`generation/`), and ARPipeline (tokenizer + the AR baseline, `generation/ar.py`), each
saved and loaded as one folder (`export.py` holds the folder format).

    pipe = TextLDMPipeline.from_pretrained("runs/demo/model")
    pipe.generate(["The President said that"], length=48, steps=10, cfg_scale=2.0, seed=0)
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from textldm.config import Config, SampleConfig, config_from_dict, to_dict
from textldm.diffusion.flow import time_grid
from textldm.diffusion.sampling import Callback
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
from textldm.generation import GenerationMode, SamplingRun, mode_class, noise_seed
from textldm.generation.ar import ARPipeline, resolve_length
from textldm.models.dit import TextDiT
from textldm.models.vae import TextVAE
from textldm.runtime.precision import bf16_autocast
from textldm.utils import cut_at, resolve_device

__all__ = ["ARPipeline", "TextLDMPipeline", "load_pipeline", "noise_seed", "truncate_prompts"]
log = logging.getLogger(__name__)


HELPERS = "context_lm"  # a model folder's <HELPERS>.safetensors: weights the mode trained outside the DiT

def truncate_prompts(rows: list[list[int]], limit: int, what: str) -> list[list[int]]:
    """The one prompt-length policy (the Python API, the CLI, the server and the evaluation harness): a prompt
    longer than the model's context keeps its last `limit` tokens - the ones next to the continuation - with a
    warning saying how many prompts were cut."""
    cut = sum(len(r) > limit for r in rows)
    if cut:
        log.warning("%d of %d prompts are longer than the model's context of %d tokens (%s); each keeps its last %d "
                    "tokens", cut, len(rows), limit, what, limit)
    return [r[-limit:] for r in rows]


class TextLDMPipeline(HubMixin):
    """Tokenizer + frozen TextVAE + TextDiT: `from_pretrained` / `save_pretrained` / `push_to_hub`, and
    `generate` (text in, text out), `generate_ids`, `infill`."""

    def __init__(self, config: Config, tokenizer, vae: TextVAE, dit: TextDiT | None, eot_id: int, *,
                 mode: GenerationMode | None = None):
        """`mode`: the DiT's generation mode when the caller has it (training: the objective, with any helper it
        trained); default: built from the config."""
        self.config, self.tokenizer, self.vae, self.dit, self.eot_id = config, tokenizer, vae, dit, eot_id
        # how the DiT generates (full window or blocks), chosen once from its config
        self.mode = mode if mode is not None or dit is None else mode_class(config.dit)(dit)

    def generate(self, prompts: list[str] | str, length: int | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, solver: str | None = None, seed: int | None = None,
                 callback: Callback | None = None, batch_size: int = 16, progress: bool = False, *,
                 max_new_tokens: int | None = None, **settings) -> list[str]:
        """Continue text prompts, `batch_size` at a time (with a progress bar if `progress`). Deterministic in
        `seed` and independent of the batch size: prompt i always gets the noise of (seed, i)."""
        ids = self.encode_prompts(prompts, self.settings(**settings))
        out = []
        for start in tqdm(range(0, len(ids), batch_size), desc="generate", unit="batch", disable=not progress):
            out += self.generate_ids(ids[start: start + batch_size], length, steps, cfg_scale, solver, seed, callback,
                                     first_index=start, max_new_tokens=max_new_tokens, **settings)
        return [self.tokenizer.decode(row) for row in out]


    @torch.no_grad()
    def generate_ids(self, prompt_ids: list[list[int]], length: int | None = None, steps: int | None = None,
                     cfg_scale: float | None = None, solver: str | None = None, seed: int | None = None,
                     callback: Callback | None = None, first_index: int = 0, *,
                     max_new_tokens: int | None = None, shared_noise: bool = False, **settings) -> list[list[int]]:
        """Continue each prompt (token ids) by up to `length` tokens (`max_new_tokens`: the same, Hugging Face's
        name); returns ids trimmed at end-of-text. `settings`: any other sampler setting (grid, shift, cfg_min_t,
        cfg_max_t, precision, context_cache; see `SampleConfig`).

        Any length: past the DiT's trained window the continuation is generated window after window (or block
        after block), each conditioned on the last dit.context_max tokens of prompt + text so far; a row stops at
        its first end-of-text (the loop: the model's generation mode, `self.mode.generate`). Row i's noise comes
        from `noise_seed(seed, w, first_index + i)` in its w-th window or block, so a prompt gets the same
        continuation whatever batch it is in (`shared_noise`: every row gets row 0's noise). Settings not given
        come from config.sample. `callback(step, t, x)` sees the latents after every sampling step (one with
        `reads_tokens = True` also gets their decoder:
        `generation.SamplingRun`); it may return new latents (used from then on) or `STOP` (decode now, no further
        windows). `self.last_evaluations`: the network evaluations per row of the last call."""
        if self.dit is None:
            raise UserError("this checkpoint has no DiT; train one with `textldm train-dit`")
        s = self.settings(length=resolve_length(length, max_new_tokens, None), steps=steps,
                          cfg_scale=cfg_scale, solver=solver, seed=seed, **settings)
        run = SamplingRun(s, self.time_grid(s), callback, first_index, shared_noise)
        out = self.mode.generate(self, prompt_ids, run)
        self.last_evaluations = run.evaluations
        return cut_at([row[: s.length] for row in out], self.eot_id)

    @torch.no_grad()
    def infill(self, left: list[str] | str, right: list[str] | str, length: int | None = None,
               steps: int | None = None, cfg_scale: float | None = None, solver: str | None = None,
               seed: int | None = None, callback=None, **settings) -> list[str]:
        """The `length` tokens between each left and right text, both given to the DiT as clean latents (a model
        trained with dit.window.infill_prob > 0). Returns the middles; left + middle + right is the filled text.
        `callback(step, t, x)` sees the latents after every sampling step; `settings` as in `generate_ids`."""
        if self.dit is None or self.dit.segment.num_embeddings < 3:
            raise UserError("this model was not trained for infilling; train the DiT with dit.window.infill_prob > 0 "
                            "(e.g. 0.3)")
        lefts, rights = self.encode_prompts(left), self.encode_prompts(right)
        if len(lefts) != len(rights):
            raise UserError(f"{len(lefts)} left texts but {len(rights)} right texts; give one right per left")
        s = self.settings(length=length, steps=steps, cfg_scale=cfg_scale, solver=solver, seed=seed, **settings)
        if s.length > self.config.dit.target_max:
            raise UserError(f"infill length {s.length} is outside 1..{self.config.dit.target_max} (dit.target_max)")
        run = SamplingRun(s, self.time_grid(s), callback)
        rows = self.mode.infill(self, lefts, rights, run)
        self.last_evaluations = run.evaluations
        return [self.tokenizer.decode(r) for r in cut_at(rows, self.eot_id)]

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

    def prompt_tokens(self, s: SampleConfig | None = None) -> int:
        """How many of a prompt's last tokens the model reads under sampler settings `s` (default: config.sample):
        dit.context_max, or a context LM's longer sample.lm_history (`GenerationMode.prompt_tokens`)."""
        s = s or self.config.sample
        return self.mode.prompt_tokens(s) if self.mode is not None else self.config.dit.context_max

    def encode_prompts(self, prompts: list[str], s: SampleConfig | None = None) -> list[list[int]]:
        """Text prompts -> token ids: each non-empty, and cut to the last tokens the model reads under settings `s`
        (`prompt_tokens`, `truncate_prompts`)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise UserError("no prompts given")
        out = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise UserError(f"prompt {i + 1} is empty; give some text to continue")
            out.append(self.tokenizer(p, add_special_tokens=False)["input_ids"])
        return truncate_prompts(out, self.prompt_tokens(s), "the tokens it reads")

    def encode_rows(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
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
        return self.vae.latents(ids, mask, self.config.dit.normalize_latents)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, cut: bool = True, mask: torch.Tensor | None = None,
                       last: int | None = None, prior: torch.Tensor | None = None) -> list[list[int]]:
        """DiT-space latents (B, L, C) (`mask`: True at real positions) -> token ids per row (of the `last`
        positions only, when given: the decoder still reads them all), cut at the first end-of-text (if `cut`).
        `prior` (B, vocab): added to the decoder's logits of the first decoded position (sample.lm_prior)."""
        if self.config.dit.normalize_latents:
            z = self.vae.denormalize(z)
        hidden = self.vae.decode_hidden(z, mask)
        hidden = hidden if last is None else hidden[:, -last:]
        logits = hidden @ self.vae.output_weight().t()
        ids = logits.argmax(-1)
        if prior is not None:
            ids[:, 0] = (logits[:, 0].float() + prior).argmax(-1)
        ids = ids.tolist()
        return cut_at(ids, self.eot_id) if cut else ids

    @property
    def device(self) -> torch.device:
        """The device the networks are on."""
        return next(self.vae.parameters()).device

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextLDMPipeline:
        """Move (and with `dtype`, cast) the networks; bf16 weights sample under bf16 autocast."""
        for module in (self.vae, self.mode or self.dit):  # the mode: the DiT and any frozen helper it reads
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    def autocast(self, s: SampleConfig):
        """bf16 autocast for settings with precision bf16, or for bf16 weights; otherwise a no-op context."""
        bf16 = s.precision == "bf16" or self.vae.embed.weight.dtype == torch.bfloat16
        return bf16_autocast(self.device, bf16)

    # persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, path: Path | str, extra: dict | None = None) -> None:
        """Write the model folder (atomically): config.json, vae/dit safetensors, tokenizer, model card. `extra`: more
        entries for config.json (e.g. the training report, which the card shows)."""
        meta = {"model_type": "textldm", "config": to_dict(self.config), "vocab_size": self.vae.vocab_size,
                "teacher_dim": None if self.vae.repa_proj is None else self.vae.repa_proj[-1].out_features,
                "tokenizer": self.config.teacher.name, "eot_id": self.eot_id, **(extra or {})}
        modules = {"vae": self.vae} if self.dit is None else {"vae": self.vae, "dit": self.dit}
        helpers = self.mode.trained_helpers() if self.mode is not None else {}
        if helpers:  # e.g. the context LM's fine-tuned blocks
            modules[HELPERS] = helpers
        write_model_folder(path, meta, modules, self.tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: Path | str, *, device: str | torch.device = "cpu", require_dit: bool = True,
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
            dit = mode_class(config.dit).new_dit(config.dit, config.vae.latent_channels)
            load_weights(dit, path / "dit.safetensors")
        elif require_dit:
            raise UserError(f"'{path}' holds only a VAE; train a DiT on it with `textldm train-dit --vae {path}`")
        pipe = cls(config, read_tokenizer(path), vae.eval(), None if dit is None else dit.eval(), meta["eot_id"])
        if pipe.mode is not None and pipe.mode.trained_helpers():
            if not (path / f"{HELPERS}.safetensors").exists():
                raise UserError(f"'{path}' was trained with dit.context_lm.train_layers="
                            f"{config.dit.context_lm.train_layers} "
                                f"but holds no {HELPERS}.safetensors (its trained LM blocks); re-save it")
            pipe.mode.load_trained_helpers(load_file(str(path / f"{HELPERS}.safetensors")))
        return pipe.to(device, resolve_dtype(dtype))


def load_pipeline(name_or_path: Path | str, device: str | torch.device = "cpu", *, revision: str | None = None,
                  dtype: torch.dtype | str | None = None) -> TextLDMPipeline | ARPipeline:
    """A saved textldm model of either kind - TextLDM or the AR baseline, as its config.json says - from a model
    folder, a run folder (its model/, else its ar/) or a Hub repo id."""
    path = Path(name_or_path)
    if path.is_dir() and not (path / "config.json").exists():
        path = next((path / sub for sub in ("model", "ar") if (path / sub / "config.json").exists()), path)
    folder = locate_model_folder(path if path.exists() else name_or_path, revision, "")
    cls = ARPipeline if read_model_config(folder).get("model_type") == "ar" else TextLDMPipeline
    return cls.from_pretrained(folder, device=device, dtype=dtype)
