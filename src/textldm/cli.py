"""`textldm` command line: the model families' training commands (train-vae, train-dit, cache-teacher, train-ar: the
registry's, `families.FAMILIES`), demo, config, generate, serve, build-bench, eval, ablate, plot, push-to-hub.

Every command that runs a config takes a preset (`--config demo`, a built-in name or a .yaml path) and any
number of `section.key=value` overrides; `textldm config --keys` lists every key with its type, default and
meaning. Bad input exits with status 2 and one line naming the problem and the fix.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from dataclasses import asdict
from pathlib import Path

import yaml

from textldm import demo
from textldm.config import Config, SampleConfig, SamplePrecision, describe_keys, load_config, to_dict
from textldm.diffusion.guidance import interval_problem
from textldm.errors import UserError, first_line
from textldm.families import FAMILIES, load_pipeline
from textldm.runtime.distributed import finish, is_main
from textldm.serving.service import ServeLimits
from textldm.utils import atomic_write_text, resolve_device
from textldm.version import __version__

KEYS_HINT = "every key, its type, default and meaning: `textldm config --keys`"


def _choices(section: type, name: str) -> tuple:
    """A config field's allowed values (its Literal type): the CLI offers exactly what the config accepts."""
    return typing.get_args(typing.get_type_hints(section)[name])


def _with_config(sub, name: str, help_: str, resume: bool = True, preset: str = "demo") -> argparse.ArgumentParser:
    s = sub.add_parser(name, help=help_, description=f"{help_}. Config: --config PRESET plus KEY=VALUE overrides; "
                                                     f"{KEYS_HINT}.")
    s.add_argument("--config", default=preset, help=f"preset name (default {preset}; demo, context-lm, cpu-long, "
                                                    "paper, ...) or a .yaml file")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. vae_train.steps=100 "
                                                                    f"({KEYS_HINT})")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    if resume:
        s.add_argument("--resume", action="store_true",
                       help="continue from the newest training checkpoint in OUT_DIR/checkpoints (same config)")
    return s


def _add_training(sub) -> None:
    for fam in FAMILIES.values():  # each family's training commands, from the registry
        for command in fam.commands:
            s = _with_config(sub, command.name, command.help, resume=command.resume)
            for name, options in command.arguments:
                s.add_argument(name, **options)
    s = _with_config(sub, "demo", "data -> VAE -> DiT -> measurements and samples, on the preset (default: "
                                  "context-lm, a DiT on a frozen pretrained LM's states; --config demo: from scratch)",
                     preset="context-lm")
    s.add_argument("--vae", help="reuse this saved VAE folder instead of training one")
    c = _with_config(sub, "config", "print the resolved config of a preset with overrides (YAML)", resume=False)
    c.add_argument("--keys", action="store_true", help="list every key with its type, value and meaning instead")


def _add_evaluation(sub) -> None:
    b = sub.add_parser("build-bench", help="turn a text source into a fixed continuation benchmark (JSONL)")
    b.add_argument("--preset", help="embedded, wikisource, wikipedia, tinystories or lm1b")
    b.add_argument("--source", help="a local file/folder or HF data set (replaces the preset's source)")
    b.add_argument("--text-field", default="text", help="the column holding the text (jsonl/parquet/HF)")
    b.add_argument("--passage-words", type=int, help="passage length in words (0 = whole documents)")
    b.add_argument("--samples", type=int, default=1000, help="benchmark items")
    b.add_argument("--seed", type=int, default=0, help="which documents and cut points are drawn")
    b.add_argument("--out", required=True, help="output .jsonl path")
    e = _with_config(sub, "eval", "score models on continuation benchmarks (JSON, markdown table, plots)", resume=False)
    e.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                   help="a textldm model or run folder, an AR baseline, or an HF causal LM (hf:NAME); repeatable")
    e.add_argument("--bench", action="append", metavar="NAME|FILE.jsonl",
                   help="benchmark preset or JSONL file (repeatable; default: embedded)")
    e.add_argument("--source", help="local data for a hub preset (e.g. a TinyStories .jsonl)")
    e.add_argument("--out", help="output folder (default: OUT_DIR/eval)")
    e.add_argument("--steps-sweep", default="", help="comma-separated sampling steps for the quality-vs-steps plot")
    e.add_argument("--cfg-sweep", default="", help="comma-separated CFG scales for the CFG plot")
    e.add_argument("--max-new-tokens", type=int, default=128, help="cap on HF models' continuation length")
    a = _with_config(sub, "ablate", "train and score a grid of config variants (Tables 2-4 shape)", resume=False)
    a.add_argument("--grid", default="repa", help="built-in grid (repa, paper) or a YAML file: name -> overrides")
    a.add_argument("--bench", default="embedded", help="benchmark preset or JSONL file")
    pl = sub.add_parser("plot", help="draw a run's training curves (loss terms, lr, tokens/s, held-out) to PNG")
    pl.add_argument("run", help="a run folder (holding *_log.jsonl)")
    pl.add_argument("--out", help="output folder (default: RUN/plots)")


