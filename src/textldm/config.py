"""Typed configuration: dataclasses, YAML presets and `section.key=value` command-line overrides.

A run's config is `Config`; each section is a dataclass with defaults. A preset YAML (a file, or a name
from `textldm/presets/`) sets some keys; overrides set more. Unknown keys and ill-typed values are
UserErrors that name the key and list what is allowed.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import logging
import math
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from textldm.diffusion.guidance import Guidance, interval_problem
from textldm.errors import UserError
from textldm.utils import DEVICE_HINT, DEVICE_NAME

PRESET_DIR = Path(__file__).parent / "presets"
# overrides that give the paper's full window on any preset (`demo` trains block mode since 0.3.0)
FULL_WINDOW = ("dit.mode=window", "vae.encoder_block_size=0", "dit.t_mean=0.0")

# the allowed values of every choice, stated once: validation, the CLI's choices and `textldm config --keys`
# read them from here (diffusion/sampling.py's SOLVERS and diffusion/flow.py's time grids implement them)
Precision = Literal["auto", "bf16", "fp32"]
SamplePrecision = Literal["fp32", "bf16"]
Parallel = Literal["ddp", "fsdp"]
EmbedInit = Literal["teacher", "random"]
Softmax = Literal["full", "sampled"]
RepaSource = Literal["encoder", "latent"]
NullContext = Literal["learned", "zeros"]
TDistribution = Literal["logit_normal", "uniform"]
Solver = Literal["euler", "heun", "ab2"]
Grid = Literal["schedule", "uniform", "shifted"]
Projection = Literal["multi-hot", "sampling"]
Pooling = Literal["mean", "last"]
BlockTime = Literal["per_block", "shared"]
BlockUncond = Literal["empty", "null_latent"]
# how a TextDiT generates, and what it is trained on to do so: the paper's full window, block-causal blocks, or blocks
# whose clean prefix is a pretrained LM's states; each mode's own settings are a section of dit (`MODE_SECTIONS`)
Mode = Literal["window", "blocks", "context_lm"]


class Checked:
    """A config section that checks itself: `rules(name)` lists (holds, message) pairs, `check(name)` raises the first
    that fails as a UserError (after the Literal-typed fields' allowed values and every number being finite). A
    section checks itself when built; the loader checks every section again once it has filled them (`validate`),
    under its key in `Config`. A field's range is one rule, `within`, in the section that owns the field."""
    SECTION = ""  # the section's key in Config (TrainConfig serves vae_train, dit_train and ar_train)

    def __post_init__(self):
        self.check(self.SECTION)

    def rules(self, name: str) -> list[tuple[bool, str]]:
        """(holds, message) pairs; `name` is the section's key, for the messages."""
        return []

    def within(self, name: str, key: str, interval: str) -> tuple[bool, str]:
        """The rule that field `key` lies in `interval`, written as in mathematics: "[1, inf)", "(0, 1]", "[0, 1)"
        (inf: no bound). An unset (None) optional field passes."""
        return in_interval(getattr(self, key), interval, f"{name}.{key}")

    def check(self, name: str) -> None:
        """Raise a UserError naming the first invalid setting (its sub-sections', e.g. dit.blocks, first)."""
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), Checked):
                getattr(self, f.name).check(f"{name}.{f.name}")
        _check_choices(self, name)
        _check_finite(self, name)
        for ok, message in self.rules(name):
            if not ok:
                raise UserError(f"invalid config: {message}")


def in_interval(value, interval: str, what: str) -> tuple[bool, str]:
    """(whether `value` lies in `interval` - "[lo, hi]", "(lo, hi)" or mixed, inf for no bound - or is None, the
    message saying where it must lie)."""
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    ok = value is None or ((lo < value if interval[0] == "(" else lo <= value)
                           and (value < hi if interval[-1] == ")" else value <= hi))
    return ok, f"{what} must be in {interval}, got {value!r}"


