"""Block mode with a pretrained context encoder (dit.mode=context_lm): the LM's states as the clean prefix - no leak
from later tokens, the KV-cached states equal a fresh forward, precomputed states equal live ones, the block sampler
equals a hand-written loop, rows ending under CFG, the config checks, and a tiny model that must learn through it."""
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from builders import RandomStream, dit_config, new_dit, objective_of, perturbed
from textldm import TextLDMPipeline
from textldm.config import Config, SampleConfig, VAEConfig, load_config
from textldm.errors import UserError
from textldm.families.textldm.modes import CONTEXT_LM, mode_of
from textldm.models.lm import FrozenLM, load_tokenizer
from textldm.models.vae import TextVAE
from textldm.runtime.precision import frozen_lm_context
from textldm.sampling import noise_seed

VOCAB, C, BLOCK, HIDDEN = 11, 8, 4, 16
CONTEXT, TARGET = 8, 8  # a window of 16 tokens: 4 blocks


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny random LLaMA saved as a local folder: the context encoder, by path, as a user would name one."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("context-lm")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


def tiny_vae(seed: int = 0) -> TextVAE:
    torch.manual_seed(seed)
    cfg = VAEConfig(width=32, heads=2, encoder_depth=2, decoder_depth=1, latent_channels=C, max_len=16,
                    embed_init="random", repa_weight=0.0, encoder_block_size=1)
    return perturbed(TextVAE(cfg, VOCAB), 0.2, seed).eval()


def lm_pipeline(lm_dir: str, uncond: str = "empty", cfg_scale: float = 2.0, eot: int = -1,
                prediction: int = 0) -> TextLDMPipeline:
    torch.manual_seed(1)
    d = dit_config("context_lm", blocks={"size": BLOCK, "uncond": uncond},
                   context_lm={"encoder": lm_dir, "prediction": prediction}, width=32, depth=2, heads=2,
                   context_min=4, context_max=CONTEXT, target_min=4, target_max=TARGET)
    dit = perturbed(new_dit(d, C), 0.2, 1).eval()
    vae = tiny_vae()
    cfg = Config(vae=vae.cfg, dit=d, sample=SampleConfig(steps=4, cfg_scale=cfg_scale))
    return TextLDMPipeline(cfg, None, vae, dit, eot_id=eot)


def test_the_context_lm_mode_selects_the_lm_mode_and_its_projection(lm_dir):
    d = dit_config("context_lm", blocks={"size": BLOCK}, context_lm={"encoder": lm_dir})
    assert mode_of(d) is CONTEXT_LM and mode_of(dit_config("blocks", blocks={"size": BLOCK})).name == "blocks"
    dit = new_dit(d, C)
    assert dit.prefix_in[-1].in_features == HIDDEN and dit.null_context.shape == (HIDDEN,)
    d.context_lm.prediction = 3  # the LM's prediction beside its state: twice its width
    assert new_dit(d, C).prefix_in[-1].in_features == 2 * HIDDEN


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2: absolute position embeddings, where a left pad would shift every state (RoPE hides it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("context-gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=2, n_head=2)).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_lm_states_of_left_padded_rows_equal_a_fresh_forward(lm_dir, gpt2_dir, arch):
    """FrozenLM.states over left-padded rows, fed in two pieces through its KV cache, gives each row the states of a
    fresh forward over that row alone (the sampler's LM cache is exact), with rotary and absolute positions."""
    lm = FrozenLM(lm_dir if arch == "llama" else gpt2_dir, -1)
    rows = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [3, 1, 4, 1, 5, 9, 2]]
    ids = torch.zeros(2, 10, dtype=torch.long)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, 10 - len(r):], mask[i, 10 - len(r):] = torch.tensor(r), True
    first, cache = lm.states(ids[:, :6], mask[:, :6])
    second, cache = lm.states(ids[:, 6:], mask, cache)
    states = torch.cat([first, second], 1)
    for i, r in enumerate(rows):
        fresh = lm(torch.tensor([r]))[0]
        assert torch.allclose(states[i, 10 - len(r):], fresh, atol=1e-5)
    cache.batch_select_indices(torch.tensor([1]))  # rows that end leave the cache (the sampler's `keep`)
    after, _ = lm.states(torch.tensor([[6]]), torch.cat([mask[1:], torch.ones(1, 1, dtype=torch.bool)], 1), cache)
    assert torch.allclose(after[0, -1], lm(torch.tensor([rows[1] + [6]]))[0, -1], atol=1e-5)


