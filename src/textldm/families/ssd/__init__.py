"""SSD-LM, the paper's other diffusion baseline: simplex diffusion over token blocks (Han et al. 2023), a bidirectional
Transformer of the project's own layers trained under TextLDM's settings."""
from textldm.families.spec import Command, Family
from textldm.families.ssd.pipeline import SSDPipeline
from textldm.families.ssd.train import train_ssd


def _train_ssd(args, cfg):
    train_ssd(cfg, not args.quiet, resume=args.resume)


FAMILY = Family("ssd", "SSD-LM: simplex diffusion over token blocks (ssd.block_size, ssd.simplex_k, "
                "ssd.diffusion_steps)", SSDPipeline,
                (Command("train-ssd", "train the SSD-LM baseline under the same settings (writes OUT_DIR/ssd)",
                         _train_ssd),), folder="ssd", label="SSD-LM")

__all__ = ["FAMILY", "SSDPipeline", "train_ssd"]
