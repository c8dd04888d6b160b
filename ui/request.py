"""From what the page or an API client sends to a validated `Comparison` (no gradio, no torch).

The compare event runs with `preprocess=False`, so values arrive as sent: files as gradio FileData dicts
(`{"path", "orig_name", ...}`, already checked to lie in gradio's upload cache), numbers as numbers, the
method list as a list of names and `params` as a dict or a JSON string. Everything a user can get wrong
raises `RequestError` with a message for them; parameter values themselves are checked by the method
registry on the worker, so a bad value fails only that method's run (its card says why).

Run order: the baseline first (added if missing), then the methods in the order given. A name may repeat
(e.g. the same method at two settings): `params` keys are a method name (every run of it) or `name#k`
(its k-th run, counting from 1), and `name#k` wins.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from backends import media
from backends.settings import Settings
from backends.types import Comparison, GenerationSettings, Media, MethodSpec, RequestError

BASELINE = "baseline"


def upload_folder() -> Path:
    """Where gradio keeps uploads (the same rule as gradio.utils.get_upload_folder)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def upload_path(payload: Any) -> tuple[str, str] | None:
    """(server path, original file name) of an uploaded file, or None when nothing was uploaded.

    Defence in depth: whatever a client sends, only files inside gradio's upload folder are ever opened."""
    if payload in (None, "", {}):
        return None
    if isinstance(payload, dict) and isinstance(payload.get("path"), str):
        path = Path(payload["path"]).resolve()
        if not path.is_relative_to(upload_folder()):
            raise RequestError("the upload could not be read; upload the file again")
        return str(path), payload.get("orig_name") or path.name
    raise RequestError("the upload could not be read; upload the file again")


def run_order(methods: Any, catalog: dict[str, dict]) -> list[str]:
    if methods is None or methods == "":
        methods = []
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",")]
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise RequestError("methods must be a list of method names")
    names = [m for m in methods if m]
    for n in names:
        if n not in catalog:
            raise RequestError(f"unknown method {n!r}; known: {', '.join(catalog)}")
    if BASELINE in names:
        names.remove(BASELINE)  # the first occurrence: it moves to the front, repeats stay where they are
    return [BASELINE, *names]


def parse_params(params: Any) -> dict[str, dict]:
    if params in (None, "", {}):
        return {}
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as e:
            raise RequestError(f"params is not valid JSON: {e}") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise RequestError('params must map a method name to its parameters, e.g. {"fastv": {"k": 2}}')
    return params


def run_params(order: list[str], params: dict[str, dict], keep: float, catalog: dict[str, dict]) -> list[dict]:
    """Each run's parameter overrides; the budget slider sets every budgeted method's budget unless the
    method's params name it."""
    counts = {n: order.count(n) for n in order}
    for key in params:
        name, _, k = key.partition("#")
        if name not in counts or (k and (not k.isdigit() or not 1 <= int(k) <= counts[name])):
            raise RequestError(f"params names {key!r}, which is not among the runs ({', '.join(order)})")
    out, seen = [], dict.fromkeys(counts, 0)
    for name in order:
        seen[name] += 1
        p = {**params.get(name, {}), **params.get(f"{name}#{seen[name]}", {})}
        budget = catalog[name].get("budget_field")
        if budget and budget not in p:
            p[budget] = keep
        out.append(p)
    return out


def number(value: Any, what: str, kind: type = int) -> Any:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{what} must be a number, got {value!r}") from None
    if kind is int and not x.is_integer():
        raise RequestError(f"{what} must be a whole number, got {value!r}")
    return kind(x)


def read_media(image: Any, video: Any, frames: Any, source: str, settings: Settings) -> Media:
    """The visual input. `source` is the page's open tab ("image"/"video"); API calls leave it "auto" and
    must send exactly one of the two."""
    img, vid = upload_path(image), upload_path(video)
    if source == "image":
        vid = None
    elif source == "video":
        img = None
    elif img and vid:
        raise RequestError("send an image or a video, not both")
    if img:
        med = media.image_media(img[0], settings)
        med.name = img[1]
        return med
    if vid:
        med = media.video_media(vid[0], settings, number(frames, "frames"))
        med.name = vid[1]
        return med
    raise RequestError(f"upload {'a video' if source == 'video' else 'an image'} first")


def build_comparison(settings: Settings, catalog: dict[str, dict], *, image: Any = None, video: Any = None,
                     prompt: Any = "", methods: Any = None, keep: Any = 1.0, params: Any = None,
                     max_new_tokens: Any = 8, model: Any = None, frames: Any = None, warmup: Any = 1,
                     repeats: Any = 1, source: str = "auto", repeat_budget_s: Any = 0.0) -> Comparison:
    """Validate everything (cheap checks first) and build the request the pool runs."""
    prompt = media.check_prompt(prompt if isinstance(prompt, str) else "", settings)
    keep = number(keep, "keep", float)
    if not 0.0 < keep <= 1.0:
        raise RequestError(f"keep (the share of visual tokens kept) must be in (0, 1], got {keep:g}")
    model = model or settings.model
    if model not in settings.models():
        raise RequestError(f"model {model!r} is not offered here; choose one of: {', '.join(settings.models())}")
    order = run_order(methods, catalog)
    specs = [MethodSpec(n, p) for n, p in zip(order, run_params(order, parse_params(params), keep, catalog))]
    gen = GenerationSettings(max_new_tokens=number(max_new_tokens, "max_new_tokens"),
                             warmup=number(warmup, "warmup"), repeats=number(repeats, "repeats"),
                             repeat_budget_s=number(repeat_budget_s, "repeat_budget_s", float))
    med = read_media(image, video, frames if frames not in (None, "") else settings.frames, source, settings)
    return Comparison(med, prompt, specs, gen, model)
