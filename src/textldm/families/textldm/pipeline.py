"""The TextLDM family's pipeline: tokenizer + latent codec (the frozen TextVAE) + the DiT's sampler (its generation
mode's: `modes.py`), saved and loaded as one folder (`export.py` holds the folder format).

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
    CardText,
    HubMixin,
    load_weights,
    locate_model_folder,
    read_model_config,
    read_tokenizer,
    resolve_dtype,
    write_model_folder,
)
from textldm.families.spec import resolve_length, tokenize_prompts, truncate_prompts
from textldm.families.textldm.modes import mode_of
from textldm.models.dit import TextDiT
from textldm.models.vae import TextVAE
from textldm.sampling import LatentCodec, SamplingRun
from textldm.utils import cut_at, param_count, resolve_device

log = logging.getLogger(__name__)
HELPERS = "context_lm"  # a model folder's <HELPERS>.safetensors: the mode's trained weights outside the DiT
# the sampler settings a TextLDM model does not read (the AR baseline's), and those set per call
NOT_DIFFUSION = {"length", "seed", "temperature", "top_p", "top_k", "projection"}


class TextLDMPipeline(HubMixin):
    """Tokenizer + latent codec (the frozen TextVAE) + TextDiT and its mode's sampler: `from_pretrained` /
    `save_pretrained` / `push_to_hub`, and `generate` (text in, text out), `generate_ids`, `infill`; the `Pipeline`
    protocol (`continue_ids`, ...) for the harness, the server and lm-eval."""
    family = "textldm"
    streams = True
    sampler_settings = frozenset(f.name for f in dataclasses.fields(SampleConfig)) - NOT_DIFFUSION | {"seed", "length"}

    def __init__(self, config: Config, tokenizer, vae: TextVAE, dit: TextDiT | None, eot_id: int, *,
                 parts: dict | None = None):
        """`parts`: what else the DiT's mode reads (the context LM), when the caller has them (training: the ones the
        objective trained); default: built from the config."""
        self.config, self.tokenizer, self.dit = config, tokenizer, dit
        self.codec = LatentCodec(vae, config.dit.normalize_latents, eot_id)
        self.mode = mode_of(config.dit)  # how the DiT generates, by name (dit.mode)
        self.parts = parts if parts is not None else (self.mode.build_parts(config.dit) if dit is not None else {})
        self.sampler = self.mode.sampler(dit, **self.parts) if dit is not None else None

    @property
    def vae(self) -> TextVAE:
        return self.codec.vae

    @property
    def eot_id(self) -> int:
        return self.codec.eot_id

    @eot_id.setter
    def eot_id(self, value: int) -> None:
        self.codec.eot_id = value

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
        its first end-of-text (the loop: the mode's sampler, `self.sampler.generate`). Row i's noise comes
        from `noise_seed(seed, w, first_index + i)` in its w-th window or block, so a prompt gets the same
        continuation whatever batch it is in (`shared_noise`: every row gets row 0's noise). Settings not given
        come from config.sample. `callback(step, t, x)` sees the latents after every sampling step (one with
        `reads_tokens = True` also gets their decoder:
        `sampling.SamplingRun`); it may return new latents (used from then on) or `STOP` (decode now, no further
        windows). `self.last_evaluations`: the network evaluations per row of the last call."""
        if self.dit is None:
            raise UserError("this checkpoint has no DiT; train one with `textldm train-dit`")
        s = self.settings(length=resolve_length(length, max_new_tokens, None), steps=steps,
                          cfg_scale=cfg_scale, solver=solver, seed=seed, **settings)
        run = SamplingRun(s, self.time_grid(s), callback, first_index, shared_noise)
        out = self.sampler.generate(self.codec, prompt_ids, run)
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
        rows = self.sampler.infill(self.codec, lefts, rights, run)
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
        dit.context_max, or a context LM's longer sample.lm_history (its sampler's `prompt_tokens`)."""
        s = s or self.config.sample
        return self.sampler.prompt_tokens(s) if self.sampler is not None else self.config.dit.context_max

    def encode_prompts(self, prompts: list[str], s: SampleConfig | None = None) -> list[list[int]]:
        """Text prompts -> token ids: each non-empty, and cut to the last tokens the model reads under settings `s`
        (`prompt_tokens`, `truncate_prompts`)."""
        return truncate_prompts(tokenize_prompts(self.tokenizer, prompts), self.prompt_tokens(s), "the tokens it reads")

    @property
    def device(self) -> torch.device:
        """The device the networks are on."""
        return next(self.vae.parameters()).device

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextLDMPipeline:
        """Move (and with `dtype`, cast) the networks; bf16 weights sample under bf16 autocast."""
        for module in (self.vae, self.dit, *self.parts.values()):  # the parts: e.g. the context LM
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    # persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, path: Path | str, extra: dict | None = None) -> None:
        """Write the model folder (atomically): config.json, vae/dit safetensors, tokenizer, model card. `extra`: more
        entries for config.json (e.g. the training report, which the card shows)."""
        meta = {"model_type": "textldm", "config": to_dict(self.config), "vocab_size": self.vae.vocab_size,
                "teacher_dim": None if self.vae.repa_proj is None else self.vae.repa_proj[-1].out_features,
                "tokenizer": self.config.teacher.name, "eot_id": self.eot_id, **(extra or {})}
        modules = {"vae": self.vae} if self.dit is None else {"vae": self.vae, "dit": self.dit}
        helpers = self.trained_parts()
        if helpers:  # e.g. the context LM's fine-tuned layers
            modules[HELPERS] = helpers
        write_model_folder(path, meta, modules, self.tokenizer, self.card())

    def trained_parts(self) -> dict[str, torch.Tensor]:
        """The weights of the mode's parts that training changed (the context LM's trained last layers), by name."""
        return {k: v for part in self.parts.values() for k, v in part.trained_state().items()}

    def card(self) -> CardText:
        """What the model card says this folder is."""
        if self.dit is None:
            what = "the TextVAE of a TextLDM model (no DiT yet: train one with `textldm train-dit --vae DIR`)"
        else:
            what = ("a TextLDM model: a TextVAE (one 64-d latent per token, REPA-aligned) and a TextDiT (flow matching "
                    "in that latent space)")
        return CardText(self.family, what, "TextLDMPipeline", 'pipe.generate(["The President said that"], length=48)',
                        "latent-diffusion")

    @classmethod
    def from_pretrained(cls, name_or_path: Path | str, *, device: str | torch.device = "cpu", require_dit: bool = True,
                        dtype: torch.dtype | str | None = None, revision: str | None = None) -> TextLDMPipeline:
        """Load a saved model: a local folder or a Hugging Face Hub repo id (`revision`: branch, tag or commit;
        the local HF cache is used, and with HF_HUB_OFFLINE=1 only it). `dtype` torch.bfloat16 (or "bf16")
        casts the weights and samples under bf16 autocast; the default keeps the saved float32."""
        device = resolve_device(device)
        path = locate_model_folder(name_or_path, revision, "; train one with `textldm demo` or `textldm train-dit`")
        meta = read_model_config(path)
        if meta.get("model_type", cls.family) != cls.family:
            raise UserError(f"'{path}' is a {meta['model_type']} checkpoint, not a TextLDM one; load it with "
                            f"textldm.load_pipeline")
        config = config_from_dict(meta["config"])
        vae = TextVAE(config.vae, meta["vocab_size"], meta["teacher_dim"])
        load_weights(vae, path / "vae.safetensors")
        dit = None
        if (path / "dit.safetensors").exists():
            dit = mode_of(config.dit).build_dit(config.dit, config.vae.latent_channels)
            load_weights(dit, path / "dit.safetensors")
        elif require_dit:
            raise UserError(f"'{path}' holds only a VAE; train a DiT on it with `textldm train-dit --vae {path}`")
        pipe = cls(config, read_tokenizer(path), vae.eval(), None if dit is None else dit.eval(), meta["eot_id"])
        if pipe.trained_parts():
            if not (path / f"{HELPERS}.safetensors").exists():
                raise UserError(f"'{path}' was trained with dit.context_lm.train_layers="
                                f"{config.dit.context_lm.train_layers} but holds no {HELPERS}.safetensors (its trained "
                                f"LM layers); re-save it")
            pipe.parts["lm"].load_trained_state(load_file(str(path / f"{HELPERS}.safetensors")))
        return pipe.to(device, resolve_dtype(dtype))

    # the Pipeline protocol (families.spec) --------------------------------------------------------------
    def default_sample(self) -> SampleConfig:
        return self.config.sample

    def continue_ids(self, prompt_ids: list[list[int]], length: int, *, sample: SampleConfig | None = None,
                     first_index: int = 0, callback=None) -> list[list[int]]:
        """`generate_ids` with every diffusion setting of `sample` (its temperature, top-k and top-p are an AR
        model's and are not read)."""
        sample = sample or self.config.sample
        settings = {f.name: getattr(sample, f.name) for f in dataclasses.fields(sample) if f.name not in NOT_DIFFUSION}
        return self.generate_ids(prompt_ids, length, seed=sample.seed, callback=callback, first_index=first_index,
                                 **settings)

    def prompt_window(self, length: int, sample: SampleConfig | None = None) -> int:
        """What the model reads of a prompt whatever the length: `prompt_tokens`."""
        return self.prompt_tokens(sample)

    def longest_continuation(self, requested: int) -> int:
        """One window's continuation, dit.target_max: what a TextLDM model writes in one denoising."""
        return self.config.dit.target_max

    def parameters(self) -> int:
        """The VAE's and the DiT's parameters (and a context LM's, where the mode reads one)."""
        return sum(param_count(m) for m in (self.vae, self.dit, *self.parts.values()) if m is not None)

    def most_tokens(self) -> int | None:
        """Any length: window after window, block after block."""
        return None

    def trained_lengths(self) -> tuple[int, int] | None:
        return self.config.dit.context_min, self.config.dit.target_min

    def continuation_nll(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise UserError("a TextLDM model has no tractable likelihood (nor a bound computed here) of given tokens")

    def token_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise UserError("a TextLDM model has no tractable likelihood of given tokens here, so loglikelihood tasks "
                        "(multiple choice, perplexity) are not scored for it; run generate_until tasks, or score its "
                        "AR baseline (the same class reads either kind of model)")
