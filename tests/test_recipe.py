"""Unit tests for the parts of the recipe that a learning test cannot see, each written so that a specific
recipe-breaking change fails it (tests/mutation.py applies those changes; docs/testing.md lists them):
the DiT objective's inputs, the batch builder's windows and CFG drops, the adaLN formula, t-dependence,
latent statistics and their floor, the pipeline's latent normalisation and sampler, EMA (with warm-up),
the KL warm-up, the SDPA branch's mask polarity, the seeding helper and the padded-vocabulary teacher."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from builders import dit_config, guided_velocity, objective_of, perturbed
from test_train import Quadratic
from textldm import TextLDMPipeline
from textldm.config import ARConfig, Config, DiTConfig, TrainConfig, VAEConfig, load_config
from textldm.diffusion.flow import sample_t, time_grid
from textldm.evaluation.heldout import position_agreement
from textldm.models import layers
from textldm.models.ar import CausalLM
from textldm.models.dit import TextDiT
from textldm.models.layers import TransformerLayer, rope_angles
from textldm.models.vae import TextVAE
from textldm.runtime.distributed import step_generator
from textldm.sampling import noise_seed
from textldm.training.batches import dit_batches
from textldm.training.evaluate import EVAL_STREAM, STD_FLOOR, evaluate_dit, latent_statistics
from textldm.training.loop import fit
from textldm.training.objectives import VAEObjective, vae_loss
from textldm.training.objectives.vae import kl_weight_at
from textldm.utils import derive_seed

C = 8  # latent channels


def small_dit(window: dict | None = None, **kw) -> TextDiT:
    torch.manual_seed(0)
    return perturbed(TextDiT(dit_config(window=window, width=32, heads=2, depth=2, **kw), C))


def small_vae(vocab: int = 30, **kw) -> TextVAE:
    torch.manual_seed(0)
    cfg = VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=C, max_len=32,
                    repa_weight=0.0, softmax="full", **kw)
    return TextVAE(cfg, vocab).eval()


class CountingStream:
    """Windows whose tokens count up from a random start: a token's id tells its place in the window."""

    def __init__(self, vocab: int = 1000):
        self.vocab, self.seen = vocab, []

    def windows(self, n, length, generator):
        start = torch.randint(0, self.vocab - length, (n, 1), generator=generator)
        ids = start + torch.arange(length)
        self.seen.append(ids)
        return ids


# --- the DiT objective -------------------------------------------------------------------------------
class SpyDiT(torch.nn.Module):
    """Records what the objective feeds the DiT; answers a fixed random velocity."""

    def __init__(self, dit: TextDiT, out: torch.Tensor):
        super().__init__()
        self.dit, self.out, self.calls = dit, out, []
        self.self_cond_proj, self.cfg = dit.self_cond_proj, dit.cfg

    def drop_context(self, context, drop):
        return self.dit.drop_context(context, drop)

    def forward(self, x_t, t, *, context, context_mask, target_mask, right=None, right_mask=None, self_cond=None):
        self.calls.append({"x_t": x_t, "t": t, "context": context, "target_mask": target_mask})
        return self.out


def test_dit_objective_feeds_the_documented_path_time_and_cfg_drop():
    """x_t = (1 - t) noise + t data (t = 0 noise, t = 1 data), t passed as drawn, the dropped rows' context
    replaced by the null condition, and the loss = MSE to (data - noise) over the real target positions only."""
    g = torch.Generator().manual_seed(0)
    B, Lc, Lt = 4, 5, 6
    noise, target, context = (torch.randn(B, L, C, generator=g) for L in (Lt, Lt, Lc))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    drop = torch.tensor([False, True, False, True])
    target_mask = torch.arange(Lt)[None] < torch.tensor([[6], [3], [5], [1]])
    v = torch.randn(B, Lt, C, generator=g)
    spy = SpyDiT(small_dit(), v)
    batch = {"noise": noise, "target": target, "t": t, "context": context, "target_mask": target_mask,
             "context_mask": torch.ones(B, Lc, dtype=torch.bool), "drop": drop}
    loss, _ = objective_of(spy)(batch, step=0)
    call = spy.calls[0]
    assert torch.allclose(call["x_t"], (1 - t)[:, None, None] * noise + t[:, None, None] * target)
    assert torch.equal(call["t"], t)
    assert torch.equal(call["context"][~drop], context[~drop])
    assert torch.allclose(call["context"][drop], spy.dit.null_context.expand(2, Lc, C))
    err = (v - (target - noise)).pow(2).mean(-1)
    per_row = torch.stack([err[i][target_mask[i]].mean() for i in range(B)])
    assert torch.allclose(loss, per_row.mean())
    spy.out = v.masked_fill(~target_mask[..., None], 1e3)  # padded positions do not count
    assert torch.allclose(objective_of(spy)(batch, step=0)[0], loss)


