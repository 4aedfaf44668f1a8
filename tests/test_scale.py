"""Scale features of the training loop: resume after a kill, atomic checkpoints, FSDP2 vs DDP, gradient
accumulation, and the throughput / FLOP accounting in the log."""
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from builders import TEACHER_DIM, RandomStream, dit_config, fake_teacher
from textldm.config import ARConfig, DiTConfig, TrainConfig, VAEConfig
from textldm.errors import UserError
from textldm.models.vae import TextVAE
from textldm.runtime.distributed import split_batch
from textldm.training.batches import vae_batches
from textldm.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from textldm.training.loop import fit
from textldm.training.objectives import VAEObjective

VOCAB = 40


def tiny_vae(truncate_prob: float = 0.0):
    torch.manual_seed(0)
    cfg = VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=8, max_len=12,
                    repa_hidden=16, softmax="full", truncate_prob=truncate_prob, kl_warmup_steps=3)
    return TextVAE(cfg, VOCAB, TEACHER_DIM)


def train_cfg(**kw):
    base = dict(steps=8, batch_size=8, lr=3e-3, warmup_steps=2, log_every=1, ema=0.9, checkpoint_every=2,
                keep_checkpoints=2, peak_flops=1e12)
    return TrainConfig(**{**base, **kw})


def losses(log: Path) -> dict[int, float]:
    """step -> logged loss; a step logged twice (before a kill and after the resume) keeps its last value."""
    out = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "loss" in r and "step" in r:
            out[r["step"]] = r["loss"]
    return out


