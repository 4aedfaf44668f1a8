"""SSD-LM's training stage, as a Python API: train_ssd, under the same tokenizer, data, window, optimizer and loop as
the other families."""
from __future__ import annotations

from textldm.config import Config
from textldm.errors import UserError
from textldm.families.ssd.pipeline import SSDPipeline
from textldm.models.lm import init_from_teacher
from textldm.models.ssd import SimplexDenoiser
from textldm.runtime.perf import TRAIN_FACTOR, ssd_flops_per_sequence
from textldm.training.batches import window_batches
from textldm.training.evaluate import evaluate_objective
from textldm.training.loop import Stage, train_stage
from textldm.training.objectives.ssd import SSDObjective
from textldm.training.run import check_resume, prepare_data, record_run, start_run


def train_ssd(cfg: Config, progress: bool = True, data=None, resume: bool = False) -> tuple[SSDPipeline, dict]:
    """SSD-LM under the same settings as TextLDM and the other baselines. Writes OUT_DIR/ssd."""
    if cfg.ssd.block_size >= cfg.ssd_seq_len:  # checked here: the window is the DiT's unless ssd.seq_len is set
        raise UserError(f"ssd.block_size {cfg.ssd.block_size} must be shorter than SSD-LM's window "
                        f"({cfg.ssd_seq_len} tokens: ssd.seq_len, or the DiT's window), which also holds its context")
    check_resume(cfg, "ssd", resume)
    device = start_run(cfg)
    tokenizer, eot, train, val = data or prepare_data(cfg)
    record_run(cfg)
    model = SimplexDenoiser(cfg.ssd, len(tokenizer))
    if cfg.ssd.embed_init == "teacher":
        init_from_teacher(model.embed.weight, cfg.teacher.name, len(tokenizer), cfg.seed)
    model.to(device)
    length, tcfg, e = cfg.ssd_seq_len, cfg.ssd_train, cfg.eval
    objective = SSDObjective(model)
    pipeline = SSDPipeline(cfg, tokenizer, model, eot)
    stage = Stage(
        name="ssd", desc="SSD-LM", model=model, objective=objective,
        batches=window_batches(train, objective, length, tcfg.batch_size, cfg.seed, device), train_config=tcfg,
        tokens_per_step=tcfg.batch_size * cfg.ssd.block_size,
        flops_per_step=TRAIN_FACTOR * tcfg.batch_size * ssd_flops_per_sequence(model, length),
        evaluate=lambda: evaluate_objective(objective, val, length, e.val_batches, e.batch_size, cfg.seed, device),
        save=lambda folder, report: pipeline.save_pretrained(folder, extra={"report": report}), export="ssd",
        report={"ssd_seq_len": length})
    report = train_stage(cfg, stage, progress, resume)
    return pipeline, report
