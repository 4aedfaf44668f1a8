"""The masked-diffusion baselines: MDLM (absorbing-state diffusion over the whole window) and BD3-LM (block
diffusion), a bidirectional Transformer of the project's own layers trained under TextLDM's settings."""
from textldm.families.masked.pipeline import MaskedPipeline
from textldm.families.masked.train import train_masked
from textldm.families.spec import Command, Family


def _train_masked(args, cfg):
    train_masked(cfg, not args.quiet, resume=args.resume)


FAMILY = Family("masked", "the masked-diffusion baselines: MDLM (masked.block_size=0) and BD3-LM (masked.block_size=B)",
                MaskedPipeline,
                (Command("train-masked", "train the masked-diffusion baseline, MDLM or BD3-LM (masked.block_size), "
                                         "under the same settings (writes OUT_DIR/masked)", _train_masked),),
                folder="masked", label="masked diffusion")

__all__ = ["FAMILY", "MaskedPipeline", "train_masked"]
