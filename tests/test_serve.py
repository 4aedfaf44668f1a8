"""`textldm serve`: the JSON API (every malformed request is a 4xx JSON answer and the server keeps serving;
busy / timeout / disconnect limits), a schemathesis run against the OpenAPI schema, and the page driven end to
end in a real headless Chromium (steps arrive, the final text appears, the scrubber replays a step)."""
import asyncio
import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright

from textldm import TextLDMPipeline
from textldm.serving.app import create_app
from textldm.serving.service import ServeLimits

ARTIFACTS = Path(__file__).parent / "artifacts"
LIMITS = ServeLimits(max_length=40, max_steps=60, max_prompt_chars=500, max_body_bytes=4096, max_queue=1,
                     timeout_s=30)


@pytest.fixture(scope="module")
def client(models):
    pipe, ar = models
    with TestClient(create_app(pipe, ar, LIMITS, model_path="tiny")) as c:
        yield c


@contextlib.contextmanager
def live_server(app):
    """The app served by uvicorn on a free loopback port, in a thread: yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def events(response) -> list[tuple[str, dict]]:
    """Parse a server-sent-event body into (event, data) pairs."""
    out = []
    for chunk in response.text.strip().split("\n\n"):
        kind = next(line[7:] for line in chunk.splitlines() if line.startswith("event: "))
        data = json.loads(next(line[6:] for line in chunk.splitlines() if line.startswith("data: ")))
        out.append((kind, data))
    return out


def test_info_health_and_page(client):
    info = client.get("/api/info").json()
    assert info["infill"] and info["ar"] and info["limits"]["max_length"] == 40
    assert set(info["solvers"]) == {"euler", "heun", "ab2"}
    assert client.get("/api/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and 'id="scrubber"' in page.text
    schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert body["steps"]["maximum"] == 60 and body["prompt"]["maxLength"] == 500  # the limits are in the schema


def test_generate_is_deterministic_and_respects_length(client):
    req = {"prompt": "the man said that", "length": 10, "steps": 4, "seed": 3, "solver": "ab2", "cfg_scale": 2.0}
    a, b = client.post("/api/generate", json=req).json(), client.post("/api/generate", json=req).json()
    assert a == {**b, "seconds": a["seconds"]}
    assert 0 <= a["tokens"] <= 10 and a["evaluations"] == 2 * (4 + 1)  # AB2: steps + 1, doubled by CFG
    other = client.post("/api/generate", json={**req, "seed": 4}).json()
    assert other["continuation"] != a["continuation"]


def test_stream_sends_every_step_then_the_same_text_as_generate(client):
    req = {"prompt": "the man said that", "length": 20, "steps": 5, "seed": 1, "cfg_scale": 3.0}
    r = client.post("/api/generate/stream", json=req)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    evs = events(r)
    steps = [d for k, d in evs if k == "step"]
    assert [k for k, _ in evs][-1] == "done" and [d["step"] for d in steps[:5]] == [1, 2, 3, 4, 5]
    assert all(0 < d["t"] <= 1 for d in steps) and steps[4]["t"] == 1.0
    first, last = steps[0], steps[4]
    assert len(first["tokens"]) == len(first["change"]) == len(first["flipped"])
    assert all(c == 0 for c in first["change"]) and any(c > 0 for c in steps[1]["change"])
    assert "".join(last["tokens"]) == last["text"]  # token pieces join to the decoded window exactly
    assert evs[-1][1]["continuation"] == client.post("/api/generate", json=req).json()["continuation"]
    assert evs[-1][1]["continuation"].startswith(last["text"][:5])
    # 20 tokens > the 12-token window: a second window streams after the first (unless end-of-text stopped it)
    if len(steps) > 5:
        assert steps[5]["window"] == 1 and steps[5]["step"] == 1


def test_infill_and_ar(client):
    req = {"left": "the man", "right": "of the day .", "length": 5, "steps": 3}
    body = client.post("/api/infill", json=req).json()
    assert set(body) >= {"left", "middle", "right"} and body["evaluations"] == 3 * 2
    evs = events(client.post("/api/infill/stream", json=req))
    assert [d["step"] for k, d in evs if k == "step"] == [1, 2, 3] and evs[-1][1]["middle"] == body["middle"]
    ar = client.post("/api/ar/generate", json={"prompt": "the man said", "length": 8, "seed": 0})
    assert ar.status_code == 200 and ar.json()["tokens"] <= 8


@pytest.mark.parametrize("path,body,status,fragment", [
    ("/api/generate", b"{", 422, "not valid JSON"),
    ("/api/generate", b"[1, 2]", 422, "valid dictionary"),
    ("/api/generate", b'{"prompt": 5}', 422, "prompt: Input should be a valid string"),
    ("/api/generate", b'{"prompt": "x", "steps": "10"}', 422, "steps: Input should be a valid integer"),
    ("/api/generate", b'{"prompt": "x", "steps": 0}', 422, "greater than or equal to 1"),
    ("/api/generate", b'{"prompt": "x", "steps": 61}', 422, "less than or equal to 60"),
    ("/api/generate", b'{"prompt": "x", "length": 41}', 422, "length"),
    ("/api/generate", b'{"prompt": "x", "cfg_scale": NaN}', 422, "finite number"),
    ("/api/generate", b'{"prompt": "x", "seed": -1}', 422, "seed"),
    ("/api/generate", b'{"prompt": "x", "solver": "rk45"}', 422, "solver"),
    ("/api/generate", b'{"prompt": "x", "temperature": 1}', 422, "Extra inputs"),
    ("/api/generate", b'{"prompt": ""}', 422, "at least 1 character"),
    ("/api/generate", b'{"prompt": "   "}', 400, "no tokens"),
    ("/api/generate", json.dumps({"prompt": "a" * 501}).encode(), 422, "at most 500 characters"),
    ("/api/generate", json.dumps({"prompt": "a " * 4000}).encode(), 413, "over the server's limit"),
    ("/api/generate/stream", b'{"prompt": "x", "steps": -3}', 422, "steps"),
    ("/api/infill", b'{"left": "x"}', 422, "right: Field required"),
    ("/api/infill", b'{"left": "x", "right": "y", "length": 13}', 422, "length"),
    ("/api/ar/generate", b'{"prompt": "x", "temperature": -1}', 422, "temperature"),
    ("/api/nowhere", b"{}", 404, "Not Found"),
])
def test_malformed_requests_get_a_4xx_json_error_and_the_server_keeps_serving(client, path, body, status, fragment):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.post("/api/generate", json={"prompt": "the man", "length": 3, "steps": 2}).status_code == 200


def test_wrong_method_and_a_model_without_infill_or_ar(trained, client):
    assert client.get("/api/generate").status_code == 405
    plain = TextLDMPipeline.from_pretrained(trained[0] / "model")
    with TestClient(create_app(plain, None, LIMITS)) as c:
        r = c.post("/api/infill", json={"left": "a", "right": "b"})
        assert r.status_code == 400 and "infill_prob" in r.json()["error"]
        r = c.post("/api/ar/generate", json={"prompt": "a"})
        assert r.status_code == 404 and "--ar" in r.json()["error"]


def test_a_request_past_its_timeout_gets_504_and_the_next_one_is_served(models):
    pipe, _ = models
    with TestClient(create_app(pipe, None, ServeLimits(timeout_s=0.02, max_steps=500))) as c:
        r = c.post("/api/generate", json={"prompt": "the man", "length": 200, "steps": 500})
        assert r.status_code == 504 and "limit" in r.json()["error"]
        evs = events(c.post("/api/generate/stream", json={"prompt": "the man", "length": 200, "steps": 500}))
        assert evs[-1][0] == "error" and "limit" in evs[-1][1]["error"]
        assert c.get("/api/health").json()["admitted"] == 0


def burst(pipe, path: str, length_key: str) -> tuple[list, object, dict]:
    """Eight slow requests at once on a server that admits two (one running, one queued), then a quick one and the
    health answer: (the eight responses, the quick one's, health)."""
    app = create_app(pipe, None, ServeLimits(max_queue=1, max_steps=400))

    async def send(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            slow = {"prompt": "the man said that", length_key: 24, "steps": 300}
            rs = await asyncio.gather(*[http.post(path, json={**slow, "seed": i}) for i in range(8)])
            after = await http.post(path, json={"prompt": "the man", length_key: 3, "steps": 2})
            return rs, after, (await http.get("/api/health")).json()

    with live_server(app) as url:
        return asyncio.run(send(url))


def test_a_burst_on_loopback_completes_or_gets_busy_and_nothing_crashes(models):
    rs, after, health = burst(models[0], "/api/generate", "length")
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    assert all("busy" in r.json()["error"] and r.headers["retry-after"] for r in rs if r.status_code == 503)
    assert after.status_code == 200 and health["admitted"] == 0


def test_a_client_that_goes_away_frees_its_slot(models):
    pipe, _ = models
    app = create_app(pipe, None, ServeLimits(max_queue=0, max_steps=100_000))
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            long = {"prompt": "the man", "length": 24, "steps": 100_000}
            with http.stream("POST", "/api/generate/stream", json=long) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # the first step arrived; now hang up
            deadline = time.time() + 20
            while http.get("/api/health").json()["admitted"] and time.time() < deadline:
                time.sleep(0.05)
            assert http.get("/api/health").json()["admitted"] == 0
            assert http.post("/api/generate", json={"prompt": "the man", "length": 3, "steps": 2}).status_code == 200


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(models):
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    pipe, ar = models
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(pipe, ar, LIMITS))
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:
        modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * (operation.method.upper() == "POST")
        for mode in modes:  # valid requests, and invalid bodies
            @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call()
                if response.status_code >= 500:
                    failures.append((operation.label, response.status_code, response.text[:200]))
                case.validate_response(response, checks=[not_a_server_error])

            check()
    assert not failures


SET_VALUE = "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }"  # as a user dragging a slider


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, ("no chromium for the browser test: `make test` installs Debian's (as root); elsewhere install "
                  "chromium or point CHROMIUM at a Chromium/Chrome binary")
    return path


@pytest.mark.browser
def test_page_in_a_headless_browser(models, tmp_path):
    """Load the page, submit a prompt, see intermediate steps arrive and the final text appear, move the
    scrubber; a screenshot goes to tests/artifacts/serve_page.png."""
    pipe, ar = models
    app = create_app(pipe, ar, ServeLimits(max_length=40, max_steps=60))
    req = {"prompt": "the man said that", "length": 20, "steps": 30, "cfg_scale": 2.0, "seed": 5, "solver": "euler"}
    with live_server(app) as url, sync_playwright() as p:
        expected = httpx.post(f"{url}/api/generate", json=req, timeout=60).json()["continuation"]
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])  # a fresh temporary profile is playwright's default
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('solver').options.length === 3")
            assert "DiT" in page.text_content("#model-info")
            page.fill("#prompt", req["prompt"])
            for slider, value in (("steps", 30), ("cfg", 2), ("length", 20), ("seed", 5)):
                page.eval_on_selector(f"#{slider}", SET_VALUE, value)
            assert page.text_content("#steps-out") == "30"
            # record every step label the page shows while it runs
            page.evaluate("""() => { window.seen = [];
                new MutationObserver(() => window.seen.push(document.getElementById('step-label').textContent))
                  .observe(document.getElementById('step-label'),
                           {childList: true, characterData: true, subtree: true});
            }""")
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
            page.wait_for_function("document.getElementById('ar-meta').textContent.includes('tokens')", timeout=60_000)
            seen = page.evaluate("window.seen")
            intermediate = [s for s in seen if s.startswith("step ") and not s.startswith("step 30/30")]
            assert len(intermediate) >= 10, seen  # steps arrived (and were drawn) one by one before the end
            assert any(s.startswith("final") for s in seen)
            assert page.text_content("#tokens") == expected  # the streamed run = the plain API call
            assert page.text_content("#ar-text") is not None
            # the scrubber replays step 3: its label and coloured tokens, not the final text
            page.eval_on_selector("#scrubber", SET_VALUE, 2)
            assert page.text_content("#step-label").startswith("step 3/30")
            assert page.locator("#tokens .tok").count() > 0
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
            assert (ARTIFACTS / "serve_page.png").stat().st_size > 10_000
            # with a right context the page streams the middle between the two texts
            middle = httpx.post(f"{url}/api/infill", json={"left": req["prompt"], "right": "of the day .", "length": 12,
                                                           "steps": 30, "cfg_scale": 2.0, "seed": 5}).json()["middle"]
            page.fill("#right", "of the day .")
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
            assert page.text_content("#tokens") == middle and page.text_content("#shown-right") == "of the day ."
        finally:
            browser.close()