@pytest.mark.parametrize("prediction", [0, 3])
def test_no_leak_changing_a_token_moves_no_earlier_state_or_velocity(lm_dir, prediction):
    """Token 9 (block 2) changed: the LM's states of tokens 0-8 and the DiT's velocities of blocks 0-2 (block 2
    reads the states of tokens 0-7) stay exactly equal; block 3's moves (it reads token 9's state). With the LM's
    prediction beside its states too (it predicts token i + 1 from tokens <= i)."""
    pipe = lm_pipeline(lm_dir, prediction=prediction)
    mode = objective_of(pipe.dit, **pipe.parts)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    h, h2 = mode.lm(ids), mode.lm(changed)
    assert torch.equal(h[:, :9], h2[:, :9]) and not torch.allclose(h[:, 9:], h2[:, 9:])
    g = torch.Generator().manual_seed(4)
    x_t, t = torch.randn(2, 16, C, generator=g), torch.rand(2, 4, generator=g)
    mask = torch.arange(16)[None] >= torch.tensor([0, 2])[:, None]
    v = pipe.dit.forward_blocks(x_t, t, clean=h, mask=mask)
    v2 = pipe.dit.forward_blocks(x_t, t, clean=h2, mask=mask)
    assert torch.equal(v[:, :12], v2[:, :12]) and not torch.allclose(v[:, 12:], v2[:, 12:])


def test_the_batch_and_loss_read_the_lm_states_not_the_latents(lm_dir):
    """The objective's prefix is the LM's states of the batch's whole window; the target the VAE's latents."""
    pipe = lm_pipeline(lm_dir)
    mode, vae = objective_of(pipe.dit, **pipe.parts), pipe.vae
    batch = mode.batch(RandomStream(VOCAB), vae, 3, torch.Generator().manual_seed(0), slice(None), torch.device("cpu"))
    window = RandomStream(VOCAB).windows(3, 16, torch.Generator().manual_seed(0))
    with frozen_lm_context(torch.device("cpu")):  # training runs the LM as the REPA teacher: bf16 where native
        assert torch.equal(batch["context"], mode.lm(window))
    assert batch["clean"].shape == (3, 16, C) and batch["context"].shape == (3, 16, HIDDEN)
    base = mode.errors(batch, None)
    moved = dict(batch, context=batch["context"] + torch.randn(batch["context"].shape))  # (LayerNorm: not a shift)
    assert not torch.allclose(mode.errors(moved, None)[:, 4:], base[:, 4:])  # blocks 1-3 read the states
    assert torch.equal(mode.errors(moved, None)[:, :4], base[:, :4])  # block 0 has no prefix