def test_batch_builder_windows_drops_and_timesteps():
    """Context = the context_len tokens right before the target, target = what follows, no overlap; each side
    encoded by the VAE on its own; CFG drops at rate p_uncond; t logit-normal(t_mean, t_std)."""
    cfg = DiTConfig(context_min=3, context_max=8, target_min=2, target_max=6, p_uncond=0.1, t_mean=-0.5, t_std=1.5,
                    normalize_latents=False)

    class IdentityVAE:  # latent channel 0 = the token id, so the latents show which tokens went where
        def __init__(self):
            self.cfg, self.encoded = VAEConfig(latent_channels=C), []

        def encode(self, ids, mask):
            self.encoded.append(ids.clone())
            return ids.float()[..., None].expand(*ids.shape, C) * mask[..., None]

        def latents(self, ids, mask, normalize):
            return self.encode(ids, mask)

    vae = IdentityVAE()
    get = dit_batches(CountingStream(), vae, objective_of(TextDiT(cfg, C)), 64, seed=0, device=torch.device("cpu"))
    drops, ts = [], []
    for step in range(40):
        b = get(step)
        ctx, tgt = b["context"][..., 0].long(), b["target"][..., 0].long()
        n_ctx, n_tgt = b["context_mask"].sum(1), b["target_mask"].sum(1)
        assert n_ctx.min() >= 3 and n_ctx.max() <= 8 and n_tgt.min() >= 2 and n_tgt.max() <= 6
        last_ctx = ctx.gather(1, (n_ctx - 1)[:, None]).squeeze(1)
        assert torch.equal(tgt[:, 0], last_ctx + 1)  # adjacent: the target starts right after the prompt
        assert torch.equal(ctx[:, 0], last_ctx - n_ctx + 1)  # the context is contiguous, left-aligned
        assert torch.equal(tgt[:, 1] - tgt[:, 0], torch.ones(64, dtype=torch.long))  # the target is contiguous
        drops.append(b["drop"])
        ts.append(b["t"])
    assert len(vae.encoded) == 80  # context and target encoded in separate calls: no leak through the encoder
    rate = torch.cat(drops).float().mean().item()
    assert abs(rate - 0.1) < 0.025, rate
    logit = torch.logit(torch.cat(ts).double())
    assert abs(logit.mean().item() + 0.5) < 0.15 and abs(logit.std().item() - 1.5) < 0.15


def test_timestep_distribution_and_grid_use_their_mean():
    t = sample_t(100_000, "logit_normal", -1.0, 0.8, generator=torch.Generator().manual_seed(0))
    assert abs(torch.logit(t).mean().item() + 1.0) < 0.02
    grid = time_grid(20, "logit_normal", -1.0, 0.8)
    for k in (4, 10, 16):  # grid[k] is the k/20 quantile of the training distribution
        assert abs((t < grid[k]).float().mean().item() - k / 20) < 0.01


