"""Block-causal mode (dit.mode=blocks): the attention masks, no leak from later tokens, the cached block sampler
against the training forward and against a hand-written reference loop, CFG's null prefix, config checks."""
import pytest
import torch

from builders import RandomStream, dit_config, new_dit, objective_of, perturbed
from textldm import TextLDMPipeline
from textldm.config import Config, DiTConfig, SampleConfig, VAEConfig, load_config
from textldm.diffusion.guidance import Guidance
from textldm.errors import UserError
from textldm.models.block_causal import clean_noisy_attn_mask
from textldm.models.dit import TextDiT
from textldm.models.layers import block_causal_attn_mask
from textldm.models.vae import TextVAE
from textldm.sampling import BlockState

VOCAB, C, BLOCK = 11, 8, 4
CONTEXT, TARGET = 8, 8  # a window of 16 tokens: 4 blocks
WINDOW = DiTConfig(context_max=CONTEXT, target_min=TARGET, target_max=TARGET).window_tokens


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    return perturbed(module, 0.2, seed).eval()


def tiny_vae(encoder_block: int = 1, seed: int = 0) -> TextVAE:
    torch.manual_seed(seed)
    cfg = VAEConfig(width=32, heads=2, encoder_depth=2, decoder_depth=1, latent_channels=C, max_len=16,
                    embed_init="random", repa_weight=0.0, encoder_block_size=encoder_block)
    return randomized(TextVAE(cfg, VOCAB), seed)


def tiny_dit(uncond: str = "empty", seed: int = 1, block: int = BLOCK, block_t: str = "per_block",
             **overrides) -> TextDiT:
    torch.manual_seed(seed)
    shape = {"context_min": 4, "context_max": CONTEXT, "target_min": 4, "target_max": TARGET, **overrides}
    cfg = dit_config("blocks", blocks={"size": block, "uncond": uncond, "t": block_t}, width=32, depth=2, heads=2,
                     **shape)
    return randomized(new_dit(cfg, C), seed)


def window(n: int = 3, seed: int = 0, pad=(0, 1, 3)):
    """Clean latents, noisy latents, per-block times and a mask whose first block is left-padded by `pad`."""
    g = torch.Generator().manual_seed(seed)
    L = WINDOW
    clean, x_t = torch.randn(n, L, C, generator=g), torch.randn(n, L, C, generator=g)
    t = torch.rand(n, L // BLOCK, generator=g)
    mask = torch.arange(L)[None] >= torch.tensor(pad[:n])[:, None]
    return clean, x_t, t, mask


def test_the_clean_noisy_mask_is_block_causal():
    """Blocks of 2 over 4 tokens: clean queries see clean keys of their block and before; noisy queries the clean
    keys of earlier blocks and the noisy keys of their own block; padding (token 0 of row 1) is seen by nobody
    but itself; an empty prefix (row 2) removes every clean key from the noisy queries."""
    key_mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    m = clean_noisy_attn_mask(key_mask, 2, see_prefix=torch.tensor([True, True, False]))[:, 0].int()
    expected = torch.tensor([
        # clean 0..3      noisy 0..3
        [1, 1, 0, 0, 0, 0, 0, 0],  # clean 0
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],  # clean 2
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],  # noisy 0: no earlier block
        [0, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 1],  # noisy 2: clean block 0 and itself
        [1, 1, 0, 0, 0, 0, 1, 1]])
    assert torch.equal(m[0], expected)
    padded = expected.clone()
    padded[:, 0] = 0
    padded[:, 4] = 0
    padded[0, 0] = padded[4, 4] = 1  # a padded query sees itself only
    assert torch.equal(m[1], padded)
    empty = expected.clone()
    empty[4:, :4] = 0
    assert torch.equal(m[2], empty)
    assert torch.equal(block_causal_attn_mask(key_mask[:1], 2)[0, 0].int(), expected[:4, :4])


@pytest.mark.parametrize("part", ["clean", "noisy"])
def test_a_block_output_ignores_later_blocks_and_earlier_noisy_ones(part):
    """Velocity of block 1 (tokens 4..7): unchanged when any later block changes (clean or noisy) and when the noisy
    block 0 changes; changed when its own noisy tokens or the clean block 0 change (the prefix is read)."""
    dit = tiny_dit()
    clean, x_t, t, mask = window()
    v = dit.forward_blocks(x_t, t, clean=clean, mask=mask)[:, 4:8]

    def moved(tensor_name: str, positions: slice) -> bool:
        c, x = clean.clone(), x_t.clone()
        (c if tensor_name == "clean" else x)[:, positions] += 1.0
        return not torch.equal(dit.forward_blocks(x, t, clean=c, mask=mask)[:, 4:8], v)

    assert not moved(part, slice(8, 16))
    assert not moved("noisy", slice(0, 4))
    assert moved("noisy", slice(4, 8)) and moved("clean", slice(0, 4))
    assert not moved("clean", slice(4, 8))  # a noisy block never sees its own clean copy (the answer)