def reference_generate(pipe: TextLDMPipeline, prompt: list[int], length: int, seed: int, row: int,
                       noise_scale: float = 1.0, history: int = 0, prior: float = 0.0) -> list[int]:
    """LM-prefix block sampling written out with the training forward: no cache anywhere (the LM run afresh over the
    row's tokens of the window - and with `history`, the tokens before it up to that many at the window's start - at
    every block), Euler on the schedule grid, CFG over training's dropped rows, each block decoded beside the window's
    latents - its first token with `prior` x the whole LM's (HF's own head) log-probabilities added."""
    vae, dit, lm, s = pipe.vae, pipe.dit, pipe.parts["lm"], pipe.config.sample
    grid = pipe.time_grid(s).tolist()
    out, k, tokens = [], 0, None
    while len(out) < length:
        if tokens is None or CONTEXT + len(tokens) + BLOCK > CONTEXT + TARGET:
            tokens = []
            recent = (prompt + out)[-CONTEXT:]
            read = (prompt + out)[-max(history, CONTEXT):]
        window = recent + tokens
        pad = CONTEXT - len(recent)
        L = pad + len(window) + BLOCK
        mask = torch.arange(L)[None] >= pad
        states = torch.zeros(1, L, lm.hidden_size)
        states[0, pad: pad + len(window)] = lm(torch.tensor([read + tokens]))[0, -len(window):]  # the last block's
        # own states: never read
        ids = torch.tensor([[0] * pad + window + [0] * BLOCK])
        clean = vae.normalize(vae.encode(ids, mask))
        x = noise_scale * torch.randn(BLOCK, C, generator=torch.Generator().manual_seed(noise_seed(seed, k, row)))[None]
        for a, b in zip(grid, grid[1:]):
            noisy = torch.cat([torch.zeros(1, L - BLOCK, C), x], 1)
            t = torch.full((1, L // BLOCK), a)
            drop = torch.ones(1, dtype=torch.bool)
            v_c = dit.forward_blocks(noisy, t, clean=states, mask=mask)[:, -BLOCK:]
            v_u = dit.forward_blocks(noisy, t, clean=states, mask=mask, drop=drop)[:, -BLOCK:]
            x = x + (b - a) * (v_u + s.cfg_scale * (v_c - v_u))
        z = vae.denormalize(torch.cat([clean[:, :-BLOCK], x], 1))
        logits = vae.decode(z, mask)[0, -BLOCK:]
        logits[0] += prior * lm.model(torch.tensor([read + tokens])).logits[0, -1].log_softmax(-1)
        block = logits.argmax(-1).tolist()
        out, tokens, k = out + block, tokens + block, k + 1
    return out[:length]


@pytest.mark.parametrize("uncond, prediction", [("empty", 0), ("null_latent", 0), ("empty", 3)])
def test_the_lm_block_sampler_equals_a_reference_loop(lm_dir, uncond, prediction):
    """Prompts of 3, 5 and 8 tokens continued by 13 tokens (4 blocks over two windows) in one batch: token for
    token what the uncached reference loop writes for each; and any batch gives a row the same text."""
    pipe = lm_pipeline(lm_dir, uncond, prediction=prediction)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 1, 2, 3, 4, 5, 6]]
    with torch.no_grad():
        rows = pipe.generate_ids(prompts, length=13, solver="euler", seed=5)
        assert rows == [reference_generate(pipe, p, 13, 5, i) for i, p in enumerate(prompts)]
    assert pipe.last_evaluations == 4 * 4 * 2
    assert pipe.generate_ids(prompts[1:2], length=13, seed=5, first_index=1) == rows[1:2]


def test_the_lm_reads_the_history_before_the_window(lm_dir):
    """sample.lm_history: at each window's start the LM reads up to that many tokens of prompt + text so far (the
    DiT still reads its states of the window's): prompts longer than the window, over two windows, token for token
    the reference loop's; the prompts are cut there, not at dit.context_max; a history past the LM's positions is
    refused."""
    pipe = lm_pipeline(lm_dir)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6], [(i * 7) % 10 + 1 for i in range(20)]]
    with torch.no_grad():
        rows = pipe.generate_ids(prompts, length=13, seed=5, lm_history=16)
        assert rows == [reference_generate(pipe, p, 13, 5, i, history=16) for i, p in enumerate(prompts)]
        assert rows != pipe.generate_ids(prompts, length=13, seed=5)  # the window's tokens alone: other text
    assert pipe.prompt_tokens() == CONTEXT and pipe.prompt_tokens(pipe.settings(lm_history=16)) == 16
    assert pipe.prompt_tokens(pipe.settings(lm_history=4)) == CONTEXT  # never fewer than the DiT's window
    with pytest.raises(UserError, match="lm_history 60 plus a window's 8 new tokens"):
        pipe.generate_ids(prompts, length=4, lm_history=60)


