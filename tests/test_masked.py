"""The masked-diffusion baselines (MDLM, BD3-LM): the loss against a hand-written NELBO (the 1/t weight, SUBS, the
stratified times), no future leak in BD3-LM, the cached samplers against an uncached hand-written loop, float64
draws, the reverse step's rates, the counted FLOPs against torch's counter, save/reload, and tiny models that must
learn: a copying task through the real loop and pipeline, and a Markov chain whose entropy rate the held-out bound
must approach from above."""
import math

import pytest
import torch

from builders import RandomStream, perturbed
from textldm.config import Config, DiTConfig, MaskedConfig, SampleConfig, TrainConfig
from textldm.diffusion import masking
from textldm.diffusion.masking import MIN_T, reverse_step, sample_categorical, sampling_probabilities, subs_log_probs
from textldm.errors import UserError
from textldm.families.masked import MaskedPipeline
from textldm.models.masked import MaskedDenoiser
from textldm.runtime.perf import TRAIN_FACTOR, masked_flops_per_sequence
from textldm.sampling.run import noise_seed
from textldm.training.batches import window_batches
from textldm.training.evaluate import evaluate_masked
from textldm.training.loop import fit
from textldm.training.objectives import MaskedObjective

VOCAB, CPU = 11, torch.device("cpu")
CONTEXT, TARGET = 8, 8  # the DiT's window layout the baselines share: 16 tokens


def tiny_model(block: int = 0, seed: int = 1, time_conditioning: bool = False, vocab: int = VOCAB) -> MaskedDenoiser:
    torch.manual_seed(seed)
    cfg = MaskedConfig(width=32, heads=2, depth=2, block_size=block, time_conditioning=time_conditioning,
                       embed_init="random")
    return perturbed(MaskedDenoiser(cfg, vocab), 0.2, seed).eval()


def tiny_pipeline(block: int = 0, eot: int = -1, steps: int = 6, **kw) -> MaskedPipeline:
    model = tiny_model(block, **kw)
    dit = DiTConfig(context_min=2, context_max=CONTEXT, target_min=2, target_max=TARGET)
    cfg = Config(dit=dit, masked=model.cfg, sample=SampleConfig(steps=steps, top_p=0.9, temperature=1.0))
    return MaskedPipeline(cfg, None, model, eot)


# the objective ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [0, 4])
def test_the_loss_is_the_masked_cross_entropy_weighted_by_one_over_t(block):
    """On a tiny batch: the objective's loss equals the NELBO written out - each position masked where its uniform is
    below its block's t, -log p(x_0) at masked positions only, times 1/t, summed over the batch's tokens and divided
    by their count; the times are stratified, one in each of the batch's N x blocks strata of [MIN_T, 1]."""
    model = tiny_model(block)
    objective = MaskedObjective(model)
    batch = objective.batch(RandomStream(VOCAB), 16, 6, torch.Generator().manual_seed(0), slice(None), CPU)
    loss, metrics = objective(batch, 0)
    ids, t, u = batch["ids"], batch["t"], batch["uniforms"]
    assert t.shape == (6, 1 if block == 0 else 16 // block)
    per_token = t.repeat_interleave(16 // t.shape[1], dim=1)
    masked = u < per_token
    x_t = torch.where(masked, torch.full_like(ids, VOCAB), ids)
    with torch.no_grad():
        logits = model(x_t, t, clean=ids if block else None)
    nll = -logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    expected = (nll / per_token * masked).sum() / ids.numel()
    assert torch.allclose(loss, expected, rtol=1e-4), (loss, expected)
    assert metrics["masked"] == pytest.approx(masked.float().mean().item())
    strata = ((t.flatten() - MIN_T) / (1 - MIN_T) * t.numel()).floor().sort().values
    assert torch.equal(strata, torch.arange(t.numel(), dtype=strata.dtype))


def test_a_clipped_schedule_draws_its_times_inside_the_interval():
    cfg = MaskedConfig(width=32, heads=2, depth=1, block_size=4, t_min=0.3, t_max=0.8)
    objective = MaskedObjective(MaskedDenoiser(cfg, VOCAB))
    t = objective.batch(RandomStream(VOCAB), 16, 32, torch.Generator().manual_seed(0), slice(None), CPU)["t"]
    assert t.min() >= 0.3 and t.max() <= 0.8 and t.max() - t.min() > 0.45
    with pytest.raises(UserError, match="t_min < t_max"):
        from textldm import load_config
        load_config("demo", ["masked.t_min=0.9", "masked.t_max=0.5"])


def test_subs_never_predicts_the_mask_and_carries_clean_tokens():
    logits = torch.randn(2, 5, VOCAB)
    x_t = torch.tensor([[3, VOCAB, 4, VOCAB, 0], [VOCAB] * 5])
    log_probs = subs_log_probs(logits, x_t, VOCAB)
    assert log_probs.shape[-1] == VOCAB  # no column for the mask: it is never a prediction
    clean = x_t != VOCAB
    assert torch.equal(log_probs[clean].argmax(-1), x_t[clean]) and (log_probs[clean].max(-1).values == 0).all()
    assert torch.isinf(log_probs[clean]).sum() == clean.sum() * (VOCAB - 1)
    assert torch.allclose(log_probs[~clean], logits[~clean].log_softmax(-1))


# BD3-LM's attention ---------------------------------------------------------------------------------------------
def test_no_future_leak_in_block_diffusion():
    """Changing a token of block 2 (in the clean and the noisy copy) moves no logit of blocks 0-1; it moves block
    2's (it reads itself) and block 3's (it reads the clean block 2)."""
    model = tiny_model(4)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 16), generator=g)
    x_t = torch.where(torch.rand(2, 16, generator=g) < 0.5, torch.full_like(ids, VOCAB), ids)
    changed_ids, changed_x = ids.clone(), x_t.clone()
    changed_ids[:, 9] = (ids[:, 9] + 1) % VOCAB
    changed_x[:, 9] = changed_ids[:, 9]
    with torch.no_grad():
        a, b = model(x_t, clean=ids), model(changed_x, clean=changed_ids)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:12], b[:, 8:12]) and not torch.allclose(a[:, 12:], b[:, 12:])


