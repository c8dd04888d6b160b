"""Saved comparisons: each finished comparison (its input frames, request and document) under a short id, so a
permalink (`/?id=ID`) reopens it read-only, also after the app restarts.

    store = open_store(settings)           # SQLite at settings.store_path, or Redis when the app runs on Redis
    cid = store.save(comparison, document)  # -> "k3J9x0aQpLw"
    record = store.load(cid)                # {"id", "created", "comparison", "document"} or None
    store.recent(10)                        # newest first: {"id", "created", "title"}

A record is plain JSON (the request as `types.to_json` writes it, the document as the API returns it): no
pickle, and the kept-token maps are in the document, so the page redraws every card from the record alone.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from backends.settings import Settings
from backends.types import Comparison, RequestError, from_dict

log = logging.getLogger("vlm.store")
ID = re.compile(r"^[A-Za-z0-9_-]{8,32}$")
REDIS_PREFIX = "vlm:saved:"
REDIS_RECENT = "vlm:saved:recent"  # sorted set: id -> created


def title_of(comparison: Comparison) -> str:
    names = ", ".join(m.name for m in comparison.methods[1:]) or "baseline only"
    return f"{comparison.prompt[:60]} · {comparison.media.kind} {comparison.media.name[:40]} · {names}"


def check_id(cid: object) -> str:
    """The id as sent in a link, or RequestError naming what is wrong with it."""
    if not isinstance(cid, str) or not ID.match(cid):
        raise RequestError(f"{str(cid)[:40]!r} is not a saved-comparison id (8-32 letters, digits, - or _)")
    return cid


def _record(cid: str, created: float, body: str) -> dict:
    data = json.loads(body)
    return {"id": cid, "created": created, "comparison": from_dict(Comparison, data["comparison"]),
            "document": data["document"]}


class SqliteStore:
    """One table in one SQLite file; a lock serialises writers of this process (gradio runs handlers in threads)."""

    def __init__(self, path: str):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS comparisons (id TEXT PRIMARY KEY, created REAL NOT NULL, "
                       "title TEXT NOT NULL, body TEXT NOT NULL)")
        self.where = f"SQLite file {self.path}"

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def save(self, comparison: Comparison, document: dict) -> str:
        cid, now = secrets.token_urlsafe(8), time.time()
        body = json.dumps({"comparison": asdict(comparison), "document": document}, separators=(",", ":"))
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO comparisons VALUES (?, ?, ?, ?)", (cid, now, title_of(comparison), body))
        return cid

    def load(self, cid: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT created, body FROM comparisons WHERE id = ?", (check_id(cid),)).fetchone()
        return _record(cid, row[0], row[1]) if row else None

    def recent(self, n: int = 10) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT id, created, title FROM comparisons ORDER BY created DESC LIMIT ?", (n,))
            return [{"id": i, "created": c, "title": t} for i, c, t in rows.fetchall()]


class RedisStore:
    """The same records in Redis (JSON strings and a sorted set of ids), for apps that already run on Redis."""

    def __init__(self, url: str):
        import redis

        self.r = redis.Redis.from_url(url, socket_timeout=5)
        self.where = "Redis"

    def save(self, comparison: Comparison, document: dict) -> str:
        cid, now = secrets.token_urlsafe(8), time.time()
        body = json.dumps({"comparison": asdict(comparison), "document": document, "created": now,
                           "title": title_of(comparison)}, separators=(",", ":"))
        with self.r.pipeline() as p:
            p.set(REDIS_PREFIX + cid, body).zadd(REDIS_RECENT, {cid: now}).execute()
        return cid

    def load(self, cid: str) -> dict | None:
        body = self.r.get(REDIS_PREFIX + check_id(cid))
        return _record(cid, json.loads(body)["created"], body) if body else None

    def recent(self, n: int = 10) -> list[dict]:
        out = []
        for cid in self.r.zrevrange(REDIS_RECENT, 0, n - 1):
            body = self.r.get(REDIS_PREFIX + cid.decode())
            if body:
                data = json.loads(body)
                out.append({"id": cid.decode(), "created": data["created"], "title": data["title"]})
        return out


def open_store(settings: Settings) -> SqliteStore | RedisStore | None:
    """The deployment's store; None (the page then saves nothing and says so) when its file cannot be opened,
    so a read-only disk costs permalinks, not the app."""
    if settings.redis_url:
        return RedisStore(settings.redis_url)
    try:
        return SqliteStore(settings.store_path)
    except (OSError, sqlite3.Error) as e:
        log.error("saved comparisons are off: cannot open %s (%s)", settings.store_path, e)
        return None
