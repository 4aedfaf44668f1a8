"""Mechanics of the quality levers (docs/design.md, "Levers"): each is off by default, and each test here fails
when the lever is wired wrong.

Self-conditioning (dit.self_condition_prob): a zero-initialised extra input; in training a gradient-free first
pass makes the clean-target estimate x_t + (1 - t) v for the chosen rows; at sampling each evaluation reads the
previous evaluation's estimate (zeros at the first).

Robust decoder (vae.decoder_noise): in training only, the decoder reads the posterior sample plus Gaussian noise
of std decoder_noise x U(0, 1) (per sequence) x the batch's per-channel std of the posterior means."""
import dataclasses

import pytest
import torch

from builders import dit_config, guided_velocity, objective_of
from test_recipe import C, perturbed, tiny_pipeline
from textldm import TextLDMPipeline
from textldm.config import Config, DiTConfig, load_config
from textldm.models.dit import TextDiT
from textldm.runtime.perf import dit_flops_per_sequence
from textldm.training.objectives import vae_loss
from textldm.training.objectives.vae import decoder_noise


def self_cond_dit(window: dict | None = None, **kw) -> TextDiT:
    torch.manual_seed(0)
    return TextDiT(dit_config(window=window, width=32, heads=2, depth=2, self_condition_prob=0.5, **kw), C)


def recorded_steps(monkeypatch, mode_module) -> list:
    """Every velocity evaluation the sampler's solver makes in `mode_module`, as (x_t, t, v), recorded from now on."""
    steps, real = [], mode_module.integrate

    def integrate(velocity, x, *args):
        def recorded(x_t, t):
            steps.append((x_t, t, velocity(x_t, t)))
            return steps[-1][2]
        return real(recorded, x, *args)

    monkeypatch.setattr(mode_module, "integrate", integrate)
    return steps


def conditional_half(self_cond: torch.Tensor) -> torch.Tensor:
    """A guided evaluation's self-conditioning input, [conditional ; unconditional] rows: both halves must be one."""
    halves = self_cond.chunk(2)
    assert torch.equal(halves[0], halves[1])
    return halves[0]


def test_self_conditioning_input_is_zero_at_init_and_used_once_trained():
    dit = self_cond_dit()
    assert dit.self_cond_proj is not None and TextDiT(DiTConfig(width=32, heads=2, depth=2), C).self_cond_proj is None
    assert not dit.self_cond_proj.weight.any() and not dit.self_cond_proj.bias.any()  # zero-initialised
    perturbed(dit)
    with torch.no_grad():  # only the projection back at zero: the estimate is not an input yet
        dit.self_cond_proj.weight.zero_()
        dit.self_cond_proj.bias.zero_()
    x, t, ctx, estimate = torch.randn(2, 5, C), torch.rand(2), torch.randn(2, 4, C), torch.randn(2, 5, C)
    assert torch.equal(dit(x, t, context=ctx, self_cond=estimate), dit(x, t, context=ctx))
    perturbed(dit, seed=2)
    assert not torch.allclose(dit(x, t, context=ctx, self_cond=estimate), dit(x, t, context=ctx), atol=1e-4)
    none_means_zeros = dit(x, t, context=ctx, self_cond=torch.zeros_like(x))
    assert torch.equal(none_means_zeros, dit(x, t, context=ctx))