def test_no_leak_changing_a_token_moves_no_earlier_latent_or_velocity():
    """Token 9 (block 2) changed: the block-causal encoder's latents of blocks 0-1 and the DiT's velocities of
    blocks 0-2 (block 2 reads only blocks 0-1's clean latents) stay exactly equal. The bidirectional encoder, the
    paper's, moves them: that is the leak block mode must not have."""
    vae, dit = tiny_vae(encoder_block=4), tiny_dit()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    z, z2 = vae.encode(ids), vae.encode(changed)
    assert torch.equal(z[:, :8], z2[:, :8]) and not torch.equal(z[:, 8:12], z2[:, 8:12])
    _, x_t, t, mask = window(2, pad=(0, 2))
    v, v2 = dit.forward_blocks(x_t, t, clean=z, mask=mask), dit.forward_blocks(x_t, t, clean=z2, mask=mask)
    assert torch.equal(v[:, :12], v2[:, :12]) and not torch.equal(v[:, 12:], v2[:, 12:])
    bidirectional = tiny_vae(encoder_block=0)
    assert not torch.allclose(bidirectional.encode(ids)[:, :8], bidirectional.encode(changed)[:, :8])


def test_the_prefix_cache_matches_the_training_forward():
    """extend_prefix block by block == one pass over the whole prefix; block_velocity of block 2 after the cached
    clean blocks 0-1 == forward_blocks' output for block 2 (whatever the other blocks hold)."""
    dit = tiny_dit()
    clean, x_t, t, mask = window()
    whole = dit.extend_prefix(None, clean[:, :8], mask[:, :8])
    stepwise = dit.extend_prefix(dit.extend_prefix(None, clean[:, :4], mask[:, :4]), clean[:, 4:8], mask[:, 4:8])
    for a, b in zip(whole.caches, stepwise.caches):
        assert torch.allclose(a.k, b.k, atol=1e-5) and torch.allclose(a.v, b.v, atol=1e-5)
    v = dit.forward_blocks(x_t, t, clean=clean, mask=mask)[:, 8:12]
    assert torch.allclose(dit.block_velocity(x_t[:, 8:12], t[:, 2], stepwise), v, atol=1e-5)


@pytest.mark.parametrize("uncond", ["empty", "null_latent"])
def test_guided_block_velocity_is_cfg_over_the_trained_null_condition(uncond):
    """The sampler's unconditional rows are exactly training's dropped rows: v = v_drop + s (v_cond - v_drop)."""
    dit = tiny_dit(uncond)
    clean, x_t, t, mask = window()
    n = clean.shape[0]
    v_cond = dit.forward_blocks(x_t, t, clean=clean, mask=mask)[:, 8:12]
    v_drop = dit.forward_blocks(x_t, t, clean=clean, mask=mask, drop=torch.ones(n, dtype=torch.bool))[:, 8:12]
    null, null_mask = dit.null_prefix_input(clean[:, :8], mask[:, :8])
    prefix = dit.extend_prefix(None, torch.cat([clean[:, :8], null]), torch.cat([mask[:, :8], null_mask]))
    guided = Guidance(3.0).velocity(lambda x, tt, _: dit.block_velocity(x, tt, prefix), x_t[:, 8:12], t[:, 2])
    assert torch.allclose(guided, v_drop + 3.0 * (v_cond - v_drop), atol=1e-4)
    assert not torch.allclose(v_cond, v_drop, atol=1e-3)


def block_pipeline(cfg_scale: float = 2.0, uncond: str = "empty", block: int = BLOCK, **shape) -> TextLDMPipeline:
    vae, dit = tiny_vae(), tiny_dit(uncond, block=block, **shape)
    cfg = Config(vae=vae.cfg, dit=dit.cfg, sample=SampleConfig(steps=4, cfg_scale=cfg_scale))
    return TextLDMPipeline(cfg, None, vae, dit, eot_id=-1)


