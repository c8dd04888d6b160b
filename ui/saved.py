"""Saved comparisons on the page: the permalink (`/?id=ID`, read-only; `&present=1` for the presenter view),
the list of recent ones, the exports and charts shown once a comparison is finished.

    opened = make_open(store, catalog)     # demo.load: fills the results area from `?id=` (nothing runs)
    finish = make_finish(store)            # after a comparison: permalink, export files, charts, recent list

Reopening needs only the store: no pool and no model is touched, so a presenter can show saved comparisons
from a laptop that cannot run the model.
"""

from __future__ import annotations

import time

import gradio as gr

from backends.types import RequestError
from ui import exports, plots
from ui.fmt import esc
from ui.handler import View

RECENT = 8


def recent_html(store) -> str:
    if store is None:
        return '<div class="vc-note">Saved comparisons are off on this server (no store could be opened).</div>'
    try:
        items = store.recent(RECENT)
    except Exception as e:  # the list is a convenience: a broken store must not break the page
        return f'<div class="vc-note">Saved comparisons are unavailable: {esc(type(e).__name__)}: {esc(e)}</div>'
    if not items:
        return '<div class="vc-note">No saved comparisons yet: each finished comparison is saved here.</div>'
    rows = "".join(f'<li><a href="?id={esc(i["id"])}">{esc(i["title"])}</a> '
                   f'<span>{time.strftime("%Y-%m-%d %H:%M", time.gmtime(i["created"]))} UTC</span></li>'
                   for i in items)
    return f'<ul class="vc-recent">{rows}</ul>'


def link_of(request: gr.Request | None, cid: str) -> str:
    """The absolute permalink as the visitor's browser reached this page: the page's own address (the event's
    Referer; the request URL itself is gradio's API route), without its query."""
    headers = getattr(request, "headers", None) or {}
    page = headers.get("referer") or (f"http://{headers['host']}/" if headers.get("host") else "")
    return f"{page.split('?')[0] or '/'}?id={cid}"


def _charts(doc: dict | None) -> tuple:
    has = bool(doc and any(r["ok"] for r in doc.get("runs", [])))
    return (gr.BarPlot(plots.latency(doc), visible=has), gr.BarPlot(plots.memory(doc), visible=has))


def make_finish(store):
    def finish(doc: dict | None, request: gr.Request = None) -> tuple:
        """(permalink text, export files, exports group, latency chart, memory chart, recent list)."""
        if not doc:
            return "", None, gr.Group(visible=False), *_charts(None), recent_html(store)
        cid = (doc.get("saved") or {}).get("id", "")
        link = link_of(request, cid) if cid else ""
        return (link, exports.write(doc, link), gr.Group(visible=True), *_charts(doc), recent_html(store))

    return finish


def make_open(store, catalog: dict[str, dict]):
    def opened(request: gr.Request = None) -> tuple:
        """The page as a link asks for it: (banner, cards, summary, doc, controls column visible,
        results class, permalink text, export files, exports group, latency chart, memory chart, recent)."""
        q = dict(getattr(request, "query_params", {}) or {})
        cid, present = q.get("id"), q.get("present") in ("1", "true", "yes")
        keep = (gr.skip(),) * 4
        if not cid:
            return (*keep, gr.Column(visible=True), gr.Column(elem_classes=["vc-main"]), "", None,
                    gr.Group(visible=False), *_charts(None), recent_html(store))
        try:
            record = store.load(cid) if store is not None else None
            if record is None:
                raise RequestError(f"no saved comparison has the id {cid!r} (it may come from another server, or "
                                   "its store was reset); run a comparison to make a new link")
        except RequestError as e:
            banner = f'<div class="vc-error" data-state="unknown-id"><b>Cannot reopen:</b> {esc(e)}</div>'
            return (banner, "", "", None, gr.Column(visible=True), gr.Column(elem_classes=["vc-main"]), "", None,
                    gr.Group(visible=False), *_charts(None), recent_html(store))
        view = View.reopen(record, catalog)
        banner, cards, summary, _, doc = view.update()
        link = link_of(request, cid)
        classes = ["vc-main", "vc-present"] if present else ["vc-main"]
        return (banner, cards, "" if present else summary, doc, gr.Column(visible=not present),
                gr.Column(elem_classes=classes), link, exports.write(doc, link), gr.Group(visible=not present),
                *(_charts(None) if present else _charts(doc)), recent_html(store))

    return opened