def test_self_conditioning_in_training_reads_a_gradient_free_first_pass():
    dit = perturbed(self_cond_dit())
    calls = []
    real = TextDiT.forward

    def spy(self, x, t, self_cond=None, **conditions):
        calls.append({"x": x, "t": t, "self_cond": self_cond, "grad": torch.is_grad_enabled()})
        out = real(self, x, t, **conditions, self_cond=self_cond)
        calls[-1]["v"] = out.detach()
        return out

    B, Lc, Lt = 4, 5, 6
    g = torch.Generator().manual_seed(0)
    batch = {"noise": torch.randn(B, Lt, C, generator=g), "target": torch.randn(B, Lt, C, generator=g),
             "t": torch.tensor([0.2, 0.5, 0.7, 0.9]), "context": torch.randn(B, Lc, C, generator=g),
             "context_mask": torch.ones(B, Lc, dtype=torch.bool), "target_mask": torch.ones(B, Lt, dtype=torch.bool),
             "drop": torch.zeros(B, dtype=torch.bool), "self_cond": torch.tensor([True, False, True, False])}
    TextDiT.forward = spy
    try:
        loss, _ = objective_of(dit)(batch, step=0)
    finally:
        TextDiT.forward = real
    first, second = calls
    assert not first["grad"] and second["grad"] and first["x"].shape[0] == 2  # only the chosen rows
    t = batch["t"][[0, 2]].view(-1, 1, 1)
    estimate = second["self_cond"]
    assert torch.allclose(estimate[[0, 2]], first["x"] + (1 - t) * first["v"], atol=1e-6)
    assert torch.equal(estimate[[1, 3]], torch.zeros(2, Lt, C))
    loss.backward()
    assert dit.self_cond_proj.weight.grad is not None and dit.self_cond_proj.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_self_conditioning_at_sampling_reads_the_previous_estimate(monkeypatch):
    """Each evaluation's self-conditioning input is the clean estimate x + (1 - t) v of the previous step's guided
    velocity (zeros at the first), the same for the conditional and the unconditional rows."""
    import textldm.sampling.window as window_mode

    dit = perturbed(TextDiT(DiTConfig(width=32, heads=2, depth=2, context_min=2, context_max=6, target_min=2,
                                      target_max=4, self_condition_prob=0.5), C)).eval()
    pipe = tiny_pipeline()
    pipe = TextLDMPipeline(dataclasses.replace(pipe.config, dit=dit.cfg), None, pipe.vae, dit, pipe.eot_id)
    steps, inputs = recorded_steps(monkeypatch, window_mode), []
    real_forward = TextDiT.forward

    def forward(self, x, t, self_cond=None, **conditions):
        inputs.append(conditional_half(self_cond))
        return real_forward(self, x, t, self_cond=self_cond, **conditions)

    monkeypatch.setattr(TextDiT, "forward", forward)
    pipe.generate_ids([[1, 2, 3]], length=4, steps=4, cfg_scale=2.0)
    assert len(steps) == len(inputs) == 4 and torch.equal(inputs[0], torch.zeros_like(steps[0][0]))
    for (x, t, v), estimate in zip(steps, inputs[1:]):
        assert torch.allclose(estimate, x + (1 - t).view(-1, 1, 1) * v)


def test_self_conditioning_costs_are_counted_and_the_setting_is_validated():
    plain, sc = TextDiT(DiTConfig(width=32, heads=2, depth=2), C), self_cond_dit()
    assert dit_flops_per_sequence(sc, 8, 8) - dit_flops_per_sequence(plain, 8, 8) == 8 * 2 * C * 32
    cfg = Config()
    assert cfg.dit.self_condition_prob == 0.0  # off by default until measured
    with pytest.raises(Exception, match="self_condition_prob"):
        load_config("demo", ["dit.self_condition_prob=1.5"])


def test_cached_context_with_self_conditioning_matches_the_full_forward():
    dit = perturbed(self_cond_dit(window={"context_cache": True}))
    x, t, ctx = torch.randn(2, 5, C), torch.rand(2), torch.randn(2, 4, C)
    full = guided_velocity(dit, x, t, 3.0, context_cache=False, evaluations=2, context=ctx)
    cached = guided_velocity(dit, x, t, 3.0, evaluations=2, context=ctx)  # the second reads the first's estimate
    assert torch.allclose(full, cached, atol=1e-5)


def test_validation_loss_of_a_self_conditioning_dit_reads_its_own_estimate(monkeypatch):
    from test_recipe import CountingStream, small_vae
    from textldm.training.evaluate import evaluate_dit

    dit = perturbed(self_cond_dit(context_min=2, context_max=5, target_min=2, target_max=4))
    estimates = []
    real = TextDiT.forward
    monkeypatch.setattr(TextDiT, "forward", lambda self, *a, self_cond=None, **k: estimates.append(self_cond)
                        or real(self, *a, self_cond=self_cond, **k))
    evaluate_dit(objective_of(dit), small_vae(vocab=1000), CountingStream(), n_batches=1, batch_size=8, seed=0,
                 device=torch.device("cpu"))
    assert [e is None for e in estimates] == [True, False, True, False]  # with the prompt, then dropped


def test_levers_are_off_by_default_and_validated():
    assert Config().dit.self_condition_prob == 0.0 and Config().vae.decoder_noise == 0.0
    for key in ("dit.self_condition_prob=1.5", "vae.decoder_noise=-0.5"):
        with pytest.raises(Exception, match=key.split("=")[0]):
            load_config("demo", [key])