# --- DiT layers -------------------------------------------------------------------------------------
def test_adaln_modulation_formula_with_nonzero_weights():
    """x + gate1 * attn(LN(x) * (1 + scale1) + shift1), then the same for the MLP, with the six chunks in
    visual DiT's order (shift, scale, gate) x 2; the final layer: linear(LN(x) * (1 + scale) + shift)."""
    torch.manual_seed(0)
    block = perturbed(TransformerLayer(16, 2, cond_dim=12), scale=0.3)
    x, cond = torch.randn(2, 5, 16), torch.randn(2, 12)
    rope = rope_angles(torch.arange(5), 8)
    shift1, scale1, gate1, shift2, scale2, gate2 = block.modulation[1](F.silu(cond))[:, None].chunk(6, -1)
    ln = lambda h: F.layer_norm(h, (16,), eps=1e-6)  # noqa: E731
    h = x + gate1 * block.attn(ln(x) * (1 + scale1) + shift1, rope)
    expected = h + gate2 * block.mlp(ln(h) * (1 + scale2) + shift2)
    assert torch.allclose(block(x, rope, cond=cond), expected, atol=1e-5)
    dit = small_dit()
    final, c = dit.final, torch.randn(2, 32)
    shift, scale = final.modulation[1](F.silu(c))[:, None].chunk(2, -1)
    y = torch.randn(2, 5, 32)
    assert torch.allclose(final(y, c), final.linear(F.layer_norm(y, (32,), eps=1e-6) * (1 + scale) + shift), atol=1e-5)


def test_t_conditioned_dit_depends_on_t():
    dit = small_dit()
    x, ctx = torch.randn(2, 5, C), torch.randn(2, 4, C)
    v = [dit(x, torch.full((2,), t), context=ctx) for t in (0.1, 0.5, 0.9)]
    assert not torch.allclose(v[0], v[1], atol=1e-3) and not torch.allclose(v[1], v[2], atol=1e-3)


# --- latent statistics ------------------------------------------------------------------------------
def test_latent_statistics_are_torch_mean_and_std():
    vae = perturbed(small_vae(vocab=1000))
    stream = CountingStream()
    mean, std = latent_statistics(vae, stream, n_batches=3, batch_size=4, seed=0, device=torch.device("cpu"))
    z = torch.cat([vae.encode(ids) for ids in stream.seen]).reshape(-1, C).double()
    assert torch.allclose(mean.double(), z.mean(0), atol=1e-5)
    assert torch.allclose(std.double(), z.std(0, unbiased=False), atol=1e-5)


def test_a_collapsed_channel_is_floored_not_blown_up(caplog):
    """A channel the VAE stopped using (constant up to rounding) must not be scaled up to unit variance."""
    vae = perturbed(small_vae(vocab=1000))
    with torch.no_grad():
        vae.to_moments.weight[0].zero_()  # channel 0's mean no longer depends on the input
    with caplog.at_level(logging.WARNING):
        mean, std = latent_statistics(vae, CountingStream(), 2, 4, seed=0, device=torch.device("cpu"))
    assert "collapsed" in caplog.text and "[0]" in caplog.text
    assert math.isclose(std[0].item(), STD_FLOOR * std[1:].median().item(), rel_tol=0.2)
    vae.latent_mean.copy_(mean)
    vae.latent_std.copy_(std)
    z = vae.normalize(vae.encode(torch.randint(0, 1000, (4, 16))))
    assert z[..., 0].abs().max() < 1e-3 and z[..., 1:].std() > 0.3


# --- the pipeline: latent normalisation and the sampler ------------------------------------------------
def tiny_pipeline() -> TextLDMPipeline:
    vae = perturbed(small_vae())
    vae.latent_mean.fill_(3.0)  # statistics far from (0, 1), so skipping them changes everything
    vae.latent_std.fill_(2.5)
    cfg = Config(vae=vae.cfg, dit=DiTConfig(width=32, heads=2, depth=2, context_min=2, context_max=6, target_min=2,
                                            target_max=4))
    torch.manual_seed(0)
    dit = perturbed(TextDiT(cfg.dit, C)).eval()
    return TextLDMPipeline(cfg, None, vae, dit, eot_id=-1)


