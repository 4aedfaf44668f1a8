"""Shared fixtures: a tiny word-level tokenizer + tiny random LLaMA saved as a local HF model folder (so the
"any HF model by local path" route is what the tests exercise), and a tiny local corpus."""
from __future__ import annotations

import copy
import json
import os
import random

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # forced: no test may reach the Hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(2)

WORDS = ("the of and to a in that is was he for it with as his on be at by i this had not are but from or have an "
         "they which one you were her all she there would their we him been has when who will more no if out so said "
         "what up its about into than them can only other new some could time these two may then do first any my now "
         "such like our over man me even most made after also did many before must through back years where much your "
         "way well down should because each just those people mr how too little state good very make world still own "
         "see men work long get here between both life being under never day same another know while last might us "
         "great old year off come since against go came right used take three").split()


CONFIG_SNAPSHOTS = {}  # the `trained` run's config before and after: nothing may write it after load


def make_corpus(n_docs: int = 120, seed: int = 0) -> list[str]:
    """Documents with learnable structure: each picks a topic word set and repeats short patterns."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        topic = rng.sample(WORDS, 12)
        sentences = []
        for _ in range(rng.randint(8, 16)):
            k = rng.randint(4, 9)
            sentences.append(" ".join(rng.choice(topic) for _ in range(k)).capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


def write_tiny_lm(path) -> str:
    """A word-level tokenizer and a 4-layer random LlamaForCausalLM saved as a local HF folder at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for w in WORDS + [w.capitalize() for w in WORDS] + [".", ",", "!", "?"]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|endoftext|>")
    tok.model_max_length = 4096
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return str(path)


def write_tiny_corpus(path) -> str:
    """make_corpus()'s documents as a JSONL file at `path`."""
    from pathlib import Path

    Path(path).write_text("".join(json.dumps({"text": d}) + "\n" for d in make_corpus()))
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local folder holding a word-level tokenizer and a 4-layer random LlamaForCausalLM."""
    return write_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def other_tiny_model_dir(tiny_model_dir, tmp_path_factory):
    """Another random LM of tiny_model_dir's shape and tokenizer (other weights): a second, different judge."""
    import shutil

    from transformers import AutoConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("other-tiny-lm")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    torch.manual_seed(1)
    LlamaForCausalLM(AutoConfig.from_pretrained(tiny_model_dir)).save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl")


@pytest.fixture()
def cache_home(tmp_path, monkeypatch):
    """Isolated textldm cache per test."""
    monkeypatch.setenv("TEXTLDM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_overrides(model_dir: str, corpus: str, out_dir: str, full_window: bool = True) -> list[str]:
    """The tiny shapes on any preset; the paper's full window unless `full_window=False` (most tests exercise the
    full window; the demo preset's own block mode: tests/test_block.py)."""
    from textldm.config import FULL_WINDOW

    return [f"out_dir={out_dir}", f"teacher.name={model_dir}", "teacher.layer=-2", f"data.source={corpus}",
            f"metrics.judge={model_dir}",
            "data.val_fraction=0.1", "device=cpu",
            "vae.width=32", "vae.heads=2", "vae.encoder_depth=1", "vae.decoder_depth=1", "vae.latent_channels=8",
            "vae.max_len=32", "vae.repa_hidden=32", "vae.softmax=full",
            "vae_train.steps=30", "vae_train.batch_size=8", "vae_train.warmup_steps=5", "vae_train.log_every=10",
            "dit.width=32", "dit.heads=2", "dit.depth=2", "dit.context_max=12", "dit.target_max=12",
            "dit.context_min=4", "dit.target_min=4",
            "dit_train.steps=20", "dit_train.batch_size=8", "dit_train.warmup_steps=5", "dit_train.log_every=10",
            "sample.steps=4", "sample.length=8", "eval.val_batches=2", "eval.batch_size=8", "eval.num_prompts=2",
            "eval.rouge_samples=0", *(FULL_WINDOW if full_window else ())]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """One tiny demo run (VAE + DiT) shared by the tests: (run folder, report)."""
    import os

    from textldm import demo, load_config
    from textldm.config import to_dict

    out = tmp_path_factory.mktemp("run")
    os.environ["TEXTLDM_CACHE"] = str(out / "cache")
    try:
        cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(out)))
        CONFIG_SNAPSHOTS["before"] = copy.deepcopy(to_dict(cfg))
        report = demo.demo(cfg, progress=False)
        CONFIG_SNAPSHOTS["after"] = to_dict(cfg)
    finally:
        del os.environ["TEXTLDM_CACHE"]
    return out, report


@pytest.fixture(scope="session")
def models(trained, tiny_model_dir, tiny_corpus, tmp_path_factory):
    """An infilling-capable DiT on the shared tiny VAE, and a tiny AR baseline (the served models)."""
    from textldm import ARPipeline, TextLDMPipeline, load_config
    from textldm.families.ar.train import train_ar
    from textldm.families.textldm.train import train_dit

    out, _ = trained
    root = tmp_path_factory.mktemp("serve")
    os.environ["TEXTLDM_CACHE"] = str(out / "cache")
    try:
        base = tiny_overrides(tiny_model_dir, tiny_corpus, str(root))
        train_dit(load_config("demo", base + ["dit_train.steps=6", "dit.window.infill_prob=0.5"]),
                  vae_dir=str(out / "vae"), progress=False)
        train_ar(load_config("demo", base + ["ar.width=32", "ar.heads=2", "ar.depth=2", "ar_train.steps=4",
                                             "ar_train.batch_size=4", "ar.embed_init=random"]), progress=False)
    finally:
        del os.environ["TEXTLDM_CACHE"]
    return TextLDMPipeline.from_pretrained(root / "model"), ARPipeline.from_pretrained(root / "ar")