def reference_generate(pipe: TextLDMPipeline, prompt: list[int], length: int, seed: int, row: int) -> list[int]:
    """Block sampling written out with the training forward (no cache, the window re-encoded from its tokens at
    every block): Euler on the schedule grid, CFG over training's dropped rows, decode beside the prefix; a
    self-conditioning DiT reads the previous step's clean estimate x + (1 - t) v (zeros at a block's first step)."""
    from textldm.sampling import noise_seed

    vae, dit, s, d = pipe.vae, pipe.dit, pipe.config.sample, pipe.config.dit
    BLOCK, CONTEXT = d.blocks.size, d.context_max  # noqa: N806 (the module's names, per model)
    grid = pipe.time_grid(s).tolist()
    start = -(-CONTEXT // BLOCK) * BLOCK
    out, k, ids, pad = [], 0, None, 0
    while len(out) < length:
        if ids is None or ids.shape[1] + BLOCK > d.window_tokens:  # a new window: the last CONTEXT tokens
            recent = (prompt + out)[-CONTEXT:]
            pad = start - len(recent)
            ids = torch.tensor([[0] * pad + recent])
        L = ids.shape[1] + BLOCK
        mask = torch.arange(L)[None] >= pad
        full = torch.cat([ids, torch.zeros(1, BLOCK, dtype=torch.long)], 1)
        clean = vae.normalize(vae.encode(full, mask))
        clean[:, -BLOCK:] = 0.0  # never read: a noisy block does not see its own clean copy
        x = torch.randn(BLOCK, C, generator=torch.Generator().manual_seed(noise_seed(seed, k, row)))[None]
        estimate = torch.zeros(1, L, C)  # only the last block's positions are ever read
        for a, b in zip(grid, grid[1:]):
            noisy = torch.cat([torch.zeros(1, L - BLOCK, C), x], 1)
            t = torch.full((1, L // BLOCK), a)
            sc = estimate if dit.self_cond_proj is not None else None
            v_c = dit.forward_blocks(noisy, t, clean=clean, mask=mask, self_cond=sc)[:, -BLOCK:]
            v_u = dit.forward_blocks(noisy, t, clean=clean, mask=mask, drop=torch.ones(1, dtype=torch.bool),
                                     self_cond=sc)[:, -BLOCK:]
            v = v_u + s.cfg_scale * (v_c - v_u)
            estimate = torch.cat([torch.zeros(1, L - BLOCK, C), x + (1 - a) * v], 1)
            x = x + (b - a) * v
        z = vae.denormalize(torch.cat([clean[:, :-BLOCK], x], 1))
        block = vae.decode(z, mask).argmax(-1)[0, -BLOCK:].tolist()
        out += block
        ids = torch.cat([ids, torch.tensor([block])], 1)
        k += 1
    return out[:length]


@pytest.mark.parametrize("uncond", ["empty", "null_latent"])
def test_the_block_sampler_equals_a_reference_loop(uncond):
    """Prompts of 3, 5 and 8 tokens continued by 13 tokens (4 blocks over two windows of 16 tokens, the second
    starting from the last 8 tokens) in one batch: token for token what the reference loop writes for each."""
    pipe = block_pipeline(uncond=uncond)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 1, 2, 3, 4, 5, 6]]
    rows = pipe.generate_ids(prompts, length=13, solver="euler", seed=5)
    assert rows == [reference_generate(pipe, p, 13, 5, i) for i, p in enumerate(prompts)]
    assert pipe.last_evaluations == 4 * 4 * 2  # blocks x steps x (conditional + unconditional)
    assert pipe.generate_ids(prompts[1:2], length=13, seed=5, first_index=1) == rows[1:2]  # any batch


def test_a_block_that_does_not_divide_the_context_left_pads_the_first_block():
    """B = 4 with dit.context_max = 6 (window 16): the prompt is left-padded to 8, one window holds two blocks after
    it; prompts of 2, 5 and 6 tokens continued by 11 tokens over three windows equal the reference loop's."""
    pipe = block_pipeline(context_max=6, target_max=10)
    load_config(None, ["dit.mode=blocks", "dit.blocks.size=4", "dit.context_min=4", "dit.context_max=6",
                       "dit.target_min=4", "dit.target_max=10", "vae.encoder_block_size=1"])  # a valid config
    prompts = [[1, 2], [3, 4, 5, 6, 7], [8, 9, 10, 1, 2, 3]]
    rows = pipe.generate_ids(prompts, length=11, seed=2)
    assert rows == [reference_generate(pipe, p, 11, 2, i) for i, p in enumerate(prompts)]
    state = BlockState.start(pipe.codec, pipe.dit, prompts, guided=False)  # the layout itself
    assert state.ids.shape == (3, 8) and state.mask.sum(1).tolist() == [2, 5, 6] and not state.mask[:, :2].any()


def first_block_of(token: int, row: list[int]) -> int | None:
    return row.index(token) // BLOCK if token in row else None


def test_rows_ending_at_different_blocks_keep_the_others_exact_under_cfg():
    """A batch under CFG whose rows end (end-of-text) at different blocks: each row is what that prompt gives alone
    with its noise row, and what it gives when no token ends it, cut after its end-of-text - the rows left keep their
    own conditional and unconditional prefixes."""
    from textldm.utils import cut_at

    pipe = block_pipeline(cfg_scale=3.0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 1]]
    free = pipe.generate_ids(prompts, length=16, seed=1)  # eot_id -1: no row ends
    ends = {tok: [first_block_of(tok, row) for row in free] for tok in range(VOCAB)}
    token = next(tok for tok, blocks in ends.items()  # ends one row early, another later or never
                 if len({b for b in blocks}) == 3 and min(b for b in blocks if b is not None) < 3)
    pipe.eot_id = token
    rows = pipe.generate_ids(prompts, length=16, seed=1)
    assert rows == cut_at(free, token)
    assert len({len(r) for r in rows}) > 1
    assert all(pipe.generate_ids([p], length=16, seed=1, first_index=i) == [rows[i]] for i, p in enumerate(prompts))


