"""What users and published numbers rely on, pinned (issue 45): the OpenAI endpoint's semantics for every model it
serves (usage counts, stop sequences, seeds), the API key, lm-eval's greedy flag, the judge's prompt window, the
harness's continuation length, and block-mode training's noising, conditioning and loss mask. Each test compares with
a reference computed another way (a hand count, the Python API, the recomputed draws); docs/testing.md lists them
beside the mutants they kill.

The server's contracts run for every model `GET /v1/models` lists, through `OpenAIFacade.pipeline(id)`: a family
served later joins them without a new test."""
from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from builders import RandomStream, dit_config, new_dit, objective_of, perturbed
from test_serve import LIMITS
from textldm.config import VAEConfig
from textldm.models.vae import TextVAE
from textldm.serving.app import create_app
from textldm.utils import cut_at_stop

PROMPT = "the man said that it was the"


@pytest.fixture(scope="module")
def server(models):
    """The tiny TextLDM model and AR baseline behind the app: (test client, the OpenAI facade, the served ids)."""
    pipe, ar = models
    app = create_app(pipe, ar, LIMITS, model_path="/runs/tiny/model", ar_path="/runs/tiny/ar")
    with TestClient(app) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        yield client, app.state.openai, ids


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json={"steps": 3, **body})
    assert r.status_code == 200, r.text
    return r.json()


def streamed(client, **body) -> str:
    r = client.post("/v1/completions", json={"steps": 3, "stream": True, **body})
    assert r.status_code == 200, r.text
    import json

    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])


def tokens(pipe, text: str) -> int:
    return len(pipe.tokenizer(text, add_special_tokens=False)["input_ids"])


def two_stops(text: str) -> tuple[str, str]:
    """Two stop sequences of `text`, each a space and a word: (a later one, an earlier one) by where each first
    occurs, the earlier one past the text's start."""
    firsts = sorted({text.find(" " + w): " " + w for w in text.split(" ")[1:] if w}.items())
    firsts = [(i, w) for i, w in firsts if i > 0]
    assert len(firsts) >= 3, text
    return firsts[-1][1], firsts[1][1]


# the OpenAI endpoint, for every served model -------------------------------------------------------------------------
def test_every_served_model_has_its_pipeline(server):
    """The contracts below run for every id /v1/models lists (today the TextLDM model and the AR baseline)."""
    client, facade, ids = server
    assert len(ids) == 2 and len({id(facade.pipeline(m)) for m in ids}) == 2


def test_usage_counts_only_the_tokens_of_the_returned_text(server):
    """A stop sequence cuts the text: completion_tokens is the returned text's token count (a hand count), not the
    generated tokens'."""
    client, facade, ids = server
    for model in ids:
        pipe = facade.pipeline(model)
        full = complete(client, model=model, prompt=PROMPT, max_tokens=20, seed=7)
        text = full["choices"][0]["text"]
        late, early = two_stops(text)
        cut = complete(client, model=model, prompt=PROMPT, max_tokens=20, seed=7, stop=[early])
        kept = text[: text.index(early)]
        assert cut["choices"][0]["text"] == kept and cut["choices"][0]["finish_reason"] == "stop", model
        assert cut["usage"]["completion_tokens"] == tokens(pipe, kept) < tokens(pipe, text), model
        assert full["usage"]["completion_tokens"] == tokens(pipe, text), model
        assert cut["usage"]["total_tokens"] == cut["usage"]["prompt_tokens"] + cut["usage"]["completion_tokens"]


def test_the_earliest_of_several_stop_sequences_ends_the_text_streamed_or_not(server):
    """stop=[later, earlier]: the text ends at the earlier one, whatever their order in the list - in the answer and,
    for a model that streams, in the joined stream."""
    client, facade, ids = server
    for model in ids:
        text = complete(client, model=model, prompt=PROMPT, max_tokens=20, seed=7)["choices"][0]["text"]
        late, early = two_stops(text)
        expected = text[: text.index(early)]
        for stops in ([late, early], [early, late], [late, "never there", early]):
            assert complete(client, model=model, prompt=PROMPT, max_tokens=20, seed=7,
                            stop=stops)["choices"][0]["text"] == expected, (model, stops)
            if facade.streams(model):
                assert streamed(client, model=model, prompt=PROMPT, max_tokens=20, seed=7, stop=stops) == expected


