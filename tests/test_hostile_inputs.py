"""Hostile and malformed input (issue 15): every value JSON can carry is coerced or refused with one message,
memory bombs are refused from the header before any decoding, and the web app's queue and routes are bounded.

In-process through `ui.request.build_comparison` (the API's and the page's path) and the CLI; the queue checks run
a real gradio server on a stand-in pool (no model).
"""

from __future__ import annotations

import json
import resource
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from PIL import Image

from app import main
from backends import media
from backends.settings import Settings
from backends.types import RequestError
from ui.request import build_comparison, upload_folder

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def catalog():
    from methods import registry

    return {m["name"]: m for m in registry.catalog()}


@pytest.fixture(scope="module")
def uploads():
    """Files placed in gradio's upload folder, as the page or gradio_client would leave them."""
    folder = upload_folder() / "test-hostile"
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), (200, 40, 40)).save(folder / "ok.png")
    for w, h in ((20000, 1), (1, 20000)):
        Image.new("RGB", (w, h), (200, 40, 40)).save(folder / f"thin_{w}x{h}.png")
    out = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(40):
        out.write(np.full((32, 32, 3), i * 6, np.uint8))
    out.release()
    return {p.name: {"path": str(p), "orig_name": p.name} for p in folder.iterdir()}


def build(catalog, **kw):
    kw.setdefault("prompt", "how many shapes are there?")
    return build_comparison(Settings(), catalog, **kw)


CASES = [  # (request fields, the message)
    (dict(methods=["fastv"], params={"fastv": {"keep": float("nan")}}), "fastv: bad value nan for keep (it must be "
                                                                        "a finite number)"),
    (dict(methods=["fastv"], params={"fastv": {"keep": 2}}), "fastv: keep must be in (0, 1], got 2.0"),
    (dict(methods=["fastv"], params={"fastv": {"layer": 2**70}}), "fastv: bad value an integer of 71 bits for layer "
                                                                  "(it must fit in 64 bits)"),
    (dict(methods=["random"], params={"random": {"seed": 10**400}}), "random: bad value an integer of 1329 bits for "
                                                                     "seed (it must fit in 64 bits)"),
    (dict(methods=["fastv"], params={"fastv": {"layer": [1]}}), "fastv: bad value [1] for layer (it must be a number)"),
    (dict(methods=["random"], params={"random": {"positions": "sideways"}}), "random: bad value 'sideways' for "
                                                                             "positions (it must be one of"),
    (dict(methods=["fastv"], params='{"fastv": {"keep": ' + DEEP + "}}"), "params is nested too deeply (the limit "
                                                                          "is 32 levels)"),
    (dict(methods=["fastv"], params={"fastv": {"x": json.loads("[" * 40 + "]" * 40)}}), "params is nested too "
                                                                                        "deeply"),
    (dict(methods=["fastv"], params={"fastv": {"unknown": {"a": 1}}}), "fastv: parameter 'unknown' must be a "
                                                                       "number, text or true/false"),
    (dict(keep=float("nan")), "keep (the share of visual tokens kept) must be a finite number, got nan"),
    (dict(keep="lots"), "keep (the share of visual tokens kept) must be a number, got 'lots'"),
    (dict(keep=0), r"keep (the share of visual tokens kept) must be in (0, 1], got 0"),
    (dict(max_new_tokens=10**400), "max_new_tokens must fit in 64 bits, got an integer of 1329 bits"),
    (dict(max_new_tokens=0), "max_new_tokens must be in 1..512, got 0"),
    (dict(warmup=9), "warmup must be in 0..5, got 9"),
    (dict(repeats=0), "repeats must be in 1..20, got 0"),
    (dict(repeats=True), "repeats must be a number, got True"),
    (dict(frames=0), "frames must be in 1..64, got 0"),
    (dict(frames=65), "frames must be in 1..64, got 65"),
    (dict(model=[[["x"]]]), "model [[['x']]] is not offered here"),
    (dict(prompt="<image> how many shapes?"), "the prompt contains <image>, which the model reserves for the "
                                              "picture"),
    (dict(image="/work/main/assets/examples/three_shapes.png"), "a file must be uploaded, not named by a path or URL"),
    (dict(image="https://example.com/x.png"), "a file must be uploaded, not named by a path or URL"),
]