def test_the_cached_block_logits_equal_the_training_forward():
    model = tiny_model(4, time_conditioning=True)
    ids = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(4))
    x_t = ids.clone()
    x_t[:, 12:] = VOCAB
    t = torch.rand(3, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(x_t, t, clean=ids)[:, 12:]
        prefix = model.extend_prefix(None, ids[:, :8], torch.ones(3, 8, dtype=torch.bool))
        prefix = model.extend_prefix(prefix, ids[:, 8:12], torch.ones(3, 4, dtype=torch.bool))
        cached = model.block_logits(x_t[:, 12:], prefix, t[:, 3])
    assert torch.allclose(full, cached, atol=1e-5)


@pytest.mark.parametrize("block", [0, 4])
def test_left_padding_is_invisible(block):
    """A window left-padded with masked-out positions gives its real positions the logits of the same window
    without the padding (RoPE is relative): what lets prompts of any length share one layout."""
    model = tiny_model(block)
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(6))
    x_t = ids.clone()
    x_t[:, 8:] = VOCAB
    padded_ids, padded_x = (torch.cat([torch.zeros(1, 4, dtype=torch.long), v], 1) for v in (ids, x_t))
    keys = torch.arange(16)[None] >= 4
    with torch.no_grad():
        plain = model(x_t, clean=ids if block else None)
        padded = model(padded_x, clean=padded_ids if block else None, key_mask=keys)[:, 4:]
    assert torch.allclose(plain, padded, atol=1e-5)