def test_the_api_gives_what_the_python_api_gives(client, models):
    pipe, _ = models
    req = {"prompt": "the man said that", "length": 9, "steps": 4, "seed": 7, "cfg_scale": 2.5, "solver": "heun"}
    api = client.post("/api/generate", json=req).json()["continuation"]
    assert api == pipe.generate(req["prompt"], length=9, steps=4, seed=7, cfg_scale=2.5, solver="heun")[0]


@pytest.mark.parametrize("args,fragment", [
    (["--model", "./no/such/model"], "does not exist"),
    (["--model", "M", "--max-queue", "-1"], "--max-queue must be >= 0"),
    (["--model", "M", "--timeout", "0"], "--timeout must be > 0"),
    (["--model", "M", "--port", "PORT"], "cannot listen on 127.0.0.1"),
])
def test_cli_serve_bad_input_exits_2_with_one_line(capsys, trained, args, fragment):
    from textldm.cli import main

    with socket.socket() as busy:  # a port that is taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [str(trained[0] / "model") if a == "M" else str(busy.getsockname()[1]) if a == "PORT" else a
                for a in args]
        with pytest.raises(SystemExit) as e:
            main(["serve", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_token_pieces_join_to_the_decoded_text_with_a_byte_level_tokenizer():
    """Streamed tokens are shown piece by piece: spaces kept, and characters whose bytes span several tokens
    shown once complete (a byte-level BPE splits rare characters into bytes)."""
    import random

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from textldm.serving.trajectory import token_pieces

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the man said that the day was long"] * 20, vocab_size=300, min_frequency=1)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    text = "the man said ünïcode 日本語 🙂 that"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text and len(pieces) == len(ids)
    assert " man" in pieces and "\ufffd" not in "".join(pieces) and "" in pieces  # 🙂 is 4 byte tokens
    rng = random.Random(0)
    for _ in range(50):  # any id sequence, even one that is not valid UTF-8
        ids = [rng.randrange(len(tok)) for _ in range(20)]
        assert "".join(token_pieces(tok, ids)) == tok.decode(ids)


def test_the_cli_the_python_api_and_http_sample_the_same_thing(trained, tmp_path, capsys):
    """The same prompt, seed and options (solver, grid, cfg interval, precision, length) through the CLI,
    TextLDMPipeline.generate and POST /api/generate give the same text; the stream's step times are the shifted
    grid's and it makes the evaluations the interval implies (the options reach the sampler)."""
    from textldm.cli import main
    from textldm.diffusion.flow import time_grid
    from textldm.diffusion.sampling import evaluations

    out, _ = trained
    pipe = TextLDMPipeline.from_pretrained(out / "model")
    prompt = "the man said that"
    opts = dict(length=9, steps=4, seed=7, cfg_scale=2.5, solver="ab2", grid="shifted", cfg_min_t=0.2, cfg_max_t=0.8,
                precision="bf16")
    python = pipe.generate([prompt], **opts)[0]
    calls = pipe.last_evaluations
    with TestClient(create_app(pipe, None, LIMITS)) as c:
        http = c.post("/api/generate", json={"prompt": prompt, **opts}).json()["continuation"]
        assert c.post("/api/generate", json={"prompt": prompt, **opts, "cfg_min_t": 0.9}).status_code == 400
        streamed = events(c.post("/api/generate/stream", json={"prompt": prompt, **opts}))
    d = pipe.config.dit
    grid = time_grid(4, d.t_distribution, d.t_mean, d.t_std, "shifted", pipe.config.sample.shift)
    assert [e["t"] for k, e in streamed if k == "step"] == pytest.approx(grid[1:].tolist(), abs=1e-4)
    call_times = [grid[0], grid[1], *grid[1:-1]]  # AB2: a Heun first step (t0 and t1), then one call a step
    guided = sum(0.2 <= float(t) <= 0.8 for t in call_times)
    assert len(call_times) == evaluations("ab2", 4) and streamed[-1][1]["evaluations"] == calls == 5 + guided
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(out / "model"), "--prompt", prompt, "--length", "9", "--steps", "4",
              "--seed", "7", "--cfg-scale", "2.5", "--solver", "ab2", "--grid", "shifted", "--cfg-interval", "0.2,0.8",
              "--precision", "bf16", "--out", str(tmp_path / "o.jsonl")])
    assert e.value.code == 0
    cli = json.loads((tmp_path / "o.jsonl").read_text())["continuation"]
    assert python == http == cli == streamed[-1][1]["continuation"]
    assert 0 < guided < 5  # the interval left some calls unguided


@pytest.mark.parametrize("grid,shift", [("schedule", 3.0), ("uniform", 3.0), ("shifted", 3.0), ("shifted", 6.0)])
def test_the_sampler_steps_through_the_documented_time_grid(trained, grid, shift):
    """The step callback's times are time_grid(...)'s for each grid kind and shift, and each solver makes the
    documented number of network evaluations (x2 with CFG)."""
    from textldm.diffusion.flow import time_grid
    from textldm.diffusion.sampling import evaluations

    pipe = TextLDMPipeline.from_pretrained(trained[0] / "model")
    d = pipe.config.dit
    ts = []
    pipe.generate_ids([[5, 6, 7]], length=4, steps=5, grid=grid, shift=shift, callback=lambda i, t, x: ts.append(t))
    assert ts == pytest.approx(time_grid(5, d.t_distribution, d.t_mean, d.t_std, grid, shift)[1:].tolist())
    for solver in ("euler", "heun", "ab2"):
        pipe.generate_ids([[5, 6, 7]], length=4, steps=5, solver=solver, cfg_scale=2.0, grid=grid, shift=shift)
        assert pipe.last_evaluations == 2 * evaluations(solver, 5) == 2 * {"euler": 5, "heun": 10, "ab2": 6}[solver]
