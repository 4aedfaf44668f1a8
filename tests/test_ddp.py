"""A 2-process gloo DDP run keeps replicas identical and follows the single-process trajectory for the same
global batches (the batch builders draw the global batch from (seed, step) and each rank takes its slice)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from textldm.config import TrainConfig, VAEConfig
from textldm.models.vae import TextVAE
from textldm.training.batches import vae_batches
from textldm.training.loop import fit
from textldm.training.objectives import VAEObjective

VOCAB, TEACHER_DIM = 40, 12


class RandomStream:
    def windows(self, n, length, generator):
        return torch.randint(0, VOCAB, (n, length), generator=generator)


def fake_teacher(ids, mask=None):
    table = torch.randn(VOCAB, TEACHER_DIM, generator=torch.Generator().manual_seed(5))
    return table[ids]


def build():
    torch.manual_seed(0)
    cfg = VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=8, max_len=12,
                    repa_hidden=16, softmax="full", truncate_prob=0.0, kl_warmup_steps=0)
    return TextVAE(cfg, VOCAB, TEACHER_DIM)


TRAIN = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, log_every=100)


def worker(rank, world, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        vae = build()
        batches = vae_batches(RandomStream(), vae.cfg, TRAIN.batch_size, seed=3, device=torch.device("cpu"),
                              teacher=fake_teacher)
        # gradient of the first step under DDP
        ddp = torch.nn.parallel.DistributedDataParallel(VAEObjective(vae))
        loss, _ = ddp(batches(0), 0)
        loss.backward()
        torch.save({n: p.grad.clone() for n, p in vae.named_parameters()}, f"{folder}/grad{rank}.pt")
        vae.zero_grad(set_to_none=True)
        del ddp
        fit(VAEObjective(vae), batches, TRAIN, progress=False, precision="fp32")
        torch.save(vae.state_dict(), f"{folder}/params{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    vae = build()
    batches = vae_batches(RandomStream(), vae.cfg, TRAIN.batch_size, seed=3, device=torch.device("cpu"),
                          teacher=fake_teacher)
    loss, _ = VAEObjective(vae)(batches(0), 0)
    loss.backward()
    single_grad = {n: p.grad.clone() for n, p in vae.named_parameters()}
    vae.zero_grad(set_to_none=True)
    g0, g1 = torch.load(tmp_path / "grad0.pt"), torch.load(tmp_path / "grad1.pt")
    for name, g in single_grad.items():
        assert torch.allclose(g0[name], g1[name]), name
        assert torch.allclose(g0[name], g, atol=1e-6, rtol=1e-4), name
    fit(VAEObjective(vae), batches, TRAIN, progress=False, precision="fp32")
    p0, p1 = torch.load(tmp_path / "params0.pt"), torch.load(tmp_path / "params1.pt")
    for name, p in vae.state_dict().items():
        assert torch.equal(p0[name], p1[name]), f"replicas differ at {name}"
        assert torch.allclose(p0[name], p, atol=1e-4), f"DDP and single-process differ at {name}"


@pytest.mark.slow
def test_torchrun_demo_end_to_end(tmp_path, tiny_model_dir, tiny_corpus):
    """The whole demo under torchrun with 2 gloo processes: training on both ranks, evaluation and the
    report on rank 0, a clean exit on both."""
    import json
    import os
    import subprocess
    import sys

    from conftest import tiny_overrides

    env = {**os.environ, "TEXTLDM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "textldm", "demo", "--quiet",
           *tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path / "run"))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"textldm serve --model {tmp_path / 'run'}/model" in r.stdout  # the demo ends with how to watch it
    assert r.stdout.count("watch it denoise") == 1  # printed by rank 0 only
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(report["dit_eval"]["quarters"]) == 4 and report["continuations"]["prompts_scored"] > 0
    start = json.loads((tmp_path / "run" / "vae_log.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2
