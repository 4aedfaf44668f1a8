"""A 2-process gloo DDP run keeps replicas identical and follows the single-process trajectory for the same
global batches (the batch builders draw the global batch from (seed, step) and each rank takes its slice)."""
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from builders import TEACHER_DIM, RandomStream, dit_config, fake_teacher, new_dit, objective_of
from textldm.config import TrainConfig, VAEConfig
from textldm.models.vae import TextVAE
from textldm.training.batches import dit_batches, vae_batches
from textldm.training.loop import fit
from textldm.training.objectives import VAEObjective

VOCAB = 40


def build(kind: str):
    """(the trained model, its objective, its batches) of one kind: the VAE, or a block-mode DiT (the demo's default,
    whose CFG null vector the empty-prefix condition never reads) on a frozen causal VAE."""
    torch.manual_seed(0)
    causal = kind != "vae"
    cfg = VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=8, max_len=12,
                    repa_hidden=16, softmax="full", truncate_prob=0.5, kl_warmup_steps=0,
                    encoder_block_size=int(causal))
    vae = TextVAE(cfg, VOCAB, TEACHER_DIM)
    if kind == "vae":
        batches = vae_batches(RandomStream(), vae.cfg, TRAIN.batch_size, seed=3, device=torch.device("cpu"),
                              teacher=fake_teacher(VOCAB))
        return vae, VAEObjective(vae), batches
    dit_cfg = dit_config("blocks", blocks={"size": 2, "uncond": kind.removeprefix("dit_")}, width=32, heads=2, depth=2,
                         context_min=2, context_max=6, target_min=2, target_max=6)
    mode = objective_of(new_dit(dit_cfg, cfg.latent_channels))
    batches = dit_batches(RandomStream(VOCAB), vae.eval().requires_grad_(False), mode, TRAIN.batch_size, seed=3,
                          device=torch.device("cpu"))
    return mode.dit, mode, batches


TRAIN = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, log_every=100)
CASES = [("vae", "ddp"), ("dit_empty", "ddp"), ("dit_null_latent", "ddp"), ("dit_empty", "fsdp")]