# --- self-conditioning in block mode -----------------------------------------------------------------------
def test_block_mode_self_conditioning_trains_on_a_gradient_free_first_pass_per_position(monkeypatch):
    """Block mode: the chosen windows' first pass runs without gradient on those windows alone, and every noisy
    position's estimate is x_t + (1 - t of its block) v; the other windows read zeros; the second pass reads the
    estimate with gradient, which reaches the zero-initialised input projection."""
    from test_block import BLOCK, tiny_dit, window

    dit = tiny_dit("null_latent", self_condition_prob=0.5).train()
    calls, real = [], TextDiT.forward_blocks

    def spy(self, x_t, t, *, self_cond=None, **kw):
        out = real(self, x_t, t, self_cond=self_cond, **kw)
        calls.append({"x": x_t, "t": t, "self_cond": self_cond, "grad": torch.is_grad_enabled(), "v": out.detach()})
        return out

    clean, noise, t, mask = window()
    batch = {"clean": clean, "noise": noise, "t": t, "mask": mask, "drop": torch.tensor([False, True, False]),
             "self_cond": torch.tensor([True, False, True])}
    monkeypatch.setattr(TextDiT, "forward_blocks", spy)
    loss, _ = objective_of(dit)(batch, step=0)
    first, second = calls
    assert not first["grad"] and second["grad"] and first["x"].shape[0] == 2  # only the chosen windows
    per_token = t[[0, 2]].repeat_interleave(BLOCK, dim=1)[..., None]
    estimate = second["self_cond"]
    assert torch.allclose(estimate[[0, 2]], first["x"] + (1 - per_token) * first["v"], atol=1e-6)
    assert torch.equal(estimate[1], torch.zeros_like(estimate[1]))
    with torch.no_grad():  # the first pass read the chosen windows' own drops and prefixes
        assert torch.allclose(first["v"], real(dit, first["x"], t[[0, 2]], clean=clean[[0, 2]],
                                               mask=mask[[0, 2]], drop=batch["drop"][[0, 2]]), atol=1e-6)
    loss.backward()
    assert dit.self_cond_proj.weight.grad is not None and dit.self_cond_proj.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_block_mode_self_conditioning_at_sampling_reads_the_previous_estimate_within_a_block(monkeypatch):
    """At sampling each evaluation of a block reads the clean estimate x + (1 - t) v of the previous step's guided
    velocity, the same for the conditional and unconditional rows, and every block starts again from zeros."""
    import textldm.sampling.blocks as blocks_mode
    from test_block import BLOCK, block_pipeline

    pipe = block_pipeline(self_condition_prob=0.5)
    steps, inputs = recorded_steps(monkeypatch, blocks_mode), []
    real_velocity = TextDiT.block_velocity

    def block_velocity(self, x_t, t, prefix, self_cond=None):
        inputs.append(conditional_half(self_cond))
        return real_velocity(self, x_t, t, prefix, self_cond)

    monkeypatch.setattr(TextDiT, "block_velocity", block_velocity)
    pipe.generate_ids([[1, 2, 3]], length=2 * BLOCK, steps=4, cfg_scale=2.0)
    assert len(steps) == len(inputs) == 2 * 4  # two blocks of four steps
    for k, ((x, t, v), estimate) in enumerate(zip(steps, inputs[1:] + [None])):
        if k % 4 == 0:
            assert torch.equal(inputs[k], torch.zeros_like(x))  # a block's first evaluation
        if estimate is not None and k % 4 != 3:
            assert torch.allclose(estimate, x + (1 - t).view(-1, 1, 1) * v)


def test_the_block_sampler_with_self_conditioning_equals_the_reference_loop():
    """Two windows of blocks with a self-conditioning DiT (its input projection perturbed, so the estimate
    matters): token for token what the hand-written loop writes, which carries the estimate itself."""
    from test_block import block_pipeline, reference_generate

    pipe = block_pipeline(uncond="null_latent", self_condition_prob=0.5)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    rows = pipe.generate_ids(prompts, length=13, solver="euler", seed=5)
    assert rows == [reference_generate(pipe, p, 13, 5, i) for i, p in enumerate(prompts)]
    plain = block_pipeline(uncond="null_latent")
    assert plain.generate_ids(prompts, length=13, solver="euler", seed=5) != rows  # the estimate changes the text