@pytest.mark.parametrize("fields, message", CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_values_get_one_message(catalog, uploads, fields, message):
    fields.setdefault("image", uploads["ok.png"])
    with pytest.raises(RequestError) as e:
        build(catalog, **fields)
    assert str(e.value).startswith(message), str(e.value)


def test_numeric_strings_are_coerced(catalog, uploads):
    comp = build(catalog, image=uploads["ok.png"], methods=["fastv", "random"], keep="0.5", max_new_tokens="4",
                 params={"fastv": {"keep": "0.25", "layer": "3"}, "random": {"seed": "7.0"}})
    assert [m.params for m in comp.methods] == [{}, {"keep": 0.25, "layer": 3}, {"seed": 7, "keep": 0.5}]
    assert comp.generation.max_new_tokens == 4
    video = build(catalog, video=uploads["clip.avi"], frames="3")
    assert video.media.kind == "video" and len(video.media.frames_png) == 3  # "3" is 3, and 0 is refused (above)


@pytest.mark.parametrize("name", ["thin_20000x1.png", "thin_1x20000.png"])
def test_thin_images_are_refused_fast_and_small(catalog, uploads, name):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(RequestError, match=r"an aspect ratio of 20000:1; the limit is 20:1"):
        build(catalog, image=uploads[name])
    assert time.perf_counter() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 * 1024  # KiB: under 200 MB of growth


def test_video_limits_come_from_the_header(tmp_path):
    path = tmp_path / "many.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (16, 16))
    for i in range(120):
        out.write(np.full((16, 16, 3), i, np.uint8))
    out.release()
    with pytest.raises(RequestError, match=r"^many.avi has 120 frames; the limit is 100 frames$"):
        media.sample_video(path, Settings(max_video_frames=100))
    with pytest.raises(RequestError, match=r"^many.avi took over 0 s to decode 8 frames; re-encode it"):
        media.sample_video(path, Settings(max_decode_s=0))
    frames, duration = media.sample_video(path, Settings(), 4)  # seeks to frames 0, 40, 79, 119
    assert duration == pytest.approx(4.8) and len(frames) == 4
    assert [round(float(np.asarray(f).mean())) for f in frames] == pytest.approx([0, 40, 79, 119], abs=3)


def test_cli_gives_the_same_messages(scene_png, tmp_path, capsys):
    clip = tmp_path / "c.avi"
    out = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16))
    for i in range(10):
        out.write(np.full((16, 16, 3), i, np.uint8))
    out.release()
    cases = [(["--video", str(clip), "--frames", "0"], "frames must be in 1..64, got 0"),
             (["--image", scene_png, "--keep", "nan"], "--keep must be a finite number, got nan"),
             (["--image", scene_png, "--methods", "fastv", "--set", "fastv.keep=nan"],
              "fastv: bad value 'nan' for keep (it must be a finite number)"),
             (["--image", scene_png, "--warmup", "9"], "warmup must be in 0..5, got 9")]
    for args, message in cases:
        assert main(["compare", "--prompt", "q", *args]) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"


class SlowPool:
    """A stand-in pool whose every comparison takes a second (no model): enough to fill a bounded queue."""

    workers = 1

    def catalog(self) -> list[dict]:
        return [{"name": "baseline", "stage": "baseline", "stage_label": "Baseline", "paper": "", "summary": "",
                 "needs": "", "fidelity": "faithful", "budget_field": None, "params": []}]

    def compare(self, comparison):
        from backends.types import RunResult

        time.sleep(1.0)
        yield RunResult(method="baseline", answer="two", output_tokens=1)


def test_queue_is_bounded_and_the_rest_route_closed(uploads):
    from gradio_client import Client, handle_file

    from ui.demo import build_demo, queue_options

    settings = Settings(max_queue=1)
    demo = build_demo(SlowPool(), settings)
    demo.queue(**queue_options(settings, 1)).launch(server_name="127.0.0.1", server_port=None,
                                                    prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        image = handle_file(uploads["ok.png"]["path"])
        errors: list[str] = []

        def one():
            try:
                client.predict(image=image, prompt="how many?", api_name="/compare")
            except Exception as e:  # noqa: BLE001 - the message is what is checked
                errors.append(str(e))

        threads = [threading.Thread(target=one) for _ in range(4)]  # 1 running + 1 waiting fit; the rest do not
        for t in threads:
            t.start()
            time.sleep(0.1)
        for t in threads:
            t.join(30)
        assert errors and all(e == "Queue is full! Please try again." for e in errors), errors
        request = urllib.request.Request(demo.local_url + "gradio_api/run/compare", method="POST",
                                         data=json.dumps({"data": [None] * 20}).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        assert e.value.code == 404 and "does not accept direct HTTP POST requests" in e.value.read().decode()
        with pytest.raises(Exception, match="the image must be an uploaded file, not a path or URL string"):
            client.predict(image="/etc/passwd", prompt="how many?", api_name="/compare")
    finally:
        demo.close()


def test_a_decimal_upload_limit_launches_and_holds(random_model_dir, tmp_path):
    """VLM_MAX_UPLOAD_MB=1.5 used to stop the app at launch (gradio read "1.5mb" as the unit ".5MB")."""
    import os

    from gradio_client import Client, handle_file

    from tests.test_serve import running_app

    under, over = tmp_path / "under.png", tmp_path / "over.png"
    under.write_bytes(os.urandom(int(1.4 * 2**20)))
    over.write_bytes(os.urandom(int(1.6 * 2**20)))
    with running_app(random_model_dir, VLM_MAX_UPLOAD_MB="1.5") as url:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="under.png is not a readable image"):  # past the upload limit: ours
            client.predict(image=handle_file(str(under)), prompt="how many?", api_name="/compare")
        with pytest.raises(Exception, match="(?i)file size|too large|exceeds"):  # refused at upload by gradio
            client.predict(image=handle_file(str(over)), prompt="how many?", api_name="/compare")