# the samplers -------------------------------------------------------------------------------------------------
def reference_generate(pipe: MaskedPipeline, prompt: list[int], length: int, seed: int, row: int) -> list[int]:
    """The sampler written out for one row, uncached: every step runs the training forward over the whole window
    (MDLM) or over [clean prefix and the block ; noisy], no KV cache and no reuse of logits; the same layout
    (the last `context` tokens left-padded to `context`) and the same per-row draws."""
    model, s = pipe.model, pipe.config.sample
    B, C, L = model.block, pipe.prompt_tokens(), pipe.window
    out, unit = [], 0
    while len(out) < length:
        left = (prompt + out)[-C:]
        window = [0] * (C - len(left)) + left
        keys = [False] * (C - len(left)) + [True] * len(left)
        n_units = 1 if B == 0 else (L - C) // B
        for _ in range(n_units):
            if len(out) >= length:
                break
            n = L - C if B == 0 else B
            x = torch.tensor(window + [model.mask_id] * n)
            key_mask = torch.tensor(keys + [True] * n)[None]
            g = torch.Generator().manual_seed(noise_seed(seed, unit, row))
            for i in range(s.steps):
                t, t_next = 1 - i / s.steps, 1 - (i + 1) / s.steps
                if not (x[-n:] == model.mask_id).any():
                    continue
                with torch.no_grad():
                    if B == 0:
                        logits = model(x[None], key_mask=key_mask)[0, -n:]
                    else:
                        clean = torch.tensor(window + [0] * n)
                        logits = model(x[None], clean=clean[None], key_mask=key_mask)[0, -n:]
                x[-n:] = reverse_step(x[-n:], logits, t, t_next, g, model.mask_id, s.temperature, s.top_p)
            block = x[-n:].tolist()
            out += block
            window, keys = window + block, keys + [True] * n
            unit += 1
            if pipe.eot_id in block:
                return out[:length]
    return out[:length]


@pytest.mark.parametrize("block", [0, 4])
def test_the_cached_sampler_equals_an_uncached_loop_token_for_token(block):
    """Prompts of 3, 5 and 11 tokens (the last cut to the window's 8) continued by 13 tokens - two windows - in one
    batch: each row is the uncached loop's, and any batch gives a row the same text; the cache saved evaluations."""
    pipe = tiny_pipeline(block, steps=6)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    rows = pipe.generate_ids(prompts, length=13, seed=5)
    assert rows == [reference_generate(pipe, p[-CONTEXT:], 13, 5, i) for i, p in enumerate(prompts)]
    assert pipe.generate_ids(prompts[1:2], length=13, seed=5, first_index=1) == rows[1:2]
    units = 2 if block == 0 else 4  # two windows of 8, or four blocks of 4, for 13 tokens
    assert all(0 < e < units * 6 for e in pipe.last_evaluations), pipe.last_evaluations
    assert rows != pipe.generate_ids(prompts, length=13, seed=6)


def test_a_row_stops_after_the_window_that_wrote_its_end_of_text():
    pipe = tiny_pipeline(4, steps=4)
    free = pipe.generate_ids([[1, 2, 3]], length=16, seed=2)[0]
    pipe.eot_id = free[5]  # a token of its second block
    pipe.sampler.eot_id = free[5]
    ended = pipe.generate_ids([[1, 2, 3]], length=16, seed=2)[0]
    assert ended == free[: free.index(free[5])]


def test_sampling_draws_from_float64_probabilities(monkeypatch):
    """Every categorical draw reads float64 probabilities (float32 ones are refused), and the draws follow them."""
    seen = []
    real = masking.sample_categorical
    monkeypatch.setattr(masking, "sample_categorical", lambda p, g: seen.append(p.dtype) or real(p, g))
    tiny_pipeline(0).generate_ids([[1, 2, 3]], length=6, seed=0)
    assert seen and set(seen) == {torch.float64}
    with pytest.raises(TypeError, match="float64"):
        sample_categorical(torch.tensor([[0.5, 0.5]]), torch.Generator())
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0], dtype=torch.float64).expand(40000, 4)
    counts = torch.bincount(sample_categorical(probs, torch.Generator().manual_seed(0)), minlength=4).double()
    assert torch.allclose(counts / 40000, probs[0], atol=0.01) and counts[3] == 0


def test_temperature_and_nucleus_shape_the_probabilities():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    p = logits.double().softmax(-1)
    assert torch.allclose(sampling_probabilities(logits), p)
    assert torch.allclose(sampling_probabilities(logits, 0.5), (logits.double() / 0.5).softmax(-1))
    top = sampling_probabilities(logits, 1.0, 0.8)  # p = .64, .24, .09, .03: the top two reach 0.8
    assert torch.allclose(top, torch.cat([p[:2] / p[:2].sum(), torch.zeros(2, dtype=torch.float64)]))
    assert torch.equal(sampling_probabilities(logits, 0.0), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))