def test_the_lm_prior_decodes_each_blocks_first_token_with_the_lms_probabilities(lm_dir):
    """sample.lm_prior: token for token the reference loop that adds the weight times the whole LM's log-probabilities
    to the decoder's logits of each block's first token (over two windows, rows of different lengths); a large weight
    makes every block's first token the LM's greedy choice; refused without the LM's last layer."""
    pipe = lm_pipeline(lm_dir, prediction=3)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 1, 2, 3, 4, 5, 6]]
    with torch.no_grad():
        rows = pipe.generate_ids(prompts, length=13, seed=5, lm_prior=1.5)
        assert rows == [reference_generate(pipe, p, 13, 5, i, prior=1.5) for i, p in enumerate(prompts)]
        assert rows != pipe.generate_ids(prompts, length=13, seed=5)  # the prior changed some tokens
        greedy = pipe.generate_ids(prompts[:1], length=12, seed=5, lm_prior=1e4)[0]
        lm = pipe.parts["lm"].model
        for k in range(0, 12, BLOCK):  # the LM read what the window holds before the block (a new one at 8)
            read = (prompts[0] + greedy[:k])[-CONTEXT:] if k >= TARGET else prompts[0] + greedy[:k]
            assert greedy[k] == lm(torch.tensor([read])).logits[0, -1].argmax().item()
    described = CONTEXT_LM.describe(replace(pipe.config, sample=pipe.settings(lm_prior=1.5)))
    assert "next-token probabilities together (sample.lm_prior 1.5)" in described  # the report says what decides
    assert "lm_prior" not in CONTEXT_LM.describe(pipe.config)
    pipe.parts["lm"] = FrozenLM(lm_dir, layer=-2)  # a DiT trained on an earlier layer's states: no next-token head
    pipe.sampler = pipe.mode.sampler(pipe.dit, **pipe.parts)
    with pytest.raises(UserError, match="LM ends at layer 2"):
        pipe.generate_ids(prompts, length=4, lm_prior=1.0)


def test_the_noise_scale_scales_the_starting_noise(lm_dir):
    """sample.noise_scale: the sampler equals the reference loop started from scaled noise; at 0 the seed no longer
    matters (the mean path)."""
    pipe = lm_pipeline(lm_dir)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    with torch.no_grad():
        rows = pipe.generate_ids(prompts, length=6, seed=5, noise_scale=0.5)
        assert rows == [reference_generate(pipe, p, 6, 5, i, noise_scale=0.5) for i, p in enumerate(prompts)]
    assert pipe.generate_ids(prompts, length=6, seed=1, noise_scale=0.0) == \
        pipe.generate_ids(prompts, length=6, seed=2, noise_scale=0.0)


def test_rows_ending_at_different_blocks_keep_the_others_exact(lm_dir):
    """With an end-of-text that some rows write early, the rows left (their LM cache rows kept by index) continue
    exactly as each does alone."""
    pipe = lm_pipeline(lm_dir, eot=10)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 1, 2, 3, 4, 5], [2, 2, 2, 2]]
    together = pipe.generate_ids(prompts, length=16, seed=2)
    alone = [pipe.generate_ids([p], length=16, seed=2, first_index=i)[0] for i, p in enumerate(prompts)]
    assert together == alone
    assert len({len(r) for r in together}) > 1, together  # the test needs rows that end at different blocks


