"""The README's screenshot of the web app, from a trained model (default: the demo's), in headless Chromium:

    python bench/screenshot.py --model runs/demo/model --out docs/img/serve.png

It serves the model on a free loopback port, continues a prompt (the demo's sampler), moves the scrubber to a middle
step so the picture shows the denoising, and saves the page."""
from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

SET_VALUE = "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }"


def serve(app) -> tuple[str, object]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def main():
    from playwright.sync_api import sync_playwright

    from textldm import TextLDMPipeline
    from textldm.serving.app import create_app
    from textldm.serving.service import ServeLimits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/demo/model")
    p.add_argument("--out", type=Path, default=Path("docs/img/serve.png"))
    p.add_argument("--prompt", default="The President said that the Congress")
    p.add_argument("--length", type=int, default=24)
    p.add_argument("--scrub-to", type=float, default=0.5, help="the step shown, as a share of the run")
    args = p.parse_args()
    pipe = TextLDMPipeline.from_pretrained(args.model)
    url, server = serve(create_app(pipe, None, ServeLimits()))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: install Debian's (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('solver').options.length > 0")
        page.fill("#prompt", args.prompt)
        page.eval_on_selector("#length", SET_VALUE, args.length)
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=600_000)
        last = int(page.eval_on_selector("#scrubber", "el => el.max"))
        page.eval_on_selector("#scrubber", SET_VALUE, round(args.scrub_to * last))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