def test_pipeline_normalises_prompts_and_denormalises_samples():
    pipe = tiny_pipeline()
    rows = [[1, 2, 3, 4], [5, 6]]
    latents, mask = pipe.codec.encode_rows(rows)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    assert torch.allclose(latents[0], (pipe.vae.encode(ids[:1]) - 3.0)[0] / 2.5, atol=1e-5)
    x = torch.randn(2, 4, C)
    assert pipe.codec.decode(x, cut=False) == pipe.vae.decode(x * 2.5 + 3.0).argmax(-1).tolist()


def reference_generate(pipe: TextLDMPipeline, prompts, length: int, steps: int, cfg_scale: float, seed: int,
                       interval=(0.0, 1.0), latents: list | None = None):
    """Euler on the training-quantile grid with CFG for t in `interval` (conditional only outside it), windows of
    dit.target_max tokens each conditioned on the last context_max tokens of prompt + text so far, by hand.
    `latents`, if given, receives each window's final (normalised) latents, row by row."""
    d, vae, dit = pipe.config.dit, pipe.vae, pipe.dit
    grid = time_grid(steps, d.t_distribution, d.t_mean, d.t_std)
    out = [[] for _ in prompts]
    for window in range((length + d.target_max - 1) // d.target_max):
        n = min(d.target_max, length - window * d.target_max)
        for i, prompt in enumerate(prompts):
            ctx_ids = torch.tensor([(prompt + out[i])[-d.context_max:]])
            ctx = (vae.encode(ctx_ids) - vae.latent_mean) / vae.latent_std
            x = torch.randn(1, n, C, generator=torch.Generator().manual_seed(noise_seed(seed, window, i)))
            null = dit.null_context.expand_as(ctx)
            for a, b in zip(grid[:-1].tolist(), grid[1:].tolist()):
                t = torch.full((1,), a)
                v_cond, v_null = dit(x, t, context=ctx), dit(x, t, context=null)
                scale = cfg_scale if interval[0] <= a <= interval[1] else 1.0
                x = x + (b - a) * (v_null + scale * (v_cond - v_null))
            if latents is not None:
                latents.append(x[0])
            out[i] += vae.decode(x * vae.latent_std + vae.latent_mean).argmax(-1)[0].tolist()
    return out


@torch.no_grad()
def test_generate_ids_is_guided_euler_from_the_documented_noise():
    pipe = tiny_pipeline()
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13]]
    got = pipe.generate_ids(prompts, length=7, steps=5, cfg_scale=3.0, seed=4)
    assert got == reference_generate(pipe, prompts, 7, 5, 3.0, 4)
    assert pipe.last_evaluations == 2 * 5 * 2  # two windows, five steps, two CFG branches


@torch.no_grad()
def test_the_cfg_interval_guides_only_inside_it():
    """An asymmetric interval [0.6, 1] over 5 steps: guided steps inside, one conditional evaluation outside -
    exactly the hand-written loop, and not the loop guided everywhere."""
    pipe = tiny_pipeline()
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13]]
    seen = []  # the sampler's latents after its last step (token ids alone hide small velocity changes)
    got = pipe.generate_ids(prompts, length=4, steps=5, cfg_scale=3.0, seed=4, cfg_min_t=0.6, cfg_max_t=1.0,
                            callback=lambda i, t, x: seen.append(x.clone()))
    expected = []
    assert got == reference_generate(pipe, prompts, 4, 5, 3.0, 4, interval=(0.6, 1.0), latents=expected)
    assert torch.allclose(seen[-1], torch.stack(expected), atol=1e-5)
    d = pipe.config.dit
    grid = time_grid(5, d.t_distribution, d.t_mean, d.t_std)[:-1]
    inside = int((grid >= 0.6).sum())
    assert 0 < inside < 5 and pipe.last_evaluations == 2 * inside + (5 - inside)
    assert got != reference_generate(pipe, prompts, 4, 5, 3.0, 4)