def worker(rank, world, folder, name, cfg_kw, kill_at, resume):
    torch.set_num_threads(1)
    store = f"file://{folder}/store-{name}-{int(resume)}"  # a killed run's store file is not reusable
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    try:
        vae = tiny_vae()
        batches = vae_batches(RandomStream(), vae.cfg, 8, seed=3, device=torch.device("cpu"),
                              teacher=fake_teacher(VOCAB))

        def maybe_killed(step, micro=0, accum=1):
            if kill_at is not None and step == kill_at and rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind, as a crashed node
            return batches(step, micro, accum)

        fit(VAEObjective(vae), maybe_killed, train_cfg(**cfg_kw), progress=False, precision="fp32",
            log_path=Path(folder) / f"{name}.jsonl", checkpoint_dir=Path(folder) / f"ckpt-{name}", resume=resume)
        if rank == 0:
            torch.save(vae.state_dict(), f"{folder}/{name}.pt")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def spawn(folder, name, cfg_kw=None, kill_at=None, resume=False):
    mp.spawn(worker, args=(2, str(folder), name, cfg_kw or {}, kill_at, resume), nprocs=2, join=True)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path, parallel):
    kw = {"parallel": parallel}
    spawn(tmp_path, "full", kw)
    with pytest.raises(mp.ProcessExitedException):
        spawn(tmp_path, "cut", kw, kill_at=5)  # rank 1 dies inside step 5; checkpoints exist for steps 2 and 4
    assert not (tmp_path / "cut.pt").exists()
    assert latest_checkpoint(tmp_path / "ckpt-cut").name == "step-00000004"
    spawn(tmp_path, "cut", kw, resume=True)
    full, resumed = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "cut.pt")
    for key in full:  # EMA weights, after AdamW states, LR schedule and KL warm-up were all restored
        assert torch.equal(full[key], resumed[key]), key
    assert losses(tmp_path / "full.jsonl") == losses(tmp_path / "cut.jsonl")
    events = [json.loads(x).get("event") for x in (tmp_path / "cut.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1
    kept = sorted(p.name for p in (tmp_path / "ckpt-cut").iterdir() if p.name.startswith("step-"))
    assert kept == ["step-00000006", "step-00000008"]  # keep_checkpoints=2


@pytest.mark.slow
def test_fsdp2_and_ddp_give_matching_losses(tmp_path):
    spawn(tmp_path, "ddp", {"checkpoint_every": 0, "steps": 5})
    spawn(tmp_path, "fsdp", {"checkpoint_every": 0, "steps": 5, "parallel": "fsdp"})
    ddp, fsdp = losses(tmp_path / "ddp.jsonl"), losses(tmp_path / "fsdp.jsonl")
    assert ddp.keys() == fsdp.keys() and len(ddp) == 5
    for step in ddp:
        assert abs(ddp[step] - fsdp[step]) < 1e-5, (step, ddp[step], fsdp[step])
    a, b = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "fsdp.pt")  # gathered back from the shards
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """With truncated sequences (micro-batches of unequal token counts): each micro-batch's loss is divided by the
    global batch's tokens per part, so 4 accumulation steps give one big batch's gradient, not a mean of means."""
    results = {}
    for micro in (0, 2):
        vae = tiny_vae(truncate_prob=0.5)
        batches = vae_batches(RandomStream(), vae.cfg, 8, seed=3, device=torch.device("cpu"),
                              teacher=fake_teacher(VOCAB))
        fit(VAEObjective(vae), batches, train_cfg(micro_batch=micro, checkpoint_every=0, ema=0.0), progress=False,
            precision="fp32", log_path=tmp_path / f"m{micro}.jsonl")
        results[micro] = vae.state_dict()
        start = json.loads((tmp_path / f"m{micro}.jsonl").read_text().splitlines()[0])
        assert start["grad_accumulation"] == (4 if micro else 1) and start["per_device_batch"] == (micro or 8)
    for key in results[0]:
        assert torch.allclose(results[0][key], results[2][key], atol=2e-5), key
    # AdamW hides a gradient that is a sum over micro-batches instead of their mean; the logged norm does not
    norms = {m: [json.loads(x)["grad_norm"] for x in (tmp_path / f"m{m}.jsonl").read_text().splitlines()
                 if "grad_norm" in x] for m in (0, 2)}
    assert len(norms[0]) == 8 and norms[0] == pytest.approx(norms[2], rel=1e-2, abs=2e-4)
    assert split_batch(64, 4, world=2) == (4, 8) and split_batch(64, 0, world=4) == (16, 1)
    with pytest.raises(UserError, match="micro_batch 5"):
        split_batch(64, 5, world=2)
    with pytest.raises(UserError, match="not divisible"):
        split_batch(30, 0, world=4)


def test_interrupted_checkpoint_write_never_replaces_the_last_good_one(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, 2, {"step": 2, "w": torch.ones(3)})
    real_save = torch.save

    def crash_midway(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, 4, {"step": 4, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert latest_checkpoint(folder).name == "step-00000002"
    assert load_checkpoint(latest_checkpoint(folder))["step"] == 2
    assert [p.name for p in folder.iterdir() if "00000004" in p.name] == []
    # a SIGKILL leaves its temporary folder behind: never taken for a checkpoint, removed by the next save
    stale = folder / ".step-00000004.tmp-dead"
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"truncated")
    assert latest_checkpoint(folder).name == "step-00000002"
    save_checkpoint(folder, 6, {"step": 6})
    assert not stale.exists() and latest_checkpoint(folder).name == "step-00000006"
    (folder / "latest").unlink()  # without the pointer, the newest complete checkpoint (not the oldest)
    assert [p.name for p in sorted(folder.glob("step-*"))] == ["step-00000002", "step-00000006"]
    assert latest_checkpoint(folder).name == "step-00000006"
    with pytest.raises(UserError, match="cannot read"):
        (folder / "step-00000006" / "state.pt").write_bytes(b"garbage")
        load_checkpoint(folder / "step-00000006")


def test_flops_from_the_shape_match_the_counted_flops():
    """The analytic per-step FLOPs (used for FLOP/s and MFU) against torch's operator-level FLOP counter
    over one forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from textldm.diffusion.flow import flow_loss
    from textldm.models.ar import CausalLM
    from textldm.models.dit import TextDiT
    from textldm.runtime.perf import (
        TRAIN_FACTOR,
        ar_flops_per_sequence,
        dit_flops_per_sequence,
        vae_flops_per_sequence,
    )
    from textldm.training.objectives import vae_loss

    def counted(fn):
        with FlopCounterMode(display=False) as counter:
            fn().backward()
        return counter.get_total_flops()

    B = 4
    ar = CausalLM(ARConfig(width=64, depth=2, heads=4), 500)
    ids = torch.randint(0, 500, (B, 32))
    predicted = TRAIN_FACTOR * B * ar_flops_per_sequence(ar, 32)
    assert 0.97 < counted(lambda: ar(ids).float().logsumexp(-1).mean()) / predicted < 1.03

    dit = TextDiT(DiTConfig(width=64, depth=2, heads=4), 8)
    x, ctx, t = torch.randn(B, 16, 8), torch.randn(B, 8, 8), torch.rand(B)
    predicted = TRAIN_FACTOR * B * dit_flops_per_sequence(dit, 8, 16)
    assert 0.95 < counted(lambda: flow_loss(dit(x, t, context=ctx), x, x, None).mean()) / predicted < 1.05

    # the cacheable-context DiT at sampling: one context pass, then target-only passes
    from textldm.runtime.perf import dit_cached_flops_per_sequence

    cached = TextDiT(dit_config(window={"context_cache": True}, width=64, depth=2, heads=4), 8)
    context_pass, target_pass = dit_cached_flops_per_sequence(cached, 8, 16)
    with FlopCounterMode(display=False) as counter:
        cache = cached.cache_context(ctx)
    assert 0.95 < counter.get_total_flops() / (B * context_pass) < 1.05
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        cached.forward_cached(x, t, cache)
    assert 0.95 < counter.get_total_flops() / (B * target_pass) < 1.05

    vae = TextVAE(VAEConfig(width=64, heads=4, encoder_depth=1, decoder_depth=1, latent_channels=8, max_len=16,
                            repa_hidden=32, softmax="full"), 300, TEACHER_DIM)
    ids, mask = torch.randint(0, 300, (B, 16)), torch.ones(B, 16, dtype=torch.bool)
    teacher = torch.randn(B, 16, TEACHER_DIM)
    predicted = TRAIN_FACTOR * B * vae_flops_per_sequence(vae, 16, 300, 1.0)
    assert 0.95 < counted(lambda: vae_loss(vae, ids, mask, teacher)[0]) / predicted < 1.05


def test_throughput_logging_reports_sane_numbers(tmp_path):
    """tokens/s, FLOP/s and MFU in the log agree with each other and with the wall clock, and MFU is a
    fraction of a matrix-product peak measured in the same process."""
    from textldm.models.ar import CausalLM
    from textldm.runtime.perf import TRAIN_FACTOR, ar_flops_per_sequence, matmul_peak_flops
    from textldm.training.batches import ar_batches
    from textldm.training.objectives import ARObjective

    torch.manual_seed(0)
    model = CausalLM(ARConfig(width=64, depth=2, heads=4), VOCAB)
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-3, warmup_steps=1, log_every=4)
    flops = TRAIN_FACTOR * 8 * ar_flops_per_sequence(model, 32)
    summary = fit(ARObjective(model), ar_batches(RandomStream(), 32, 8, 0, torch.device("cpu")), cfg, progress=False,
                  precision="fp32", log_path=tmp_path / "log.jsonl", tokens_per_step=8 * 32, flops_per_step=flops)
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    start = records[0]
    assert start["flops_per_step"] == flops and start["peak_flops"] > 1e8  # a real measurement
    assert start["peak_flops"] < 50 * matmul_peak_flops(torch.device("cpu"), torch.float32)
    rates = [r for r in records if "mfu" in r]
    assert len(rates) == 4  # steps 0, 4, 8, 11
    for r in rates[1:]:  # the first window includes warm-up
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1.0
        assert abs(r["tflops_per_s"] * 1e12 / r["tokens_per_s"] - flops / (8 * 32)) / (flops / (8 * 32)) < 0.01
        assert abs(r["mfu"] - r["tflops_per_s"] * 1e12 / start["peak_flops"]) < 1e-3
    # the logged rates agree with the wall clock between two records (steps 5..11)
    by_step = {r["step"]: r for r in rates}
    clock = 8 * 32 * 7 / max(by_step[11]["elapsed_s"] - by_step[4]["elapsed_s"], 1e-3)
    window = 7 / (4 / by_step[8]["tokens_per_s"] + 3 / by_step[11]["tokens_per_s"])  # tokens over summed window times
    assert 0.5 < window / clock < 2.0, (window, clock)
    assert summary["steps"] == 12


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_head_cross_entropy_equals_the_plain_one(autocast, monkeypatch):
    """linear_cross_entropy (chunked, gradients formed in the forward) == F.cross_entropy over the full logits:
    loss, weighted masking, argmax and both gradients, in fp32 and under bf16 autocast; several chunks."""
    import textldm.models.lmhead as lmhead

    monkeypatch.setattr(lmhead, "_chunk_rows", lambda vocab, device: 7)  # uneven chunks
    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    t = torch.randint(0, 300, (50,))
    mask = torch.rand(50) > 0.3
    weights = mask.float() / mask.sum()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = (h @ w.t()).float()
        ref = (torch.nn.functional.cross_entropy(logits, t, reduction="none") * weights).sum()
    (3 * ref).backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, correct = lmhead.linear_cross_entropy(h, w, t, weights)
    (3 * loss).backward()
    tol = 1e-2 if autocast else 1e-5
    assert torch.allclose(loss, ref, rtol=tol, atol=tol)
    assert torch.equal(correct, logits.argmax(-1) == t)
    assert torch.allclose(h.grad, grads[0], atol=tol) and torch.allclose(w.grad, grads[1], atol=tol)
    with torch.no_grad():  # evaluation: no gradient work, same loss
        assert torch.allclose(lmhead.linear_cross_entropy(h, w, t, weights)[0], loss.detach(), atol=tol)


def test_cli_resume_continues_a_stopped_run(tmp_path, tiny_model_dir, tiny_corpus, cache_home):
    """`textldm train-ar ... --resume` after a run that stopped at step 4 (checkpoint_every=2) continues at
    step 4 with the optimizer state, and `textldm plot` draws one continuous curve."""
    from conftest import tiny_overrides
    from textldm.cli import run as main
    from textldm.evaluation.plot import read_log

    base = tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path / "run")) + [
        "ar.width=32", "ar.heads=2", "ar.depth=1", "ar_train.batch_size=4", "ar_train.log_every=1",
        "ar_train.checkpoint_every=2", "ar_train.warmup_steps=1"]
    assert main(["train-ar", "--quiet", *base, "ar_train.steps=4"]) == 0
    assert latest_checkpoint(tmp_path / "run" / "checkpoints" / "ar").name == "step-00000004"
    assert main(["train-ar", "--quiet", "--resume", *base, "ar_train.steps=6"]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "ar_log.jsonl").read_text().splitlines()]
    resumed = next(r for r in records if r.get("event") == "resume")
    assert resumed["step"] == 4 and records[-1]["event"] == "end" and records[-1]["first_step"] == 4
    train, _ = read_log(tmp_path / "run" / "ar_log.jsonl")
    assert [r["step"] for r in train] == [0, 1, 2, 3, 4, 5]
    assert main(["plot", str(tmp_path / "run")]) == 0