def test_the_reverse_step_unmasks_at_rate_t_minus_s_over_t():
    x = torch.full((20000,), VOCAB)
    logits = torch.zeros(20000, VOCAB)
    x_s = reverse_step(x, logits, 0.8, 0.6, torch.Generator().manual_seed(0), VOCAB)
    assert (x_s != VOCAB).float().mean().item() == pytest.approx(0.25, abs=0.01)  # (0.8 - 0.6) / 0.8
    assert (x_s[x_s != VOCAB] < VOCAB).all()
    clean = torch.arange(20) % VOCAB
    assert torch.equal(reverse_step(clean, torch.zeros(20, VOCAB), 0.5, 0.0, torch.Generator(), VOCAB), clean)
    assert not (reverse_step(x[:50], logits[:50], 0.3, 0.0, torch.Generator(), VOCAB) == VOCAB).any()  # s = 0


# FLOPs, persistence ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block, tc", [(0, False), (4, False), (4, True)])
def test_the_counted_flops_match_torchs_counter(block, tc):
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model(block, time_conditioning=tc)
    objective = MaskedObjective(model).train()
    batch = objective.batch(RandomStream(VOCAB), 16, 4, torch.Generator().manual_seed(0), slice(None), CPU)
    with FlopCounterMode(display=False) as counter:
        objective(batch, 0)[0].backward()
    counted = TRAIN_FACTOR * 4 * masked_flops_per_sequence(model, 16)
    assert counter.get_total_flops() == pytest.approx(counted, rel=0.1)


@pytest.mark.parametrize("block", [0, 4])
def test_a_saved_model_reloads_and_writes_the_same_text(block, tmp_path, tiny_model_dir):
    from textldm import load_pipeline
    from textldm.models.lm import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = tiny_model(block, vocab=len(tokenizer))
    cfg = Config(dit=DiTConfig(context_min=2, context_max=CONTEXT, target_min=2, target_max=TARGET), masked=model.cfg,
                 sample=SampleConfig(steps=4))
    pipe = MaskedPipeline(cfg, tokenizer, model, tokenizer.eos_token_id)
    pipe.save_pretrained(tmp_path / "masked")
    loaded = load_pipeline(tmp_path)  # a run folder: its masked/
    assert type(loaded) is MaskedPipeline and loaded.label == ("MDLM" if block == 0 else "BD3-LM (B=4)")
    assert loaded.generate("the man said that", length=6, seed=3) == pipe.generate("the man said that", length=6,
                                                                                   seed=3)
    assert "masked-diffusion" in (tmp_path / "masked" / "README.md").read_text()
    with pytest.raises(UserError, match="a bound"):
        loaded.token_logprobs([1, 2], [3])
    from textldm.evaluation.harness import heldout_likelihood

    items = [{"prompt": "the man said", "reference": " that it was"}, {"prompt": "it was", "reference": " the man"}]
    scored = heldout_likelihood(loaded, items)
    assert scored["likelihood_exact"] is False and math.isfinite(scored["likelihood_nll"])
    assert scored["likelihood_ppl"] == pytest.approx(math.exp(scored["likelihood_nll"]))