@pytest.mark.parametrize("prediction", [0, 3])
def test_precomputed_states_equal_a_fresh_forward(tmp_path, tiny_model_dir, tiny_corpus, cache_home, prediction):
    """dit.context_lm.features=auto: the LM's states of fixed windows stored once (float16) equal a fresh forward over
    those windows, training batches read them, and a second source reuses the folder; with the LM's prediction
    (twice the width) the folder is another, and a folder of the other width is refused."""
    from conftest import tiny_overrides
    from textldm.data.features import FeatureCache
    from textldm.training.run import prepare_data

    cfg = load_config(None, tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path / "run"), full_window=False) +
                      ["dit.mode=context_lm", f"dit.context_lm.encoder={tiny_model_dir}",
                       "dit.context_lm.features=auto", "dit.context_lm.windows=12", "vae.encoder_block_size=1",
                       "dit.blocks.size=4",
                       f"dit.context_lm.prediction={prediction}"])
    _, _, train, _ = prepare_data(cfg)
    mode = objective_of(new_dit(cfg.dit, cfg.vae.latent_channels))
    cache = mode.training_source(cfg, train, torch.device("cpu"), progress=False)
    assert isinstance(cache, FeatureCache) and len(cache) == 12 and cache.length == cfg.dit.window_tokens
    assert cache.meta["hidden"] == 32 * (2 if prediction else 1) == mode.lm.hidden_size
    idx = torch.tensor([0, 5, 11])
    fresh = mode.lm(cache.ids(idx))
    assert torch.allclose(cache.features(idx), fresh, atol=1e-2 * fresh.abs().max().item())
    vae = TextVAE(cfg.vae, len(load_tokenizer(tiny_model_dir))).eval()
    batch = mode.batch(cache, vae, 4, torch.Generator().manual_seed(0), slice(None), torch.device("cpu"))
    drawn = torch.randint(0, 12, (4,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch["context"], cache.features(drawn))
    assert torch.equal(batch["ids"][batch["mask"]], cache.ids(drawn)[batch["mask"]])
    features = Path(cache.features_map.filename)
    mtime = features.stat().st_mtime_ns
    again = mode.training_source(cfg, train, torch.device("cpu"), progress=False)
    assert Path(again.features_map.filename) == features and features.stat().st_mtime_ns == mtime
    cfg.dit.context_lm.prediction = 3 - prediction  # the other width: another auto folder; this one named is refused
    other = objective_of(new_dit(cfg.dit, cfg.vae.latent_channels))
    assert Path(other.training_source(cfg, train, torch.device("cpu"), False).features_map.filename) != features
    cfg.dit.context_lm.features = str(features.parent)
    refused = (f"{cache.meta['hidden']} features each; this run needs layer -1, {cfg.dit.window_tokens}, "
               f"{other.lm.hidden_size}")
    with pytest.raises(UserError, match=refused):
        other.training_source(cfg, train, torch.device("cpu"), False)


def test_many_passes_over_precomputed_windows_warn(caplog):
    """More passes over the precomputed windows than measured safe warn, naming the keys that fix it."""
    from textldm.training.objectives.context_lm import MAX_PASSES, warn_repeated_windows

    with caplog.at_level(logging.WARNING, logger="textldm.training.objectives.context_lm"):
        assert warn_repeated_windows(600, 64, 1500) == pytest.approx(25.6)
        assert not caplog.records
        assert warn_repeated_windows(1200, 64, 1500) == pytest.approx(51.2) and 51.2 > MAX_PASSES
    assert "51 times" in caplog.text and "dit.context_lm.windows" in caplog.text
    assert "dit.context_lm.features" in caplog.text
    assert warn_repeated_windows(None, 64, 10) is None


def test_one_lm_pass_serves_repa_and_the_context(tmp_path, tiny_model_dir, tiny_corpus, cache_home):
    """When the context LM is the REPA teacher at its layer, window and window count, the VAE's teacher cache and
    the DiT's context features are one folder, built once; another layer is another folder."""
    from conftest import tiny_overrides
    from textldm.families.textldm.train import teacher_cache
    from textldm.models.lm import FrozenLM
    from textldm.training.run import prepare_data

    shared = ["dit.mode=context_lm", "dit.context_lm.features=auto", "dit.context_lm.windows=12",
              "vae.teacher_cache=auto", "vae.teacher_cache_windows=12", "vae.max_len=24", "vae.encoder_block_size=1",
              "dit.blocks.size=4"]
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path / "run"), full_window=False) +
                      shared + [f"dit.context_lm.encoder={tiny_model_dir}", "dit.context_lm.layer=-2"])
    _, _, train, _ = prepare_data(cfg)
    repa = teacher_cache(cfg, train, FrozenLM(tiny_model_dir, cfg.teacher.layer), torch.device("cpu"), False)
    features = Path(repa.features_map.filename)
    mtime = features.stat().st_mtime_ns
    mode = objective_of(new_dit(cfg.dit, cfg.vae.latent_channels))
    context = mode.training_source(cfg, train, torch.device("cpu"), progress=False)
    assert Path(context.features_map.filename) == features and features.stat().st_mtime_ns == mtime
    cfg.dit.context_lm.layer = -1
    other = objective_of(new_dit(cfg.dit, cfg.vae.latent_channels)).training_source(cfg, train,
                                                                                          torch.device("cpu"), False)
    assert Path(other.features_map.filename) != features