def worker(rank, world, folder, kind, parallel):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        model, objective, batches = build(kind)
        # gradient of the first step under DDP
        ddp = torch.nn.parallel.DistributedDataParallel(objective)
        loss, _ = ddp(batches(0), 0)
        loss.backward()
        torch.save({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
                   f"{folder}/grad{rank}.pt")
        model.zero_grad(set_to_none=True)
        del ddp
        fit(objective, batches, dataclasses.replace(TRAIN, parallel=parallel), progress=False, precision="fp32")
        torch.save(model.state_dict(), f"{folder}/params{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("kind,parallel", CASES)
def test_ddp_matches_single_process(tmp_path, kind, parallel):
    """The VAE (with truncated sequences), and the DiT in block mode with either CFG null condition, under DDP (and
    block mode under FSDP2): gradients and trained weights equal across replicas and equal to one process's on the
    same global batches."""
    mp.spawn(worker, args=(2, str(tmp_path), kind, parallel), nprocs=2, join=True)
    model, objective, batches = build(kind)
    loss, _ = objective(batches(0), 0)
    loss.backward()
    single_grad = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    g0, g1 = torch.load(tmp_path / "grad0.pt"), torch.load(tmp_path / "grad1.pt")
    assert g0.keys() == single_grad.keys()
    for name, g in single_grad.items():
        assert torch.allclose(g0[name], g1[name]), name
        assert torch.allclose(g0[name], g, atol=1e-6, rtol=1e-4), name
    fit(objective, batches, TRAIN, progress=False, precision="fp32")
    p0, p1 = torch.load(tmp_path / "params0.pt"), torch.load(tmp_path / "params1.pt")
    for name, p in model.state_dict().items():
        assert torch.equal(p0[name], p1[name]), f"replicas differ at {name}"
        assert torch.allclose(p0[name], p, atol=1e-4), f"DDP and single-process differ at {name}"


def logged_losses(run, stage: str) -> list[tuple[int, float]]:
    """(step, loss) of every step record in a run's log of one stage ("vae": its reconstruction CE)."""
    import json

    key = "ce" if stage == "vae" else "loss"
    records = [json.loads(line) for line in (run / f"{stage}_log.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in records if key in r and "eval" not in r]


def assert_same_losses(ddp: list, alone: list, what: str):
    assert [s for s, _ in ddp] == [s for s, _ in alone] and ddp, what
    for (step, a), (_, b) in zip(ddp, alone):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"{what} step {step}: torchrun {a} vs one process {b}"


@pytest.mark.slow
@pytest.mark.parametrize("full_window", [True, False], ids=["full-window", "block-mode"])
def test_torchrun_demo_end_to_end(tmp_path, tiny_model_dir, tiny_corpus, full_window, trained):
    """The whole demo under torchrun with 2 gloo processes, in the paper's full window and in the demo preset's own
    block mode: training on both ranks, evaluation and the report on rank 0, a clean exit on both. Its logged losses
    (the global batch's, averaged over ranks) are one process's on the same config: the VAE's first step, and every
    DiT step of a torchrun demo on the single-process run's VAE (past a few steps Adam amplifies the all-reduce's
    rounding, so a whole run's VAE drifts apart by ~3e-4 and the DiT trained on it with it)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import tiny_overrides

    env = {**os.environ, "TEXTLDM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    demo = [sys.executable, "-m", "textldm", "demo", "--config", "demo", "--quiet"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *demo[1:]]

    def run(cmd: list, out: str, *extra) -> Path:
        r = subprocess.run([*cmd, *extra, *tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path / out),
                                                          full_window)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.count("watch it denoise") == 1  # the demo's last lines, printed by rank 0 only
        return tmp_path / out

    both = run(torchrun, "run")
    report = json.loads((both / "report.json").read_text())
    assert len(report["dit_eval"]["quarters"]) == 4 and report["continuations"]["prompts_scored"] > 0
    assert json.loads((both / "vae_log.jsonl").read_text().splitlines()[0])["world_size"] == 2
    single = trained[0] if full_window else run(demo, "single")  # the shared fixture: this config, one process
    assert_same_losses(logged_losses(both, "vae")[:1], logged_losses(single, "vae")[:1], "VAE")
    dit_only = run(torchrun, "dit", "--vae", str(single / "vae"))
    assert_same_losses(logged_losses(dit_only, "dit"), logged_losses(single, "dit"), "DiT")


@pytest.mark.parametrize("mode", [
    {}, {"t_conditioning": False}, {"window": {"infill_prob": 0.5}}, {"self_condition_prob": 0.5},
    {"window": {"context_cache": True}}, {"null_context": "zeros"}, {"mode": "blocks", "blocks": {"size": 2}},
    {"mode": "blocks", "blocks": {"size": 2, "uncond": "null_latent"}},
    {"mode": "blocks", "blocks": {"size": 2, "t": "shared"}}],
    ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()) or "paper")
def test_every_trained_parameter_is_in_every_modes_graph(mode):
    """What DDP needs (without find_unused_parameters): every parameter the optimizer trains gets a gradient from one
    step's loss, in every generation mode and lever - a parameter a mode never reads must not be trained in it."""
    torch.manual_seed(0)
    vae = TextVAE(VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=8, max_len=12,
                            repa_weight=0.0, encoder_block_size=int("blocks" in mode)), VOCAB).eval()
    cfg = dit_config(**mode, width=32, heads=2, depth=1, context_min=2, context_max=6, target_min=2, target_max=6,
                     p_uncond=0.5)
    dit = new_dit(cfg, 8)
    mode = objective_of(dit)
    loss, _ = mode(dit_batches(RandomStream(VOCAB), vae.requires_grad_(False), mode, 16, seed=0,
                               device=torch.device("cpu"))(0), 0)
    loss.backward()
    unused = [n for n, p in dit.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"trained but outside the graph: {unused}"