@pytest.mark.parametrize("case", [
    ("one two three", [" three", " two"], "one", "stop"),
    ("one two three", [" two", " three"], "one", "stop"),
    ("one two three", ["x", "three"], "one two ", "stop"),
    ("one two three", ["", "two"], "one ", "stop"),  # an empty sequence never matches
    ("one two three", ["four"], "one two three", None),
    ("one two one", ["one"], "", "stop"),
    ("ab", ["b", "ab"], "", "stop"),  # overlapping: the earliest start wins
])
def test_the_stop_rule_on_a_table_of_cases(case):
    """The one stop rule (the endpoint, its stream and lm-eval's generate_until): the text up to the earliest start of
    any non-empty stop sequence."""
    text, stops, kept, reason = case
    assert cut_at_stop(text, stops) == (kept, reason)


def test_a_requests_seed_gives_the_python_apis_text_for_that_seed(server):
    """The same seed, the same text, equal to the served pipeline's `generate` with that seed (the AR baseline
    sampling at its temperature 1: the seed decides); another seed, other text."""
    client, facade, ids = server
    for model in ids:
        pipe = facade.pipeline(model)
        settings = {"steps": 3} if "steps" in pipe.sampler_settings else {}
        texts = {}
        for seed in (1, 2, 3):
            answers = [complete(client, model=model, prompt=PROMPT, max_tokens=12, seed=seed)["choices"][0]["text"]
                       for _ in range(2)]
            assert answers[0] == answers[1] == pipe.generate(PROMPT, length=12, seed=seed, **settings)[0], model
            texts[seed] = answers[0]
        assert len(set(texts.values())) > 1, model


@pytest.mark.parametrize("header,ok", [
    ({"Authorization": "Bearer s3cret"}, True),
    ({"authorization": "bearer s3cret"}, True),  # the scheme is case-insensitive (RFC 7235)
    ({"Authorization": "BEARER s3cret"}, True),
    ({}, False),
    ({"Authorization": "s3cret"}, False),
    ({"Authorization": "Bearer s3cretX"}, False),
    ({"Authorization": "Bearer xs3cret"}, False),
    ({"Authorization": "Bearer  s3cret"}, False),
    ({"Authorization": "Basic s3cret"}, False),
    ({"Authorization": "Bearers3cret"}, False),
    ({"Authorization": "xBearer s3cret"}, False),
    ({"Authorization": "Token bearer s3cret"}, False),
    ({"Authorization": "Bearer S3CRET"}, False),
    ({"X-Api-Key": "s3cret"}, False),
    ({"X-Authorization": "Bearer s3cret"}, False),
    ({"Proxy-Authorization": "Bearer s3cret"}, False),
])
def test_the_api_key_is_accepted_only_as_an_authorization_bearer_token(models, header, ok):
    pipe, ar = models
    with TestClient(create_app(pipe, ar, LIMITS, api_key="s3cret")) as c:
        assert (c.get("/v1/models", headers=header).status_code == 200) is ok
        assert (c.get("/api/info", headers=header).status_code == 200) is ok


# evaluation: lm-eval's greedy flag, the judge's window, the harness's lengths ----------------------------------------
def test_lm_evals_greedy_flag_is_true_only_when_every_continuation_token_is_the_argmax(models, tmp_path):
    from textldm.evaluation.lm_eval_model import TextLDMHarnessModel

    _, ar = models
    ar.save_pretrained(tmp_path / "ar")
    lm = TextLDMHarnessModel(str(tmp_path / "ar"))
    context = lm._encode("the man said that")
    greedy = []
    with torch.no_grad():  # the argmax chain, by hand from the model's logits
        for _ in range(4):
            greedy.append(int(ar.model(torch.tensor([context + greedy]))[0, -1].argmax()))
    other = lambda token: (token + 1) % ar.model.vocab_size  # noqa: E731 (any token but the argmax)
    assert lm._logprobs("loglikelihood", context, greedy)[1] is True
    for j in range(4):  # one token off the argmax, anywhere in the continuation, makes it not greedy
        continuation = greedy[:j] + [other(greedy[j])] + greedy[j + 1:]
        assert lm._logprobs("loglikelihood", context, continuation)[1] is False, j


