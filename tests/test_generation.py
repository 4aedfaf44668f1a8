"""The generation modes, each one registry entry (families/textldm/modes.py) chosen by name from the DiT config, its
objective (training/objectives/) the one source of every DiT loss number (training's and the held-out report's),
and classifier-free guidance stated once (diffusion/guidance.py)."""
import typing

import pytest
import torch

from builders import RandomStream, dit_config, new_dit, objective_of
from textldm.config import DiTConfig, Mode, SampleConfig, VAEConfig, load_config
from textldm.diffusion.guidance import Guidance, combine, interval_problem
from textldm.errors import UserError
from textldm.families.textldm.modes import MODES, mode_of
from textldm.models.vae import TextVAE
from textldm.sampling import BlockSampler, ContextLMSampler, WindowSampler
from textldm.training.batches import dit_batches
from textldm.training.evaluate import evaluate_dit
from textldm.training.objectives import BlockObjective, ContextLMObjective, WindowObjective

VOCAB, C = 30, 8
SHAPE = {"width": 32, "heads": 2, "depth": 1, "context_min": 2, "context_max": 4, "target_min": 2, "target_max": 4}


def test_the_mode_is_the_one_dit_mode_names():
    assert mode_of(DiTConfig()).objective is WindowObjective and mode_of(DiTConfig()).sampler is WindowSampler
    assert (mode_of(dit_config("blocks")).objective, mode_of(dit_config("blocks")).sampler) == (BlockObjective,
                                                                                              BlockSampler)
    context_lm = mode_of(dit_config("context_lm"))
    assert (context_lm.objective, context_lm.sampler) == (ContextLMObjective, ContextLMSampler)
    assert sorted(MODES) == sorted(typing.get_args(Mode))  # one entry per value of dit.mode
    assert all(m.name == name for name, m in MODES.items())


def test_guidance_formula_interval_and_evaluation_count():
    g = Guidance(3.0, 0.25, 0.75)
    assert [g.active(t) for t in (0.0, 0.25, 0.5, 0.75, 0.9)] == [False, True, True, True, False]
    assert [g.evaluations(t) for t in (0.1, 0.5)] == [1, 2]
    assert not Guidance(1.0).active(0.5) and Guidance(1.0).evaluations(0.5) == 1  # scale 1: plain conditional
    calls = []

    def evaluate(x, t, guided):  # conditional rows answer x, unconditional rows 10 x
        calls.append((x.shape[0], guided))
        return torch.cat([x[: len(x) // 2], 10 * x[len(x) // 2:]]) if guided else x

    x = torch.ones(2, 3)
    assert torch.equal(g.velocity(evaluate, x, torch.full((2,), 0.5)), combine(x, 10 * x, 3.0))
    assert torch.equal(combine(x, 10 * x, 3.0), 10 * x + 3.0 * (x - 10 * x))
    assert torch.equal(g.velocity(evaluate, x, torch.full((2,), 0.9)), x)  # outside: the conditional rows alone
    assert calls == [(4, True), (2, False)]  # one batched call over [conditional ; unconditional]
    assert interval_problem(0.2, 0.8) is None and "0 <= min_t <= max_t <= 1" in interval_problem(0.8, 0.2)
    assert SampleConfig(cfg_scale=2.0, cfg_min_t=0.1, cfg_max_t=0.9).guidance == Guidance(2.0, 0.1, 0.9)
    with pytest.raises(UserError, match="cfg_min_t"):  # the config check states the same rule
        load_config("demo", ["sample.cfg_min_t=0.9", "sample.cfg_max_t=0.1"])


@pytest.mark.parametrize("block", [0, 2])
def test_every_dit_loss_number_is_the_objectives_errors(block, monkeypatch):
    """Training's loss and the held-out report (with the prompt, dropped, the first tokens) both reduce the mode's
    `errors`: errors replaced by a known tensor show in both, unchanged."""
    torch.manual_seed(0)
    vae = TextVAE(VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=C, max_len=8,
                            repa_weight=0.0, encoder_block_size=int(block > 0)), VOCAB).eval()
    cfg = dit_config("blocks", blocks={"size": block}, **SHAPE) if block else DiTConfig(**SHAPE)
    mode = objective_of(new_dit(cfg, C))
    calls = []

    def errors(batch, drop, self_cond=None):  # 1 where the prompt is kept, 3 where dropped; (N, L) like the real one
        calls.append(drop)
        mask = mode.loss_mask(batch)
        dropped = torch.zeros(mask.shape[0], dtype=torch.bool) if drop is None else drop
        return torch.where(dropped[:, None], 3.0, 1.0).expand(mask.shape).clone()

    monkeypatch.setattr(mode, "errors", errors)
    batch = dit_batches(RandomStream(VOCAB), vae, mode, 8, seed=0, device=torch.device("cpu"))(0)
    loss, _ = mode(batch, 0)
    assert loss.item() == pytest.approx(1 + 2 * batch["drop"].float().mean().item())
    report = evaluate_dit(mode, vae, RandomStream(VOCAB), n_batches=1, batch_size=8, seed=0,
                          device=torch.device("cpu"))
    assert (report["with_prompt"], report["prompt_dropped"]) == (1.0, 3.0)
    assert (report["head_with_prompt"], report["head_prompt_dropped"]) == (1.0, 3.0)
    assert all(q["with_prompt"] == 1.0 and q["prompt_dropped"] == 3.0 for q in report["quarters"])
    assert len(calls) == 3  # the training step's, then the two held-out conditions


@pytest.mark.parametrize("name", sorted(MODES))
def test_a_dit_is_built_from_its_config_alone_and_reloads_as_the_same_module(name, tiny_model_dir, tmp_path):
    """Every mode's DiT comes from its config by the mode's builder (a context LM's width read from the LM's own
    config): saved and reloaded, the folder gives the same module (its structure and every weight), the same mode
    entry and sampler, and the same text for the same seed."""
    from builders import perturbed
    from textldm import TextLDMPipeline
    from textldm.config import Config, TeacherConfig
    from textldm.models.lm import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    blocks = {"size": 2} if name != "window" else None
    d = dit_config(name, blocks=blocks, context_lm={"encoder": tiny_model_dir} if name == "context_lm" else None,
                   **SHAPE)
    vae_cfg = VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=C, max_len=8,
                        repa_weight=0.0, encoder_block_size=int(name != "window"))
    cfg = Config(vae=vae_cfg, dit=d, teacher=TeacherConfig(name=tiny_model_dir), sample=SampleConfig(steps=2))
    torch.manual_seed(0)
    dit = perturbed(MODES[name].build_dit(d, C)).eval()
    pipe = TextLDMPipeline(cfg, tokenizer, TextVAE(vae_cfg, len(tokenizer)).eval(), dit, eot_id=-1)
    pipe.save_pretrained(tmp_path / name)
    loaded = TextLDMPipeline.from_pretrained(tmp_path / name)
    assert repr(loaded.dit) == repr(dit) and loaded.dit.state_dict().keys() == dit.state_dict().keys()
    assert all(torch.equal(v, dit.state_dict()[k]) for k, v in loaded.dit.state_dict().items())
    assert loaded.mode is MODES[name] and type(loaded.sampler) is MODES[name].sampler
    assert loaded.generate_ids([[3, 4, 5]], length=4, seed=1) == pipe.generate_ids([[3, 4, 5]], length=4, seed=1)