def test_block_batches_choose_about_self_condition_prob_of_the_windows_and_change_no_other_draw():
    from builders import RandomStream
    from test_block import VOCAB, tiny_dit, tiny_vae
    from textldm.training.batches import dit_batches

    vae, cpu = tiny_vae(), torch.device("cpu")
    plain = dit_batches(RandomStream(VOCAB), vae, objective_of(tiny_dit()), 256, seed=0, device=cpu)(0)
    batch = dit_batches(RandomStream(VOCAB), vae, objective_of(tiny_dit(self_condition_prob=0.5)), 256, seed=0,
                        device=cpu)(0)
    assert "self_cond" not in plain and 0.4 < batch["self_cond"].float().mean() < 0.6
    assert all(torch.equal(batch[k], plain[k]) for k in plain)  # drawn last: the same windows, noise and times


@torch.no_grad()
def test_block_mode_held_out_errors_of_a_self_conditioning_dit_read_its_own_estimate(monkeypatch):
    """As sampling reads it: both held-out passes (with the prefix, and dropped) run the first pass on every window
    and score the second, which reads its estimate."""
    from test_block import tiny_dit, window

    dit = tiny_dit("null_latent", self_condition_prob=0.5)
    estimates, real = [], TextDiT.forward_blocks
    monkeypatch.setattr(TextDiT, "forward_blocks", lambda self, *a, self_cond=None, **k: estimates.append(
        self_cond) or real(self, *a, self_cond=self_cond, **k))
    clean, noise, t, mask = window()
    objective_of(dit).heldout({"clean": clean, "noise": noise, "t": t, "mask": mask})
    assert [e is None for e in estimates] == [True, False, True, False]


def test_block_mode_self_conditioning_costs_are_counted():
    from test_block import tiny_dit
    from textldm.runtime.perf import TRAIN_FACTOR, dit_block_flops_per_sequence

    sc = tiny_dit(self_condition_prob=0.5)
    expected = (TRAIN_FACTOR + 0.5) * 8 * dit_block_flops_per_sequence(sc, sc.cfg.window_tokens)
    assert objective_of(sc).train_flops(8) == expected
    load_config(None, ["dit.mode=blocks", "dit.blocks.size=8", "vae.encoder_block_size=1", "dit.context_max=32",
                       "dit.target_max=32", "vae.max_len=64", "dit.self_condition_prob=0.5"])  # block mode takes it


# --- robust decoder -----------------------------------------------------------------------------------------
def test_decoder_noise_has_the_documented_scale():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(400, 8, C, generator=g) * torch.linspace(0.5, 3, C)
    mask = torch.ones(400, 8, dtype=torch.bool)
    mask[:, 6:] = False
    mean[~mask] = 1e3  # padding does not enter the channel std
    noise = decoder_noise(mean, mask, 0.8, torch.Generator().manual_seed(1))
    level = (noise / mean[mask].std(0)).std(dim=(1, 2))  # in channel-std units: a level per sequence, U(0, 0.8)
    assert level.max() < 1.0 and level.min() < 0.05 and 0.35 < level.mean() < 0.45
    ratio = noise.std(dim=(0, 1)) / mean[mask].std(0)  # per channel, proportional to the channel's std
    assert torch.allclose(ratio, ratio.mean().expand(C), rtol=0.1)


def test_robust_decoder_noise_is_applied_in_training_only(monkeypatch):
    from test_recipe import small_vae
    seen = []
    vae = perturbed(small_vae(decoder_noise=1.0))
    real = type(vae).decode_hidden
    monkeypatch.setattr(type(vae), "decode_hidden", lambda self, z, mask=None: seen.append(z) or real(self, z, mask))
    ids, mask = torch.randint(0, 30, (3, 7)), torch.ones(3, 7, dtype=torch.bool)
    noise = torch.zeros(3, 7, C)
    mean = vae.encode(ids, mask)
    vae_loss(vae.train(), ids, mask, noise=noise, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(seen[-1], mean, atol=1e-3)  # training: noised
    extra = decoder_noise(mean.detach(), mask, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(seen[-1], mean + extra, atol=1e-5)
    vae_loss(vae.eval(), ids, mask, noise=noise, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(seen[-1], mean, atol=1e-6)  # evaluation (reconstruction accuracy): clean
    vae.cfg.decoder_noise = 0.0
    vae_loss(vae.train(), ids, mask, noise=noise, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(seen[-1], mean, atol=1e-6)  # off by default