# --- EMA -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decay", [0.9, 0.9999])
def test_training_leaves_the_warmed_up_ema_in_the_model(decay):
    """fit() ends with the EMA of the weights after every optimizer step, with decay min(d, (1+n)/(10+n))."""
    model = Quadratic()
    trajectory = [model.w.detach().clone()]
    handle = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: trajectory.append(model.w.detach().clone()))
    try:
        targets = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
        fit(model, lambda step, *_: targets[step], TrainConfig(steps=30, lr=0.1, warmup_steps=1, ema=decay,
                                                               weight_decay=0.0), progress=False, precision="fp32")
    finally:
        handle.remove()
    ema = trajectory[0]
    for n, w in enumerate(trajectory[1:]):
        d = min(decay, (1 + n) / (10 + n))
        ema = d * ema + (1 - d) * w
    assert len(trajectory) == 31
    assert torch.allclose(model.w.detach(), ema, atol=1e-6)
    assert not torch.allclose(model.w.detach(), trajectory[-1], atol=1e-3)  # the average, not the last weights


# --- the VAE's loss -----------------------------------------------------------------------------------
def test_kl_warmup_is_linear_and_reaches_the_training_objective(monkeypatch):
    cfg = VAEConfig(kl_weight=1e-3, kl_warmup_steps=200)
    assert [kl_weight_at(s, cfg) for s in (0, 50, 100, 200, 1000)] == pytest.approx([0, 2.5e-4, 5e-4, 1e-3, 1e-3])
    assert kl_weight_at(7, VAEConfig(kl_weight=1e-3, kl_warmup_steps=0)) == 1e-3
    seen = []
    monkeypatch.setattr("textldm.training.objectives.vae.vae_loss", lambda *a, **k: seen.append(k["kl_weight"]))
    vae = small_vae()
    vae.cfg.kl_warmup_steps = 200
    for step in (0, 100, 400):
        VAEObjective(vae)({"ids": None, "mask": None, "noise": None, "generator": None}, step)
    assert seen == pytest.approx([0, 5e-4, 1e-3])


def test_the_decoder_sees_a_posterior_sample_with_the_std_not_the_variance(monkeypatch):
    vae = perturbed(small_vae())
    ids, noise = torch.randint(0, 30, (2, 6)), torch.randn(2, 6, C)
    with torch.no_grad():
        vae.to_moments.bias[C:].fill_(math.log(0.25))  # log-variance near log 0.25: std 0.5, variance 0.25
    mean, logvar, _ = vae.encode_features(ids)
    seen = []
    real = vae.decode_hidden
    monkeypatch.setattr(vae, "decode_hidden", lambda z, mask=None: seen.append(z) or real(z, mask))
    vae_loss(vae, ids, torch.ones(2, 6, dtype=torch.bool), noise=noise)
    assert torch.allclose(seen[0], mean + (0.5 * logvar).exp() * noise, atol=1e-5)


# --- attention: the SDPA branch (GPU, long sequences) against the explicit one --------------------------
def test_sdpa_branch_matches_the_explicit_branch(monkeypatch):
    """The SDPA branch never runs on a CPU at test sizes: force it and compare masks and outputs."""
    dit, cached_dit = small_dit(), small_dit(window={"context_cache": True})
    vae, ar = perturbed(small_vae()), perturbed(CausalLM(ARConfig(width=32, heads=2, depth=2), 30))
    x, t, ctx = torch.randn(3, 5, C), torch.rand(3), torch.randn(3, 6, C)
    ctx_mask = torch.arange(6)[None] < torch.tensor([[6], [2], [4]])
    tgt_mask = torch.arange(5)[None] < torch.tensor([[5], [5], [2]])
    ids = torch.randint(0, 30, (3, 7))
    vae_mask = torch.arange(7)[None] < torch.tensor([[7], [3], [5]])

    def outputs():
        with torch.no_grad():
            conditions = {"context": ctx, "context_mask": ctx_mask, "target_mask": tgt_mask}
            return [dit(x, t, **conditions)[tgt_mask], cached_dit(x, t, **conditions)[tgt_mask],
                    vae.encode(ids, vae_mask)[vae_mask], ar(ids), ar(ids[:, 3:], torch.ones(3, 4, dtype=torch.bool))]

    explicit = outputs()
    monkeypatch.setattr(layers, "use_sdpa", lambda q, k: True)
    for a, b in zip(explicit, outputs()):
        assert torch.allclose(a, b, atol=1e-4)


