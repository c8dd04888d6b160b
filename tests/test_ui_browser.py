"""The page in a real browser: Playwright (python) drives Debian's Chromium (`executable_path`, never a browser
download) against `python app.py`, as a visitor would.

Checks: at 1280x800 the question, the methods and Compare are in the first viewport and nothing empty sits
there; an example comparison fills every card (maps named by method, numbers with their spread); a refused
request leaves no card or summary of the previous one; on a 390 px phone every summary column can be scrolled
to; a budget sweep draws its plots; a permalink reopens a comparison after the app restarts (and says so
clearly for an unknown id); the presenter view shows cards only.

`VLM_UI_SCREENSHOT=assets/screenshot.png` and `VLM_SWEEP_SCREENSHOT=assets/sweep.png` also write the README's
pictures. The run uses the built-in model when it is present, else the tiny random one.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.test_serve import ROOT, running_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DONE = ("() => { const cs = [...document.querySelectorAll('.vc-card')]; return cs.length > 0"
        " && cs.every(c => c.dataset.state !== 'pending') && !!document.querySelector('.vc-table') }")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "chromium is not installed: run scripts/system-deps.sh (make test does)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def model(random_model_dir) -> str:
    builtin = os.path.isfile(os.path.join(ROOT, "assets", "tiny-llava-shapes", "config.json"))
    return "builtin" if builtin else random_model_dir


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("saved") / "comparisons.sqlite3")


@pytest.fixture(scope="module")
def app(model, store):
    with running_app(model, VLM_STORE=store) as url:
        yield url


def page_at(browser, url: str, width: int = 1280, height: int = 800):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.get_by_role("button", name="Compare", exact=True).wait_for()
    return page


def in_view(page, locator) -> bool:
    box = locator.bounding_box()
    vp = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= vp["height"] and box["x"] >= 0 \
        and box["x"] + box["width"] <= vp["width"]


def compare_example(page) -> None:
    page.locator(".gallery-item, tr.tr-body, button.example").first.click()  # the first image example
    page.wait_for_function("() => document.querySelector('textarea')?.value === 'how many shapes are there?'"
                           " && !!document.querySelector('img[src*=\"three_shapes\"]')")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_function(DONE, timeout=180_000)


def test_fold_at_1280x800(browser, app):
    page = page_at(browser, app)
    try:
        assert in_view(page, page.get_by_role("button", name="Compare", exact=True))
        assert in_view(page, page.get_by_label("Question"))
        assert in_view(page, page.locator("#vc-controls input[type=checkbox]").first)
        # nothing empty in the first viewport: no file box, no empty chart before a run
        assert page.locator("#vc-results .block:visible:has(input[type=file])").count() == 0
        assert page.locator(".vc-intro").is_visible() and in_view(page, page.locator(".vc-intro"))
        # every method parameter: its whole label, and an explanation from its field's comment
        page.get_by_text("Method parameters (paper defaults)").click()
        labels = page.locator('#vc-controls [data-testid="block-info"]')
        labels.last.wait_for()
        cut = labels.evaluate_all("els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)")
        assert labels.count() > 10 and cut == [], cut
        explained = page.get_by_text(re.compile(r"\S; default ")).count()  # "<field comment>; default <value>"
        assert explained >= 10, explained
    finally:
        page.close()


def test_comparison_then_refusal_then_phone(browser, app, tmp_path):
    page = page_at(browser, app)
    try:
        picked = page.locator("#vc-controls input[type=checkbox]:checked").count()
        compare_example(page)
        cards = page.locator(".vc-card")
        assert cards.count() == 1 + picked and cards.first.get_attribute("data-method") == "baseline"
        for i in range(cards.count()):
            card, method = cards.nth(i), cards.nth(i).get_attribute("data-method")
            assert card.get_attribute("data-state") == "done", card.inner_text()
            alts = card.locator("img").evaluate_all("els => els.map(e => e.alt)")
            assert alts and all(a.startswith(f"{method}:") for a in alts), alts
            assert "min–max" in card.locator(".vc-num").first.get_attribute("title")
        assert page.locator("#vc-results").bounding_box()["y"] < 800  # results came into view
        small = cards.nth(1).locator("img").first
        width = small.bounding_box()["width"]
        small.click()  # a map enlarges on click (and shrinks back when something else is clicked)
        assert small.bounding_box()["width"] > 2 * width
        page.locator("h1").click()
        assert small.bounding_box()["width"] == pytest.approx(width, abs=1)
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        if target := os.environ.get("VLM_UI_SCREENSHOT"):
            save_small(shot, os.path.join(ROOT, target))
        # a refused request: its message, and nothing of the comparison before it
        page.get_by_label("Question").fill("   ")
        page.get_by_role("button", name="Compare", exact=True).click()
        page.wait_for_selector('[data-state="refused"]')
        assert "the prompt is empty" in page.locator('[data-state="refused"]').inner_text()
        assert page.locator(".vc-card").count() == 0 and page.locator(".vc-table").count() == 0
        # a phone: the summary table scrolls sideways until its last column is in view
        page.get_by_label("Question").fill("how many shapes are there?")
        page.get_by_role("button", name="Compare", exact=True).click()
        page.wait_for_function(DONE, timeout=180_000)
        page.set_viewport_size({"width": 390, "height": 844})
        scroller = page.locator(".vc-scroll")
        scroller.evaluate("el => { el.scrollIntoView(); el.scrollLeft = el.scrollWidth }")
        last = page.locator(".vc-table th").last
        box = last.bounding_box()
        assert scroller.evaluate("el => el.scrollWidth > el.clientWidth") and 0 <= box["x"] < 390, box
    finally:
        page.close()


def save_small(src, target: str) -> None:
    from PIL import Image

    # a 256-colour palette keeps the README's pictures small without visible loss on this flat page
    Image.open(src).convert("RGB").quantize(256).save(target, optimize=True)


def test_sweep_draws_its_plots(browser, app, tmp_path):
    page = page_at(browser, app, 1280, 900)
    try:
        page.locator(".gallery-item, tr.tr-body, button.example").first.click()
        page.get_by_role("tab", name="Budget sweep").click()
        page.get_by_label("Keeps (shares of visual tokens, each in (0, 1])").fill("1.0, 0.5, 0.25")
        page.get_by_role("button", name="Run sweep").click()
        names = [n.strip() for n in page.locator("#vc-controls label:has(input:checked)").all_inner_texts()]
        total = 1 + 3 * len(names)
        page.wait_for_function(f"() => document.body.innerText.includes('{total} of {total} sweep runs finished')",
                               timeout=300_000)
        for plot in ("#vc-sweep-latency", "#vc-sweep-agreement"):  # vega draws into a canvas or an svg
            page.wait_for_selector(f"{plot} canvas, {plot} svg.marks", timeout=30_000)
            # every method's line (and the baseline's reference line) is drawn, named in the legend
            page.wait_for_function(f"() => {['baseline', *names]!r}.every(n => "
                                   f"document.querySelector('{plot}').innerText.includes(n))", timeout=30_000)
        shot = tmp_path / "sweep.png"
        page.locator("#vc-results").screenshot(path=str(shot))
        if target := os.environ.get("VLM_SWEEP_SCREENSHOT"):
            save_small(shot, os.path.join(ROOT, target))
    finally:
        page.close()


def _mp4v(path, seconds: float = 2.0) -> str:
    """A clip in MPEG-4 part 2 (OpenCV's "mp4v"): readable by the app, not playable by browsers."""
    import cv2
    import numpy as np

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12, (96, 96))
    for i in range(int(seconds * 12)):
        frame = np.full((96, 96, 3), 235, np.uint8)
        cv2.circle(frame, (10 + 3 * i, 48), 12, (40, 40, 220), -1)  # a red ball moving right
        out.write(frame)
    out.release()
    return str(path)