def test_lm_mode_config_checks(lm_dir):
    """The LM's settings need its mode; precomputed-window counts need precomputing on; its blocks a causal VAE."""
    lm = ["dit.mode=context_lm", f"dit.context_lm.encoder={lm_dir}", "dit.blocks.size=4"]
    with pytest.raises(UserError, match="dit.context_lm settings are not read by dit.mode=window"):
        load_config(None, [f"dit.context_lm.encoder={lm_dir}"])
    with pytest.raises(UserError, match="dit.context_lm.features"):
        load_config(None, lm + ["vae.encoder_block_size=1", "dit.context_lm.windows=10"])
    with pytest.raises(UserError, match="block-causal VAE"):
        load_config(None, lm + ["vae.encoder_block_size=0"])
    load_config(None, [f"dit.context_encoder={lm_dir}", "dit.block_size=4", "vae.encoder_block_size=1"])  # valid


def test_a_context_lm_with_another_tokenizer_is_refused(tiny_model_dir, lm_dir, tmp_path, caplog):
    """The LM must read the run's ids: the same tokenizer passes, a vocabulary with two ids swapped is refused, an
    LM without a tokenizer passes with a warning when it has a row per id and is refused when it has fewer."""
    from textldm.models.lm import check_tokenizer

    check_tokenizer(tiny_model_dir, tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    same = tmp_path / "same"
    tok.save_pretrained(same)
    LlamaForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(same)
    check_tokenizer(tiny_model_dir, str(same))  # another folder, the same vocabulary
    vocab = tok.get_vocab()
    a, b = sorted(vocab, key=vocab.get)[2:4]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    swapped = tmp_path / "swapped"
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(swapped)
    LlamaForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(swapped)
    with pytest.raises(UserError, match="2 of its .* tokens have another id"):
        check_tokenizer(tiny_model_dir, str(swapped))
    with pytest.raises(UserError, match=f"has {VOCAB} embedding rows, fewer than"):
        check_tokenizer(tiny_model_dir, lm_dir)  # no tokenizer, 11 rows for the tiny tokenizer's ids
    wide = tmp_path / "wide"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(wide)
    check_tokenizer(tiny_model_dir, str(wide))
    assert "ships no tokenizer" in caplog.text


def test_the_demo_trains_saves_and_reloads_the_lm_mode(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    """The demo preset with the context LM on (its states precomputed): trained from the cache, reported, saved; the
    reloaded model is the LM mode again (the LM found by its name) and continues a prompt as the trained one did."""
    from conftest import tiny_overrides
    from textldm import demo

    monkeypatch.setenv("TEXTLDM_CACHE", str(tmp_path / "cache"))
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path), full_window=False) +
                      ["dit.mode=context_lm", f"dit.context_lm.encoder={tiny_model_dir}",
                       "dit.context_lm.features=auto", "dit.context_lm.windows=16",
                       f"metrics.second_judge={tiny_model_dir}"])
    report = demo.demo(cfg, progress=False)
    e, c = report["dit_eval"], report["continuations"]
    assert 0 < e["with_prompt"] and 0 < e["prompt_dropped"] and c["gen_ppl"] > 1
    # the second judge (here the same model under its folder name) is reported beside the first, by the same rule
    second = c["second_judge"]
    assert second["judge"] == tiny_model_dir and second["gen_ppl"] == pytest.approx(c["gen_ppl"])
    assert second["reference_prompt_binding"] == pytest.approx(c["reference_prompt_binding"])
    assert (tmp_path / "report.md").read_text().count("generative perplexity under") == 2
    # the report says what the run is: the text's knowledge is the pretrained LM's, named
    assert "pretrained context encoder" in report["what_it_is"] and tiny_model_dir in report["what_it_is"]
    assert f"What this run is: {report['what_it_is']}" in (tmp_path / "report.md").read_text()
    assert list((tmp_path / "cache").rglob("features.bin"))  # trained from precomputed states
    pipe = TextLDMPipeline.from_pretrained(tmp_path / "model")
    assert pipe.mode is CONTEXT_LM and pipe.config.dit.context_lm.encoder == tiny_model_dir
    ids = pipe.tokenizer("the of and", add_special_tokens=False)["input_ids"]
    first = pipe.generate_ids([ids], length=5, seed=3)[0]
    assert 0 < len(first) <= 5 and pipe.generate_ids([ids], length=5, seed=3)[0] == first
    served_like_the_python_api(pipe)