@pytest.mark.parametrize("block", [0, 4])
def test_the_bound_never_masks_the_context(block, monkeypatch):
    """nll_bound scores the continuation alone: the context's positions (and padding) are never masked and weigh
    nothing; a continuation position is masked at its block's time."""
    pipe = tiny_pipeline(block)
    seen = []
    real = pipe.model.weighted_nll

    def spy(x_t, t, ids, w, **kw):
        seen.append((x_t, w, kw["key_mask"]))
        return real(x_t, t, ids, w, **kw)

    monkeypatch.setattr(pipe.model, "weighted_nll", spy)
    pipe.nll_bound([1, 2, 3, 4, 5], [6, 7, 8], draws=64)
    (x_t, weights, keys), = seen
    step = max(block, 1)
    start = -(-5 // step) * step  # the context's 5 tokens, left-padded to whole blocks (BD3-LM: 8)
    assert (x_t[:, :start] != VOCAB).all() and (weights[:, :start] == 0).all()
    assert (x_t[:, start: start + 3] == VOCAB).any() and (weights[:, start: start + 3] > 0).any()
    assert (weights[~keys] == 0).all()


# learning ----------------------------------------------------------------------------------------------------------
class MarkovStream:
    """Windows of a stationary Markov chain over 4 tokens with a known entropy rate."""
    P = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.05, 0.05, 0.1, 0.8], [0.8, 0.1, 0.05, 0.05]])

    def stationary(self) -> torch.Tensor:
        vals, vecs = torch.linalg.eig(self.P.T)
        v = vecs[:, vals.real.argmax()].real
        return v / v.sum()

    def entropy_per_token(self, length: int) -> float:
        """H(X_1..X_L) / L of a stationary window: (H(pi) + (L - 1) * entropy rate) / L, in nats."""
        pi = self.stationary()
        h0 = -(pi * pi.log()).sum()
        rate = -(pi[:, None] * self.P * self.P.log()).sum()
        return float((h0 + (length - 1) * rate) / length)

    def windows(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.multinomial(self.stationary().expand(n, 4), 1, generator=generator)[:, 0]
        out = [x]
        for _ in range(length - 1):
            x = torch.multinomial(self.P[x], 1, generator=generator)[:, 0]
            out.append(x)
        return torch.stack(out, 1)


@pytest.mark.parametrize("block", [0, 4])
def test_the_held_out_bound_approaches_the_chains_entropy_from_above(block):
    """Trained through the real loop on a Markov chain, the held-out NELBO per token (times stratified over [0, 1])
    falls from about log 4 towards the chain's entropy per token and stays above it (a bound): untrained it is
    >= 1.3 nats, trained within 0.25 of the floor (0.86 nats)."""
    stream, L = MarkovStream(), 16
    floor = stream.entropy_per_token(L)
    torch.manual_seed(0)
    model = MaskedDenoiser(MaskedConfig(width=32, heads=2, depth=2, block_size=block, embed_init="random"), 4)
    objective = MaskedObjective(model)
    before = evaluate_masked(objective, stream, L, 8, 64, seed=9, device=CPU)["nelbo"]
    fit(objective, window_batches(stream, objective, L, 64, seed=1, device=CPU),
        TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup_steps=20, log_every=10**6), progress=False,
        precision="fp32")
    after = evaluate_masked(objective, stream, L, 16, 64, seed=9, device=CPU)["nelbo"]
    assert before > 1.3 and floor - 0.03 < after < floor + 0.25, (before, after, floor)


