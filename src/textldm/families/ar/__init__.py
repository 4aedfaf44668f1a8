"""The AR baseline: a GPT-style causal Transformer of the project's own layers, trained under TextLDM's settings."""
from textldm.families.ar.pipeline import ARPipeline
from textldm.families.ar.train import train_ar
from textldm.families.spec import Command, Family


def _train_ar(args, cfg):
    train_ar(cfg, not args.quiet, resume=args.resume)


FAMILY = Family("ar", "the autoregressive baseline (same tokenizer, data, window, optimizer and loop)", ARPipeline,
                (Command("train-ar", "train the autoregressive baseline under the same settings (writes OUT_DIR/ar)",
                         _train_ar),), folder="ar", label="AR")

__all__ = ["ARPipeline", "FAMILY", "train_ar"]
