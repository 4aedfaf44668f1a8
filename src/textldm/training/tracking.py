"""Where the training loop's records go: rank 0's JSONL log (what `textldm plot` reads), and optionally the
same numbers as TensorBoard scalars (`dit_train.tensorboard=true`, per stage) and a Weights & Biases run
(`dit_train.wandb_project=NAME`; WANDB_MODE=offline writes it locally, `wandb sync` uploads it later).

A record is a dict: a training step ({"step", "loss", "lr", ...}), a held-out evaluation ({"step", "eval": {...}})
or an event ({"event": "start" | "resume" | "end", ...}).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from textldm.config import TrainConfig
from textldm.errors import UserError, first_line
from textldm.runtime.distributed import is_main
from textldm.utils import environment


class TrainingLog:
    """Rank 0's sinks for one training stage's records; other ranks write nothing."""

    def __init__(self, path: Path | None, cfg: TrainConfig, desc: str = "train", run_config: dict | None = None):
        """`path`: the JSONL file (its folder also holds tensorboard/ and wandb/); `run_config`: the run's whole
        resolved config, given to the tracker with the environment."""
        active = path is not None and is_main()
        self.sinks = [JsonlSink(path)] if active else []
        if active and cfg.tensorboard:
            self.sinks.append(TensorBoardSink(path.parent / "tensorboard" / path.stem))
        if active and cfg.wandb_project:
            self.sinks.append(WandbSink(cfg.wandb_project, path.parent, desc,
                                        {"run": run_config or {}, "train": asdict(cfg), "environment": environment()}))

    def write(self, record: dict):
        """Send one record to every sink."""
        for sink in self.sinks:
            sink.write(record)

    def close(self):
        """Flush and close every sink (finishes the W&B run)."""
        for sink in self.sinks:
            sink.close()


class JsonlSink:
    """One JSON record per line, flushed as written (what `textldm plot` reads)."""
    def __init__(self, path: Path):
        self.file = open(path, "a")

    def write(self, record: dict):
        """Append a record."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self):
        """Close the file."""
        self.file.close()


class TensorBoardSink:
    """The numbers of step and eval records as TensorBoard scalars (train/..., eval/...)."""
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train tensorboard=true needs `pip install tensorboard`") from None
        self.board = SummaryWriter(str(folder))

    def write(self, record: dict):
        """Add a record's numbers as scalars at its step."""
        if "step" in record and "event" not in record:
            for name, value in scalars(record.get("eval", record)).items():
                self.board.add_scalar(("eval/" if "eval" in record else "train/") + name, value, record["step"])

    def close(self):
        """Flush and close the event file."""
        self.board.close()


class WandbSink:
    """One W&B run per stage: named `<run folder>/<stage>`, grouped and tagged by the run folder (so each
    `textldm ablate` variant is its own group and tag), with the resolved config and environment as its config."""

    def __init__(self, project: str, folder: Path, desc: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError("train wandb_project=... needs Weights & Biases: pip install 'textldm[wandb]'") from None
        try:
            self.run = wandb.init(project=project, dir=str(folder), name=f"{folder.name}/{desc}", group=folder.name,
                                  tags=[desc, folder.name], config=config)
        except Exception as e:  # no API key, no network, a bad WANDB_MODE: one line, never a traceback
            raise UserError(f"cannot start the W&B run of project '{project}' ({first_line(e)}); log in with "
                            f"`wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to write the run "
                            f"locally and `wandb sync` it later") from None

    def write(self, record: dict):
        """Log a record's numbers at its step; the end record goes into the run summary."""
        if record.get("event") == "end":
            self.run.summary.update({k: v for k, v in record.items() if k != "event"})
        elif "step" in record and "event" not in record:
            prefix = "eval/" if "eval" in record else "train/"
            self.run.log({prefix + k: v for k, v in scalars(record.get("eval", record)).items()}, step=record["step"])

    def close(self):
        """Finish the run."""
        self.run.finish()


def scalars(record: dict, prefix: str = "") -> dict:
    """Numbers of a (nested) record, flattened: {"quarters": [{"t": "0-0.25", "loss": 1}]} -> quarters/0-0.25/loss."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or key in ("step", "t"):
            continue
        if isinstance(value, (int, float)):
            out[prefix + key] = float(value)
        elif isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    out.update(scalars(item, f"{prefix}{key}/{item.get('t', i)}/"))
    return out