def test_the_block_training_flops_are_the_hand_count():
    """One block-mode optimizer step's counted FLOPs (what train.max_flops and the scaling bench's budgets rest on),
    written out by hand for width 32, depth 2, C 8, a window of 16 tokens in blocks of 4 - and near the FLOPs torch
    counts for the forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from textldm.diffusion.flow import flow_loss
    from textldm.runtime.perf import dit_block_flops_per_sequence

    w, depth, C_, L, B = 32, 2, C, WINDOW, BLOCK
    dit = tiny_dit()
    per_token = depth * (2 * w * 3 * w + 2 * w * w + 2 * w * 4 * w + 2 * 4 * w * w  # qkv, proj, MLP
                         + 4 * (2 * L) * w)  # scores and values over the 2L [clean ; noisy] keys
    tokens = 2 * L * (per_token + 2 * C_ * w)  # every token, and its input projection
    outputs = L * 2 * w * C_  # the noisy half's output layer
    per_condition = depth * 2 * w * 6 * w + 2 * w * 2 * w + 2 * 256 * w + 2 * w * w  # adaLN, final, t-embedder
    forward = tokens + outputs + (1 + L // B) * per_condition  # the clean condition and each block's
    assert dit_block_flops_per_sequence(dit, L) == forward
    assert objective_of(dit).train_flops(64) == 3 * 64 * forward  # forward + backward
    clean, x_t, t, mask = window()
    with FlopCounterMode(display=False) as counter:
        flow_loss(dit.forward_blocks(x_t, t, clean=clean, mask=mask), x_t, clean, mask).mean().backward()
    assert 0.9 < counter.get_total_flops() / (3 * clean.shape[0] * forward) < 1.1


def test_the_block_sampler_honours_the_cfg_interval_and_stop():
    """Outside [cfg_min_t, cfg_max_t] one conditional evaluation a step; a step callback's STOP ends the generation
    after the current block's sampling."""
    from textldm.diffusion.sampling import STOP

    pipe = block_pipeline()
    pipe.generate_ids([[1, 2, 3]], length=8, cfg_min_t=0.5)
    grid = pipe.time_grid(pipe.config.sample)[:-1]
    guided = int(((grid >= 0.5) & (grid <= 1.0)).sum())
    assert pipe.last_evaluations == 2 * (4 + guided)
    seen = []
    rows = pipe.generate_ids([[1, 2, 3]], length=16, callback=lambda i, t, x: seen.append(x.shape) or STOP)
    assert len(rows[0]) == BLOCK and seen == [(1, BLOCK, C)]


