"""Training throughput and CPU MFU of the VAE, DiT and AR steps at two sizes, next to Hugging Face
`transformers` GPT-2 (`GPT2LMHeadModel`) at the AR baseline's exact shape - all in one run, all through the
same training loop (`train.fit`: bf16 autocast where the CPU has it, fused AdamW, gradient clipping), with
MFU = achieved model FLOP/s over a bf16 matrix product measured in the same run.

    python bench/throughput.py [--steps 6] [--threads 2] [--json out.json]

Targets (issue 4): the AR step >= 1.3x HF GPT-2's tokens/s at equal shape; the DiT step >= 50% MFU at width 512.
Every row's FLOPs come from the model shape (textldm.runtime.perf); GPT-2 has the AR baseline's exact matrix shapes
(width, depth, heads, MLP, tied head, vocabulary, sequence), so the same count applies to it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from synthetic import ZipfStream
from textldm.config import ARConfig, DiTConfig, TrainConfig, VAEConfig
from textldm.models.ar import CausalLM
from textldm.models.dit import TextDiT
from textldm.models.vae import TextVAE
from textldm.runtime.perf import (
    TRAIN_FACTOR,
    ar_flops_per_sequence,
    dit_flops_per_sequence,
    matmul_peak_flops,
    vae_flops_per_sequence,
)
from textldm.runtime.precision import autocast_dtype
from textldm.training.batches import ar_batches, vae_batches
from textldm.training.loop import fit
from textldm.training.objectives import ARObjective, VAEObjective, WindowObjective
from textldm.utils import param_count

VOCAB = 49_152  # SmolLM2's, the demo tokenizer
TEACHER_DIM = 576


class GPT2Objective(nn.Module):
    """HF GPT-2 under the same objective as ARObjective: next-token cross-entropy in fp32."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, step: int):
        logits = self.model(input_ids=batch["ids"][:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["ids"][:, 1:].flatten())
        return loss, {"loss": loss.detach()}


def hf_gpt2(cfg: ARConfig, seq_len: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=seq_len, n_embd=cfg.width, n_layer=cfg.depth, n_head=cfg.heads,
                        n_inner=int(cfg.width * cfg.mlp_ratio), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_new", tie_word_embeddings=True)
    config._attn_implementation = "sdpa"  # transformers' fastest attention on CPU
    return GPT2LMHeadModel(config)


def dit_batches(batch: int, context: int, target: int, channels: int = 64):
    def get(step, micro=0, accum=1):
        g = torch.Generator().manual_seed(step)
        return {"context": torch.randn(batch, context, channels, generator=g),
                "context_mask": torch.ones(batch, context, dtype=torch.bool),
                "target": torch.randn(batch, target, channels, generator=g),
                "target_mask": torch.ones(batch, target, dtype=torch.bool),
                "noise": torch.randn(batch, target, channels, generator=g), "t": torch.rand(batch, generator=g),
                "drop": torch.rand(batch, generator=g) < 0.1}

    return get


def measure(objective, batches, batch: int, tokens: int, flops: float, peak: float, steps: int, compile_: bool) -> dict:
    """Median tokens/s and MFU over `steps` timed optimizer steps (after 2 warm-up steps) of `fit`."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        cfg = TrainConfig(steps=steps + 2, batch_size=batch, lr=1e-4, warmup_steps=1, log_every=1, peak_flops=peak,
                          compile=compile_)
        fit(objective, batches, cfg, log_path=log, tokens_per_step=tokens, flops_per_step=flops, progress=False)
        records = [json.loads(x) for x in log.read_text().splitlines() if '"mfu"' in x][2:]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
            "mfu": statistics.median(r["mfu"] for r in records),
            "tflops_per_s": statistics.median(r["tflops_per_s"] for r in records)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also torch.compile every row (slow to start on a CPU)")
    p.add_argument("--json", help="write the rows here too")
    p.add_argument("--only", default="DiT,VAE,AR", help="which models to run (comma-separated)")
    return p.parse_args(argv)


def print_report(rows: list[dict], ratios: list, peak: float) -> None:
    """The markdown table, the AR / GPT-2 ratios and the DiT MFU against their targets."""
    print(f"\n| training step | params | tokens/s | achieved GFLOP/s | MFU (vs {peak / 1e9:.0f} GFLOP/s matmul) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params_M']}M | {r['tokens_per_s']:,.0f} | {1000 * r['tflops_per_s']:.0f} "
              f"| {100 * r['mfu']:.1f}% |")
    for width, ratio in ratios:
        print(f"AR w{width}: textldm / HF GPT-2 tokens/s = {ratio:.2f}x (target >= 1.3x)")
    for r in rows:
        if r["name"].startswith("DiT w512"):
            print(f"DiT w512 MFU = {100 * r['mfu']:.1f}% (target >= 50%)")


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    amp = autocast_dtype("auto", cpu) or torch.float32
    peak = matmul_peak_flops(cpu, amp, size=2048, repeats=10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, autocast {amp}; "
          f"{amp} 2048^3 matmul: {peak / 1e9:.0f} GFLOP/s", flush=True)
    rows = []

    only = args.only.split(",")

    def add(name, model, objective, batches, batch, tokens, flops):
        t0 = time.time()
        row = {"name": name, "params_M": round(param_count(model) / 1e6, 1),
               **measure(objective, batches, batch, tokens, flops, peak, args.steps, args.compile)}
        rows.append(row)
        print(f"  {name}: {row['tokens_per_s']:,.0f} tokens/s, MFU {100 * row['mfu']:.1f}% "
              f"({time.time() - t0:.0f} s)", flush=True)
        return row

    for width, depth, heads in ((256, 6, 4), (512, 8, 8)) if "DiT" in only else ():  # DiT: the demo size, and width 512
        torch.manual_seed(0)
        dit, B, Lc, Lt = TextDiT(DiTConfig(width=width, depth=depth, heads=heads), 64), 32, 64, 64
        add(f"DiT w{width} d{depth} (64 + 64 latents)", dit, WindowObjective(dit), dit_batches(B, Lc, Lt), B,
            B * (Lc + Lt), TRAIN_FACTOR * B * dit_flops_per_sequence(dit, Lc, Lt))
    # VAE: full softmax over the vocabulary, REPA on
    for width, depth, heads in ((256, 2, 4), (512, 4, 8)) if "VAE" in only else ():
        torch.manual_seed(0)
        cfg = VAEConfig(width=width, encoder_depth=depth, decoder_depth=depth, heads=heads, max_len=128, softmax="full",
                        repa_fraction=1.0)
        vae, B = TextVAE(cfg, VOCAB, TEACHER_DIM), 16
        table = torch.randn(VOCAB, TEACHER_DIM)
        teacher = lambda ids, mask=None: table[ids]  # noqa: E731 - features without the teacher's cost
        add(f"VAE w{width} {depth}+{depth} blocks", vae, VAEObjective(vae),
            vae_batches(ZipfStream(VOCAB), cfg, B, 0, cpu, teacher), B, B * 128,
            TRAIN_FACTOR * B * vae_flops_per_sequence(vae, 128, VOCAB, 1.0))
    ratios = []
    # AR: the baseline's default shape, and width 512
    for width, depth, heads in ((256, 8, 4), (512, 8, 8)) if "AR" in only else ():
        cfg, B, L = ARConfig(width=width, depth=depth, heads=heads), 16, 128
        torch.manual_seed(0)
        ar = CausalLM(cfg, VOCAB)
        flops = TRAIN_FACTOR * B * ar_flops_per_sequence(ar, L)
        batches = ar_batches(ZipfStream(VOCAB), L, B, 0, cpu)
        ours = add(f"AR w{width} d{depth} (textldm)", ar, ARObjective(ar), batches, B, B * L, flops)
        torch.manual_seed(0)
        gpt2 = hf_gpt2(cfg, L)
        theirs = add(f"AR w{width} d{depth} (HF GPT2LMHeadModel)", gpt2, GPT2Objective(gpt2), batches, B, B * L, flops)
        ratios.append((width, ours["tokens_per_s"] / theirs["tokens_per_s"]))

    print_report(rows, ratios, peak)
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops": peak, "rows": rows, "ar_vs_gpt2": ratios}, indent=2))


if __name__ == "__main__":
    main()
