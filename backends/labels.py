"""Labelled data in the eval format, read without torch (the web page's sweep uses it; `app.py eval` scores the
same way): one JSON object a line, {"image" or "video": path relative to the file, "question", "answer",
optional "kind"}. Conversation lines ("turns") are left to `app.py eval`.

    items = read_items("assets/heldout/heldout.jsonl", settings, limit=16)   # [{"media", "question", "answer"}]
    correct("Two.", "two")                                                   # True
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from backends import media
from backends.settings import Settings
from backends.types import RequestError

_PUNCT = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """Lower-case, punctuation dropped, whitespace collapsed: 'Two.' == 'two' (the eval command's exact match)."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def correct(pred: str, answer: str) -> bool:
    return normalize(pred) == normalize(answer)


def read_items(path: str | Path, settings: Settings, limit: int, frames: int | None = None) -> list[dict]:
    """The first `limit` question lines of a JSONL file with their media read. Media paths must stay inside the
    file's folder (a data file cannot make the server open anything else)."""
    path = Path(path)
    root = path.parent.resolve()
    items: list[dict] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if len(items) >= limit:
            break
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if "turns" in item:
                continue
            key = "image" if "image" in item else "video"
            file = (root / item[key]).resolve()
            if not file.is_relative_to(root):
                raise RequestError(f"{path.name} line {n}: {item[key]!r} lies outside the data folder")
            med = media.image_media(file, settings) if key == "image" else media.video_media(file, settings, frames)
            items.append({"media": med, "question": str(item["question"]), "answer": str(item["answer"]),
                          "kind": item.get("kind", "all")})
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise RequestError(f"{path.name} line {n}: needs image (or video), question and answer ({e})") from None
    if not items:
        raise RequestError(f"{path.name} has no question lines")
    return items
