"""The sweep on labelled data (a Pareto view): the ticked methods at each keep over the first lines of a JSONL
file in the eval format that ships with the app, the baseline once per line. Per (method, keep): accuracy
(normalised exact match, as `app.py eval` scores) and mean latency, drawn as accuracy vs keep and accuracy vs
latency with gradio's native line plots; `api_name="sweep_labelled"`.

    yield (status HTML, accuracy-vs-keep plot, accuracy-vs-latency plot, points table)

Each line is one comparison on the pool (one timed run a method; one warm-up on the first line only), so a
line's runs share a worker and nothing is timed twice. Only files in `assets/heldout/` can be named.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import gradio as gr
import pandas as pd

from backends import labels, media
from backends.settings import ROOT, Settings
from backends.types import Comparison, GenerationSettings, MethodSpec, RequestError
from ui.fmt import esc
from ui.request import number
from ui.sweep import PALETTE, parse_keeps

log = logging.getLogger("vlm.ui")
DATA = ROOT / "assets" / "heldout"
MAX_LINES = 200
ACC_KEEP, ACC_LATENCY = "Accuracy vs keep", "Accuracy vs mean latency (the Pareto view)"


def datasets() -> list[str]:
    """JSONL files of question lines next to the app (conversation files are `app.py eval`'s)."""
    out = []
    for f in sorted(DATA.glob("*.jsonl")) if DATA.is_dir() else []:
        first = next((ln for ln in f.read_text().splitlines() if ln.strip()), "")
        if '"question"' in first and '"turns"' not in first:
            out.append(f.name)
    return out


def _table(scores: dict) -> pd.DataFrame:
    rows = [{"method": m, "keep": k, "accuracy": sum(c) / len(c), "mean_latency_ms": sum(t) / len(t),
             "lines": len(c)} for (m, k), (c, t) in scores.items()]
    return pd.DataFrame(rows, columns=["method", "keep", "accuracy", "mean_latency_ms", "lines"]).round(3)


def _plots(table: pd.DataFrame, progress: str, keeps: list[float] = ()) -> tuple:
    """The two plots and the table. The baseline is drawn at every keep (a flat reference line); the title
    carries the progress, as gradio redraws a plot's colour domain only when a setting changes."""
    base = table[table.method == "baseline"]
    drawn = pd.concat([table[table.method != "baseline"], *(base.assign(keep=k) for k in keeps)], ignore_index=True)
    return (gr.LinePlot(drawn, title=f"{ACC_KEEP}{progress}"), gr.LinePlot(drawn, title=f"{ACC_LATENCY}{progress}"),
            table)


def make_pareto(pool, settings: Settings):
    budgets = {m["name"]: m.get("budget_field") for m in pool.catalog()}

    def sweep_labelled(data="heldout.jsonl", methods=None, keeps="1.0, 0.5, 0.25, 0.1", lines=16,
                       max_new_tokens=8, model=None, frames=None):
        """The chosen methods at each keep over the first `lines` of a labelled file the app ships (see
        `datasets()`); the baseline once per line. Each update is (status HTML, accuracy-vs-keep plot,
        accuracy-vs-latency plot, points table: method, keep, accuracy, mean_latency_ms, lines)."""
        try:
            if data not in datasets():
                raise RequestError(f"unknown data file {str(data)[:60]!r}; choose one of: {', '.join(datasets())}")
            ks, n = parse_keeps(keeps), number(lines, "lines", int, 1, MAX_LINES)
            swept = list(dict.fromkeys(m for m in (methods or []) if budgets.get(m)))
            if not swept:
                raise RequestError("tick at least one method with a visual-token budget to sweep")
            model = model or settings.model
            if model not in settings.models():
                raise RequestError(f"model {str(model)[:60]!r} is not offered here")
            items = labels.read_items(DATA / data, settings, n, frames)
            gen = [GenerationSettings(max_new_tokens=number(max_new_tokens, "max_new_tokens"), warmup=w, repeats=1)
                   for w in (1, 0)]
        except RequestError as e:
            log.warning("refused a labelled sweep: %s", e)
            yield (f'<div class="vc-error"><b>Refused:</b> {esc(e)}</div>', *_plots(_table({}), ""))
            raise gr.Error(str(e), title="Bad input", print_exception=False) from None
        specs = [MethodSpec("baseline")] + [MethodSpec(m, {budgets[m]: k}) for m in swept for k in ks]
        scores: dict = defaultdict(lambda: ([], []))
        for i, item in enumerate(items):
            comp = Comparison(item["media"], media.check_prompt(item["question"], settings), specs,
                              gen[0] if i == 0 else gen[1], model)
            stream = pool.compare(comp)
            try:
                for r in stream:
                    if r.ok:
                        keep = r.params.get(budgets.get(r.method) or "", 1.0) if r.method != "baseline" else 1.0
                        got = scores[(r.method, float(keep))]
                        got[0].append(labels.correct(r.answer, item["answer"]))
                        got[1].append(r.timings_ms.total)
            finally:
                if hasattr(stream, "close"):
                    stream.close()
            progress = f" ({i + 1} of {len(items)} lines)"
            yield (f'<div class="vc-status"><b>{i + 1} of {len(items)} lines</b> of {esc(data)} · '
                   f"{len(specs)} runs a line</div>", *_plots(_table(scores), progress, ks))

    return sweep_labelled


class ParetoBox:
    """The labelled sweep's controls and plots (render inside the sweep tab)."""

    def __init__(self, methods: list[str]):
        names = datasets()
        with gr.Accordion("On labelled data: accuracy vs keep and vs latency (Pareto)", open=False):
            with gr.Row():
                first = "heldout.jsonl" if "heldout.jsonl" in names else (names or [None])[0]
                self.data = gr.Dropdown(names, value=first, label="Labelled data (eval format)")
                self.lines = gr.Number(16, precision=0, minimum=1, maximum=MAX_LINES, label="Lines (the first N)")
            self.button = gr.Button("Run on labelled data", elem_id="vc-pareto-run")
            self.status = gr.HTML()
            colours = {"baseline": "#9ca3af", **{m: PALETTE[i % len(PALETTE)]
                                                 for i, m in enumerate(n for n in methods if n != "baseline")}}
            common = dict(y="accuracy", color="method", color_map=colours, tooltip="all", y_lim=[0, 1.05])
            with gr.Row():
                self.by_keep = gr.LinePlot(x="keep", title=ACC_KEEP, elem_id="vc-pareto-keep", **common)
                self.by_latency = gr.LinePlot(x="mean_latency_ms", title=ACC_LATENCY, elem_id="vc-pareto-latency",
                                              x_title="mean total ms", **common)
            self.table = gr.Dataframe(label="Points (one row per method and keep)", interactive=False)

    def wire(self, fn, controls, methods, keeps, tail: list, workers: int) -> None:
        """tail = [max_new_tokens, model, frames]."""
        params = gr.State(None)
        self.button.click(controls.collect, controls.inputs, [methods, params], api_visibility="private",
                          queue=False).then(
            fn, [self.data, methods, keeps, self.lines, *tail], [self.status, self.by_keep, self.by_latency,
                                                                  self.table],
            api_name="sweep_labelled", preprocess=False, concurrency_limit=workers, concurrency_id="compare",
            show_progress="hidden")