def served_like_the_python_api(pipe: TextLDMPipeline) -> None:
    """The LM mode through the OpenAI-style endpoint: a completion is the pipeline's text for the same seed, and a
    streamed one joins to it without passing max_tokens (more tokens than one window, so two windows' LM caches)."""
    from fastapi.testclient import TestClient

    from textldm.serving.app import create_app

    client = TestClient(create_app(pipe, None))
    length = pipe.config.dit.window_tokens + 3
    body = {"prompt": "the of and", "max_tokens": length, "seed": 3, "steps": 2}
    r = client.post("/v1/completions", json=body).json()
    expected = pipe.generate("the of and", length=length, seed=3, steps=2)[0]
    assert r["choices"][0]["text"] == expected and 0 < r["usage"]["completion_tokens"] <= length
    chunks = [line[len("data: "):] for line in client.post("/v1/completions", json={**body, "stream": True})
              .text.splitlines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    assert "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1]) == expected


def word_tokenizer(vocab: int = VOCAB) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0")


def test_the_lms_last_blocks_train_at_their_scaled_lr_count_their_flops_and_are_saved(lm_dir, tmp_path):
    """dit.context_lm.train_layers=1: only the LM's last block gets gradients, one AdamW step moves it by lr x
    dit.context_lm.lr_scale (Adam's first step moves every weight by ~lr) and the DiT by lr, its matrix products join
    the counted FLOPs, and the model folder keeps the trained block: reloaded, the LM gives the trained states."""
    from textldm.config import TrainConfig
    from textldm.training.loop import _set_lr, make_optimizer

    torch.manual_seed(1)
    d = dit_config("context_lm", blocks={"size": BLOCK},
                   context_lm={"encoder": lm_dir, "train_layers": 1, "lr_scale": 0.25}, width=32, depth=2, heads=2,
                   context_min=4, context_max=CONTEXT, target_min=4, target_max=TARGET)
    mode, vae = objective_of(perturbed(new_dit(d, C), 0.2, 1)), tiny_vae()  # (adaLN-Zero: no gradient at 0)
    layers = mode.lm.layers
    assert all(p.requires_grad for p in layers[-1].parameters())
    frozen_parts = [*layers[:-1].parameters(), *mode.lm.model.get_input_embeddings().parameters()]
    assert not any(p.requires_grad for p in frozen_parts)
    batch = mode.batch(RandomStream(VOCAB), vae, 4, torch.Generator().manual_seed(0), slice(None),
                       torch.device("cpu"))
    mode(batch, 0)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[-1].parameters())
    assert all(p.grad is None for p in layers[:-1].parameters())
    lm_before = {k: v.clone() for k, v in mode.lm.trained_state().items()}
    dit_before = [p.detach().clone() for p in mode.dit.parameters() if p.grad is not None]
    optimizer = make_optimizer(mode, TrainConfig(lr=1e-2, weight_decay=0.0))
    _set_lr(optimizer, 1e-2)
    optimizer.step()
    lm_step = max((v - lm_before[k]).abs().max().item() for k, v in mode.lm.trained_state().items())
    dit_step = max((p.detach() - b).abs().max().item()
                   for p, b in zip([p for p in mode.dit.parameters() if p.grad is not None], dit_before))
    assert lm_step == pytest.approx(0.25e-2, rel=0.02) and dit_step == pytest.approx(1e-2, rel=0.02)

    frozen = objective_of(new_dit(replace(d, context_lm=replace(d.context_lm, train_layers=0)), C))
    matrices = sum(p.numel() for p in layers[-1].parameters() if p.dim() >= 2)
    assert mode.train_flops(4) - frozen.train_flops(4) == 3 * 4 * (CONTEXT + TARGET) * 2 * matrices

    cfg = Config(vae=vae.cfg, dit=d, sample=SampleConfig(steps=4))
    TextLDMPipeline(cfg, word_tokenizer(), vae, mode.dit, -1, parts={"lm": mode.lm}).save_pretrained(tmp_path / "m")
    loaded = TextLDMPipeline.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded.parts["lm"](ids), mode.lm(ids)) and not torch.allclose(frozen.lm(ids), mode.lm(ids))
    (tmp_path / "m" / "context_lm.safetensors").unlink()
    with pytest.raises(UserError, match="holds no context_lm.safetensors"):
        TextLDMPipeline.from_pretrained(tmp_path / "m")


