"""The page in a real browser: headless Chromium loads it, picks an example, presses Compare, waits for the
result cards and saves a screenshot; the test checks the cards, their heatmaps and the summary are there.

Chromium (Debian's /usr/bin/chromium) is driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: JSON messages ending in NUL on fds 3 and 4), so no driver package is needed.
`VLM_UI_SCREENSHOT=assets/screenshot.png` also writes the screenshot there (the README's picture); the run
uses the built-in model when it is present, else the tiny random one.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from tests.test_serve import ROOT, running_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH, HEIGHT = 1500, 1100
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-pipe",
         f"--window-size={WIDTH},{HEIGHT}"]


class Chromium:
    """Just enough of the DevTools protocol: call a method, evaluate JavaScript, wait for a condition."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4; bash puts the pipe ends there.
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome} 4>&{from_chrome}', CHROMIUM, *FLAGS,
             f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=(to_chrome, from_chrome), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._next, self._replies, self._cv = 0, {}, threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", self.session, width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._in, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:  # replies; events are not needed here
                    with self._cv:
                        self._replies[msg["id"]] = msg
                        self._cv.notify_all()

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._next += 1
        i = self._next
        msg = {"id": i, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        with self._cv:
            assert self._cv.wait_for(lambda: i in self._replies, timeout), f"no reply to {method}"
            reply = self._replies.pop(i)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for: {expression}")

    def screenshot(self) -> bytes:
        height = self.call("Page.getLayoutMetrics", self.session)["cssContentSize"]["height"]
        shot = self.call("Page.captureScreenshot", self.session, format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1})
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


BUTTON = "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === {!r})"
CARDS = """(() => { const cs = [...document.querySelectorAll('.vc-card')];
  return cs.length && cs.every(c => c.dataset.state !== 'pending') && document.querySelector('.vc-table')
    ? cs.map(c => ({method: c.dataset.method, state: c.dataset.state, answer: c.querySelector('.vc-answer')?.innerText,
        maps: [...c.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png') && i.complete
                                                      && i.naturalWidth > 0).length,
        numbers: c.querySelectorAll('.vc-num').length})) : null })()"""


def test_example_comparison_in_chromium(random_model_dir, tmp_path):
    assert os.path.exists(CHROMIUM), "chromium is not installed: run scripts/system-deps.sh (make test does)"
    builtin = os.path.isfile(os.path.join(ROOT, "assets", "tiny-llava-shapes", "config.json"))
    with running_app("builtin" if builtin else random_model_dir) as url:
        browser = Chromium()
        try:
            browser.call("Page.navigate", browser.session, url=url)
            browser.wait(f"!!{BUTTON.format('Compare')}")
            picked = browser.js("document.querySelectorAll('input[type=checkbox]:checked').length")
            browser.js("document.querySelector('tr.tr-body').click()")  # the first example: image + question
            browser.wait("document.querySelector('textarea')?.value === 'how many shapes are there?'"
                         " && !!document.querySelector('img[src*=\"three_shapes\"]')")
            browser.js(f"{BUTTON.format('Compare')}.click()")
            cards = browser.wait(CARDS, timeout=120)
            time.sleep(0.5)  # let the last images paint before the screenshot
            png = browser.screenshot()
        finally:
            browser.close()
    (tmp_path / "page.png").write_bytes(png)
    assert [c["method"] for c in cards][0] == "baseline" and len(cards) == 1 + picked, cards
    for c in cards:
        assert c["state"] == "done" and c["maps"] >= 1 and c["numbers"] == 8 and c["answer"], c
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    if target := os.environ.get("VLM_UI_SCREENSHOT"):
        from PIL import Image

        # a 256-colour palette keeps the README's picture small without visible loss on this flat page
        Image.open(tmp_path / "page.png").convert("RGB").quantize(256).save(os.path.join(ROOT, target), optimize=True)