# --- evaluation ------------------------------------------------------------------------------------------
def test_the_prompt_dropped_loss_uses_the_null_condition(monkeypatch):
    dit, vae = small_dit(context_min=2, context_max=5, target_min=2, target_max=4), small_vae(vocab=1000)
    contexts = []
    real = TextDiT.forward
    monkeypatch.setattr(TextDiT, "forward",
                        lambda self, x, t, **k: contexts.append(k["context"]) or real(self, x, t, **k))
    evaluate_dit(objective_of(dit), vae, CountingStream(), n_batches=1, batch_size=8, seed=0,
                 device=torch.device("cpu"))
    with_prompt, dropped = contexts
    assert not torch.allclose(with_prompt, dit.null_context.expand_as(with_prompt))
    assert torch.equal(dropped, dit.null_context.expand_as(dropped))


# --- seeds ------------------------------------------------------------------------------------------------
def test_one_seeding_helper_without_collisions():
    keys = {noise_seed(s, w, i) for s in range(3) for w in range(4) for i in range(0, 20_000, 7)}
    assert len(keys) == 3 * 4 * len(range(0, 20_000, 7))
    assert noise_seed(0, 0, 7919 + 3) != noise_seed(0, 1, 3)  # the old formula's collision
    a, b = step_generator(0, 1, 0), step_generator(0, 0, 7919)  # ... and the old training streams'
    assert not torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))
    assert derive_seed("batch", 0, 1) != derive_seed("noise", 0, 1) and 0 <= derive_seed(1, 2) < 2**63
    assert torch.equal(torch.randn(3, generator=step_generator(5, 2, EVAL_STREAM)),
                       torch.randn(3, generator=step_generator(5, 2, EVAL_STREAM)))


# --- presets and teachers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["paper", "paper-dit-328m", "paper-dit-768m"])
def test_paper_presets_train_on_the_benchmarks_shortest_prompts(preset):
    """Every benchmark preset can cut a prompt and a reference of shortest_cut() words (1BW sentences), and a
    word is at least one token: the paper presets must train on prompts and continuations that short."""
    from textldm.evaluation.benchmark import shortest_cut

    d = load_config(preset).dit
    prompt_words, reference_words = shortest_cut()
    assert (prompt_words, reference_words) == (4, 4)
    assert d.context_min <= prompt_words and d.target_min <= reference_words


def test_harness_warns_about_items_shorter_than_training(caplog):
    from textldm.evaluation.harness import warn_outside_trained_lengths

    tokenizer = lambda text, add_special_tokens=False: {"input_ids": text.split()}  # noqa: E731
    items = [{"prompt": "a b c d e f g h", "reference": "x y z w v u"}, {"prompt": "a b", "reference": "x y z w v u"}]
    with caplog.at_level(logging.WARNING):
        assert warn_outside_trained_lengths("m", tokenizer, items, context_min=4, target_min=4) == 1
    assert "1 of 2 items" in caplog.text
    assert warn_outside_trained_lengths("m", tokenizer, items[:1], context_min=4, target_min=4) == 0


