"""The AR baseline's training stage, as a Python API: train_ar (the same tokenizer, data, window, optimizer and loop
as TextLDM's stages)."""
from __future__ import annotations

from textldm.config import Config
from textldm.families.ar.pipeline import ARPipeline
from textldm.models.ar import CausalLM
from textldm.models.lm import init_from_teacher
from textldm.runtime.perf import TRAIN_FACTOR, ar_flops_per_sequence
from textldm.training.batches import ar_batches
from textldm.training.evaluate import evaluate_ar
from textldm.training.loop import Stage, train_stage
from textldm.training.objectives import ARObjective
from textldm.training.run import check_resume, prepare_data, record_run, start_run


def train_ar(cfg: Config, progress: bool = True, data=None, resume: bool = False) -> tuple[ARPipeline, dict]:
    """The AR baseline under the same settings: tokenizer, data, window (the DiT's prompt + continuation),
    optimizer and loop. Writes OUT_DIR/ar."""
    check_resume(cfg, "ar", resume)
    device = start_run(cfg)
    tokenizer, eot, train, val = data or prepare_data(cfg)
    record_run(cfg)
    model = CausalLM(cfg.ar, len(tokenizer))
    if cfg.ar.embed_init == "teacher":  # the same head start the VAE gets
        init_from_teacher(model.embed.weight, cfg.teacher.name, len(tokenizer), cfg.seed)
    model.to(device)
    seq_len = cfg.ar_seq_len
    tcfg, e = cfg.ar_train, cfg.eval
    pipeline = ARPipeline(cfg, tokenizer, model, eot)
    stage = Stage(
        name="ar", desc="AR", model=model, objective=ARObjective(model),
        batches=ar_batches(train, seq_len, tcfg.batch_size, cfg.seed, device), train_config=tcfg,
        tokens_per_step=tcfg.batch_size * seq_len,
        flops_per_step=TRAIN_FACTOR * tcfg.batch_size * ar_flops_per_sequence(model, seq_len),
        evaluate=lambda: evaluate_ar(model, val, seq_len, e.val_batches, e.batch_size, cfg.seed, device),
        save=lambda folder, report: pipeline.save_pretrained(folder, extra={"report": report}), export="ar",
        report={"ar_seq_len": seq_len})
    report = train_stage(cfg, stage, progress, resume)
    return pipeline, report