def test_trained_lm_blocks_refuse_precomputed_states_fsdp_and_more_blocks_than_run(lm_dir):
    base = ["dit.mode=context_lm", f"dit.context_lm.encoder={lm_dir}", "dit.blocks.size=4",
            "vae.encoder_block_size=1", "dit.context_lm.train_layers=1"]
    load_config(None, base)  # valid
    with pytest.raises(UserError, match="cannot be precomputed"):
        load_config(None, base + ["dit.context_lm.features=auto"])
    with pytest.raises(UserError, match="not supported with dit_train.parallel=fsdp"):
        load_config(None, base + ["dit_train.parallel=fsdp"])
    with pytest.raises(UserError, match=r"runs 3 layers up to its layer; use 1..3"):
        objective_of(new_dit(dit_config("context_lm", blocks={"size": BLOCK},
                                             context_lm={"encoder": lm_dir, "train_layers": 4}), C))


def test_train_dit_fine_tunes_the_lms_last_block_and_the_saved_model_carries_it(tiny_model_dir, tiny_corpus, tmp_path,
                                                                                  monkeypatch):
    """The DiT stage with dit.context_lm.train_layers=1: the model folder's context_lm.safetensors holds the LM's last
    block as training left it (moved from the pretrained weights; the blocks below untouched), and the reloaded
    pipeline's LM is that one - the trained model the stage sampled with, not a fresh copy of the pretrained LM."""
    from safetensors.torch import load_file

    from conftest import tiny_overrides
    from textldm.families.textldm.train import train_dit, train_vae

    monkeypatch.setenv("TEXTLDM_CACHE", str(tmp_path / "cache"))
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path), full_window=False) +
                      ["dit.mode=context_lm", f"dit.context_lm.encoder={tiny_model_dir}",
                       "dit.context_lm.train_layers=1", "vae_train.steps=5",
                       "dit_train.steps=6", "dit_train.lr=1e-2"])
    vae_pipe, _ = train_vae(cfg, progress=False)
    pipe, _ = train_dit(cfg, vae_pipe=vae_pipe, progress=False)
    saved = load_file(str(tmp_path / "model" / "context_lm.safetensors"))
    pretrained = FrozenLM(tiny_model_dir, cfg.dit.context_lm.layer)
    fresh = pretrained.model.state_dict()
    assert saved and all(not torch.equal(v, fresh[k]) for k, v in saved.items())
    assert all(torch.equal(v, pipe.parts["lm"].model.state_dict()[k]) for k, v in saved.items())
    untouched = [k for k in fresh if k not in saved and ".layers." in k]
    assert untouched and all(torch.equal(fresh[k], pipe.parts["lm"].model.state_dict()[k]) for k in untouched)
    loaded = TextLDMPipeline.from_pretrained(tmp_path / "model")
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.parts["lm"](ids), pipe.parts["lm"](ids))


class Digits:
    """A tokenizer of space-separated token ids (the harness reads text)."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [int(w) for w in text.split()]}

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


@pytest.mark.parametrize("history, reads", [(0, CONTEXT), (16, 12)])
def test_the_harness_gives_the_lm_the_prompt_tokens_it_reads(lm_dir, monkeypatch, history, reads):
    """The evaluation harness cuts a benchmark prompt at what the model reads under the evaluation's sampler: the
    DiT's window, or a longer sample.lm_history (here the whole 12-token prompt)."""
    from textldm.evaluation.harness import Contestant

    pipe, seen = lm_pipeline(lm_dir), []
    pipe.tokenizer = Digits()
    generate = pipe.generate_ids
    monkeypatch.setattr(pipe, "generate_ids", lambda rows, n, **kw: seen.extend(rows) or generate(rows, n, **kw))
    prompt = [(i * 3) % 10 + 1 for i in range(12)]
    items = [{"prompt": Digits().decode(prompt), "reference": "1 2 3 4"}]
    Contestant("m", pipe).continue_items(items, SampleConfig(steps=2, lm_history=history), 1, 4)
    assert seen == [prompt[-reads:]]