def _add_generate(sub) -> None:
    g = sub.add_parser("generate", help="continue prompts with a trained model")
    g.add_argument("--model", required=True, help="a saved model of any family: a model folder (OUT_DIR/model, "
                   "OUT_DIR/ar, OUT_DIR/masked), a run folder or a Hub repo id")
    g.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    g.add_argument("--prompts-file", help="a text file, one prompt per line")
    g.add_argument("--length", type=int, help="continuation length in tokens (default: the model's sample.length)")
    g.add_argument("--steps", type=int, help="sampling steps (default: the model's sample.steps)")
    g.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: sample.cfg_scale)")
    g.add_argument("--solver", choices=_choices(SampleConfig, "solver"), help="ODE solver (default: sample.solver)")
    g.add_argument("--seed", type=int, help="noise seed (default: sample.seed)")
    g.add_argument("--grid", choices=_choices(SampleConfig, "grid"), help="sampling time grid (default: sample.grid)")
    g.add_argument("--cfg-interval", help="apply guidance only for t in LO,HI (e.g. 0,0.7)")
    g.add_argument("--noise-scale", type=float, help="starting noise scale, 0 = deterministic (default: "
                   "sample.noise_scale)")
    g.add_argument("--lm-history", type=int, help="a context-LM model: prompt + text tokens its LM reads, beyond "
                   "the DiT's window (default: sample.lm_history)")
    g.add_argument("--lm-prior", type=float, help="a context-LM model: weight of its LM's next-token log-probabilities "
                   "added to the decoder's at each block's first token, 0 = off (default: sample.lm_prior)")
    g.add_argument("--temperature", type=float, help="an AR or masked-diffusion model: sampling temperature, 0 = "
                   "greedy (default: sample.temperature)")
    g.add_argument("--top-p", type=float, help="an AR or masked-diffusion model: nucleus p; an SSD-LM model: its "
                   "projection's nucleus (default: sample.top_p)")
    g.add_argument("--projection", choices=_choices(SampleConfig, "projection"), help="an SSD-LM model: multi-hot "
                   "(+K on the whole nucleus) or sampling (+K on one token drawn from it) (default: sample.projection)")
    g.add_argument("--top-k", type=int, help="an AR model: top-k, 0 = off (default: sample.top_k)")
    g.add_argument("--batch-size", type=int, default=16, help="prompts per batch (results do not depend on it)")
    g.add_argument("--out", help="write {prompt, continuation} JSON lines here (atomically) instead of printing")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    g.add_argument("--precision", choices=typing.get_args(SamplePrecision),
                   help="bf16: sample under bf16 autocast (faster on bf16 hardware; not batch-size independent)")
    g.add_argument("--json", action="store_true", help="print one JSON object per prompt")


