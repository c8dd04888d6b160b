"""Bad and hostile inputs for the compare API (used by bench/load_faults.py): each must be answered with a clear
message (or served), never with gradio's generic error, and quickly.

    hostile_inputs(gradio_client.Client(url), url, scratch_dir)
        -> {"answered", "total", "slowest_s", "slowest" (that input), "bombs_s" (the slowest of the memory/time
            bombs), "unclear" (inputs without a clear answer)}

"Answered": the call raised an error whose text is not gradio's generic "The upstream Gradio app has raised an
exception", or it came back with every run either ok or failed with its own message.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

GENERIC = "upstream Gradio app has raised an exception"
BOMBS = ("20000x1", "1x20000", "7000x7000", "frames200k")  # the memory and time bombs of issue 15
EXAMPLE = str(Path(__file__).resolve().parent.parent / "assets" / "examples" / "three_shapes.png")


def _files(d: Path) -> dict[str, str]:
    """Hostile files: memory bombs within the upload limit, corrupt and misnamed ones (made once per folder)."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for w, h in ((20000, 1), (1, 20000), (7000, 7000)):
        out[f"{w}x{h}"] = str(d / f"img_{w}x{h}.png")
        if not os.path.exists(out[f"{w}x{h}"]):
            Image.new("RGB", (w, h), (200, 40, 40)).save(out[f"{w}x{h}"])
    out["corrupt"] = str(d / "corrupt.png")
    Path(out["corrupt"]).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    out["empty"] = str(d / "empty.png")
    Path(out["empty"]).write_bytes(b"")
    out["text"] = str(d / "notes.txt")
    Path(out["text"]).write_text("not an image")
    out["big"] = str(d / "big.png")
    Path(out["big"]).write_bytes(os.urandom(21 * 2**20))  # over the default 20 MB upload limit
    out["frames200k"] = str(d / "frames200k.mp4")  # 200,000 tiny frames at 2,000 fps: 100 s, about 5 MB
    if not os.path.exists(out["frames200k"]):
        w = cv2.VideoWriter(out["frames200k"], cv2.VideoWriter_fourcc(*"mp4v"), 2000, (16, 16))
        for i in range(200_000):
            w.write(np.full((16, 16, 3), i % 256, np.uint8))
        w.release()
    out["long"] = str(d / "long.avi")  # 200 s at 1 fps: over the 120 s limit
    if not os.path.exists(out["long"]):
        w = cv2.VideoWriter(out["long"], cv2.VideoWriter_fourcc(*"MJPG"), 1, (16, 16))
        for i in range(200):
            w.write(np.full((16, 16, 3), i, np.uint8))
        w.release()
    out["short"] = str(d / "short.avi")
    w = cv2.VideoWriter(out["short"], cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(20):
        w.write(np.full((32, 32, 3), i * 10, np.uint8))
    w.release()
    out["corrupt_video"] = str(d / "corrupt.mp4")
    Path(out["corrupt_video"]).write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    return out


def cases(f: dict[str, str]) -> list[dict]:
    """About 50 requests; "image"/"video" values naming a key of `f` are uploaded, other strings sent as is."""
    deep = "[" * 100_000 + "]" * 100_000
    img = {"image": "@example"}
    return [
        {**img, "methods": ["fastv"], "params": json.dumps({"fastv": {"keep": float("nan")}})},
        {**img, "methods": ["fastv"], "params": {"fastv": {"keep": "0.5"}}},
        {**img, "methods": ["fastv"], "params": {"fastv": {"layer": 2**70}}},
        {**img, "methods": ["random"], "params": {"random": {"seed": 2**70}}},
        {**img, "methods": ["fastv"], "params": '{"fastv": {"keep": ' + deep + "}}"},
        {**img, "methods": ["fastv"], "params": {"fastv": {"keep": [[[[1]]]]}}},
        {**img, "methods": ["fastv"], "params": {"fastv": {"layer": -3}}},
        {**img, "methods": ["fastv"], "params": {"fastv": {"layer": 99}}},
        {**img, "methods": ["fastv"], "params": {"fastv": {"nosuch": 1}}},
        {**img, "methods": ["fastv"], "params": {"fastv#9": {}}},
        {**img, "params": "{bad json"},
        {**img, "params": [1, 2, 3]},
        {**img, "params": {"nosuch": {}}},
        {"image": EXAMPLE},
        {"image": "https://example.com/cat.png"},
        {"image": {"path": "/etc/passwd"}},
        {"image": 12345},
        {"video": "/etc/hosts"},
        {"image": "20000x1"}, {"image": "1x20000"}, {"image": "7000x7000"},
        {"image": "corrupt"}, {"image": "empty"}, {"image": "text"}, {"image": "big"},
        {"video": "frames200k"}, {"video": "long"}, {"video": "corrupt_video"},
        {"video": "short", "frames": 0}, {"video": "short", "frames": -1}, {"video": "short", "frames": 65},
        {"video": "short", "frames": "abc"}, {"video": "short", "frames": 1.5},
        {**img, "video": "short"},
        {**img, "prompt": "<image> how many shapes are there?"},
        {**img, "prompt": "   "},
        {**img, "prompt": "x" * 10_000},
        {**img, "keep": 0}, {**img, "keep": 2}, {**img, "keep": "abc"}, {**img, "keep": [0.5]},
        {**img, "max_new_tokens": 0}, {**img, "max_new_tokens": 10**30}, {**img, "max_new_tokens": "x"},
        {**img, "warmup": 9}, {**img, "repeats": 0}, {**img, "repeats": 10**6},
        {**img, "methods": ["nosuch"]}, {**img, "methods": "a" * 10_000}, {**img, "methods": [[1]]},
        {**img, "methods": 123},
        {**img, "model": "x/y"}, {**img, "model": [1]},
        {},
    ]


def _rest_route(url: str) -> tuple[bool, str]:
    """The direct REST route must not run the handler around the queue."""
    req = urllib.request.Request(url + "gradio_api/run/compare", method="POST", data=b'{"data": []}',
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
        return False, "POST /gradio_api/run/compare was served"
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        return e.code == 404 and "queue" in body, body[:120]


def hostile_inputs(client, url: str, scratch: Path) -> dict:
    from gradio_client import handle_file

    files = _files(scratch)
    answered, slowest, slowest_case, bombs, unclear = 0, 0.0, "", 0.0, []
    all_cases = cases(files)
    for case in all_cases:
        kw = dict(case)
        for key in ("image", "video"):
            v = kw.get(key)
            if v == "@example":
                kw[key] = handle_file(EXAMPLE)
            elif isinstance(v, str) and v in files:
                kw[key] = handle_file(files[v])
        kw.setdefault("prompt", "how many shapes are there?")
        kw.setdefault("max_new_tokens", 2)
        kw.setdefault("warmup", 0)
        t0 = time.perf_counter()
        try:
            doc = client.predict(**kw, api_name="/compare")[4]
            ok = all(r["ok"] or (r["error"] and GENERIC not in r["error"]) for r in doc["runs"])
            text = "served"
        except Exception as e:  # noqa: BLE001 - the message is what is judged
            text = str(e)
            ok = bool(text) and GENERIC not in text
        if any(case.get(k) in BOMBS for k in ("image", "video")):
            bombs = max(bombs, time.perf_counter() - t0)
        if time.perf_counter() - t0 > slowest:
            slowest, slowest_case = time.perf_counter() - t0, _short(case)
        answered += ok
        if not ok:
            unclear.append(f"{_short(case)}: {text[:120]}")
    ok, text = _rest_route(url)
    answered += ok
    if not ok:
        unclear.append(f"REST route: {text}")
    return {"answered": answered, "total": len(all_cases) + 1, "slowest_s": slowest, "slowest": slowest_case,
            "bombs_s": bombs, "unclear": unclear}


def _short(case: dict) -> str:
    return ", ".join(f"{k}={str(v)[:30]}" for k, v in case.items())
