"""The learning-rate schedule and the budgeted stop of the training loop."""
import math

import torch

from textldm.config import TrainConfig
from textldm.training.loop import fit, lr_at


def test_lr_schedule_warmup_cosine_and_time_budget():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert math.isclose(lr_at(10, cfg), 1.0) and math.isclose(lr_at(110, cfg), 0.1)
    assert math.isclose(lr_at(60, cfg), 0.55)  # half-way down the cosine
    # a wall-clock budget that is half spent puts the cosine half-way too, whatever the step
    assert math.isclose(lr_at(20, cfg, budget_used=0.5), 0.55)
    assert math.isclose(lr_at(20, cfg, budget_used=1.0), 0.1)


class Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, batch, step):
        loss = (self.w - batch).pow(2).sum()
        return loss, {"loss": loss.detach()}


def test_fit_trains_logs_and_stops_on_budget(tmp_path):
    model = Quadratic()
    target = torch.tensor([0.0, 2.0, -1.0])
    summary = fit(model, lambda step, *_: target, TrainConfig(steps=200, lr=0.05, warmup_steps=5, log_every=50,
                                                           weight_decay=0.0), log_path=tmp_path / "log.jsonl",
                  progress=False, precision="fp32")
    assert summary["steps"] == 200 and torch.allclose(model.w, target, atol=1e-2)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) >= 5
    quick = fit(Quadratic(), lambda step, *_: target, TrainConfig(steps=10**6, max_minutes=0.02, log_every=10**6),
                progress=False, precision="fp32")
    assert quick["steps"] < 10**6 and quick["seconds"] < 10


def test_tensorboard_mirror_of_the_log(tmp_path):
    """train.tensorboard=true writes the logged numbers (training and evaluation) as TensorBoard scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    target = torch.tensor([1.0, -2.0, 0.5])
    fit(Quadratic(), lambda step, *_: target, TrainConfig(steps=6, lr=0.05, warmup_steps=1, log_every=2, eval_every=4,
                                                          tensorboard=True),
        log_path=tmp_path / "quad_log.jsonl", progress=False,
        on_eval=lambda step: {"quarters": [{"t": "0-0.25", "loss": 0.5}], "acc": 0.9})
    events = EventAccumulator(str(tmp_path / "tensorboard" / "quad_log"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "eval/acc", "eval/quarters/0-0.25/loss"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [0, 2, 4, 5]


def test_a_flops_budget_stops_at_the_same_step_on_any_machine_and_drives_the_schedule(tmp_path):
    """max_flops: stop once steps x flops_per_step reach the budget; the cosine ends there (not at cfg.steps)."""
    import json

    import pytest

    target = torch.tensor([0.0, 2.0, -1.0])
    cfg = TrainConfig(steps=1000, lr=0.1, warmup_steps=2, min_lr_ratio=0.1, log_every=1, max_flops=25e9)
    summary = fit(Quadratic(), lambda step, *_: target, cfg, flops_per_step=1e9, log_path=tmp_path / "log.jsonl",
                  progress=False, precision="fp32")
    assert summary["steps"] == 25 and summary["flops"] == 25e9
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert len(lrs) == 25 and lrs[-1] == pytest.approx(lr_at(24, cfg, 24 / 25))
    assert lrs[-1] < 0.02  # decayed by the budget's end, not left near the peak of a 1000-step cosine
    with pytest.raises(ValueError, match="flops_per_step"):
        fit(Quadratic(), lambda step, *_: target, cfg, progress=False, precision="fp32")


def test_the_guard_stops_a_slow_run_says_so_and_leaves_the_schedule_to_the_steps(tmp_path):
    """guard_minutes: a run the guard does not stop is the same run with or without it; one it stops ends cleanly
    with guard_fired set, its learning rates those of the full-length schedule (unlike max_minutes)."""
    import json
    import time

    target = torch.tensor([0.0, 2.0, -1.0])

    def slow(step, *_):
        time.sleep(0.05)
        return target

    cfg = TrainConfig(steps=400, lr=0.1, warmup_steps=2, log_every=1, guard_minutes=0.01)  # 0.6 s: ~12 steps
    stopped = fit(Quadratic(), slow, cfg, log_path=tmp_path / "log.jsonl", progress=False, precision="fp32")
    assert stopped["guard_fired"] and 3 < stopped["steps"] < 400
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert lrs == [lr_at(step, cfg) for step in range(stopped["steps"])]
    free = TrainConfig(steps=20, lr=0.1, warmup_steps=2, guard_minutes=10)
    a, b = Quadratic(), Quadratic()
    assert not fit(a, lambda *_: target, free, progress=False, precision="fp32")["guard_fired"]
    fit(b, lambda *_: target, TrainConfig(steps=20, lr=0.1, warmup_steps=2), progress=False, precision="fp32")
    assert torch.equal(a.w, b.w)
