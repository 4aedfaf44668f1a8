"""The OpenAI-compatible endpoint, driven by the official `openai` client against a live local server (127.0.0.1),
and the API key."""
import json

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from test_serve import LIMITS, burst, live_server
from textldm.serving.app import create_app


@pytest.fixture(scope="module")
def served(models):
    pipe, ar = models
    app = create_app(pipe, ar, LIMITS, model_path="/runs/tiny/model", ar_path="/runs/tiny/ar")
    with live_server(app) as url:
        yield pipe, ar, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), url


def test_models_and_completions_equal_the_python_api(served):
    """/v1/models lists both models; a completion is TextLDMPipeline.generate's text for the same prompt, seed and
    settings (textldm's own as extra fields); n and a list of prompts give prompts x n choices, each the noise row of
    its index; usage counts tokens."""
    pipe, ar, client, _ = served
    assert [m.id for m in client.models.list().data] == ["/runs/tiny/model", "/runs/tiny/ar"]
    extra = {"steps": 4, "cfg_scale": 2.0, "solver": "heun"}
    r = client.completions.create(model="/runs/tiny/model", prompt="the man said that", max_tokens=9, seed=3,
                                  extra_body=extra)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].text == pipe.generate("the man said that", length=9, seed=3, **extra)[0]
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.prompt_tokens == 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    prompts = ["the man said that", "it was the"]
    r = client.completions.create(model="textldm", prompt=prompts, n=2, max_tokens=6, seed=5, extra_body=extra)
    expected = pipe.generate([p for p in prompts for _ in range(2)], length=6, seed=5, **extra)
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and [c.text for c in r.choices] == expected
    # OpenAI's counts: each prompt once however many choices (4 + 3 tokens), every choice's text
    assert r.usage.prompt_tokens == 4 + 3
    assert r.usage.completion_tokens == sum(len(pipe.tokenizer(c.text, add_special_tokens=False)["input_ids"])
                                            for c in r.choices)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    limit = LIMITS.max_choices  # prompts x n choices in all: 2 x (limit / 2) fits, one more prompt does not
    client.completions.create(model="textldm", prompt=prompts, n=limit // 2, max_tokens=1, extra_body={"steps": 1})
    with pytest.raises(openai.BadRequestError, match="choices"):
        client.completions.create(model="textldm", prompt=prompts + ["one more"], n=limit // 2, max_tokens=1)
    r = client.completions.create(model="ar", prompt="the man said that", max_tokens=5, temperature=0, seed=1)
    assert r.choices[0].text == ar.generate("the man said that", length=5, temperature=0, seed=1)[0]


def test_stop_sequences_cut_the_text(served, monkeypatch):
    pipe, _, client, _ = served
    full = client.completions.create(model="textldm", prompt="the man said that", max_tokens=12, seed=2).choices[0]
    words = full.text.split()
    assert len(words) >= 3, full.text
    r = client.completions.create(model="textldm", prompt="the man said that", max_tokens=12, seed=2,
                                  stop=[" " + words[2], "never-there"])
    assert r.choices[0].text == full.text[: full.text.index(" " + words[2])] and r.choices[0].finish_reason == "stop"


def test_streaming_sends_each_committed_window_then_done(served):
    """stream=true: one chunk per committed window (the tiny model's window is 12 tokens: 20 tokens = 2 windows,
    unless an end-of-text ends it early), joining to the non-streamed text, then [DONE]."""
    _, _, client, url = served
    kw = dict(model="textldm", prompt="the man said that", max_tokens=20, seed=4, extra_body={"steps": 3})
    chunks = list(client.completions.create(stream=True, **kw))
    whole = client.completions.create(**kw).choices[0]
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason and 2 <= len(chunks) <= 3
    raw = httpx.post(f"{url}/v1/completions", json={**{k: v for k, v in kw.items() if k != "extra_body"},
                                                    "steps": 3, "stream": True}, timeout=60).text
    assert raw.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("body,status,fragment", [
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "unknown_field": 1}, 400, "unknown_field"),
    ({"prompt": "x", "logprobs": 3}, 400, "logprobs are not available"),
    ({"prompt": "x", "echo": True}, 400, "echo is not supported"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "not served here"),
    ({"prompt": ["a", "b"], "stream": True}, 400, "one prompt"),
    ({"prompt": "x", "cfg_min_t": 0.9, "cfg_max_t": 0.2}, 400, "cfg_min_t"),
    ({"prompt": "x", "n": 17}, 400, "n"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "   "}, 400, "no tokens"),
])
def test_bad_requests_get_openai_shaped_4xx(served, body, status, fragment):
    _, _, _, url = served
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    error = r.json()["error"]
    assert r.status_code == status and fragment in error["message"], r.text
    assert set(error) == {"message", "type", "param", "code"}


def test_the_openai_client_raises_its_documented_errors(served):
    _, _, client, _ = served
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="textldm", prompt="x", max_tokens=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")
    r = httpx.post(str(client.base_url) + "completions", content=b"x" * 70_000,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_burst_gets_429_and_the_server_stays_healthy(models):
    rs, after, health = burst(models[0], "/v1/completions", "max_tokens")
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in rs if r.status_code == 429)
    assert after.status_code == 200 and health["admitted"] == 0


def test_an_api_key_guards_every_route_but_the_page_and_health(models):
    pipe, ar = models
    with TestClient(create_app(pipe, ar, LIMITS, api_key="s3cret")) as c:
        assert c.get("/").status_code == 200 and c.get("/api/health").status_code == 200
        for method, path, body in [("get", "/api/info", None), ("post", "/api/generate", {"prompt": "the man"}),
                                   ("get", "/v1/models", None), ("post", "/v1/completions", {"prompt": "x"})]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = getattr(c, method)(path, json=body, headers=headers) if body else getattr(c, method)(path,
                                                                                                        headers=headers)
                assert r.status_code == 401, (path, headers)
            assert "API key" in json.dumps(r.json())
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/info", headers=ok).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "the man", "max_tokens": 2, "steps": 2},
                      headers=ok).status_code == 200
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", max_retries=0,
                           http_client=TestClient(create_app(pipe, None, LIMITS, api_key="s3cret")))
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_serving_on_all_interfaces_without_a_key_warns(trained, monkeypatch, capsys):
    """`textldm serve --host 0.0.0.0` without a key prints a warning (the server itself is not started here)."""
    import textldm.serving.app as app_module

    started = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(kw))
    monkeypatch.setattr(app_module, "check_listen_address", lambda host, port: None)
    monkeypatch.delenv("TEXTLDM_API_KEY", raising=False)
    app_module.serve(str(trained[0] / "model"), host="0.0.0.0", port=8123)
    assert "without an API key" in capsys.readouterr().err and started[0]["host"] == "0.0.0.0"
    monkeypatch.setenv("TEXTLDM_API_KEY", "k")
    app_module.serve(str(trained[0] / "model"), host="0.0.0.0", port=8123)
    assert "without an API key" not in capsys.readouterr().err
