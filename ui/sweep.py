"""Budget sweep: one input and question, the chosen methods at several keeps (1.0 down to 0.05), the baseline
once. Each point is a measured run; the page draws latency and agreement with the baseline against keep with
gradio's native line plots, and `api_name="sweep"` streams the same points to API clients.

    yield (status HTML, latency plot, agreement plot, points table, comparison document)

A sweep is one comparison whose runs are `method#k` with the k-th keep, so it runs on the same pool, with the
same checks and the same measurement as a comparison. Methods without a budget parameter are not swept.
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

from backends.document import document
from backends.settings import Settings
from backends.types import DEFAULT_MAX_NEW_TOKENS, RequestError
from ui import plots
from ui.fmt import esc
from ui.request import build_comparison, number

log = logging.getLogger("vlm.ui")
DEFAULT_KEEPS = "1.0, 0.75, 0.5, 0.25, 0.1, 0.05"
MAX_POINTS = 60  # runs in one sweep (methods x keeps): a sweep holds a worker for all of them


def parse_keeps(keeps) -> list[float]:
    items = keeps if isinstance(keeps, list) else str(keeps or "").replace(";", ",").split(",")
    out = [number(k, "a keep of the sweep", float) for k in items if str(k).strip()]
    if not out:
        raise RequestError("the sweep needs at least one keep, e.g. 1.0, 0.5, 0.25")
    bad = [k for k in out if not 0.0 < k <= 1.0]
    if bad:
        raise RequestError(f"every keep must be in (0, 1], got {bad[0]:g}")
    return sorted(set(out), reverse=True)


# one colour per method, fixed for the whole sweep (a colour domain learnt from the first update would drop
# the methods that finish later); the baseline is the grey reference line
LATENCY_TITLE, AGREE_TITLE = "Latency (median total) vs keep", "Agreement with the baseline's answer vs keep"
PALETTE = ("#4a6cf7", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16", "#f97316")


def _plots(doc: dict | None, budgets: dict, keeps: list[float] = (), progress: str = "") -> tuple:
    """(latency plot, agreement plot, points table). Axes and colours are set when the tab is built; each
    update's title carries the progress, which also makes gradio redraw the plot with its new colour domain
    (a data-only update keeps the methods of the first one)."""
    pts = plots.sweep_points(doc, budgets)
    drawn = pts[pts.method != "baseline"]
    base = pts[pts.method == "baseline"]
    if len(base) and keeps:  # the baseline as a flat reference line across the swept keeps
        drawn = pd.concat([drawn, *(base.assign(keep=k) for k in keeps)], ignore_index=True)
    return (gr.LinePlot(drawn, title=f"{LATENCY_TITLE}{progress}"),
            gr.LinePlot(drawn, title=f"{AGREE_TITLE}{progress}"), pts.round(3))


def make_sweep(pool, settings: Settings):
    catalog = {m["name"]: m for m in pool.catalog()}
    budgets = {n: m.get("budget_field") for n, m in catalog.items()}

    def sweep(image=None, video=None, prompt="", methods=None, keeps=DEFAULT_KEEPS,
              max_new_tokens=DEFAULT_MAX_NEW_TOKENS, model=None,
              frames=None, warmup=1, repeats=3, repeat_budget_s=0.5, source="auto"):
        """Run the chosen methods at each keep (and the baseline once) and stream the points.

        keeps: a list of numbers or a comma-separated string, each in (0, 1]. Other parameters as /compare.
        Each update is (status HTML, latency plot, agreement plot, points table, document)."""
        try:
            ks = parse_keeps(keeps)
            names = [m for m in (methods or []) if m != "baseline"]
            swept = list(dict.fromkeys(m for m in names if budgets.get(m)))
            if names and not swept:
                raise RequestError(f"none of {', '.join(names)} has a visual-token budget to sweep")
            runs = [m for m in swept for _ in ks]
            if len(runs) > MAX_POINTS:
                raise RequestError(f"a sweep runs at most {MAX_POINTS} points; this one asks for {len(runs)}")
            params = {f"{m}#{j + 1}": {budgets[m]: k} for m in swept for j, k in enumerate(ks)}
            comp = build_comparison(settings, catalog, image=image, video=video, prompt=prompt, methods=runs,
                                    keep=1.0, params=params, max_new_tokens=max_new_tokens, model=model,
                                    frames=frames, warmup=warmup, repeats=repeats, source=source,
                                    repeat_budget_s=repeat_budget_s)
        except RequestError as e:
            log.warning("refused a sweep request: %s", e)
            yield (f'<div class="vc-error"><b>Refused:</b> {esc(e)}</div>', *_plots(None, budgets), None)
            raise gr.Error(str(e), title="Bad input", print_exception=False) from None
        skipped = [m for m in names if m not in swept]
        note = f" · not swept (no budget): {esc(', '.join(skipped))}" if skipped else ""
        results, stream = [], pool.compare(comp)
        try:
            for r in stream:
                results.append(r)
                doc = document(comp, results)
                status = (f'<div class="vc-status"><b>{len(results)} of {len(comp.methods)} sweep runs finished'
                          f"</b>{note}</div>")
                yield (status, *_plots(doc, budgets, ks, f" ({len(results)} of {len(comp.methods)} runs)"), doc)
        finally:
            if hasattr(stream, "close"):
                stream.close()

    return sweep


class SweepTab:
    """The sweep's controls and charts (render inside a tab); `wire` connects them once the inputs exist."""

    def __init__(self, methods: list[str]):
        gr.Markdown("The methods ticked on the left, each at every keep below (the baseline once), on the same "
                    "input and question. Points fill in as runs finish.")
        with gr.Row():
            self.keeps = gr.Textbox(DEFAULT_KEEPS, label="Keeps (shares of visual tokens, each in (0, 1])", scale=3)
            self.repeats = gr.Number(3, precision=0, minimum=1, maximum=20, label="Timed runs", scale=1)
            self.budget = gr.Number(0.5, minimum=0, maximum=60, label="Repeat budget (s)", scale=1)
        self.button = gr.Button("Run sweep", variant="primary", elem_id="vc-sweep-run")
        self.status = gr.HTML()
        colours = {"baseline": "#9ca3af", **{m: PALETTE[i % len(PALETTE)]
                                             for i, m in enumerate(n for n in methods if n != "baseline")}}
        common = dict(x="keep", color="method", color_map=colours, tooltip="all",
                      x_title="keep (share of visual tokens)")
        with gr.Row():
            self.latency = gr.LinePlot(y="total_ms", title=LATENCY_TITLE, y_title="total ms",
                                       elem_id="vc-sweep-latency", **common)
            self.agreement = gr.LinePlot(y="agreement", y_lim=[0, 1.05], elem_id="vc-sweep-agreement",
                                         title=AGREE_TITLE,
                                         y_title="share of baseline tokens reproduced", **common)
        self.points = gr.Dataframe(label="Points (one row a run; min/max over its timed runs)", interactive=False)
        with gr.Accordion("Sweep document (JSON)", open=False):
            self.doc = gr.JSON(label="sweep document")

    def wire(self, sweep, controls, methods, head: list, tail: list, source, workers: int) -> None:
        """head = [image, video, prompt, methods], tail = [max_new_tokens, model, frames, warmup]."""
        params = gr.State(None)  # the sweep sets each run's budget itself; other parameter edits are not swept
        self.button.click(controls.collect, controls.inputs, [methods, params], api_visibility="private",
                          queue=False).then(
            sweep, [*head, self.keeps, *tail, self.repeats, self.budget, source],
            [self.status, self.latency, self.agreement, self.points, self.doc], api_name="sweep",
            preprocess=False, concurrency_limit=workers, concurrency_id="compare", show_progress="hidden")
