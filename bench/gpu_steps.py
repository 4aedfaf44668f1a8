"""The paper presets' training steps on one GPU: TextDiT-114M (eager and compiled) and TextVAE-350M with its
Qwen3-1.7B-shaped REPA teacher, in bf16, through the real training loop (`train.fit`), for a few hundred steps.
Prints tokens/s, achieved TFLOP/s, MFU against the card's bf16 matrix-product rate measured in the same run,
and peak memory; writes gpu_steps.json and the training logs to --out.

    PYTHONPATH=src python bench/gpu_steps.py --out /tmp/gpu   [--dit-steps 200 --vae-steps 100]

Weights are random (the hub is unreachable from the GPU machine): the speed of a step does not depend on
them. The teacher is a Qwen3-1.7B *architecture* with random weights, truncated at the aligned layer as
in training. Shapes come from the `paper` preset (sequence length 1024, its micro-batches).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from synthetic import ZipfStream
from textldm.config import TrainConfig, load_config
from textldm.models.dit import TextDiT
from textldm.models.lm import FrozenLM
from textldm.models.vae import TextVAE
from textldm.runtime.perf import TRAIN_FACTOR, dit_flops_per_sequence, matmul_peak_flops, vae_flops_per_sequence
from textldm.training.batches import vae_batches
from textldm.training.loop import fit
from textldm.training.objectives import VAEObjective, WindowObjective
from textldm.utils import param_count

QWEN3_VOCAB = 151_936


def dit_batches(dit_cfg, batch: int, channels: int, device):
    Lc, Lt = dit_cfg.context_max, dit_cfg.target_max

    def get(step, micro=0, accum=1):
        g = torch.Generator(device=device).manual_seed(step)
        ctx_len = torch.randint(dit_cfg.context_min, Lc + 1, (batch,), device=device, generator=g)
        tgt_len = torch.randint(dit_cfg.target_min, Lt + 1, (batch,), device=device, generator=g)
        return {"context": torch.randn(batch, Lc, channels, device=device, generator=g),
                "context_mask": torch.arange(Lc, device=device)[None] < ctx_len[:, None],
                "target": torch.randn(batch, Lt, channels, device=device, generator=g),
                "target_mask": torch.arange(Lt, device=device)[None] < tgt_len[:, None],
                "noise": torch.randn(batch, Lt, channels, device=device, generator=g),
                "t": torch.rand(batch, device=device, generator=g),
                "drop": torch.rand(batch, device=device, generator=g) < 0.1}

    return get


def summarize(log: Path, name: str, params: int, extra: dict) -> dict:
    records = [json.loads(x) for x in log.read_text().splitlines()]
    start = next(r for r in records if r.get("event") == "start")
    rates = [r for r in records if "mfu" in r]
    rates = rates[2:] if len(rates) > 3 else rates[-1:]  # the first windows hold compilation and warm-up
    mean = lambda key: sum(r[key] for r in rates) / len(rates)  # noqa: E731
    return {"name": name, "params_M": round(params / 1e6, 1), "tokens_per_s": round(mean("tokens_per_s")),
            "tflops_per_s": round(mean("tflops_per_s"), 1), "mfu": round(mean("mfu"), 4),
            "peak_memory_gb": max(r.get("peak_memory_gb", 0) for r in records),
            "steps_measured": rates[-1]["step"] - rates[0]["step"], "per_device_batch": start["per_device_batch"],
            **extra}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--dit-steps", type=int, default=200)
    ap.add_argument("--eager-steps", type=int, default=60)
    ap.add_argument("--vae-steps", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--extra-dit-batch", type=int, nargs="*", default=[64],
                    help="more compiled DiT runs at these batches")
    ap.add_argument("--parts", default="eager,dit,vae", help="which rows: eager (DiT without compile), dit, vae")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (with a tiny --teacher)")
    ap.add_argument("--teacher", default="2048,6144,28,16,8", help="hidden,mlp,layers,heads,kv_heads (Qwen3-1.7B)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. dit.depth=2 for a dry run")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    cfg = load_config(args.preset, args.overrides)
    peak = matmul_peak_flops(device, torch.bfloat16, repeats=20 if gpu else 2)
    name = torch.cuda.get_device_name() if gpu else "cpu"
    rows = []
    print(f"{name}  torch {torch.__version__}  bf16 8192^3 matmul: {peak / 1e12:.0f} TFLOP/s",
          flush=True)

    # TextDiT-114M ------------------------------------------------------------------------------------------
    C = cfg.vae.latent_channels
    parts = args.parts.split(",")
    runs = [(False, args.eager_steps, cfg.dit_train.micro_batch)] if "eager" in parts else []
    if "dit" in parts:
        runs += [(True, args.dit_steps, cfg.dit_train.micro_batch)]
        runs += [(True, args.dit_steps // 2, b) for b in args.extra_dit_batch]
    for compiled, steps, batch in runs:
        torch.manual_seed(0)
        dit = TextDiT(cfg.dit, C).to(device)
        flops = TRAIN_FACTOR * batch * dit_flops_per_sequence(dit, cfg.dit.context_max, cfg.dit.target_max)
        tcfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-4, warmup_steps=10, log_every=args.log_every,
                           ema=0.9999,
                           compile=compiled, peak_flops=peak)
        log = out / f"dit_{'compiled' if compiled else 'eager'}_{batch}.jsonl"
        t0 = time.time()
        fit(WindowObjective(dit), dit_batches(cfg.dit, batch, C, device), tcfg, log_path=log, desc="DiT",
            tokens_per_step=batch * cfg.dit.window_tokens, flops_per_step=flops,
            precision="bf16", progress=False)
        rows.append(summarize(log, f"DiT {'compiled' if compiled else 'eager'}", param_count(dit),
                              {"wall_s": round(time.time() - t0, 1)}))
        print(rows[-1], flush=True)
        del dit
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    # TextVAE-350M + Qwen3-1.7B-shaped teacher ----------------------------------------------------------------
    if "vae" in parts:
        rows.append(vae_row(cfg, args, device, peak, out))
        print(rows[-1], flush=True)
    write_table(rows, name, peak, out)


def vae_row(cfg, args, device, peak, out) -> dict:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hidden, mlp, layers, heads, kv_heads = (int(x) for x in args.teacher.split(","))
    qcfg = Qwen3Config(vocab_size=QWEN3_VOCAB, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                       max_position_embeddings=40960, tie_word_embeddings=True)
    with torch.device(device):
        teacher = FrozenLM(Qwen3ForCausalLM(qcfg).to(torch.bfloat16), cfg.teacher.layer)
    torch.manual_seed(0)
    vae = TextVAE(cfg.vae, QWEN3_VOCAB, teacher.hidden_size).to(device)
    batch, L = cfg.vae_train.micro_batch, cfg.vae.max_len
    flops = TRAIN_FACTOR * batch * vae_flops_per_sequence(vae, L, QWEN3_VOCAB, cfg.vae.repa_fraction)
    teacher_flops = batch * L * 2 * sum(p.numel() for n, p in teacher.named_parameters() if "embed" not in n)
    tcfg = TrainConfig(steps=args.vae_steps, batch_size=batch, lr=1e-4, warmup_steps=10,
                       log_every=max(1, args.log_every // 2), compile=True,
                       peak_flops=peak)
    log = out / "vae_compiled.jsonl"
    t0 = time.time()
    fit(VAEObjective(vae), vae_batches(ZipfStream(QWEN3_VOCAB), cfg.vae, batch, 0, device, teacher), tcfg,
        log_path=log, desc="VAE", tokens_per_step=batch * L, flops_per_step=flops, precision="bf16", progress=False)
    row = summarize(log, "VAE compiled (+teacher)", param_count(vae), {"wall_s": round(time.time() - t0, 1)})
    # the teacher's forward is real work outside the model FLOPs: MFU counting it too
    steps_per_s = row["tokens_per_s"] / (batch * L)
    row["mfu_with_teacher"] = round((flops + teacher_flops) * steps_per_s / peak, 4)
    return row


def write_table(rows, name, peak, out):
    result = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "matmul_bf16_tflops": round(peak / 1e12, 1), "rows": rows}
    (out / "gpu_steps.json").write_text(json.dumps(result, indent=2))
    print("\n| step | params | batch x 1024 | tokens/s | TFLOP/s | MFU | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params_M']}M | {r['per_device_batch']} | {r['tokens_per_s']:,} "
              f"| {r['tflops_per_s']} "
              f"| {100 * r['mfu']:.1f}% | {r['peak_memory_gb']:.1f} GB |")


if __name__ == "__main__":
    main()