def _check_finite(section, name: str) -> None:
    """No float field holds nan or inf (YAML reads `.nan`, `nan` and `inf` as numbers)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"invalid config: {name}.{f.name} must be a finite number, got {value}")


@dataclass
class DataConfig(Checked):
    """The training text: where it comes from and how it is split (`data.*`)."""
    source: str = "embedded"  # "embedded", a local .txt/.jsonl/.parquet file or folder, or an HF data set name
    text_field: str = "text"  # column holding the text (jsonl/parquet/HF)
    hf_config: str | None = None  # HF data set configuration name
    hf_split: str = "train"
    val_fraction: float = 0.05  # document-level held-out fraction (fixed by a hash of the document)
    max_documents: int | None = None  # the first N documents of the source (in source order)
    num_workers: int = 0  # tokenization processes (0 = up to 8, one per CPU); the shards do not depend on it
    SECTION = "data"

    def rules(self, name):
        return [(self.source.strip() != "", f"{name}.source is empty; give 'embedded', a file/folder or a data set"),
                self.within(name, "val_fraction", "(0, 1)"), self.within(name, "max_documents", "[1, inf)"),
                self.within(name, "num_workers", "[0, inf)")]


@dataclass
class TeacherConfig(Checked):
    """The tokenizer and frozen REPA teacher (`teacher.*`)."""
    name: str = "smollm2-135m"  # tokenizer + REPA teacher: built-in alias, HF model name or local folder
    layer: int = -3  # index into HF hidden_states; negative from the end (-3 = the paper's third-to-last)
    SECTION = "teacher"

    def rules(self, name):
        return [(self.name.strip() != "", f"{name}.name is empty; give smollm2-135m, an HF model name or a folder"),
                (self.layer != 0, f"{name}.layer 0 is the embedding output, not a layer; use 1..N or -N..-1")]


@dataclass
class TransformerShape(Checked):
    """What every Transformer here shares (VAE encoder and decoder, DiT, AR baseline)."""
    width: int = 256  # model width (width / heads: an even head size, for RoPE)
    heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden size / width

    def rules(self, name):
        return [self.within(name, "width", "[2, inf)"), self.within(name, "heads", "[1, inf)"),
                (self.heads >= 1 and self.width % self.heads == 0 and (self.width // self.heads) % 2 == 0,
                 f"{name}.width must be divisible by {name}.heads with an even head size (for RoPE)"),
                self.within(name, "mlp_ratio", "(0, inf)")]


@dataclass
class VAEConfig(TransformerShape):
    """The TextVAE: shape, REPA, loss and the VAE's training-only options (`vae.*`)."""
    encoder_depth: int = 2  # encoder blocks
    decoder_depth: int = 2  # decoder blocks
    latent_channels: int = 64
    max_len: int = 128  # longest sequence the VAE sees (training windows are cut to this)
    embed_init: EmbedInit = "teacher"  # "teacher": token embedding = teacher embeddings projected to width; "random"
    tie_embeddings: bool = True  # decoder output head shares the token embedding matrix
    repa_source: RepaSource = "encoder"  # align an encoder block's output ("encoder") or the latent mean ("latent")
    repa_layer: int = -1  # with repa_source=encoder: which encoder layer (negative from the end)
    repa_hidden: int = 512  # projector MLP hidden size
    kl_weight: float = 1e-3  # weight of the KL term (reached after its warm-up)
    kl_warmup_steps: int = 200  # linear warm-up of the KL weight from 0
    repa_weight: float = 1.0  # 0 disables REPA (and the teacher)
    repa_fraction: float = 1.0  # share of each batch's sequences that get teacher features and the REPA term
    teacher_cache: str = ""  # "" = teacher on the fly; "auto" or a folder = features precomputed to disk (reused)
    teacher_cache_windows: int = 0  # windows of max_len tokens to precompute (0 = the whole training split)
    logvar_init: float = -6.0  # bias of the log-variance head at start
    truncate_prob: float = 0.5  # probability that a training sequence is cut to a random length
    softmax: Softmax = "full"  # "full" vocabulary, or "sampled": batch tokens + random negatives (training only)
    sampled_negatives: int = 2048  # random negatives per step
    hard_negatives: int = 4  # nearest neighbours (in embedding space) of every batch token, added as negatives
    # block-causal encoder: a latent sees the tokens up to the end of its own block of this many tokens, never later
    # ones, so the clean latents of earlier blocks carry nothing of what follows (needed by dit.block_size > 0)
    encoder_block_size: int = 0  # 0 = bidirectional (the paper's); 1 = causal
    # a decoder robust to generated latents: in training it also reads latents with Gaussian noise of std
    # decoder_noise x U(0, 1) x the batch's per-channel latent std (one level per sequence)
    decoder_noise: float = 0.0  # 0 = off
    SECTION = "vae"

    def rules(self, name):
        return super().rules(name) + [self.within(name, key, interval) for key, interval in (
            ("encoder_depth", "[1, inf)"), ("decoder_depth", "[1, inf)"), ("latent_channels", "[1, inf)"),
            ("max_len", "[2, inf)"), ("repa_hidden", "[1, inf)"), ("kl_weight", "[0, inf)"),
            ("kl_warmup_steps", "[0, inf)"), ("repa_weight", "[0, inf)"), ("repa_fraction", "(0, 1]"),
            ("teacher_cache_windows", "[0, inf)"), ("truncate_prob", "[0, 1]"), ("sampled_negatives", "[0, inf)"),
            ("hard_negatives", "[0, inf)"), ("encoder_block_size", "[0, inf)"), ("decoder_noise", "[0, inf)"))] + [
            (-self.encoder_depth <= self.repa_layer < self.encoder_depth,
             f"{name}.repa_layer {self.repa_layer} is not one of the {self.encoder_depth} encoder layers; use "
             f"0..{self.encoder_depth - 1} or -{self.encoder_depth}..-1")]


@dataclass
class WindowConfig(Checked):
    """The paper's full window (`dit.window.*`, with dit.mode=window): a prompt, then one target of up to
    dit.target_max tokens at once."""
    pooled_context: bool = True  # also feed the mean context latent into the adaLN condition (as SD3 does)
    context_cache: bool = False  # cacheable context: context sees only context, no t-modulation (KV computed once)
    infill_prob: float = 0.0  # share of training examples that also get the text after the target (infilling)
    SECTION = "dit.window"

    def rules(self, name):
        return [self.within(name, "infill_prob", "[0, 1]")]


@dataclass
class BlocksConfig(Checked):
    """Block-causal generation (`dit.blocks.*`, with dit.mode=blocks or context_lm; BD3-LM / Cola DLM): windows of
    dit.context_max plus dit.target_max tokens cut into blocks of `size` tokens; every noisy block sees the clean
    prefix of the earlier blocks and itself, never later ones, and is trained in one masked forward over [clean ;
    noisy]; sampling goes block by block against a cached clean prefix. Needs a VAE whose vae.encoder_block_size
    divides the block."""
    size: int = 1  # tokens a block (1: one token a block, what the CPU demos train)
    t: BlockTime = "per_block"  # each block its own timestep, or one shared by a window's blocks
    # the CFG null condition: "empty" = the noisy blocks see no prefix at all; "null_latent" = the prefix's latents are
    # replaced by the null vector (dit.null_context). (Not "null": YAML reads that as None.)
    uncond: BlockUncond = "empty"
    SECTION = "dit.blocks"

    def rules(self, name):
        return [self.within(name, "size", "[1, inf)")]