LM_EVAL_HELP = ("EleutherAI's lm-evaluation-harness with textldm models registered: "
                "textldm lm-eval --model textldm --model_args pretrained=DIR --tasks T")


def _add_lm_eval(sub) -> None:
    h = sub.add_parser("lm-eval", help=LM_EVAL_HELP, add_help=False)
    h.add_argument("harness_args", nargs=argparse.REMAINDER, help="lm-eval's own arguments (lm-eval --help)")


def _lm_eval(args) -> None:
    """The harness's own command line (its options, its --help), with the textldm model class registered."""
    try:
        from lm_eval.__main__ import cli_evaluate

        import textldm.evaluation.lm_eval_model  # noqa: F401 (registers `--model textldm`)
    except ImportError:
        raise UserError("textldm lm-eval needs lm-eval: pip install 'textldm[lm-eval]'") from None
    if args.harness_args[:1] in (["-h"], ["--help"]):
        print(f"textldm lm-eval: {LM_EVAL_HELP}. The harness's options:\n")
    sys.argv = ["textldm lm-eval", *args.harness_args]
    try:
        cli_evaluate()
    except OSError as e:  # ConnectionError and the Hub's offline errors are OSErrors
        raise UserError(f"lm-eval stopped: {first_line(e)}; its tasks load their data sets from the Hugging Face Hub: "
                        f"run with internet access, or offline with a datasets cache that holds them (local tasks: "
                        f"--include_path DIR)") from None


def _add_push(sub) -> None:
    h = sub.add_parser("push-to-hub", help="upload a saved model (TextLDM or AR) to the Hugging Face Hub")
    h.add_argument("--model", required=True, help="a saved model folder (OUT_DIR/model, OUT_DIR/ar, ...)")
    h.add_argument("--repo", required=True, help="the Hub repo id, e.g. you/textldm-demo (created if missing)")
    h.add_argument("--private", action="store_true", help="create the repo private")
    h.add_argument("--revision", help="the branch to push to (default: main)")
    h.add_argument("--token", help="a Hugging Face write token (default: $HF_TOKEN or `hf auth login`'s)")