def test_uploads_are_checked_and_previewed(browser, app, tmp_path):
    page = page_at(browser, app)
    try:
        page.get_by_role("tab", name="Video").click()
        page.locator("#vc-controls input[type=file]").last.set_input_files(_mp4v(tmp_path / "clip.mp4"))
        page.wait_for_function("() => document.body.innerText.includes('Sampled frames: 8 of a 2.0 s clip')")
        # the browser cannot play mp4v: a re-encoded copy plays instead (its metadata loads)
        page.wait_for_function("() => document.querySelector('#vc-playable video')?.readyState >= 1", timeout=30_000)
        frames = page.get_by_label("Frames sampled").first
        frames.fill("4")  # the strip follows the slider
        frames.press("Enter")
        page.wait_for_function("() => document.body.innerText.includes('Sampled frames: 4 of a 2.0 s clip')")
        page.get_by_role("tab", name="Image").click()  # an image the app cannot read is refused at upload
        page.locator("#vc-controls input[type=file]").first.set_input_files(
            files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image at all"}])
        page.get_by_text("not a readable image").first.wait_for()
    finally:
        page.close()


def test_permalink_reopens_after_restart(browser, app, model, store):
    page = page_at(browser, app)
    try:
        compare_example(page)
        page.wait_for_selector(".vc-saved")
        cid = page.locator(".vc-saved a").first.get_attribute("href").split("?id=")[1]
        page.wait_for_function(f"() => document.querySelector('#vc-permalink textarea, #vc-permalink input')"
                               f"?.value.endsWith('/?id={cid}')")  # the copyable absolute link
        answers = page.locator(".vc-answer").all_inner_texts()
    finally:
        page.close()
    with running_app(model, VLM_STORE=store) as url:  # a new process on the same SQLite file
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.goto(f"{url}?id={cid}")
            page.wait_for_selector(".vc-saved")
            assert page.locator(".vc-answer").all_inner_texts() == answers
            assert page.locator('.vc-card[data-state="done"]').count() == len(answers)
            page.goto(f"{url}?id={cid}&present=1")  # presenter view: cards only, no controls
            page.wait_for_selector(".vc-present .vc-card")
            assert not page.locator("#vc-controls").is_visible()
            page.goto(f"{url}?id=NoSuchId0000")
            unknown = page.locator('[data-state="unknown-id"]')
            unknown.wait_for()
            assert "no saved comparison has the id 'NoSuchId0000'" in unknown.inner_text()
        finally:
            page.close()
