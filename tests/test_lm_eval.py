"""lm-evaluation-harness runs textldm models offline on the small local tasks in tests/lm_eval_tasks/: TextLDM and
the AR baseline through the one registered model class, stop sequences honoured, loglikelihood tasks scored for the
AR baseline and refused, by name, for TextLDM."""
from pathlib import Path

import pytest

from textldm.utils import cut_at_stop

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "lm_eval_tasks"


def evaluate(model_dir: Path, tasks: list[str], **model_args):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import textldm.evaluation.lm_eval_model  # noqa: F401 (registers the `textldm` model class)

    args = ",".join(f"{k}={v}" for k, v in {"pretrained": model_dir, "batch_size": 4, **model_args}.items())
    return lm_eval.simple_evaluate(model="textldm", model_args=args, tasks=tasks,
                                   task_manager=TaskManager(include_path=str(TASKS)), log_samples=True)


@pytest.fixture()
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the task YAMLs name their data relative to the repository root


def test_textldm_and_the_ar_baseline_run_a_generation_task(models, at_root, tmp_path):
    """Both models answer every item; each answer is cut at the task's stop sequences ('.' and newline); the TextLDM
    answers are the pipeline's own continuations (same seed and settings), cut."""
    pipe, ar = models
    pipe.save_pretrained(tmp_path / "textldm")
    ar.save_pretrained(tmp_path / "ar")
    for name, kw in (("textldm", {"steps": 3, "seed": 0}), ("ar", {})):
        out = evaluate(tmp_path / name, ["textldm_tiny_continue"], **kw)
        result = out["results"]["textldm_tiny_continue"]
        assert 0 <= result["exact_match,none"] <= 1
        samples = out["samples"]["textldm_tiny_continue"]
        answers = [s["resps"][0][0] for s in samples]
        assert len(answers) == 6 and all("." not in a and "\n" not in a for a in answers)
    samples = evaluate(tmp_path / "textldm", ["textldm_tiny_continue"], steps=3, seed=0)["samples"]
    samples = samples["textldm_tiny_continue"]
    direct = pipe.generate([s["doc"]["prompt"] for s in samples], length=6, steps=3, seed=0, batch_size=4)
    assert [s["resps"][0][0] for s in samples] == [cut_at_stop(t, [".", "\n"])[0] for t in direct]


def test_loglikelihood_tasks_score_the_ar_baseline_and_refuse_textldm(models, at_root, tmp_path):
    pipe, ar = models
    ar.save_pretrained(tmp_path / "ar")
    acc = evaluate(tmp_path / "ar", ["textldm_tiny_choice"])["results"]["textldm_tiny_choice"]["acc,none"]
    assert 0 <= acc <= 1
    pipe.save_pretrained(tmp_path / "textldm")
    from textldm.errors import UserError
    with pytest.raises(UserError, match="no tractable likelihood"):
        evaluate(tmp_path / "textldm", ["textldm_tiny_choice"])


def test_the_ar_loglikelihood_is_the_models_own(models, tmp_path):
    """log p(continuation | context) summed from the AR baseline's logits, by hand."""
    import torch

    from textldm.evaluation.lm_eval_model import TextLDMHarnessModel

    _, ar = models
    ar.save_pretrained(tmp_path / "ar")
    lm = TextLDMHarnessModel(str(tmp_path / "ar"))

    class Request:
        def __init__(self, *args):
            self.args = args

    (logp, greedy), = lm.loglikelihood([Request("the man said", " that it")])
    ctx, cont = lm._encode("the man said"), lm._encode(" that it")
    with torch.no_grad():
        logits = ar.model(torch.tensor([ctx + cont[:-1]]))[0].float().log_softmax(-1)
    expected = sum(logits[len(ctx) - 1 + j, cont[j]].item() for j in range(len(cont)))
    assert logp == pytest.approx(expected, abs=1e-4) and isinstance(greedy, bool)


def test_the_cli_runs_the_harness_with_textldm_registered(models, at_root, tmp_path, capsys):
    from textldm.cli import run

    models[0].save_pretrained(tmp_path / "textldm")
    assert run(["lm-eval", "--model", "textldm", "--model_args", f"pretrained={tmp_path / 'textldm'},steps=2",
                "--tasks", "textldm_tiny_continue", "--include_path", str(TASKS), "--limit", "2"]) == 0
    assert "textldm_tiny_continue" in capsys.readouterr().out