@dataclass
class ContextLMConfig(Checked):
    """Block mode with a pretrained context encoder (`dit.context_lm.*`, with dit.mode=context_lm): the clean prefix a
    noisy block reads is a frozen causal LM's hidden states of the earlier tokens (projected to the DiT's width)
    instead of their VAE latents."""
    # the LM, which must share the tokenizer (teacher.name's): the REPA teacher's alias, an HF model name or a folder
    encoder: str = "smollm2-135m"
    layer: int = -1  # the LM's hidden state used: HF hidden_states index, negative from the end (-1 = final-normed)
    # k > 0: each position's state also carries the LM's next-token prediction, the mean of its output embeddings
    # over its top-k tokens (needs layer -1; the DiT reads twice the LM's width)
    prediction: int = 0
    features: str = ""  # "" = the LM runs at every training step; "auto" or a folder = precomputed to disk
    windows: int = 0  # with features: training windows to precompute (0 = the whole split)
    # the LM's last blocks (those up to `layer`) trained with the DiT, at lr x lr_scale (fine-tuning a pretrained LM
    # wants a smaller step than a DiT from scratch); saved beside the DiT (context_lm.safetensors)
    train_layers: int = 0  # 0 = the LM frozen
    lr_scale: float = 0.1
    SECTION = "dit.context_lm"

    def rules(self, name):
        return [(self.encoder.strip() != "", f"{name}.encoder is empty; give the LM (smollm2-135m, an HF name or a "
                                             "folder), or another dit.mode"),
                (self.layer != 0, f"{name}.layer 0 is the embedding output, not a layer; use 1..N or -N..-1"),
                *(self.within(name, key, interval) for key, interval in (
                    ("prediction", "[0, inf)"), ("windows", "[0, inf)"), ("train_layers", "[0, inf)"),
                    ("lr_scale", "[0, inf)")))]


# the sections each mode reads; a section a mode does not read must keep its defaults (so an invalid combination,
# e.g. a block size in the full window, cannot be written)
MODE_SECTIONS = {"window": ("window",), "blocks": ("blocks",), "context_lm": ("blocks", "context_lm")}