def test_the_judge_reads_the_last_tokens_of_a_prompt_longer_than_its_window(tiny_model_dir):
    """A prompt longer than the judge's window keeps its last tokens - those right before the continuation - for
    gen-PPL and prompt binding alike: both equal a hand computation with the HF model on that window."""
    import math

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from textldm.evaluation.metrics import continuation_nll, judge_scores

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    words = "the of and to a in that is was he for it with as his on be at by i this had not are".split()
    prompts = [" ".join(words[(i + k) % len(words)] for k in range(700)) for i in range(2)]
    texts = [" it was the man", " he said that"]

    def nll(prompt: str, text: str, window: int = 512) -> tuple[float, int]:
        p, c = (tok(x, add_special_tokens=False)["input_ids"] for x in (prompt, text))
        ids = p[len(p) - (window - len(c)):] + c  # the prompt's last tokens, then the continuation
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return -sum(float(logp[len(ids) - len(c) - 1 + j, c[j]]) for j in range(len(c))), len(c)

    own = [nll(p, t) for p, t in zip(prompts, texts)]
    assert continuation_nll(prompts, texts, tiny_model_dir) == pytest.approx(
        (sum(n for n, _ in own), sum(k for _, k in own)), rel=1e-4)
    other = [nll(p, t) for p, t in zip(prompts[1:] + prompts[:1], texts)]
    scores = judge_scores(prompts, texts, tiny_model_dir)
    tokens_ = sum(k for _, k in own)
    assert scores["gen_ppl"] == pytest.approx(math.exp(sum(n for n, _ in own) / tokens_), rel=1e-4)
    assert scores["prompt_binding"] == pytest.approx(
        math.exp((sum(n for n, _ in other) - sum(n for n, _ in own)) / tokens_), rel=1e-4)
    head = [nll(p[: len(p) // 2], t) for p, t in zip(prompts, texts)]  # a window from the prompt's start differs
    assert abs(sum(n for n, _ in head) - sum(n for n, _ in own)) > 1e-3


def test_every_contestant_continues_each_item_by_at_most_its_references_length(models, tiny_model_dir):
    """The harness's oracle length, for every family it scores (TextLDM, the AR baseline, an HF causal LM): item i's
    continuation has at most as many of the model's tokens as its reference (and at least one), capped by what the
    model can produce."""
    from textldm.config import SampleConfig
    from textldm.evaluation.harness import Contestant, load_contestant

    pipe, ar = models
    contestants = [Contestant("textldm", pipe), Contestant("ar", ar),
                   load_contestant(f"hf={tiny_model_dir}")]
    assert sorted(c.kind for c in contestants) == ["ar", "hf", "textldm"]
    refs = [" it", " it was the", " he said that it was the man", " " + " ".join(["the man said"] * 12)]
    items = [{"prompt": "the man said that", "reference": r} for r in refs]
    for c in contestants:
        tok = c.pipeline.tokenizer
        cap = {"textldm": pipe.config.dit.target_max, "ar": min(16, ar.seq_len // 2), "hf": 16}[c.kind]
        texts = c.continue_items(items, SampleConfig(steps=2, temperature=1.0), batch_size=4, max_new_tokens=16)
        for item, text in zip(items, texts):
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            assert n <= min(len(tok(item["reference"], add_special_tokens=False)["input_ids"]), cap), (c.kind, text)


# block-mode training: the noising, the clean prefix's condition, the loss mask ---------------------------------------
def block_setup(block_t: str = "per_block"):
    torch.manual_seed(0)
    vae = TextVAE(VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=8, max_len=16,
                            repa_weight=0.0, encoder_block_size=1), 40).eval().requires_grad_(False)
    cfg = dit_config("blocks", blocks={"size": 3, "t": block_t}, width=32, heads=2, depth=2, context_min=2,
                     context_max=6, target_min=2, target_max=6)
    mode = objective_of(perturbed(new_dit(cfg, 8)))
    return vae, mode


def test_block_mode_noises_each_position_with_its_own_blocks_time(monkeypatch):
    """The x_t the DiT reads: position p of a window is (1 - t_b) noise + t_b clean with b = p // B, the t its block
    is conditioned on - recomputed from the batch, position by position."""
    vae, mode = block_setup()
    batch = mode.batch(RandomStream(), vae, 4, torch.Generator().manual_seed(3), slice(None), torch.device("cpu"))
    assert len(set(batch["t"][0].tolist())) == batch["t"].shape[1]  # per block: every block its own time
    seen = {}

    def spy(x_t, t, **kw):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)
    monkeypatch.setattr(mode.dit, "forward_blocks", spy)
    mode.errors(batch, None)
    B = mode.dit.cfg.blocks.size
    assert torch.equal(seen["t"], batch["t"])
    for p in range(batch["clean"].shape[1]):
        t = batch["t"][:, p // B, None]
        expected = (1 - t) * batch["noise"][:, p] + t * batch["clean"][:, p]
        assert torch.allclose(seen["x_t"][:, p], expected, atol=1e-6), p


def test_block_modes_clean_prefix_is_conditioned_on_the_data_end_of_the_path(monkeypatch):
    """Clean latents are the path's t = 1 end: in training ([clean ; noisy]) and when the sampler caches a prefix,
    every DiT block modulates them with the condition of t = 1 - never t = 0, never a noisy block's time."""
    vae, mode = block_setup()
    dit = mode.dit
    batch = mode.batch(RandomStream(), vae, 2, torch.Generator().manual_seed(4), slice(None), torch.device("cpu"))
    data_end = dit.condition(torch.ones(2))
    assert not torch.allclose(data_end, dit.condition(torch.zeros(2)))
    seen = []
    block = dit.layers[0]
    original = block.forward
    monkeypatch.setattr(block, "forward", lambda x, rope, mask, cond, **kw: (seen.append((x.shape[1], cond)),
                                                                              original(x, rope, mask, cond=cond,
                                                                                       **kw))[1])
    with torch.no_grad():
        mode.errors(batch, None)
        L = batch["clean"].shape[1]
        (n, cond), = seen
        assert n == 2 * L and torch.allclose(cond.values[:, 0], data_end)  # row 0: the clean copy's condition
        assert torch.equal(cond.index[:L], torch.zeros(L, dtype=cond.index.dtype))
        seen.clear()
        dit.extend_prefix(None, batch["clean"][:, :3], torch.ones(2, 3, dtype=torch.bool))
        (_, cond), = seen
        assert torch.allclose(cond, data_end)


@pytest.mark.parametrize("kind", ["window", "blocks"])
def test_the_loss_averages_exactly_the_real_target_tokens(kind):
    """Variable-length targets (full window) and left-padded first blocks (block mode): the training loss is the mean
    over rows of each row's mean error over exactly its real target tokens - the mask recomputed from the batch's
    own draws (the generator replayed), padding never in it."""
    torch.manual_seed(0)
    vae = TextVAE(VAEConfig(width=32, heads=2, encoder_depth=1, decoder_depth=1, latent_channels=8, max_len=16,
                            repa_weight=0.0, encoder_block_size=1), 40).eval().requires_grad_(False)
    cfg = dit_config(kind, blocks={"size": 3} if kind == "blocks" else None, width=32, heads=2, depth=2,
                     context_min=2, context_max=6, target_min=1, target_max=6)
    mode = objective_of(perturbed(new_dit(cfg, 8)))
    N, g = 8, torch.Generator().manual_seed(5)
    batch = mode.batch(RandomStream(), vae, N, g, slice(None), torch.device("cpu"))
    replay = torch.Generator().manual_seed(5)
    RandomStream().windows(N, cfg.window_tokens, replay)
    if kind == "window":
        torch.randint(cfg.context_min, cfg.context_max + 1, (N,), generator=replay)
        lengths = torch.randint(cfg.target_min, cfg.target_max + 1, (N,), generator=replay)
        real = torch.arange(cfg.target_max)[None] < lengths[:, None]
        assert lengths.min() < cfg.target_max  # some rows are padded
    else:
        pad = torch.randint(0, cfg.blocks.size, (N,), generator=replay)
        real = torch.arange(cfg.window_tokens)[None] >= pad[:, None]
        assert pad.max() > 0
    errors = mode.errors(batch, batch["drop"]).detach()
    by_hand = torch.stack([errors[i][real[i]].mean() for i in range(N)]).mean()
    loss, _ = mode(batch, 0)
    assert torch.allclose(loss.detach(), by_hand, atol=1e-6)
    assert not torch.allclose(by_hand, errors.mean(1).mean())  # padding in the mean would show
