"""`textldm` command line: train-vae, train-dit, generate, demo.

Every training command takes a preset (`--config demo`, a built-in name or a .yaml path) and any number
of `section.key=value` overrides. Bad input exits with status 2 and one line naming the problem and the fix.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="textldm", description="Language modeling with continuous latent diffusion.")
    sub = p.add_subparsers(dest="command", required=True)

    def training(name, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", default="demo", help="preset name (demo, cpu-long, paper) or a .yaml file")
        s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. vae_train.steps=100")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        return s

    training("train-vae", "train the TextVAE (writes OUT_DIR/vae)")
    s = training("train-dit", "train the TextDiT on a frozen VAE (writes OUT_DIR/model)")
    s.add_argument("--vae", required=True, help="a VAE checkpoint folder (OUT_DIR/vae of train-vae)")
    s = training("demo", "data -> VAE -> DiT -> measurements and samples, on the preset (default: demo)")
    s.add_argument("--vae", help="reuse this VAE checkpoint folder instead of training one")

    g = sub.add_parser("generate", help="continue prompts with a trained model")
    g.add_argument("--model", required=True, help="checkpoint folder (OUT_DIR/model)")
    g.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    g.add_argument("--prompts-file", help="a text file, one prompt per line")
    g.add_argument("--length", type=int, help="continuation length in tokens")
    g.add_argument("--steps", type=int, help="sampling steps")
    g.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale")
    g.add_argument("--solver", choices=["euler", "heun"])
    g.add_argument("--seed", type=int)
    g.add_argument("--device", default="cpu")
    g.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    return p


def _setup_logging(quiet_libraries: bool = True):
    level = logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if quiet_libraries:  # textldm logs its own progress; the libraries' per-file bars are noise here
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _generate(args) -> None:
    from .pipeline import TextLDMPipeline

    prompts = list(args.prompt)
    if args.prompts_file:
        try:
            prompts += [line for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read prompts file '{args.prompts_file}': {e.strerror}") from None
    if not prompts:
        raise UserError("no prompt given; use --prompt TEXT or --prompts-file FILE")
    pipe = TextLDMPipeline.from_pretrained(args.model, device=args.device)
    outputs = pipe.generate(prompts, length=args.length, steps=args.steps, cfg_scale=args.cfg_scale,
                            solver=args.solver, seed=args.seed)
    for prompt, text in zip(prompts, outputs):
        if args.json:
            print(json.dumps({"prompt": prompt, "continuation": text}))
        else:
            print(f"{prompt}\033[1m{text}\033[0m" if sys.stdout.isatty() else f"{prompt} || {text}")


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging()
    if args.command == "generate":
        _generate(args)
        return 0
    from . import runs
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    progress = not args.quiet
    if args.command == "train-vae":
        runs.train_vae(cfg, progress)
    elif args.command == "train-dit":
        runs.train_dit(cfg, vae_dir=args.vae, progress=progress)
    else:
        report = runs.demo(cfg, progress, vae_dir=args.vae)
        if int(os.environ.get("RANK", 0)) == 0:
            print(runs.format_report(report))
            print(f"\nreport, logs and checkpoints: {cfg.out_dir}/  (model: {cfg.out_dir}/model)")
            print(f'try: textldm generate --model {cfg.out_dir}/model --prompt "The President said that"')
    runs.finish_run()
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except UserError as e:
        print(f"textldm: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("textldm: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
