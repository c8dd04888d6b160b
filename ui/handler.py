"""The compare handler: a generator that streams one page update per finished run.

    yield (banner, cards, summary, download, document)      # once with every card pending,
                                                             # once per finished run, once at the end

Gradio sends every yield to the browser and to API clients (`client.submit(...)` iterates them). The
pool yields results in finishing order; cards are laid out in request order (baseline first), so each
update re-renders the cards from the results so far. The kept-token overlays (the costly part) are drawn
once per run. Bad input raises `gr.Error` before anything runs; a run that fails shows in its own card; a
pool that fails marks the unfinished runs failed and, if nothing came back, raises `gr.Error`.
"""

from __future__ import annotations

import logging
import time

import gradio as gr

from backends.document import document
from backends.pool import PoolError
from backends.settings import BUILTIN, Settings
from backends.types import DEFAULT_MAX_NEW_TOKENS, Comparison, RequestError, RunResult
from ui import cards, domain, exports, heatmap, summary
from ui.fmt import esc
from ui.request import build_comparison

BUILTIN_NOTE = ("Answers come from the built-in model: a small LLaVA-architecture VLM trained here on synthetic "
                "images of 1-4 coloured shapes; it only answers questions about such shapes.")
log = logging.getLogger("vlm.ui")
# Timed runs by default: three at least, more while the totals are noisy, within a budget. On the built-in
# model a run takes tens of ms, so it gets up to 20; a 7B model's seconds-long runs stop at three.
TIMED_RUNS, REPEAT_BUDGET_S = 3, 2.0


class View:
    """The page state of one comparison: its results so far and their rendered overlays."""

    def __init__(self, comparison: Comparison, catalog: dict[str, dict]):
        self.comparison, self.catalog = comparison, catalog
        self.specs = comparison.methods
        video = comparison.media.kind == "video"
        self.frames = heatmap.decode_frames(comparison.media.frames_png, 96 if video else 208)
        self.plain = heatmap.map_uris(self.frames, [])
        self.builtin = comparison.model == BUILTIN
        self.scene_problem = domain.scene_check(self.frames) if self.builtin else ""
        self.results: dict[int, RunResult] = {}
        self.maps: dict[int, dict[str, list[str]]] = {}
        self.problem = ""
        self.pool: dict = {}  # the pool stream's summary, once every run is back
        self.saved: dict = {}  # {"id", "created"} once stored (or when reopened from a permalink)

    @staticmethod
    def reopen(record: dict, catalog: dict[str, dict]) -> View:
        """A saved comparison, drawn from its record alone (read-only: nothing runs)."""
        view = View(record["comparison"], catalog)
        for r in exports.results(record["document"]):
            view.add(r)
        view.saved = {"id": record["id"], "created": record["created"]}
        return view

    def add(self, r: RunResult) -> None:
        self.results[r.index] = r
        if r.ok:  # draw once; later updates reuse the data URIs
            self.maps[r.index] = self._draw(r)

    def _draw(self, r: RunResult) -> dict[str, list[str]]:
        """"kept" (what enters the LLM) and one entry per stage; a stage equal to the kept map is not drawn
        twice. Stages are labelled with their layers when the method reports them in `info["layers"]`."""
        maps = {"kept": heatmap.map_uris(self.frames, r.kept_map)} if r.kept_map else {}
        layers = r.info.get("layers")
        layers = layers if isinstance(layers, list) and len(layers) == len(r.stage_maps) else None
        for s, stage in enumerate(r.stage_maps):
            where = f"from layer {layers[s]}" if layers else f"stage {s + 1}"
            maps[f"{where} · mean kept {heatmap.mean_share(stage):.2f}"] = heatmap.map_uris(self.frames, stage)
            if stage == r.kept_map:
                maps.pop("kept", None)
        return maps

    def _warning(self, r: RunResult | None) -> str:
        return domain.warning(self.builtin, self.scene_problem, r.confidence) if r is not None and r.ok else ""

    def fail_pending(self, message: str) -> None:
        for i, spec in enumerate(self.specs):
            if i not in self.results:
                self.results[i] = RunResult.failed(spec, message, i)

    @property
    def ref(self) -> RunResult | None:
        r = self.results.get(0)  # the baseline always runs first
        return r if r is not None and r.ok else None

    def banner(self) -> str:
        done, n = len(self.results), len(self.specs)
        failed = sum(not r.ok for r in self.results.values())
        state = f"{done} of {n} runs finished" + (f", {failed} failed" if failed else "")
        med = self.comparison.media
        what = f"{med.kind} {esc(med.name)}" + (f" ({len(med.frames_png)} sampled frames)" if med.kind == "video"
                                                 else "")
        parts = [f'<div class="vc-status"><b>{state}</b> · {what} · model <code>{esc(self.comparison.model)}'
                 f"</code></div>"]
        if self.pool.get("wall_s"):  # the pool's own account: wall time of the whole comparison, who ran it
            who = ", ".join(f"{w} ×{n}" for w, n in self.pool.get("workers", {}).items())
            parts.append(f'<div class="vc-status">{esc(self.pool.get("pool", ""))} pool: {self.pool["wall_s"]:.2f} s '
                         f"from submission to the last result (queueing, model loading and warm-ups included); "
                         f"runs per worker: {esc(who or '?')}</div>")
        if self.problem:
            parts.append(f'<div class="vc-error">{esc(self.problem)}</div>')
        if self.saved:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.saved["created"]))
            parts.append(f'<div class="vc-status vc-saved">Saved {when} as <a href="?id={esc(self.saved["id"])}">'
                         f'<code>{esc(self.saved["id"])}</code></a> (permalink, read-only) · '
                         f'<a href="?id={esc(self.saved["id"])}&amp;present=1">presenter view</a></div>')
        if self.comparison.model == BUILTIN:
            parts.append(f'<div class="vc-note">{esc(BUILTIN_NOTE)}</div>')
        return "".join(parts)

    def update(self, download: str | None = None) -> tuple:
        cs = [cards.card(spec, self.catalog.get(spec.name), self.results.get(i), self.ref, self.maps.get(i),
                         self.plain, self._warning(self.results.get(i))) for i, spec in enumerate(self.specs)]
        doc = document(self.comparison, list(self.results.values()))
        if self.saved:
            doc["saved"] = {"id": self.saved["id"], "link": f"/?id={self.saved['id']}"}
        return (self.banner(), cards.grid(cs), summary.summary(self.specs, self.results, self.ref), download, doc)


