"""From what the page or an API client sends to a validated `Comparison` (no gradio, no torch).

The compare event runs with `preprocess=False`, so values arrive as sent: files as gradio FileData dicts
(`{"path", "orig_name", ...}`, already checked to lie in gradio's upload cache), numbers as numbers, the
method list as a list of names and `params` as a dict or a JSON string. Everything a user can get wrong
raises `RequestError` with a message for them. Parameter values are coerced to the types the catalog declares
(numeric strings become numbers; NaN, 64-bit overflows, deep nesting are refused here, since the page and the
API could not even encode them back); their ranges are checked by each method on the worker, so an
out-of-range value fails only that method's run (its card says why).

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

from backends import checks, media
from backends.settings import Settings
from backends.types import DEFAULT_MAX_NEW_TOKENS, Comparison, GenerationSettings, Media, MethodSpec, RequestError

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
    if isinstance(payload, str):  # a bare path or URL: the server never opens what a client names
        raise RequestError("a file must be uploaded, not named by a path or URL: upload it on the page, or send "
                           "gradio_client.handle_file(path_or_url) from a program")
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
            raise RequestError(f"unknown method {checks.show(n)}; known: {', '.join(catalog)}")
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
        except RecursionError:
            raise RequestError(f"params is nested too deeply (the limit is {checks.MAX_DEPTH} levels)") from None
    if checks.depth(params) > checks.MAX_DEPTH:
        raise RequestError(f"params is nested too deeply (the limit is {checks.MAX_DEPTH} levels)")
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise RequestError('params must map a method name to its parameters, e.g. {"fastv": {"k": 2}}')
    return params


def coerce_params(name: str, p: dict, entry: dict) -> dict:
    """A run's parameters as the catalog's declared types (the budget also range-checked, as the method does).
    Names the method does not know pass as they are (plain JSON values only): its run fails saying so."""
    fields = {f["name"]: f for f in entry.get("params", [])}
    out = {}
    for key, value in p.items():
        f = fields.get(key)
        if f is not None:
            out[key] = checks.coerce(name, key, f["type"], value, f.get("choices") or ())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = checks.number(value, f"{name}: {key}", type(value))
        elif value is None or isinstance(value, (str, bool)):
            out[key] = value
        else:
            raise RequestError(f"{name}: parameter {checks.show(key)} must be a number, text or true/false, got "
                               f"{checks.show(value)}")
    budget = entry.get("budget_field")
    if budget and budget in out:
        checks.number(out[budget], f"{name}: {budget}", float, 0.0, 1.0, lo_open=True)
    return out


def run_params(order: list[str], params: dict[str, dict], keep: float, catalog: dict[str, dict]) -> list[dict]:
    """Each run's parameter overrides; the budget slider sets every budgeted method's budget unless the
    method's params name it."""
    counts = {n: order.count(n) for n in order}
    for key in params:
        name, _, k = key.partition("#")
        if name not in counts or (k and (not k.isdigit() or len(k) > 6 or not 1 <= int(k) <= counts[name])):
            raise RequestError(f"params names {checks.show(key)}, which is not among the runs ({', '.join(order)})")
    out, seen = [], dict.fromkeys(counts, 0)
    for name in order:
        seen[name] += 1
        p = coerce_params(name, {**params.get(name, {}), **params.get(f"{name}#{seen[name]}", {})}, catalog[name])
        budget = catalog[name].get("budget_field")
        if budget and budget not in p:
            p[budget] = keep
        out.append(p)
    return out


def number(value: Any, what: str, kind: type = int, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> Any:
    """A number from the page or the API (numeric strings accepted), range-checked: one message per violation."""
    return checks.number(value, what, kind, lo, hi, lo_open)


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
                     max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS, model: Any = None, frames: Any = None,
                     warmup: Any = 1,
                     repeats: Any = 1, source: str = "auto", repeat_budget_s: Any = 0.0,
                     follow_ups: Any = None) -> Comparison:
    """Validate everything (cheap checks first) and build the request the pool runs."""
    prompt = media.check_prompt(prompt if isinstance(prompt, str) else "", settings)
    keep = number(keep, "keep (the share of visual tokens kept)", float, 0.0, 1.0, lo_open=True)
    model = model or settings.model
    if not isinstance(model, str) or model not in settings.models():
        raise RequestError(f"model {checks.show(model)} is not offered here; choose one of: "
                           f"{', '.join(settings.models())}")
    order = run_order(methods, catalog)
    specs = [MethodSpec(n, p) for n, p in zip(order, run_params(order, parse_params(params), keep, catalog))]
    gen = GenerationSettings(max_new_tokens=number(max_new_tokens, "max_new_tokens", int, 1, 512),
                             warmup=number(warmup, "warmup", int, 0, 5), repeats=number(repeats, "repeats", int, 1, 20),
                             repeat_budget_s=number(repeat_budget_s, "repeat_budget_s", float))
    frames = settings.frames if frames is None or frames == "" else number(frames, "frames", int, 1,
                                                                            settings.max_frames)
    ups = follow_up_list(follow_ups, settings)
    med = read_media(image, video, frames, source, settings)
    return Comparison(med, prompt, specs, gen, model, follow_ups=ups)


def follow_up_list(follow_ups: Any, settings: Settings) -> list[str]:
    """Later questions of the conversation: a list (API; an empty one is refused) or the page's text box, one
    question a line (blank lines skipped)."""
    from backends.types import check_follow_ups

    if isinstance(follow_ups, str):
        follow_ups = [q for q in follow_ups.splitlines() if q.strip()]
    return [media.check_prompt(q, settings) for q in check_follow_ups(follow_ups, settings.max_prompt_chars)]