def test_block_mode_config_checks():
    """Block mode refuses, by name, a VAE that would leak later tokens and the full window's settings (it takes
    self-conditioning: tests/test_levers.py)."""
    base = ["dit.mode=blocks", "dit.blocks.size=8", "vae.encoder_block_size=1", "dit.context_max=32",
            "dit.target_max=32", "vae.max_len=64"]
    load_config(None, base)
    for extra, words in [(["vae.encoder_block_size=0"], "block-causal VAE"), (["vae.encoder_block_size=3"], "divides"),
                         (["dit.blocks.size=24"], "divide the window"), (["dit.blocks.size=64"], "no room"),
                         (["dit.window.infill_prob=0.3"], "dit.window settings are not read by dit.mode=blocks"),
                         (["dit.window.context_cache=true"], "dit.window settings"),
                         (["vae.max_len=32"], "vae.max_len")]:
        with pytest.raises(UserError, match=words):
            load_config(None, base + extra)


@pytest.mark.parametrize("block_t", ["per_block", "shared"])
def test_block_batches_noise_every_block_and_pad_the_first(block_t):
    """Per-block times differ within a window (one shared time is the dit.blocks.t=shared alternative); the first
    block is left-padded by 0..B-1 tokens (every amount occurs), later blocks never; the clean latents are the
    block-causal VAE's encoding of the window under that mask."""
    from textldm.training.batches import dit_batches

    vae, dit = tiny_vae(), tiny_dit(block_t=block_t)
    batch = dit_batches(RandomStream(VOCAB), vae, objective_of(dit), 64, seed=0, device=torch.device("cpu"))(0)
    t = batch["t"]
    assert t.shape == (64, WINDOW // BLOCK)
    if block_t == "per_block":
        assert (t.std(1) > 0).all()
    else:
        assert (t == t[:, :1]).all() and t[:, 0].std() > 0
    pad = (~batch["mask"]).sum(1)
    assert set(pad.tolist()) == set(range(BLOCK)) and batch["mask"][:, BLOCK:].all()
    assert torch.equal(batch["clean"], vae.latents(batch["ids"], batch["mask"], True))


def test_the_live_view_streams_each_block_decoded_beside_its_prefix():
    """The web app's trajectory in block mode: one 'window' of step events per block, and the text after each
    block's last step is exactly the generated text so far (each block decoded beside its prefix)."""
    from textldm.serving.trajectory import Trajectory

    class Tokens:
        def decode(self, ids):
            return " ".join(map(str, ids))

    pipe = block_pipeline()
    pipe.tokenizer = Tokens()
    events = []
    rows = pipe.generate_ids([[1, 2, 3]], length=12,
                             callback=Trajectory(pipe, 4, events.append, check=lambda: None))
    last_steps = [e for e in events if e["step"] == 4]
    assert [e["window"] for e in last_steps] == [0, 1, 2]
    assert [e["text"] for e in last_steps] == [Tokens().decode(rows[0][: 4 * (k + 1)]) for k in range(3)]


@pytest.mark.parametrize("block", [4, 8])
def test_the_block_loss_report_covers_every_quarter(block):
    """The held-out block losses have samples in every t quarter whatever B (the quarters are not tied to a block's
    index, and a window's first block, which has no prefix, is left out)."""
    import math

    from textldm.training.evaluate import evaluate_dit

    vae, dit = tiny_vae(), tiny_dit()
    dit.cfg.blocks.size = block
    quarters = evaluate_dit(objective_of(dit), vae, RandomStream(VOCAB), n_batches=2, batch_size=8, seed=0,
                            device=torch.device("cpu"))["quarters"]
    assert all(not math.isnan(q["with_prompt"]) and not math.isnan(q["prompt_dropped"]) for q in quarters)


def test_the_demo_preset_runs_end_to_end_in_its_block_mode(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    """The from-scratch demo preset's recipe (block 1 on a causal VAE, logit-normal mean -1) at the tiny size:
    trained, saved, reported with prompt binding and same-noise agreement beside the references', reloaded in block
    mode; the report says it is trained from scratch."""
    from conftest import tiny_overrides
    from textldm import demo

    monkeypatch.setenv("TEXTLDM_CACHE", str(tmp_path / "cache"))
    cfg = load_config("demo", tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path), full_window=False))
    assert (cfg.dit.mode, cfg.dit.blocks.size, cfg.vae.encoder_block_size, cfg.dit.t_mean) == ("blocks", 1, 1, -1.0)
    c = demo.demo(cfg, progress=False)["continuations"]
    assert c["prompt_binding"] > 0 and c["reference_prompt_binding"] > 0 and c["gen_ppl"] > 1
    assert 0 <= c["same_noise_agreement"] <= 1 and len(c["samples"]) == c["prompts_scored"] > 0
    assert "prompt binding" in (tmp_path / "report.md").read_text()
    assert "What this run is: block-causal, 1 token a block; the VAE and the DiT are trained from scratch" in \
        (tmp_path / "report.md").read_text()
    pipe = TextLDMPipeline.from_pretrained(tmp_path / "model")
    assert pipe.config.dit.blocks.size == 1 and pipe.vae.cfg.encoder_block_size == 1
    ids = pipe.tokenizer("the of and", add_special_tokens=False)["input_ids"]
    assert 0 < len(pipe.generate_ids([ids], length=5)[0]) <= 5