def refused(message: str) -> tuple:
    """The page after a refused request: nothing of an earlier comparison stays on screen."""
    banner = f'<div class="vc-error" data-state="refused"><b>Refused:</b> {esc(message)}</div>'
    return banner, "", "", None, None


def make_compare(pool, settings: Settings, store=None):
    catalog = {m["name"]: m for m in pool.catalog()}

    def compare(image=None, video=None, prompt="", methods=None, keep=1.0, params=None,
                max_new_tokens=DEFAULT_MAX_NEW_TOKENS, model=None, frames=None, warmup=1, repeats=TIMED_RUNS,
                source="auto", repeat_budget_s=REPEAT_BUDGET_S, follow_ups=None):
        """Run the baseline and the chosen methods on one image or video and stream the results.

        image / video: an uploaded file (send one); prompt: the question; methods: registry names (the
        baseline is added first); keep: share of visual tokens budgeted methods keep, in (0, 1]; params:
        per-method overrides, {"method": {...}} or {"method#2": {...}} for its 2nd run, a dict or JSON
        string; max_new_tokens; model: one the deployment offers; frames: sampled from a video; warmup /
        repeats: untimed and (at least) timed runs per method; repeat_budget_s: more timed runs, up to 20,
        while their totals spread over 10% and these seconds are not spent; follow_ups: later questions of
        the same conversation (a list, or text with one a line), each answered on every run's own KV cache.
        Each update is (banner HTML, cards HTML, summary HTML, download file or None, comparison document);
        the last holds every result.
        """
        try:
            comp = build_comparison(settings, catalog, image=image, video=video, prompt=prompt, methods=methods,
                                    keep=keep, params=params, max_new_tokens=max_new_tokens, model=model,
                                    frames=frames, warmup=warmup, repeats=repeats, source=source,
                                    repeat_budget_s=repeat_budget_s, follow_ups=follow_ups)
        except RequestError as e:  # the user's mistake: one line in the log, no trace; the page is cleared
            log.warning("refused a compare request: %s", e)
            yield refused(str(e))
            raise gr.Error(str(e), title="Bad input", print_exception=False) from None
        view = View(comp, catalog)
        yield view.update()
        stream = None
        try:
            stream = pool.compare(comp)
            for result in stream:
                view.add(result)
                yield view.update()
        except Exception as e:  # the pool itself failed (e.g. Redis unreachable): say so, keep what came back
            detail = str(e) if isinstance(e, PoolError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, PoolError):  # a real fault: keep its trace in the server log
                log.exception("the worker pool failed")
            view.problem = f"The worker pool failed: {detail}"
            nothing = not view.results
            view.fail_pending(f"no result: {view.problem}")
            yield view.update()
            if nothing:
                raise gr.Error(view.problem, title="Pool unavailable") from None
            gr.Warning(view.problem)
        finally:  # also on a closed page: runs not started yet are dropped instead of occupying the workers
            if stream is not None and hasattr(stream, "close"):
                stream.close()
        view.pool = getattr(stream, "summary", None) or {}
        if store is not None and view.ref is not None:
            try:
                view.saved = {"id": store.save(comp, view.update()[4]), "created": time.time()}
            except Exception:  # a full disk must not cost the user the results on screen
                log.exception("could not save the comparison")
        final = view.update()
        yield (*final[:3], exports.write(final[4])[0], final[4])

    return compare