class Request:
    def __init__(self, *args):
        self.args = args


def test_a_continuation_longer_than_the_window_is_scored_whole(models, tmp_path):
    """The AR baseline's window is 24 tokens: a 30-token continuation is scored in two pieces, the second read after
    the 24 tokens before it - by hand from the model's logits - and equals its rolling score after the context."""
    import torch

    from textldm.evaluation.lm_eval_model import TextLDMHarnessModel

    _, ar = models
    ar.save_pretrained(tmp_path / "ar")
    lm = TextLDMHarnessModel(str(tmp_path / "ar"))
    window = ar.seq_len
    ctx = lm._encode("the man said")
    cont = lm._encode(" " + " ".join(["that it was the"] * 8))[:window + 6]
    (logp, _), = lm.loglikelihood([Request("the man said", lm.pipe.tokenizer.decode(cont))])
    ids = ctx + cont
    expected = 0.0
    for start in (len(ctx), len(ctx) + window):
        end = min(start + window, len(ids))
        lo = max(0, end - 1 - window)
        with torch.no_grad():
            logits = ar.model(torch.tensor([ids[lo:end - 1]]))[0].float().log_softmax(-1)
        expected += sum(logits[j - 1 - lo, ids[j]].item() for j in range(start, end))
    assert logp == pytest.approx(expected, abs=1e-3)


def test_requests_with_different_generation_settings_get_different_noise(models, tmp_path):
    """Two groups of gen_kwargs, the same context: request i is the pipeline's continuation with noise row i (rows
    restarting per group would give both requests the same noise)."""
    from textldm.evaluation.lm_eval_model import TextLDMHarnessModel

    pipe, _ = models
    pipe.save_pretrained(tmp_path / "textldm")
    lm = TextLDMHarnessModel(str(tmp_path / "textldm"), steps=3, seed=0)
    context = "the man said that"
    out = lm.generate_until([Request(context, {"until": [], "max_gen_toks": 6}),
                             Request(context, {"until": [], "max_gen_toks": 7})])
    ids = pipe.encode_prompts([context])
    assert out == [pipe.tokenizer.decode(pipe.generate_ids(ids, n, steps=3, seed=0, first_index=i)[0])
                   for i, n in enumerate((6, 7))]


def test_a_masked_diffusion_baseline_runs_a_generation_task_and_refuses_loglikelihood(at_root, tmp_path,
                                                                                      tiny_model_dir):
    """The registered class reads any family's folder: an MDLM answers every item of the generation task (its
    answers the pipeline's own, cut at the stops) and refuses loglikelihood tasks, naming its bound."""
    import torch

    from textldm.config import Config, DiTConfig, MaskedConfig, SampleConfig
    from textldm.errors import UserError
    from textldm.families.masked import MaskedPipeline
    from textldm.models.lm import load_tokenizer
    from textldm.models.masked import MaskedDenoiser

    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    cfg = Config(dit=DiTConfig(context_min=2, context_max=8, target_min=2, target_max=8),
                 masked=MaskedConfig(width=32, heads=2, depth=1, embed_init="random"), sample=SampleConfig(steps=3))
    pipe = MaskedPipeline(cfg, tokenizer, MaskedDenoiser(cfg.masked, len(tokenizer)).eval(), tokenizer.eos_token_id)
    pipe.save_pretrained(tmp_path / "mdlm")
    out = evaluate(tmp_path / "mdlm", ["textldm_tiny_continue"], steps=3, seed=0)
    samples = out["samples"]["textldm_tiny_continue"]
    answers = [s["resps"][0][0] for s in samples]
    ids = [tokenizer(s["doc"]["prompt"], add_special_tokens=False)["input_ids"] for s in samples]
    direct = [tokenizer.decode(pipe.generate_ids([row], length=6, steps=3, seed=0, temperature=0.0, first_index=i)[0])
              for i, row in enumerate(ids)]  # lm-eval's greedy setting; request i draws as row i
    assert answers == [cut_at_stop(t, [".", "\n"])[0] for t in direct]
    with pytest.raises(UserError, match="a bound"):
        evaluate(tmp_path / "mdlm", ["textldm_tiny_choice"])