class Words:
    """A stand-in tokenizer over the tiny vocabulary: token k is the word "wk" (no word is inside another)."""

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w[1:]) for w in text.split()]}


def streamed(pipe, prompt: list[int], max_tokens: int, stops: list[str]) -> tuple[str, str]:
    """(the joined chunks of a streamed completion, its finish reason), as /v1/completions streams them."""
    from textldm.serving.openai_api import CommittedText

    chunks = []
    callback = CommittedText(pipe, stops, max_tokens, lambda kind, data: chunks.append(data["text"]), lambda: None)
    end = callback.finish(pipe.generate_ids([prompt], max_tokens, callback=callback)[0])
    return "".join(chunks) + end["text"], end["finish_reason"]


@pytest.mark.parametrize("block,max_tokens", [(1, 6), (2, 6), (2, 7), (4, 6), (4, 7), (8, 6)])
def test_a_stream_caps_at_max_tokens_and_equals_the_whole_answer(block, max_tokens):
    """For every block size that fits the window: the joined stream is the non-streamed answer (text and finish
    reason) with no stop, with a stop inside the last block's kept tokens, in an earlier block, and with a stop that
    only the sampled-but-cut tail of the last block would contain (still "length": the tail is never shown)."""
    from textldm.serving.openai_api import choice

    pipe = block_pipeline(block=block)
    pipe.tokenizer = Words()
    prompt = [1, 2, 3]
    ids = pipe.generate_ids([prompt], max_tokens)[0]
    assert len(ids) == max_tokens
    rounded = -(-max_tokens // block) * block
    tail = pipe.generate_ids([prompt], rounded)[0][max_tokens:]  # what the last block sampled past max_tokens
    text = Words().decode(ids)
    cases = [[], [Words().decode(ids[-1:])], [Words().decode(ids[1:2])]]
    # the shortest phrase across the cut that only an overrunning stream would show (the longest is never in the text)
    past = [Words().decode(ids[-k:] + tail[:1]) for k in range(1, len(ids) + 1)]
    cases += [[p] for p in past if p not in text][:1] if tail else []
    assert len(cases) == 4 or not tail
    for stops in cases:
        whole = choice(pipe.tokenizer, 0, ids, max_tokens, stops)
        assert streamed(pipe, prompt, max_tokens, stops) == (whole["text"], whole["finish_reason"]), stops
    if len(cases) == 4:
        assert choice(pipe.tokenizer, 0, ids, max_tokens, cases[3])["finish_reason"] == "length"


def test_the_live_view_never_shows_more_than_the_requested_length():
    """B = 4, 6 tokens asked: the live view's last block shows 2 tokens, and its text is the answer."""
    from textldm.serving.trajectory import Trajectory

    pipe = block_pipeline()
    pipe.tokenizer = Words()
    events = []
    rows = pipe.generate_ids([[1, 2, 3]], length=6, callback=Trajectory(pipe, 4, events.append, check=lambda: None))
    last = [e for e in events if e["window"] == 1]
    assert last and all(len(e["tokens"]) == len(e["change"]) == 2 for e in last)
    assert last[-1]["text"] == Words().decode(rows[0])


def test_shared_noise_gives_every_row_row_zeros_noise_in_one_batch():
    """The prompt-dependence measure continues all prompts from one noise, batched: each row equals that prompt
    continued alone as row 0, and differs from its own-noise continuation."""
    pipe = block_pipeline(cfg_scale=2.0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 1]]
    shared = pipe.generate_ids(prompts, length=12, seed=3, shared_noise=True)
    assert shared == [pipe.generate_ids([p], length=12, seed=3)[0] for p in prompts]
    assert shared[1:] != pipe.generate_ids(prompts, length=12, seed=3)[1:]