def _add_serve(sub) -> None:
    v = sub.add_parser("serve", help="a local web app + JSON API: watch generations denoise step by step")
    v.add_argument("--model", required=True, help="a saved model folder (OUT_DIR/model) or a Hub repo id")
    v.add_argument("--ar", help="a second model of any family, shown side by side and served under /v1: the AR "
                   "baseline (OUT_DIR/ar), a masked-diffusion (OUT_DIR/masked) or SSD-LM (OUT_DIR/ssd) baseline, or a "
                   "Hub repo id")
    v.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it)")
    v.add_argument("--port", type=int, default=8000, help="port to listen on")
    v.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    v.add_argument("--precision", choices=typing.get_args(SamplePrecision),
                   help="sampling precision (default: the model's, fp32)")
    limits = ServeLimits()
    v.add_argument("--max-length", type=int, default=limits.max_length,
                   help="longest continuation a request may ask for")
    v.add_argument("--max-steps", type=int, default=limits.max_steps, help="most sampling steps a request may ask for")
    v.add_argument("--max-queue", type=int, default=limits.max_queue,
                   help="requests waiting behind the running one (more: 503)")
    v.add_argument("--timeout", type=float, default=limits.timeout_s,
                   help="seconds per request, queueing included (then 504)")
    v.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but the page and "
                                     "/api/health (default: $TEXTLDM_API_KEY; none = no key)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="textldm", description="Language modeling with continuous latent diffusion.")
    p.add_argument("--version", action="version", version=f"textldm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_training(sub)
    _add_evaluation(sub)
    _add_generate(sub)
    _add_serve(sub)
    _add_push(sub)
    _add_lm_eval(sub)
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


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got '{text}'") from None


# the commands -----------------------------------------------------------------------------------------------
def _generate(args) -> None:
    """Any family's model, through the `Pipeline` protocol: the sampler settings given must be ones it reads."""
    from tqdm.auto import tqdm

    from textldm.families.spec import tokenize_prompts, truncate_prompts

    prompts = _prompts(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    pipe = load_pipeline(args.model, device=resolve_device(args.device, "--device"))
    sample = _sample_settings(args, pipe)
    length = args.length or sample.length
    ids = truncate_prompts(tokenize_prompts(pipe.tokenizer, prompts), pipe.prompt_window(length, sample),
                           "the tokens it reads")
    rows = []
    for start in tqdm(range(0, len(ids), args.batch_size), desc="generate", unit="batch", disable=args.out is None):
        rows += pipe.continue_ids(ids[start: start + args.batch_size], length, sample=sample, first_index=start)
    outputs = [pipe.tokenizer.decode(row) for row in rows]
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps({"prompt": p, "continuation": t}) + "\n"
                                            for p, t in zip(prompts, outputs)))
        print(f"{len(outputs)} continuations: {args.out}")
        return
    for prompt, text in zip(prompts, outputs):
        if args.json:
            print(json.dumps({"prompt": prompt, "continuation": text}))
        else:
            print(f"{prompt}\033[1m{text}\033[0m" if sys.stdout.isatty() else f"{prompt} || {text}")


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        try:
            prompts += [line for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read prompts file '{args.prompts_file}': {e.strerror}") from None
    if not prompts:
        raise UserError("no prompt given; use --prompt TEXT or --prompts-file FILE")
    return prompts


def _sample_settings(args, pipe) -> SampleConfig:
    """The model's sampler defaults with the settings given on the command line, each one its family reads."""
    given = {"steps": args.steps, "cfg_scale": args.cfg_scale, "solver": args.solver, "seed": args.seed,
             "grid": args.grid, "precision": args.precision, "noise_scale": args.noise_scale,
             "lm_history": args.lm_history, "lm_prior": args.lm_prior, "temperature": args.temperature,
             "top_p": args.top_p, "top_k": args.top_k, "projection": args.projection, "length": args.length}
    if args.cfg_interval:
        lo, hi = (_floats(args.cfg_interval, "--cfg-interval") + [None, None])[:2]
        if hi is None or interval_problem(lo, hi):
            raise UserError(f"--cfg-interval must be LO,HI with 0 <= LO <= HI <= 1, got '{args.cfg_interval}'")
        given.update(cfg_min_t=lo, cfg_max_t=hi)
    given = {k: v for k, v in given.items() if v is not None}
    unread = sorted(set(given) - pipe.sampler_settings)
    if unread:
        flags = ", ".join("--" + k.replace("_", "-") for k in unread)
        raise UserError(f"{flags}: not a setting of a {pipe.family} model (it reads "
                        f"{', '.join(sorted(pipe.sampler_settings))})")
    return dataclasses.replace(pipe.default_sample(), **given)


def _serve(args) -> None:
    from textldm.serving.app import serve

    limits = ServeLimits(max_length=args.max_length, max_steps=args.max_steps, max_queue=args.max_queue,
                         timeout_s=args.timeout)
    for option, value in (("max-length", limits.max_length), ("max-steps", limits.max_steps),
                          ("timeout", limits.timeout_s)):
        if value <= 0:
            raise UserError(f"--{option} must be > 0, got {value}")
    if limits.max_queue < 0:
        raise UserError(f"--max-queue must be >= 0, got {limits.max_queue}")
    serve(args.model, args.ar, args.host, args.port, args.device, args.precision, limits, api_key=args.api_key)


def _push(args) -> None:
    """The saved folder as it is (weights, config.json, tokenizer, card), whatever its family."""
    from textldm.export import locate_model_folder, read_model_config, upload_model_folder

    folder = locate_model_folder(args.model)
    read_model_config(folder)  # a textldm folder (a clear error otherwise)
    print(upload_model_folder(folder, args.repo, private=args.private or None, token=args.token,
                              revision=args.revision))


def _plot(args) -> None:
    from textldm.evaluation.plot import plot_run

    for path in plot_run(args.run, args.out):
        print(path)


def _build_bench(args) -> None:
    from textldm.evaluation.benchmark import PRESETS, BenchmarkSpec, build_benchmark, save_benchmark

    if not args.preset and not args.source:
        raise UserError("give --preset NAME or --source PATH (or both)")
    if args.preset and args.preset not in PRESETS:
        raise UserError(f"unknown benchmark preset '{args.preset}'; choose from {', '.join(PRESETS)}")
    spec = PRESETS[args.preset] if args.preset else BenchmarkSpec(args.source, text_field=args.text_field)
    if args.source:
        spec = BenchmarkSpec(**{**asdict(spec), "source": args.source, "text_field": args.text_field,
                                "hf_split": "train" if Path(args.source).exists() else spec.hf_split})
    if args.passage_words is not None:
        spec.passage_words = args.passage_words
    items = build_benchmark(spec, args.samples, args.seed)
    path = save_benchmark(items, args.out, {"preset": args.preset, "spec": asdict(spec), "n": args.samples,
                                            "seed": args.seed, "format": "textldm-benchmark-v1"})
    print(f"{len(items)} items -> {path}")


def _config(args, cfg: Config) -> None:
    print(describe_keys(cfg) if args.keys else yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")


def _eval(args, cfg: Config) -> None:
    from textldm.evaluation.harness import run_eval, scoring_device

    out = args.out or str(Path(cfg.out_dir) / "eval")
    run_eval(args.model, args.bench or ["embedded"], cfg, out, device=scoring_device(cfg.device), source=args.source,
             steps_sweep=[int(x) for x in _floats(args.steps_sweep, "--steps-sweep")],
             cfg_sweep=_floats(args.cfg_sweep, "--cfg-sweep"), max_new_tokens=args.max_new_tokens)
    print((Path(out) / "results.md").read_text())
    print(f"results: {out}/results.json, {out}/results.md")


def _ablate(args, cfg: Config) -> None:
    from textldm.evaluation.ablation import format_ablation, load_grid, run_ablation

    result = run_ablation(args.config, args.overrides, load_grid(args.grid), args.bench, cfg.out_dir, not args.quiet)
    print(format_ablation(result))


def _demo(args, cfg: Config) -> None:
    report = demo.demo(cfg, not args.quiet, vae_dir=args.vae, resume=args.resume)
    if is_main():
        print(demo.format_report(report))
        print(f"\nreport, logs and checkpoints: {cfg.out_dir}/  (model: {cfg.out_dir}/model)")
        print(f'try: textldm generate --model {cfg.out_dir}/model --prompt "The President said that"')
        print(f"watch it denoise in your browser: textldm serve --model {cfg.out_dir}/model  "
              f"(or `make serve`), then open http://localhost:8000/")


PLAIN = {"generate": _generate, "serve": _serve, "plot": _plot, "build-bench": _build_bench,  # command(args)
         "push-to-hub": _push, "lm-eval": _lm_eval}
CONFIGURED = {  # command(args, the resolved config): the families' training commands, and the jobs above
    "config": _config, "eval": _eval, "ablate": _ablate, "demo": _demo,
    **{command.name: command.run for fam in FAMILIES.values() for command in fam.commands},
}


def run(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command; returns the exit status (bad input raises UserError)."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # the harness parses its own options, --help included
        _lm_eval(argparse.Namespace(harness_args=argv[1:]))
        return 0
    args, extra = parser.parse_known_args(argv)  # key=value overrides may come after options too
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    if args.command in PLAIN:
        _setup_logging()
        PLAIN[args.command](args)
        return 0
    if args.command != "config":
        _setup_logging()
    CONFIGURED[args.command](args, load_config(args.config, args.overrides))
    finish()
    return 0


def main(argv: list[str] | None = None) -> None:
    """The `textldm` entry point: run, and turn a UserError into one line on stderr and exit status 2."""
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