@dataclass
class DiTConfig(TransformerShape):
    """The TextDiT: its generation mode (and that mode's section), shape, conditioning, levers, training windows and
    timesteps (`dit.*`)."""
    mode: Mode = "window"  # window (the paper's), blocks (block-causal) or context_lm (blocks on a pretrained LM)
    depth: int = 6  # DiT layers
    t_conditioning: bool = True  # False = the t-free variant (no timestep embedding)
    null_context: NullContext = "learned"  # CFG null condition: "learned" vector or "zeros" (the paper's wording)
    # self-conditioning (Chen et al.): the DiT also reads its previous estimate of the clean target latents
    # through a zero-initialised projection; in training a no-grad first pass makes that estimate for this share
    # of the examples (the rest get zeros), at sampling it is the previous evaluation's estimate
    self_condition_prob: float = 0.0  # 0 = off (no extra input); 0.5 is the usual choice
    context_min: int = 8
    context_max: int = 64
    target_min: int = 16
    target_max: int = 64
    t_distribution: TDistribution = "logit_normal"  # timesteps in training (and the schedule grid)
    t_mean: float = 0.0  # logit-normal timestep mean (< 0: more training near the noise)
    t_std: float = 1.5  # logit-normal timestep std
    p_uncond: float = 0.1  # share of training examples with the prompt dropped (the CFG null condition)
    normalize_latents: bool = True  # per-channel standardisation with the VAE's latent statistics
    window: WindowConfig = field(default_factory=WindowConfig)  # dit.mode=window's settings
    blocks: BlocksConfig = field(default_factory=BlocksConfig)  # dit.mode=blocks' (and context_lm's) settings
    context_lm: ContextLMConfig = field(default_factory=ContextLMConfig)  # dit.mode=context_lm's settings
    SECTION = "dit"

    @property
    def window_tokens(self) -> int:
        """The longest prompt + continuation the DiT is trained on, the one place it is summed (block mode cuts it into
        blocks; the AR baseline's default window)."""
        return self.context_max + self.target_max

    @property
    def prefix_length(self) -> int:
        """Block modes: a window's first positions for the prompt, dit.context_max rounded up to whole blocks (a shorter
        prompt is left-padded to it, the layout of every batch)."""
        return -(-self.context_max // self.blocks.size) * self.blocks.size

    def reads(self, section: str) -> bool:
        """Whether this mode reads the settings section `section` (window, blocks, context_lm)."""
        return section in MODE_SECTIONS[self.mode]

    def rules(self, name):
        unread = [s for s in ("window", "blocks", "context_lm") if not self.reads(s) and getattr(self, s) !=
                  type(getattr(self, s))()]
        ranges = (("depth", "[1, inf)"), ("self_condition_prob", "[0, 1]"), ("t_std", "(0, inf)"),
                  ("p_uncond", "[0, 1)"))
        return super().rules(name) + [self.within(name, key, interval) for key, interval in ranges] + [
            (1 <= self.context_min <= self.context_max, f"need 1 <= {name}.context_min <= {name}.context_max"),
            (1 <= self.target_min <= self.target_max, f"need 1 <= {name}.target_min <= {name}.target_max"),
            (not unread, f"{name}.{unread[0] if unread else ''} settings are not read by {name}.mode={self.mode} (they "
                         f"are for {', '.join(m for m, ss in MODE_SECTIONS.items() if unread and unread[0] in ss)}): "
                         f"set {name}.mode, or leave them at their defaults")]


@dataclass
class ARConfig(TransformerShape):
    """The autoregressive baseline: a GPT-style causal Transformer built from the same block."""
    depth: int = 8  # Transformer blocks
    embed_init: EmbedInit = "teacher"  # as the VAE's: teacher embeddings projected to width ("random": N(0, 0.02))
    seq_len: int = 0  # training window; 0 = the DiT's window (its longest prompt + continuation)
    SECTION = "ar"

    def rules(self, name):
        return super().rules(name) + [
            self.within(name, "depth", "[1, inf)"),
            (self.seq_len == 0 or self.seq_len >= 2, f"{name}.seq_len must be 0 (the DiT's window) or >= 2, got "
                                                      f"{self.seq_len}")]


@dataclass
class MaskedConfig(TransformerShape):
    """The masked-diffusion baselines (`masked.*`): MDLM (absorbing-state diffusion over the whole window,
    `block_size` 0) and BD3-LM (block diffusion: blocks of `block_size` tokens, each denoised against the clean blocks
    before it) - a bidirectional Transformer of the project's own layer, trained under the same settings as TextLDM
    and the AR baseline."""
    depth: int = 8  # Transformer layers
    embed_init: EmbedInit = "teacher"  # as the AR baseline's: teacher embeddings projected to width, or "random"
    seq_len: int = 0  # training window; 0 = the DiT's window (its longest prompt + continuation)
    block_size: int = 0  # 0 = MDLM (one block: the whole window); B > 0 = BD3-LM with blocks of B tokens
    time_conditioning: bool = False  # MDLM's and BD3-LM's default: the denoiser does not read t (it reads the masks)
    # training times t ~ U[t_min, t_max] (antithetic over the batch's blocks): BD3-LM's clipped schedule narrows it to
    # cut the loss's variance (e.g. [0.3, 0.8] for B = 4); the held-out bound always integrates over [0, 1]
    t_min: float = 0.0
    t_max: float = 1.0
    antithetic: bool = True  # stratified t over the batch (MDLM's low-discrepancy sampler)
    SECTION = "masked"

    def rules(self, name):
        return super().rules(name) + [
            self.within(name, "depth", "[1, inf)"), self.within(name, "block_size", "[0, inf)"),
            (self.seq_len == 0 or self.seq_len >= 2, f"{name}.seq_len must be 0 (the DiT's window) or >= 2, got "
                                                      f"{self.seq_len}"),
            (0.0 <= self.t_min < self.t_max <= 1.0,
             f"{name}.t_min and {name}.t_max must satisfy 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")]


@dataclass
class SSDConfig(TransformerShape):
    """The SSD-LM baseline (`ssd.*`; Han et al. 2023): tokens as almost-one-hot logit vectors over the vocabulary
    (+K for the token, -K elsewhere), Gaussian noise under a cosine schedule, semi-autoregressive blocks behind a clean
    prefix of random length; a bidirectional Transformer of the project's own layer. The defaults are the paper's."""
    depth: int = 8  # Transformer layers
    embed_init: EmbedInit = "teacher"  # as the AR baseline's: teacher embeddings projected to width, or "random"
    seq_len: int = 0  # training window (context + block); 0 = the DiT's window
    block_size: int = 25  # tokens denoised together after the clean prefix (the paper's 25)
    simplex_k: float = 5.0  # K: the almost-one-hot logit vectors' +K / -K (the paper's 5)
    diffusion_steps: int = 5000  # T of the cosine schedule (the paper's 5000); training draws t in 1..T
    SECTION = "ssd"

    def rules(self, name):
        return super().rules(name) + [
            self.within(name, "depth", "[1, inf)"), self.within(name, "block_size", "[1, inf)"),
            self.within(name, "simplex_k", "(0, inf)"), self.within(name, "diffusion_steps", "[1, inf)"),
            (self.seq_len == 0 or self.seq_len >= 2, f"{name}.seq_len must be 0 (the DiT's window) or >= 2, got "
                                                      f"{self.seq_len}")]


@dataclass
class TrainConfig(Checked):
    """One training stage's loop (`vae_train.*`, `dit_train.*`, `ar_train.*`): steps, batch, optimizer, budgets,
    logging, checkpoints."""
    steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, global (split over the processes)
    batch_tokens: int = 0  # >0: the global batch in tokens instead (batch_size = batch_tokens // sequence length)
    micro_batch: int = 0  # sequences per forward on each device (0 = its whole share); the rest is accumulation
    parallel: Parallel = "ddp"  # under torchrun: "ddp" (replicated) or "fsdp" (FSDP2: sharded weights and states)
    compile: bool = False  # torch.compile each Transformer block
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay of the weights (0 = off)
    log_every: int = 20
    eval_every: int = 0  # 0 = evaluate only at the end
    max_minutes: float | None = None  # stop early (and cleanly) after this wall-clock budget
    max_flops: float | None = None  # stop early (and cleanly) once the counted model FLOPs (perf) reach this budget
    # a safety stop, not a budget: ends cleanly after this many minutes and says so (summary "guard_fired"); the
    # learning rate still follows the steps, so a run the guard does not stop gives the same numbers on any machine
    guard_minutes: float | None = None
    checkpoint_every: int = 0  # save the resumable training state every N steps (and at the end); 0 = never
    keep_checkpoints: int = 2  # how many of the newest training checkpoints to keep
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0 = measure a matrix product at the start
    tensorboard: bool = False  # also write the log as TensorBoard scalars (OUT_DIR/tensorboard/<log>/)
    # also log to a Weights & Biases project (pip install 'textldm[wandb]'; WANDB_MODE=offline writes OUT_DIR/wandb/)
    wandb_project: str = ""  # "" = off
    SECTION = "train"

    def rules(self, name):
        return [self.within(name, key, interval) for key, interval in (
            ("steps", "[0, inf)"), ("batch_size", "[1, inf)"), ("batch_tokens", "[0, inf)"),
            ("micro_batch", "[0, inf)"), ("lr", "(0, inf)"), ("min_lr_ratio", "[0, 1]"), ("warmup_steps", "[0, inf)"),
            ("weight_decay", "[0, inf)"), ("grad_clip", "[0, inf)"), ("ema", "[0, 1)"), ("log_every", "[1, inf)"),
            ("eval_every", "[0, inf)"), ("max_minutes", "(0, inf)"), ("max_flops", "(0, inf)"),
            ("guard_minutes", "(0, inf)"), ("checkpoint_every", "[0, inf)"), ("keep_checkpoints", "[1, inf)"),
            ("peak_flops", "[0, inf)"))]

    def resolve_batch(self, name: str, tokens_per_sequence: int) -> None:
        """batch_size (sequences) from batch_tokens, when that is given: the loader's one derived value."""
        if self.batch_tokens:
            if self.batch_tokens < tokens_per_sequence:
                raise UserError(f"invalid config: {name}.batch_tokens {self.batch_tokens} is smaller than one "
                                f"sequence of {tokens_per_sequence} tokens; raise it")
            object.__setattr__(self, "batch_size", self.batch_tokens // tokens_per_sequence)


@dataclass(frozen=True)
class SampleConfig(Checked):
    """Sampling defaults (`sample.*`): steps, guidance, solver, time grid, precision, length, seed; temperature and
    top-k/p for AR models. Frozen: a generation's settings are this with its overrides (`dataclasses.replace`,
    checked by `__post_init__`), never written into a loaded model's config."""
    steps: int = 50
    cfg_scale: float = 7.0
    solver: Solver = "euler"  # "euler", "heun" (2nd order, 2 evaluations a step) or "ab2" (2nd-order multistep)
    grid: Grid = "schedule"  # time grid: "schedule" (training-distribution quantiles), "uniform", "shifted"
    shift: float = 3.0  # with grid=shifted: SD3's shift of the noise level (>1: more steps near the noise)
    cfg_min_t: float = 0.0  # guidance interval: CFG is applied only for t in [cfg_min_t, cfg_max_t]
    cfg_max_t: float = 1.0  # (outside it, one conditional evaluation instead of two)
    context_cache: bool = True  # with a dit.context_cache model: compute the context's keys/values once
    # "bf16": sample under bf16 autocast (2.2-2.6x faster on a CPU with bf16 matrix units; deterministic for a
    # given batch layout but no longer bit-independent of the batch size); "fp32": exact, batch-independent
    precision: SamplePrecision = "fp32"
    length: int = 48  # continuation length in tokens
    seed: int = 0
    # the starting noise's scale, every diffusion mode: 1 = the trained prior; < 1 samples nearer the mean path
    # (0 = from x0 = 0, deterministic), as a temperature does for an AR model
    noise_scale: float = 1.0
    # context-encoder models (dit.context_encoder): the last tokens of prompt + text so far the LM reads, in its KV
    # cache, before its states of the DiT's window (the DiT reads dit.context_max of them); 0 = the window's alone
    lm_history: int = 0
    # context-encoder models whose LM ends at its last layer: each block's first token is decoded as argmax of the VAE
    # decoder's logits + lm_prior x the LM's log-probabilities of the next token (a product of experts: the latent
    # picks among what the LM finds plausible); 0 = the decoder alone
    lm_prior: float = 0.0
    # autoregressive baselines (textldm AR checkpoints and HF causal LMs)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 0.95  # AR and masked models: the nucleus sampled from; SSD-LM models: the projection's nucleus
    top_k: int = 0  # 0 = off
    # SSD-LM models: each step's logits projection - "multi-hot" (+K on the whole top-p nucleus; the paper's default
    # decode) or "sampling" (+K on one token drawn from the nucleus; the authors' alternative decode)
    projection: Projection = "multi-hot"

    SECTION = "sample"

    @property
    def guidance(self) -> Guidance:
        """The classifier-free guidance of these settings (scale and interval)."""
        return Guidance(self.cfg_scale, self.cfg_min_t, self.cfg_max_t)

    def rules(self, name):
        return [self.within(name, key, interval) for key, interval in (
            ("steps", "[1, inf)"), ("length", "[1, inf)"), ("cfg_scale", "[0, inf)"), ("shift", "(0, inf)"),
            ("temperature", "[0, inf)"), ("top_p", "(0, 1]"), ("top_k", "[0, inf)"), ("seed", "[0, inf)"),
            ("noise_scale", "[0, inf)"), ("lm_history", "[0, inf)"),
            ("lm_prior", "[0, inf)"))] + [
            (interval_problem(self.cfg_min_t, self.cfg_max_t) is None,
             f"need 0 <= {name}.cfg_min_t <= {name}.cfg_max_t <= 1, got {self.cfg_min_t}, {self.cfg_max_t}")]


@dataclass
class EvalConfig(Checked):
    """Held-out measurements during and after training (`eval.*`)."""
    val_batches: int = 8
    batch_size: int = 32
    num_prompts: int = 4  # held-out prompts continued and printed
    rouge_samples: int = 0  # >0: score this many held-out continuations with ROUGE-L vs a random passage
    SECTION = "eval"

    def rules(self, name):
        return [self.within(name, key, interval) for key, interval in (
            ("val_batches", "[1, inf)"), ("batch_size", "[1, inf)"), ("num_prompts", "[0, inf)"),
            ("rouge_samples", "[0, inf)"))]


@dataclass
class MetricsConfig(Checked):
    """Continuation-benchmark scoring (`textldm eval`, the ablation runner, bench/quality.py)."""
    bertscore_model: str = "minilm"  # "minilm" (packaged all-MiniLM-L6-v2), an HF name or a local folder
    bertscore_layers: int = 6  # bert-score needs the layer for local folders; 6 = MiniLM's last layer
    mauve_featurizer: str = "minilm"  # encoder whose pooled final hidden states are MAUVE's features
    mauve_pooling: Pooling = "mean"  # "mean" over tokens, or "last" token (for causal LM featurizers)
    mauve_buckets: int = 50  # k-means buckets; fixed, since rankings move with the automatic count
    judge: str = "smollm2-135m"  # causal LM for generative perplexity (alias, HF name or folder)
    # a second judge LM, reported beside `judge` by the demo and `textldm eval` (e.g. gemma3-270m, another family,
    # when the model reads SmolLM2 itself, as the context-LM mode does: a judge that is the backbone is biased);
    # "" = none
    second_judge: str = ""
    samples: int = 1000  # items per benchmark
    batch_size: int = 32
    SECTION = "metrics"

    def rules(self, name):
        return [self.within(name, key, interval) for key, interval in (
            ("bertscore_layers", "[1, inf)"), ("mauve_buckets", "[2, inf)"), ("samples", "[1, inf)"),
            ("batch_size", "[1, inf)"))]


@dataclass
class Config:
    """A run's whole configuration: top-level settings and one section per part (see `textldm config --keys`)."""
    out_dir: str = "runs/demo"
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    precision: Precision = "auto"  # "bf16" autocast for training, "fp32", or "auto" (bf16 where the hardware has it)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae_train: TrainConfig = field(default_factory=TrainConfig)
    dit_train: TrainConfig = field(default_factory=TrainConfig)
    ar: ARConfig = field(default_factory=ARConfig)
    ar_train: TrainConfig = field(default_factory=TrainConfig)
    masked: MaskedConfig = field(default_factory=MaskedConfig)
    masked_train: TrainConfig = field(default_factory=TrainConfig)
    ssd: SSDConfig = field(default_factory=SSDConfig)
    ssd_train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def ar_seq_len(self) -> int:
        """The AR baseline's training window: ar.seq_len, or the DiT's window when that is 0."""
        return self.ar.seq_len or self.dit.window_tokens

    @property
    def masked_seq_len(self) -> int:
        """The masked-diffusion baseline's window: masked.seq_len, or the DiT's window when that is 0."""
        return self.masked.seq_len or self.dit.window_tokens

    @property
    def ssd_seq_len(self) -> int:
        """SSD-LM's window (its context + one block): ssd.seq_len, or the DiT's window when that is 0."""
        return self.ssd.seq_len or self.dit.window_tokens


def to_dict(cfg) -> dict:
    """A config (or section) as nested plain dicts (YAML/JSON-ready)."""
    return dataclasses.asdict(cfg)


def _coerce(value, tp, key: str):
    """Check/convert a YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise UserError(f"config key '{key}' must be one of {', '.join(map(str, args))}, got {value!r}")
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"config key '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}")


def _check_choices(section, name: str) -> None:
    """Every Literal-typed field of a section holds one of its allowed values."""
    for key, tp in typing.get_type_hints(type(section)).items():
        value = getattr(section, key)
        if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            raise UserError(f"config key '{name}.{key}' must be one of {', '.join(map(str, typing.get_args(tp)))}, "
                            f"got {value!r}")


def _apply(obj, updates: dict, prefix: str = ""):
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if isinstance(obj, DiTConfig) and key in LEGACY_DIT:  # a 0.4/0.5 key: mapped onto today's, with a note
            _apply_legacy_dit(obj, key, value)
            continue
        if key in RENAMED.get(prefix.rstrip("."), {}):
            key, full = _renamed(prefix.rstrip("."), key), f"{prefix}{RENAMED[prefix.rstrip('.')][key]}"
        if key not in names:
            retired = RETIRED.get(prefix.rstrip("."), {}).get(key)
            if retired:
                raise UserError(f"config key '{full}' was removed in {retired}; drop it")
            raise UserError(f"unknown config key '{full}'; valid keys here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key '{full}' is a section; set its keys, e.g. {full}.{names[0]}=...")
            _apply(current, value, f"{full}.")
            continue
        object.__setattr__(obj, key, _coerce(value, hints[key], full))  # the loader also fills frozen sections


# the DiT keys of 0.4/0.5, before the mode was a key of its own (0.6): a generation mode was inferred from
# dit.block_size (0 = the full window) and dit.context_encoder ("" = none); each mode's settings sat in dit itself
LEGACY_DIT = {"block_size": ("blocks", "size"), "block_t": ("blocks", "t"), "block_uncond": ("blocks", "uncond"),
              "pooled_context": ("window", "pooled_context"), "context_cache": ("window", "context_cache"),
              "infill_prob": ("window", "infill_prob"), "context_encoder": ("context_lm", "encoder"),
              "context_layer": ("context_lm", "layer"), "context_prediction": ("context_lm", "prediction"),
              "context_features": ("context_lm", "features"), "context_windows": ("context_lm", "windows"),
              "context_train_layers": ("context_lm", "train_layers"), "context_lr_scale": ("context_lm", "lr_scale")}
# keys renamed since 0.5 (section -> {old: new}), read under their new names with a note
RENAMED = {"vae": {"repa_block": "repa_layer"}}
_NOTED: set[str] = set()  # legacy keys already noted in this process


def _renamed(section: str, key: str) -> str:
    new = RENAMED[section][key]
    if f"{section}.{key}" not in _NOTED:
        _NOTED.add(f"{section}.{key}")
        logging.getLogger(__name__).info("config key '%s.%s' (textldm 0.4/0.5) is '%s.%s' since 0.6", section, key,
                                         section, new)
    return new


def _apply_legacy_dit(d: DiTConfig, key: str, value) -> None:
    """One 0.4/0.5 `dit.<key>` applied as 0.5 read it: dit.block_size 0 chose the full window and > 0 block mode (a
    context LM's blocks when one was set); dit.context_encoder "" left the context-LM mode. A mode's settings given in
    another mode were ignored then, so they are dropped here rather than refused."""
    section, field_name = LEGACY_DIT[key]
    if key not in _NOTED:
        _NOTED.add(key)
        logging.getLogger(__name__).info("config key 'dit.%s' (textldm 0.4/0.5) is read as 'dit.%s.%s' (and dit.mode) "
                                         "since 0.6", key, section, field_name)
    if key == "block_size":
        value = _coerce(value, int, "dit.block_size")
        if value == 0:
            object.__setattr__(d, "mode", "window")
            d.blocks, d.context_lm = BlocksConfig(), ContextLMConfig()
            return
        if d.mode == "window":
            object.__setattr__(d, "mode", "blocks")
            d.window = WindowConfig()
    if key == "context_encoder":
        if not value:
            if d.mode == "context_lm":
                object.__setattr__(d, "mode", "blocks")
                d.context_lm = ContextLMConfig()
            return
        object.__setattr__(d, "mode", "context_lm")
        d.window = WindowConfig()
    if d.reads(section) or key == "block_size":
        _apply(getattr(d, section), {field_name: value}, f"dit.{section}.")


def parse_override(text: str) -> dict:
    """'a.b=value' -> {'a': {'b': value}} (the value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not key=value (e.g. dit.depth=8)")
    key, raw = text.split("=", 1)
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise UserError(f"override '{text}': '{key}' is not a dotted config key (e.g. vae_train.steps=100)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def preset_path(name: str) -> Path:
    """A preset name (built in) or a .yaml path -> the file, checked."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise UserError(f"config file '{name}' does not exist")
        return path
    builtin = PRESET_DIR / f"{name}.yaml"
    if not builtin.exists():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise UserError(f"unknown preset '{name}'; built-in presets: {', '.join(names)}, or give a .yaml path")
    return builtin


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_preset(name: str, _seen: tuple = ()) -> dict:
    """A preset's settings as a nested dict. A preset may start from another one: `base: NAME` (its keys
    are applied first, this file's on top)."""
    path = preset_path(name)
    if path.resolve() in _seen:
        raise UserError(f"config file '{path}' includes itself through 'base:'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of sections, e.g. 'vae: {{width: 256}}'")
    base = data.pop("base", None)
    if base is not None:
        parent = PRESET_DIR / f"{base}.yaml" if not str(base).endswith((".yaml", ".yml")) else path.parent / base
        data = _deep_merge(read_preset(str(parent), _seen + (path.resolve(),)), data)
    return data


def load_config(preset: str | None = None, overrides: list[str] | tuple = (), base: dict | None = None) -> Config:
    """Defaults <- `base` (e.g. a checkpoint's saved config) <- preset YAML <- key=value overrides."""
    cfg = Config()
    if base:
        _apply(cfg, base)
    if preset:
        _apply(cfg, read_preset(preset))
    for text in overrides:
        _apply(cfg, parse_override(text))
    validate(cfg)
    derive(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every section checks itself (`Checked`) under its key; then the top-level settings and the rules that span
    sections."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if isinstance(section, Checked):
            section.check(f.name)
    d = cfg.dit
    for ok, message in [*_top_level_rules(cfg), (max(d.context_max, d.target_max) <= cfg.vae.max_len,
                                                 "dit.context_max and dit.target_max must not exceed vae.max_len"),
                        *_mode_rules(cfg), *_masked_rules(cfg)]:
        if not ok:
            raise UserError(f"invalid config: {message}")


def _masked_rules(cfg: Config) -> list[tuple[bool, str]]:
    """BD3-LM's blocks tile its window."""
    B, L = cfg.masked.block_size, cfg.masked_seq_len
    return [(B == 0 or L % B == 0, f"masked.block_size {B} must divide the masked baseline's window ({L} tokens: "
                                   f"masked.seq_len, or the DiT's window when that is 0); 0 = MDLM (the whole window)")]


def _top_level_rules(cfg: Config) -> list[tuple[bool, str]]:
    """The settings outside any section: out_dir, seed, device, threads."""
    return [(cfg.out_dir.strip() != "", "out_dir is empty; give the run folder, e.g. out_dir=runs/mine"),
            in_interval(cfg.seed, "[0, inf)", "seed"), in_interval(cfg.threads, "[0, inf)", "threads"),
            (DEVICE_NAME.fullmatch(cfg.device) is not None,
             f"device '{cfg.device}' is not a device name; {DEVICE_HINT}")]


def _mode_rules(cfg: Config) -> list[tuple[bool, str]]:
    """What the DiT's generation mode needs of the rest of the config (a section's own ranges are its `rules`)."""
    d = cfg.dit
    if d.mode == "window":
        return []
    B, L, enc = d.blocks.size, d.window_tokens, cfg.vae.encoder_block_size
    rules = [
        (L % B == 0, f"dit.blocks.size {B} must divide the window (dit.context_max plus dit.target_max: {L} tokens)"),
        (d.prefix_length + B <= L, f"dit.blocks.size {B} leaves no room for a block after a prompt of "
                                   f"dit.context_max = {d.context_max} tokens (rounded up to whole blocks) in the "
                                   f"window of {L} tokens; use a smaller block"),
        (L <= cfg.vae.max_len, f"in block mode the window (dit.context_max plus dit.target_max: {L} tokens) must not "
                               f"exceed vae.max_len ({cfg.vae.max_len})"),
        (enc > 0 and B % enc == 0,
         f"dit.blocks.size {B} needs a block-causal VAE whose vae.encoder_block_size divides it (got {enc}; 0 = "
         "bidirectional, whose latents would leak later tokens into the prefix): train the VAE with "
         "vae.encoder_block_size=1 (causal) or a divisor of the block")]
    if d.mode == "context_lm":
        c = d.context_lm
        rules += [(c.windows == 0 or bool(c.features),
                   "dit.context_lm.windows counts precomputed windows: set dit.context_lm.features=auto (or a folder)"),
                  (c.train_layers == 0 or not c.features,
                   "dit.context_lm.train_layers trains the LM, so its states change at every step and cannot be "
                   "precomputed: set dit.context_lm.features='' (or keep the LM frozen: train_layers=0)"),
                  (c.train_layers == 0 or cfg.dit_train.parallel == "ddp",
                   "dit.context_lm.train_layers is not supported with dit_train.parallel=fsdp (the LM's blocks are "
                   "not sharded); use ddp"),
                  (c.prediction == 0 or c.layer == -1,
                   f"the LM's next-token prediction (dit.context_lm.prediction={c.prediction}) is read at its last "
                   f"layer: set dit.context_lm.layer=-1 (got {c.layer})")]
    return rules


def derive(cfg: Config) -> None:
    """The derived values (batch sizes from batch_tokens), set once by the loader - the only place that writes a
    config; after `load_config` nothing does."""
    for name, length in (("vae_train", cfg.vae.max_len), ("dit_train", cfg.dit.window_tokens),
                         ("ar_train", cfg.ar_seq_len), ("masked_train", cfg.masked_seq_len),
                         ("ssd_train", cfg.ssd_seq_len)):
        getattr(cfg, name).resolve_batch(name, length)


# keys of earlier versions that no longer exist: a saved model's config may hold them (they changed training only)
RETIRED = {"dit": {"decoder_ce_weight": "0.3.0 (the token-aware loss)"}}


def config_from_dict(data: dict) -> Config:
    """A Config from nested dicts (e.g. a saved model's config.json), checked like overrides; keys retired since the
    model was saved (`RETIRED`) are dropped, and a 0.4/0.5 DiT section is read as `legacy_dit` says."""
    data = {section: ({k: v for k, v in values.items() if k not in RETIRED.get(section, {})}
                      if isinstance(values, dict) else values) for section, values in data.items()}
    if isinstance(data.get("dit"), dict) and "mode" not in data["dit"]:
        data = {**data, "dit": legacy_dit(data["dit"])}
    cfg = Config()
    _apply(cfg, data)
    return cfg


def legacy_dit(old: dict) -> dict:
    """A whole 0.4/0.5 DiT section (a saved model's, where every key is present) as today's: the mode from
    block_size and context_encoder, and only the sections that mode reads (the others' values were unused then)."""
    mode = "context_lm" if old.get("context_encoder") else "blocks" if old.get("block_size", 0) else "window"
    new = {k: v for k, v in old.items() if k not in LEGACY_DIT}
    new["mode"] = mode
    for key, (section, name) in LEGACY_DIT.items():
        if key in old and section in MODE_SECTIONS[mode]:
            new.setdefault(section, {})[name] = old[key]
    logging.getLogger(__name__).info("a textldm 0.4/0.5 DiT config: read as dit.mode=%s with its settings section(s)",
                                     mode)
    return new


def field_help(section_type: type) -> dict[str, str]:
    """Each field's comment in this file - the comment lines right above it and the one on its line - as its
    help text (`textldm config --keys`): the comments are the documentation, kept in one place."""
    help_ = {}
    for cls in [c for c in reversed(section_type.__mro__) if dataclasses.is_dataclass(c)]:
        source = textwrap.dedent(inspect.getsource(cls))
        above, line = [], []
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in (tokenize.NEWLINE, tokenize.NL):
                if tok.type not in (tokenize.INDENT, tokenize.DEDENT):
                    line.append(tok)
                continue
            if len(line) == 1 and line[0].type == tokenize.COMMENT:
                above.append(line[0].string.lstrip("#").strip())
            elif len(line) > 1 and line[0].type == tokenize.NAME and line[1].string == ":" and line[0].start[1] == 4:
                trailing = line[-1].string.lstrip("#").strip() if line[-1].type == tokenize.COMMENT else ""
                help_[line[0].string] = "; ".join(filter(None, [" ".join(above), trailing]))
                above = []
            elif line:
                above = []
            line = []
    return help_


def describe_keys(cfg: Config | None = None) -> str:
    """Every config key with its type, value (the defaults, or `cfg`'s) and help, one line each."""
    cfg = cfg or Config()
    lines = []
    for top in dataclasses.fields(cfg):
        value = getattr(cfg, top.name)
        section = value if dataclasses.is_dataclass(value) else None
        owner = type(section) if section is not None else Config
        hints, help_ = typing.get_type_hints(owner), field_help(owner)
        names = [f.name for f in dataclasses.fields(section)] if section is not None else [top.name]
        for name in names:
            key = f"{top.name}.{name}" if section is not None else name
            current = getattr(section, name) if section is not None else value
            text = help_.get(name, "")
            lines.append(f"{key} ({_type_name(hints[name])}) = {current!r}" + (f"  # {text}" if text else ""))
    return "\n".join(lines)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:  # X | None
        return f"{_type_name(args[0])}, optional"
    return getattr(tp, "__name__", str(tp))

