"""The masked-diffusion baselines' training stage, as a Python API: train_masked (MDLM with masked.block_size 0,
BD3-LM with B > 0), under the same tokenizer, data, window, optimizer and loop as TextLDM's and the AR baseline's."""
from __future__ import annotations

from textldm.config import Config
from textldm.families.masked.pipeline import MaskedPipeline
from textldm.models.lm import init_from_teacher
from textldm.models.masked import MaskedDenoiser
from textldm.runtime.perf import TRAIN_FACTOR, masked_flops_per_sequence
from textldm.training.batches import window_batches
from textldm.training.evaluate import evaluate_masked
from textldm.training.loop import Stage, train_stage
from textldm.training.objectives import MaskedObjective
from textldm.training.run import check_resume, prepare_data, record_run, start_run


def train_masked(cfg: Config, progress: bool = True, data=None, resume: bool = False) -> tuple[MaskedPipeline, dict]:
    """MDLM or BD3-LM under the same settings: tokenizer, data, window (the DiT's prompt + continuation), optimizer
    and loop. Writes OUT_DIR/masked."""
    check_resume(cfg, "masked", resume)
    device = start_run(cfg)
    tokenizer, eot, train, val = data or prepare_data(cfg)
    record_run(cfg)
    model = MaskedDenoiser(cfg.masked, len(tokenizer))
    if cfg.masked.embed_init == "teacher":  # the head start the VAE and the AR baseline get
        init_from_teacher(model.embed.weight, cfg.teacher.name, len(tokenizer), cfg.seed)
    model.to(device)
    length, tcfg, e = cfg.masked_seq_len, cfg.masked_train, cfg.eval
    objective = MaskedObjective(model)
    pipeline = MaskedPipeline(cfg, tokenizer, model, eot)
    stage = Stage(
        name="masked", desc=pipeline.label, model=model, objective=objective,
        batches=window_batches(train, objective, length, tcfg.batch_size, cfg.seed, device), train_config=tcfg,
        tokens_per_step=tcfg.batch_size * length,
        flops_per_step=TRAIN_FACTOR * tcfg.batch_size * masked_flops_per_sequence(model, length),
        evaluate=lambda: evaluate_masked(objective, val, length, e.val_batches, e.batch_size, cfg.seed, device),
        save=lambda folder, report: pipeline.save_pretrained(folder, extra={"report": report}), export="masked",
        report={"masked_seq_len": length, "masked_design": pipeline.label})
    report = train_stage(cfg, stage, progress, resume)
    return pipeline, report
