"""The TextLDM family: a TextVAE (REPA-aligned latents) and a TextDiT (flow matching in them), in three generation
modes (`modes.py`); its pipeline (`pipeline.py`) and training stages (`train.py`)."""
from textldm.families.spec import Command, Family
from textldm.families.textldm.pipeline import TextLDMPipeline
from textldm.families.textldm.train import cache_teacher, train_dit, train_vae


def _train_vae(args, cfg):
    train_vae(cfg, not args.quiet, resume=args.resume)


def _train_dit(args, cfg):
    train_dit(cfg, vae_dir=args.vae, progress=not args.quiet, resume=args.resume)


def _cache_teacher(args, cfg):
    print(f"teacher features: {cache_teacher(cfg, not args.quiet)}  (train with vae.teacher_cache=auto)")


FAMILY = Family(
    "textldm", "TextLDM: a TextVAE and a TextDiT (flow matching in its latent space)", TextLDMPipeline,
    (Command("train-vae", "train the TextVAE (writes OUT_DIR/vae)", _train_vae),
     Command("train-dit", "train the TextDiT on a frozen VAE (writes OUT_DIR/model)", _train_dit,
             (("--vae", {"required": True, "help": "a saved VAE folder (OUT_DIR/vae of train-vae)"}),)),
     Command("cache-teacher", "precompute the REPA teacher's features to disk (then train-vae "
                              "vae.teacher_cache=auto)", _cache_teacher, resume=False)),
    folder="model", label="TextLDM")

__all__ = ["FAMILY", "TextLDMPipeline", "cache_teacher", "train_dit", "train_vae"]