def test_a_teacher_with_a_padded_embedding_matrix_initialises_the_vae_and_ar(tiny_model_dir, tiny_corpus, tmp_path,
                                                                               cache_home):
    """Qwen-style teachers embed more rows than their tokenizer has tokens; embed_init=teacher takes the rows of
    the tokenizer's ids."""
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from conftest import tiny_overrides
    from textldm.families.ar.train import train_ar
    from textldm.families.textldm.train import train_vae
    from textldm.models.lm import FrozenLM

    padded = tmp_path / "padded-lm"
    shutil.copytree(tiny_model_dir, padded)
    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    cfg = LlamaConfig(vocab_size=vocab + 7, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(padded, safe_serialization=True)
    teacher = FrozenLM(str(padded), 1)
    assert teacher.input_embeddings().shape[0] == vocab + 7 and teacher.input_embeddings(vocab).shape[0] == vocab
    overrides = tiny_overrides(str(padded), tiny_corpus, str(tmp_path / "run")) + [
        "vae.embed_init=teacher", "vae_train.steps=2", "ar.embed_init=teacher", "ar.width=32", "ar.heads=2",
        "ar.depth=1", "ar_train.steps=2", "ar_train.batch_size=4"]
    pipe, _ = train_vae(load_config("demo", overrides), progress=False)
    assert pipe.vae.vocab_size == vocab
    ar, _ = train_ar(load_config("demo", overrides), progress=False)
    assert ar.model.embed.weight.shape[0] == vocab


def test_position_agreement_by_hand():
    # pairs: (a, b) 2 of 3, (a, c) and (b, c) 1 of 2 (up to the shorter row)
    assert position_agreement([[1, 2, 3], [1, 2, 4], [1, 5]]) == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    assert math.isnan(position_agreement([[1, 2]]))


def test_the_teacher_uses_bf16_only_where_it_is_native(monkeypatch):
    """Emulated bf16 autocast ran the REPA teacher 5.4x slower on a CPU without bf16 units."""
    from textldm.runtime import precision

    cpu = torch.device("cpu")
    for native, expected in ((torch.bfloat16, True), (None, False)):
        monkeypatch.setattr(precision, "autocast_dtype", lambda precision, device: native)
        with precision.frozen_lm_context(cpu):
            assert torch.is_autocast_enabled("cpu") == expected


# --- infilling: the right context under CFG -----------------------------------------------------------
@torch.no_grad()
def test_infill_guidance_nulls_both_contexts_in_the_unconditional_branch():
    """v = v_u + s (v_c - v_u), where v_u sees the null latent in place of the prompt AND of the right context."""
    dit = small_dit(window={"infill_prob": 0.5}).eval()
    g = torch.Generator().manual_seed(3)
    x, ctx, right = (torch.randn(2, n, C, generator=g) for n in (4, 5, 3))
    t = torch.tensor([0.3, 0.7])
    drop = torch.ones(2, dtype=torch.bool)
    v_c = dit(x, t, context=ctx, right=right)
    v_u = dit(x, t, context=dit.drop_context(ctx, drop), right=dit.drop_context(right, drop))
    guided = guided_velocity(dit, x, t, 2.5, context=ctx, right=right)
    assert torch.allclose(guided, v_u + 2.5 * (v_c - v_u), atol=1e-5)
    v_u_right_kept = dit(x, t, context=dit.drop_context(ctx, drop), right=right)
    assert not torch.allclose(guided, v_u_right_kept + 2.5 * (v_c - v_u_right_kept), atol=1e-3)


def test_dropped_training_rows_lose_the_right_context_too():
    """In training, a row whose prompt is dropped (CFG) gets the null latent for its right context as well; the
    other rows keep theirs."""
    dit = small_dit(window={"infill_prob": 0.5})
    calls = []
    original = dit.forward

    def spy(x_t, t, *, right=None, **conditions):
        calls.append(right.clone())
        return original(x_t, t, right=right, **conditions)

    dit.forward = spy
    g = torch.Generator().manual_seed(0)
    batch = {"noise": torch.randn(2, 4, C, generator=g), "target": torch.randn(2, 4, C, generator=g),
             "t": torch.tensor([0.2, 0.8]), "context": torch.randn(2, 5, C, generator=g),
             "context_mask": torch.ones(2, 5, dtype=torch.bool), "target_mask": torch.ones(2, 4, dtype=torch.bool),
             "right": torch.randn(2, 3, C, generator=g), "right_mask": torch.ones(2, 3, dtype=torch.bool),
             "drop": torch.tensor([True, False])}
    objective_of(dit)(batch, step=0)
    (right,) = calls
    assert torch.equal(right[0], dit.null_context.detach().expand(3, C)) and torch.equal(right[1], batch["right"][1])
