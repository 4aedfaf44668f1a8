"""The evaluation harness behind `textldm eval`: models continue benchmark prompts, metrics score them.

Contestants: TextLDM checkpoints, textldm AR baselines, any HF causal LM (hub name or local folder), and
the human-reference row (each item's `second_reference`: the continuation of an independent human
passage). Every model gets the same items; its continuation length is the reference's length in the
model's own tokens (an oracle length, the same rule for every model), capped by what the model can produce
(TextLDM: dit.target_max; AR baseline: half its window; HF models: `max_new_tokens`). Prompts longer than a
model's context keep their last tokens, with a warning (`pipeline.truncate_prompts`: the one policy).

Outputs in `out_dir`: results.json, results.md (Table 1 shape: rows = models, columns = benchmark x
metric), generations/<benchmark>/<model>.jsonl, and with sweeps the plots quality_vs_steps.png and
cfg_sweep.png.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from textldm.config import Config, MetricsConfig, SampleConfig
from textldm.errors import UserError
from textldm.evaluation.benchmark import benchmark
from textldm.evaluation.heldout import same_noise_agreement
from textldm.evaluation.metrics import (
    bertscore,
    featurize,
    judge_scores,
    mauve_score,
    require_package,
    rouge_scores,
    text_statistics,
)
from textldm.export import could_be_repo_id, hub_textldm_folder, is_textldm_folder
from textldm.families import Pipeline, family, load_pipeline, run_subfolders, truncate_prompts
from textldm.families.hf import HFPipeline
from textldm.families.masked import MaskedPipeline
from textldm.families.masked.hub import is_published_masked
from textldm.families.ssd import SSDPipeline
from textldm.families.ssd.hub import is_published_ssd
from textldm.utils import atomic_write_text, looks_like_path, resolve_device, write_json

log = logging.getLogger(__name__)

TABLE_METRICS = ("rouge1", "rouge2", "rougeL", "bertscore", "mauve")  # the paper's Table 1 columns (x100)
HUMAN = "human (2nd reference)"


def _by_length(jobs: list[tuple[int, list[int], int]], batch_size: int):
    """Batches of (item index, prompt ids) sharing one continuation length."""
    groups = defaultdict(list)
    for i, prompt, length in jobs:
        groups[length].append((i, prompt))
    for length in sorted(groups):
        rows = groups[length]
        for k in range(0, len(rows), batch_size):
            yield length, rows[k: k + batch_size]


def _continue_with(pipe: Pipeline, items: list[dict], sample: SampleConfig, cap: int, batch_size: int) -> list[str]:
    """Each item's prompt continued by the pipeline by its reference's length in the model's tokens (at most `cap`),
    prompts cut to what the model reads at that cap; batches share a length, batch b sampled at seed sample.seed + b."""
    tokenizer = pipe.tokenizer
    prompts = truncate_prompts([tokenizer(it["prompt"], add_special_tokens=False)["input_ids"] for it in items],
                               pipe.prompt_window(cap, sample), "the model's context")
    jobs = []
    for i, (item, prompt) in enumerate(zip(items, prompts)):
        n_ref = len(tokenizer(item["reference"], add_special_tokens=False)["input_ids"])
        jobs.append((i, prompt, max(1, min(n_ref, cap))))
    out = [""] * len(items)
    for b, (length, rows) in enumerate(_by_length(jobs, batch_size)):
        continued = pipe.continue_ids([p for _, p in rows], length, sample=dataclasses.replace(sample,
                                                                                             seed=sample.seed + b))
        for (i, _), ids in zip(rows, continued):
            out[i] = tokenizer.decode(ids)
    return out


def heldout_likelihood(pipe: Pipeline, items: list[dict]) -> dict:
    """The model's own likelihood of each item's reference given its prompt, over all the references' tokens (its
    tokenizer's): {"likelihood_nll": nats per token, "likelihood_ppl": its exponential, "likelihood_exact": False
    where it is a bound (masked diffusion's NELBO)}, or {} where the family has neither (TextLDM)."""
    total, tokens, exact = 0.0, 0, True
    for it in items:
        context = pipe.tokenizer(it["prompt"], add_special_tokens=False)["input_ids"]
        continuation = pipe.tokenizer(it["reference"], add_special_tokens=False)["input_ids"]
        if not continuation:
            continue
        try:
            nll, is_exact = pipe.continuation_nll(context, continuation)
        except UserError:
            return {}
        total, tokens, exact = total + nll, tokens + len(continuation), exact and is_exact
    if not tokens:
        return {}
    return {"likelihood_nll": total / tokens, "likelihood_ppl": float(math.exp(total / tokens)),
            "likelihood_exact": exact}


def warn_outside_trained_lengths(name: str, tokenizer, items: list[dict], context_min: int, target_min: int) -> int:
    """Warn when prompts or references are shorter than the DiT ever saw in training (dit.context_min /
    target_min): such items test lengths the model was not trained for. Returns how many items are."""
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    short = sum(count(it["prompt"]) < context_min or count(it["reference"]) < target_min for it in items)
    if short:
        log.warning("%s: %d of %d items have a prompt shorter than dit.context_min=%d or a reference shorter than "
                    "dit.target_min=%d tokens, lengths it was never trained on", name, short, len(items), context_min,
                    target_min)
    return short


def benchmark_agreement(pipe, items: list[dict]) -> float:
    """Prompt dependence on benchmark items: their prompts continued by a TextLDM pipeline from one shared noise
    (`heldout.same_noise_agreement`; the continuations' length is the sampler default, at most dit.target_max)."""
    prompts = truncate_prompts([pipe.tokenizer(it["prompt"], add_special_tokens=False)["input_ids"] for it in items],
                               pipe.prompt_tokens(), "the tokens it reads")
    return same_noise_agreement(pipe, prompts, min(pipe.config.sample.length, pipe.config.dit.target_max))


@dataclass
class Contestant:
    """A model in an evaluation: a name and its pipeline (any family's: `families.Pipeline`)."""
    name: str
    pipeline: Pipeline

    @property
    def kind(self) -> str:
        """The model's family (results.json's "models")."""
        return self.pipeline.family

    def continue_items(self, items: list[dict], sample: SampleConfig, batch_size: int, max_new_tokens: int,
                       **overrides) -> list[str]:
        """Continuations of the benchmark items' prompts under the evaluation's sampler settings (`overrides`: some
        of them changed, e.g. a sweep's steps), each model reading those that mean something to it."""
        sample = dataclasses.replace(sample, **overrides)
        pipe = self.pipeline
        if pipe.trained_lengths() is not None:  # a DiT's trained windows (a warning only)
            warn_outside_trained_lengths(self.name, pipe.tokenizer, items, *pipe.trained_lengths())
        return _continue_with(pipe, items, sample, pipe.longest_continuation(max_new_tokens), batch_size)


def scoring_device(preference: str) -> str:
    """The config's `device` for scoring, checked against this machine: "auto" = the GPU when there is one."""
    return str(resolve_device(preference))


def load_contestant(spec: str, device: str = "cpu", max_new_tokens: int = 128) -> Contestant:
    """`NAME=PATH` or `PATH`: a textldm model of any family (a model folder, a run folder, or a Hub repo id holding
    one), `hf:NAME`, or any HF causal LM name / folder (the teacher alias `smollm2-135m` included). A Hub id is tried
    as a textldm repo first, then as an HF causal LM."""
    name, _, target = spec.rpartition("=") if "=" in spec else ("", "", spec)
    if looks_like_path(target) and not Path(target).exists():
        raise UserError(f"--model '{target}' does not exist; give a textldm model or run folder, an AR baseline "
                        f"folder, or an HF causal LM (a name or a folder)")
    if not target.startswith("hf:"):
        pipe = _textldm_model(target, device)
        if pipe is not None:
            path = Path(target)
            default = path.parent.name if path.name in run_subfolders() else (path.name or target)
            label = getattr(pipe, "label", None) or family(pipe.family).label or pipe.family
            return Contestant(name or f"{default} ({label})", pipe)
    hf_name = target.removeprefix("hf:")
    published = [(is_published_masked, MaskedPipeline), (is_published_ssd, SSDPipeline)]  # the baselines' own
    for holds, pipeline in ([] if target.startswith("hf:") else published):  # checkpoints: MDLM, BD3-LM, SSD-LM
        if holds(target):
            pipe = pipeline.from_hub(target, device=device)
            return Contestant(name or f"{Path(target).name or target} ({pipe.label})", pipe)
    return Contestant(name or hf_name, HFPipeline.from_pretrained(hf_name, device=device,
                                                                  max_new_tokens=max_new_tokens))


def _textldm_model(target: str, device: str):
    """The textldm model `target` names (a folder, a run folder, a Hub repo holding one), or None when it is not one
    (e.g. an HF causal LM's name, or a Hub id that cannot be fetched: the HF loader then says why)."""
    path = Path(target)
    if path.is_dir():
        folders = [path] + [path / sub for sub in run_subfolders()]
        return load_pipeline(path, device) if any(is_textldm_folder(f) for f in folders) else None
    folder = hub_textldm_folder(target) if could_be_repo_id(target) else None
    return None if folder is None else load_pipeline(folder, device)


def judges(mcfg: MetricsConfig) -> list[tuple[str, str]]:
    """(key prefix, judge LM) of every judge the metrics name: metrics.judge, then metrics.second_judge if set."""
    return [("", mcfg.judge)] + ([("second_judge_", mcfg.second_judge)] if mcfg.second_judge else [])


class Scorer:
    """Scores generations for one benchmark; reference features (for MAUVE) are computed once."""

    def __init__(self, items: list[dict], mcfg: MetricsConfig, device: str = "cpu", metrics=None):
        self.items, self.mcfg, self.device = items, mcfg, device
        self.metrics = set(metrics or ("rouge", "bertscore", "mauve", "gen_ppl", "stats"))
        self.refs = [it["reference"] for it in items]
        self.reference_words = text_statistics(self.refs)["mean_words"]
        self._ref_features = None

    def ref_features(self):
        """The references' MAUVE features (computed once per benchmark)."""
        if self._ref_features is None:
            self._ref_features = featurize(self.refs, self.mcfg.mauve_featurizer, self.mcfg.mauve_pooling,
                                           device=self.device)
        return self._ref_features

    def __call__(self, generations: list[str], metrics=None) -> dict:
        m, wanted = self.mcfg, set(metrics or self.metrics)
        out = {}
        if "rouge" in wanted:
            out.update(rouge_scores(generations, self.refs))
        if "bertscore" in wanted:
            out["bertscore"] = bertscore(generations, self.refs, m.bertscore_model, m.bertscore_layers,
                                         device=self.device)
        if "mauve" in wanted:
            q = featurize(generations, m.mauve_featurizer, m.mauve_pooling, device=self.device)
            out["mauve"] = mauve_score(self.ref_features(), q, m.mauve_buckets)
        if "gen_ppl" in wanted:
            for prefix, judge in judges(m):
                out.update(judge_scores([it["prompt"] for it in self.items], generations, judge, self.device, prefix))
        if "stats" in wanted:
            stats = text_statistics(generations)
            out.update(stats)
            out["reference_words"] = self.reference_words
        return out


def run_eval(models: list[str], benchmarks: list[str], cfg: Config, out_dir: Path | str, *, device: str = "cpu",
             source: str | None = None, steps_sweep=(), cfg_sweep=(), max_new_tokens: int = 128,
             contestants: list[Contestant] | None = None) -> dict:
    """Score every model (and the human row) on every benchmark; sweeps run on the first benchmark."""
    out = Path(out_dir)
    mc = cfg.metrics
    contestants = contestants or [load_contestant(spec, device, max_new_tokens) for spec in models]
    names = [c.name for c in contestants]
    if len(set(names)) != len(names):
        raise UserError(f"two models share a name ({names}); name them with NAME=PATH")
    results = {"metrics_config": vars(mc).copy(), "sample": vars(cfg.sample).copy(), "benchmarks": {},
               "models": {c.name: c.kind for c in contestants}, "sweeps": {}}
    for bench_i, bench_name in enumerate(benchmarks):
        name, items = benchmark(bench_name, mc.samples, cfg.seed, source)
        scorer = Scorer(items, mc, device)
        rows = {}
        log.info("benchmark %s: %d items", name, len(items))
        human = [it.get("second_reference") for it in items]
        if all(isinstance(h, str) for h in human):
            rows[HUMAN] = scorer(human)
        prompts = [it["prompt"] for it in items]  # the true continuations' gen-PPL and binding: the human values
        references = {k: v for prefix, judge in judges(mc) for k, v in
                      judge_scores(prompts, scorer.refs, judge, device, prefix).items()} \
            if "gen_ppl" in scorer.metrics else {}
        for c in contestants:
            start = time.time()
            gens = c.continue_items(items, cfg.sample, mc.batch_size, max_new_tokens)
            seconds = time.time() - start
            _save_generations(out / "generations" / name / f"{_slug(c.name)}.jsonl", items, gens)
            rows[c.name] = {**scorer(gens), "generation_seconds": round(seconds, 2),
                            **heldout_likelihood(c.pipeline, items)}
            results["benchmarks"][name] = {"items": len(items), "rows": rows, "references": references}
            write_json(out / "results.partial.json", results)  # a crash later loses no finished row
            log.info("%s on %s: %s", c.name, name, {k: round(v, 4) for k, v in rows[c.name].items()
                                                     if k in TABLE_METRICS})
        results["benchmarks"][name] = {"items": len(items), "rows": rows, "references": references}
        if bench_i == 0:
            results["sweeps"] = _sweeps(contestants, items, scorer, cfg, steps_sweep, cfg_sweep, mc.batch_size,
                                        name, rows)
    write_json(out / "results.json", results)
    (out / "results.partial.json").unlink(missing_ok=True)
    atomic_write_text(out / "results.md", format_results(results) + "\n")
    if results["sweeps"]:
        plot_sweeps(results["sweeps"], out)
    return results


def _sweeps(contestants, items, scorer, cfg, steps_sweep, cfg_sweep, batch_size, bench, main_rows) -> dict:
    """Quality vs sampling steps and vs CFG scale, for TextLDM models (gen-PPL left out: it dominates time).
    The point at the eval's own sampler setting reuses the main row."""
    sweeps = {}
    keys = ("rouge", "bertscore", "mauve", "stats")
    for c in contestants:
        if not {"steps", "cfg_scale"} <= c.pipeline.sampler_settings or not (steps_sweep or cfg_sweep):
            continue
        entry = {"benchmark": bench, "steps": [], "cfg_scale": []}
        for axis, values, cast, own in (("steps", steps_sweep, int, cfg.sample.steps),
                                        ("cfg_scale", cfg_sweep, float, cfg.sample.cfg_scale)):
            for value in values:
                if cast(value) == own:
                    scores = {k: v for k, v in main_rows[c.name].items() if k != "gen_ppl"}
                else:
                    gens = c.continue_items(items, cfg.sample, batch_size, 0, **{axis: cast(value)})
                    scores = scorer(gens, keys)
                entry[axis].append({"value": cast(value), **scores})
        sweeps[c.name] = entry
    return sweeps


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("_") or "model"


def _save_generations(path: Path, items: list[dict], gens: list[str]) -> None:
    lines = [json.dumps({"id": it.get("id", i), "prompt": it["prompt"], "reference": it["reference"],
                         "generated": g}, ensure_ascii=False) for i, (it, g) in enumerate(zip(items, gens))]
    atomic_write_text(path, "\n".join(lines) + "\n")


def format_results(results: dict) -> str:
    """The evaluation results as markdown tables (Table-1 shape) per benchmark."""
    benches = list(results["benchmarks"])
    mc = results["metrics_config"]
    models = list(dict.fromkeys(m for b in benches for m in results["benchmarks"][b]["rows"]))
    lines = ["# Continuation benchmark results", "",
             f"ROUGE-1 / ROUGE-2 / ROUGE-L / BERTScore / MAUVE, all x100. BERTScore: {mc['bertscore_model']} layer "
             f"{mc['bertscore_layers']}; MAUVE: {mc['mauve_featurizer']} features ({mc['mauve_pooling']} pooling), "
             f"{mc['mauve_buckets']} buckets; gen-PPL judge: {mc['judge']}. Human row: an independent human "
             f"continuation (MAUVE ceiling; ROUGE/BERTScore of a fluent, prompt-blind writer).", "",
             "| model | " + " | ".join(f"{b} ({results['benchmarks'][b]['items']})" for b in benches) + " |",
             "|---" * (len(benches) + 1) + "|"]
    for m in models:
        cells = []
        for b in benches:
            row = results["benchmarks"][b]["rows"].get(m)
            cells.append("-" if row is None else "/".join(f"{100 * row[k]:.1f}" if k in row else "-"
                                                          for k in TABLE_METRICS))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    second = mc.get("second_judge") or ""
    judged = [("gen-PPL", "gen_ppl", ".1f"), ("prompt binding", "prompt_binding", ".3f")]
    judged += [(f"{label} ({second})", "second_judge_" + key, f) for label, key, f in judged] if second else []
    lines += ["", "Prompt binding: the judge's perplexity of a continuation after another item's prompt over that "
                  "after its own (1 = prompt-blind). The last row per benchmark: the true continuations."
              + (f" Second judge: {second}." if second else ""), "",
              "| model | benchmark | " + " | ".join(label for label, _, _ in judged) + " | distinct-1 | distinct-2 "
              "| distinct-3 | unigram entropy (bits) | words: generated / reference | generation s |",
              "|---" * (8 + len(judged)) + "|"]
    for b in benches:
        references = results["benchmarks"][b].get("references", {})
        for m, row in results["benchmarks"][b]["rows"].items():
            lines.append(f"| {m} | {b} | " + " | ".join(format(row.get(k, float("nan")), f) for _, k, f in judged)
                         + f" | {row['distinct_1']:.3f} | {row['distinct_2']:.3f} | {row['distinct_3']:.3f} "
                         f"| {row['unigram_entropy']:.2f} | {row['mean_words']:.1f} / {row['reference_words']:.1f} "
                         f"| {row.get('generation_seconds', '-')} |")
        if references:
            lines.append(f"| true continuations | {b} | "
                         + " | ".join(format(references[k], f) if k in references else "-" for _, k, f in judged)
                         + " | - | - | - | - | - | - |")
    likelihoods = [(b, m, row) for b in benches for m, row in results["benchmarks"][b]["rows"].items()
                   if "likelihood_nll" in row]
    if likelihoods:
        lines += ["", "The models' own likelihood of the references given their prompts (their tokenizers' tokens; "
                      "<= marks a bound: masked diffusion's NELBO, an upper bound on the perplexity):", "",
                  "| model | benchmark | NLL (nats / token) | perplexity |", "|---|---|---|---|"]
        for b, m, row in likelihoods:
            bound = "" if row["likelihood_exact"] else "<= "
            lines.append(f"| {m} | {b} | {bound}{row['likelihood_nll']:.3f} | {bound}{row['likelihood_ppl']:.1f} |")
    for name, sweep in results.get("sweeps", {}).items():
        for axis in ("steps", "cfg_scale"):
            if sweep[axis]:
                lines += ["", f"{name} on {sweep['benchmark']}: quality vs {axis}", "",
                          f"| {axis} | ROUGE-L | BERTScore | MAUVE | distinct-2 |", "|---|---|---|---|---|"]
                lines += [f"| {p['value']} | {100 * p['rougeL']:.1f} | {100 * p['bertscore']:.1f} "
                          f"| {100 * p['mauve']:.1f} | {p['distinct_2']:.3f} |" for p in sweep[axis]]
    return "\n".join(lines)


def plot_sweeps(sweeps: dict, out: Path) -> list[Path]:
    """Quality-vs-steps and quality-vs-CFG plots of the sweeps (PNG files)."""
    matplotlib = require_package("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis, file, label in (("steps", "quality_vs_steps.png", "sampling steps"),
                              ("cfg_scale", "cfg_sweep.png", "CFG scale")):
        entries = {n: s[axis] for n, s in sweeps.items() if s[axis]}
        if not entries:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        for ax, key, title in zip(axes, ("rougeL", "bertscore", "mauve"), ("ROUGE-L", "BERTScore", "MAUVE")):
            for name, points in entries.items():
                ax.plot([p["value"] for p in points], [100 * p[key] for p in points], marker="o", label=name)
            ax.set_xlabel(label)
            ax.set_title(title + " (x100)")
            if axis == "steps":
                ax.set_xscale("log")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        tmp = out / f".{file}.tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(out / file)
        written.append(out / file)
    return written
