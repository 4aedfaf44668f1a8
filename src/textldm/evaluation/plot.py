"""`textldm plot RUN`: training curves from a run's JSONL logs (`vae_log.jsonl`, `dit_log.jsonl`, `ar_log.jsonl`).

One PNG per log: a panel per logged term (loss, ce, kl, acc, repa_cos, ...), then the learning rate,
throughput (tokens/s), and the held-out measurements logged every `eval_every` steps (DiT: velocity loss
per timestep quarter; VAE: reconstruction accuracy and REPA cosine; AR: loss) - or the gradient norm when
there are none.
A log that holds several runs (a re-run into the same folder) is plotted from its last start; a resumed run
(--resume) continues the curve of the run it resumes.
"""
from __future__ import annotations

import json
from pathlib import Path

from textldm.errors import UserError
from textldm.evaluation.metrics import require_package

BOOKKEEPING = {"step", "lr", "elapsed_s", "tokens_per_s", "grad_norm", "tflops_per_s", "mfu", "peak_memory_gb"}


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """(training records, eval records) of the last run in a JSONL log."""
    records = []
    for i, line in enumerate(path.read_text().splitlines()):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"'{path}' line {i + 1} is not JSON; is this a textldm training log?") from None
    starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
    records = records[starts[-1] + 1:] if starts else records
    # a resumed run repeats the steps between its last checkpoint and the kill: the later record wins
    train = {r["step"]: r for r in records if "step" in r and "eval" not in r and "event" not in r}
    evals = {r["step"]: r for r in records if "eval" in r}
    return [train[k] for k in sorted(train)], [evals[k] for k in sorted(evals)]


def _eval_series(evals: list[dict]) -> dict[str, tuple[list, list]]:
    series: dict[str, tuple[list, list]] = {}

    def add(name, step, value):
        xs, ys = series.setdefault(name, ([], []))
        xs.append(step)
        ys.append(value)

    for r in evals:
        e = r["eval"]
        for q in e.get("quarters", []):
            add(f"t {q['t']}: with prompt", r["step"], q["with_prompt"])
        for key in ("recon_acc", "repa_cos", "loss"):
            if isinstance(e.get(key), (int, float)):
                add(key, r["step"], e[key])
    return series


def plot_log(path: Path, out: Path) -> Path:
    """One run log's curves (loss terms, lr, tokens/s, held-out numbers) into PNG files."""
    matplotlib = require_package("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_log(path)
    if not train:
        raise UserError(f"'{path}' has no training records to plot")
    steps = [r["step"] for r in train]
    terms = sorted({k for r in train for k, v in r.items() if k not in BOOKKEEPING and isinstance(v, (int, float))})
    cols = max(3, len(terms))
    fig, axes = plt.subplots(2, cols, figsize=(3.6 * cols, 6.5), squeeze=False)
    for ax, k in zip(axes[0], terms):  # one panel per term: their scales differ by orders of magnitude
        ax.plot(steps, [r.get(k, float("nan")) for r in train])
        ax.set_title(k)
    for ax in axes[0][len(terms):]:
        ax.set_visible(False)
    axes[1, 0].plot(steps, [r["lr"] for r in train])
    axes[1, 0].set_title("learning rate")
    tps = [(r["step"], r["tokens_per_s"]) for r in train if "tokens_per_s" in r]
    if tps:
        axes[1, 1].plot(*zip(*tps))
    mfu = [(r["step"], 100 * r["mfu"]) for r in train if "mfu" in r]
    if mfu:  # model FLOP utilisation on a second axis
        twin = axes[1, 1].twinx()
        twin.plot(*zip(*mfu), color="tab:orange")
        twin.set_ylabel("MFU %", color="tab:orange")
    axes[1, 1].set_title("tokens / s" + (" and MFU" if mfu else ""))
    ax = axes[1, 2]
    series = _eval_series(evals)
    if series:
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_title("held-out (every eval_every steps)")
        ax.legend(fontsize=7)
    else:
        ax.plot(steps, [r.get("grad_norm", float("nan")) for r in train])
        ax.set_title("gradient norm")
    for ax in axes[1][3:]:
        ax.set_visible(False)
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.suptitle(str(path))
    fig.tight_layout()
    target = out / f"{path.stem}.png"
    tmp = out / f".{path.stem}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(target)
    return target


def plot_run(run: Path | str, out: Path | str | None = None) -> list[Path]:
    """Every *_log.jsonl of a run folder drawn to PNG; returns the files."""
    run = Path(run)
    logs = sorted(run.glob("*_log.jsonl"))
    if not logs:
        raise UserError(f"no training logs (*_log.jsonl) in '{run}'; give a run folder (out_dir of a training command)")
    out = Path(out) if out is not None else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    return [plot_log(log, out) for log in logs]