class PeriodicStream:
    """Windows repeating a random block of 4 tokens: the continuation is a copy of the prompt's tokens 4 before."""

    def windows(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        blocks = torch.randint(0, 10, (n, 4), generator=generator)
        phase = torch.randint(0, 4, (n, 1), generator=generator)
        return blocks.gather(1, (phase + torch.arange(length)) % 4)


@pytest.mark.parametrize("block, floor", [(0, 0.65), (4, 0.95)])
def test_a_tiny_baseline_learns_to_continue_a_prompt(block, floor):
    """Through the real loop and pipeline, a tiny MDLM / BD3-LM continues held-out periodic prompts (greedy) far
    above chance (10%), and at chance given another row's prompt. Measured over seeds 0, 1 (400 steps): MDLM 0.81,
    0.79 (0.90, 0.88 at 800 steps: a clean prefix and a masked suffix is a rare layout in its training); BD3-LM 1.0,
    1.0. Given another prompt: 0.08-0.10."""
    torch.manual_seed(0)
    stream = PeriodicStream()
    model = MaskedDenoiser(MaskedConfig(width=64, heads=4, depth=2, block_size=block, embed_init="random"), 10)
    objective = MaskedObjective(model)
    fit(objective, window_batches(stream, objective, 16, 64, seed=1, device=CPU),
        TrainConfig(steps=400, batch_size=64, lr=3e-3, warmup_steps=20, log_every=10**6), progress=False,
        precision="fp32")
    cfg = Config(dit=DiTConfig(context_min=2, context_max=CONTEXT, target_min=2, target_max=TARGET), masked=model.cfg,
                 sample=SampleConfig(steps=8, temperature=0.0))
    pipe = MaskedPipeline(cfg, None, model.eval(), -1)
    windows = stream.windows(64, 16, torch.Generator().manual_seed(123))
    rows = pipe.generate_ids(windows[:, :CONTEXT].tolist(), length=TARGET)
    accuracy = (torch.tensor(rows) == windows[:, CONTEXT:]).float().mean().item()
    assert accuracy >= floor, accuracy
    others = pipe.generate_ids(windows[:, :CONTEXT].roll(1, 0).tolist(), length=TARGET)
    assert (torch.tensor(others) == windows[:, CONTEXT:]).float().mean().item() < 0.2
    assert math.isfinite(pipe.nll_bound(windows[0, :CONTEXT].tolist(), windows[0, CONTEXT:].tolist()))


# the published checkpoints' loading path, on a tiny stand-in ---------------------------------------------------------
STANDIN = '''
import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class StandinConfig(PretrainedConfig):
    model_type = "bd3lm"

    def __init__(self, vocab_size=12, hidden_dim=16, model_length=16, block_size=4, cross_attn=True, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_dim, self.model_length = vocab_size, hidden_dim, model_length
        self.block_size, self.cross_attn = block_size, cross_attn


class Standin(PreTrainedModel):
    """kuleshov-group's interface: forward(input_ids, timesteps) -> MaskedLMOutput(logits over vocab + mask); with
    cross_attn the input is [x_t ; x_0] at model_length each. Each noisy token reads itself and the mean of the clean
    tokens of the blocks before its own (MDLM layout: of every noisy token)."""
    config_class = StandinConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, config.vocab_size)
        self.post_init()

    def forward(self, input_ids=None, timesteps=None, sample_mode=None, store_kv=None, output_hidden_states=None,
                return_dict=None):
        x = self.embed(input_ids)
        if self.config.cross_attn:
            n, B = self.config.model_length, self.config.block_size
            assert input_ids.shape[1] == 2 * n, input_ids.shape
            noisy, clean = x[:, :n], x[:, n:]
            blocks = torch.arange(n) // B
            earlier = (blocks[None, :] < blocks[:, None]).float()
            context = earlier @ clean / earlier.sum(1, keepdim=True).clamp_min(1)
            logits = self.out(torch.cat([noisy + context, noisy], 1))
        else:
            logits = self.out(x + x.mean(1, keepdim=True))
        return MaskedLMOutput(logits=logits)
'''


@pytest.fixture(params=["bd3lm", "mdlm"])
def published_standin(request, tmp_path, tiny_model_dir, monkeypatch):
    """A folder laid out like kuleshov-group's checkpoints: config.json (model_type, auto_map), the remote code,
    the weights - and here a tokenizer (theirs is GPT-2's)."""
    import importlib.util
    import sys

    from textldm.models.lm import load_tokenizer

    folder, code = tmp_path / request.param, tmp_path / "code"
    code.mkdir()
    (code / "modeling_standin.py").write_text(STANDIN)
    spec = importlib.util.spec_from_file_location("modeling_standin", code / "modeling_standin.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "modeling_standin", module)  # transformers copies the class's file from here
    spec.loader.exec_module(module)
    module.StandinConfig.register_for_auto_class()
    module.Standin.register_for_auto_class("AutoModelForMaskedLM")
    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    config = module.StandinConfig(vocab_size=len(tokenizer) + 1, cross_attn=request.param == "bd3lm")
    config.model_type = request.param
    module.Standin(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, module


def test_a_published_checkpoint_is_driven_by_this_projects_sampler_and_bound(published_standin):
    """`textldm eval --model FOLDER_OR_HUB_ID` of a published MDLM / BD3-LM layout loads it through the masked
    family's adapter: its logits are the network's own (the mask's column dropped; BD3-LM's [noisy ; clean] input
    at its full length), the sampler writes vocabulary tokens, and the bound is finite."""
    from textldm.evaluation.harness import load_contestant

    folder, module = published_standin
    contestant = load_contestant(str(folder))
    pipe = contestant.pipeline
    assert type(pipe) is MaskedPipeline and pipe.label == ("BD3-LM (B=4)" if folder.name == "bd3lm" else "MDLM")
    adapter, V = pipe.model, pipe.model.vocab_size
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(1))
    x_t = torch.where(torch.rand(2, 16, generator=torch.Generator().manual_seed(2)) < 0.5,
                      torch.full_like(ids, V), ids)
    with torch.no_grad():
        own = adapter.hf(input_ids=torch.cat([x_t, ids], 1) if adapter.block else x_t).logits[:, :16, :V]
        assert torch.allclose(adapter(x_t, clean=ids if adapter.block else None), own)
    rows = pipe.generate_ids([[3, 4, 5], [6, 7]], length=6, seed=0)
    assert all(len(r) <= 6 and all(0 <= tok < V for tok in r) for r in rows) and any(rows)
    nll, exact = pipe.continuation_nll([3, 4, 5], [6, 7, 8])
    assert math.isfinite(nll) and nll > 0 and not exact


@pytest.mark.parametrize("family", ["masked", "ssd"])
def test_a_diffusion_baseline_is_served_beside_the_textldm_model(family, models, tiny_model_dir, tmp_path):
    """`textldm serve --ar DIR` takes any family's folder: a masked-diffusion or SSD-LM baseline answers the web app's
    side panel and /v1/completions (by its id), with the Python API's text for the request's seed."""
    from fastapi.testclient import TestClient

    from textldm import load_pipeline
    from textldm.families.ssd import SSDPipeline
    from textldm.models.lm import load_tokenizer
    from textldm.models.ssd import SimplexDenoiser
    from textldm.serving.app import create_app
    from textldm.serving.service import ServeLimits

    tokenizer = load_tokenizer(tiny_model_dir)
    dit = DiTConfig(context_min=2, context_max=8, target_min=2, target_max=8)
    torch.manual_seed(0)
    if family == "masked":
        cfg = Config(dit=dit, masked=MaskedConfig(width=32, heads=2, depth=1, embed_init="random"),
                     sample=SampleConfig(steps=3))
        side = MaskedPipeline(cfg, tokenizer, MaskedDenoiser(cfg.masked, len(tokenizer)).eval(), tokenizer.eos_token_id)
    else:
        from textldm.config import SSDConfig

        cfg = Config(dit=dit, ssd=SSDConfig(width=32, heads=2, depth=1, block_size=4, embed_init="random"),
                     sample=SampleConfig(steps=3, top_p=0.5))
        side = SSDPipeline(cfg, tokenizer, SimplexDenoiser(cfg.ssd, len(tokenizer)).eval(), tokenizer.eos_token_id)
    side.save_pretrained(tmp_path / family)
    side = load_pipeline(tmp_path / family)
    app = create_app(models[0], side, ServeLimits(max_length=16, max_steps=8), ar_path=str(tmp_path / family))
    with TestClient(app) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert len(ids) == 2 and ids[1] == tmp_path.name  # the run folder's name (the model's folder is masked/, ssd/)
        answer = client.post("/v1/completions", json={"model": ids[1], "prompt": "the man said", "max_tokens": 5,
                                                      "seed": 3}).json()
        assert answer["choices"][0]["text"] == side.generate("the man said", length=5, seed=3)[0]
        panel = client.post("/api/ar/generate", json={"prompt": "the man said", "length": 5, "seed": 3}).json()
        assert panel["continuation"] == answer["choices"][0]["text"]


@pytest.mark.parametrize("block", [0, 4])
def test_every_family_is_scored_on_equally_long_continuations(block):
    """The harness continues each item by its reference's length up to the pipeline's `longest_continuation`: at one
    config the masked baselines and SSD-LM stop where TextLDM (dit.target_max) and the AR baseline (half its window)
    do, never writing (and being judged on) several windows where the others write one."""
    from textldm.config import ARConfig, SSDConfig
    from textldm.families.ar import ARPipeline
    from textldm.families.ssd import SSDPipeline
    from textldm.models.ar import CausalLM
    from textldm.models.ssd import SimplexDenoiser

    dit = DiTConfig(context_min=2, context_max=8, target_min=2, target_max=8)
    cfg = Config(dit=dit, masked=MaskedConfig(width=32, heads=2, depth=1, block_size=block, embed_init="random"),
                 ssd=SSDConfig(width=32, heads=2, depth=1, block_size=4, embed_init="random"),
                 ar=ARConfig(width=32, heads=2, depth=1, embed_init="random"))
    masked = MaskedPipeline(cfg, None, MaskedDenoiser(cfg.masked, VOCAB), -1)
    ssd = SSDPipeline(cfg, None, SimplexDenoiser(cfg.ssd, VOCAB), -1)
    ar = ARPipeline(cfg, None, CausalLM(cfg.ar, VOCAB), -1)
    for requested, expected in [(128, dit.target_max), (5, 5)]:
        assert {p.longest_continuation(requested) for p in (masked, ssd, ar)} == {expected}
