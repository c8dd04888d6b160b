"""Controls generated from the method registry's catalog: a method picker grouped by stage, and a field per
method parameter with the paper's default. Nothing here names a method: a method added to `methods/`
shows up on the next start.

`MethodControls.collect(*values)` turns the picker and field values into the compare endpoint's `methods`
(a list of names) and `params` (only the values a user changed), so the browser and an API client send
the same request.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui.fmt import stage_label

PICKED_BY_DEFAULT = 3  # pre-ticked methods, so one click on an example and one on Compare show a comparison


def _field(p: dict) -> gr.components.Component:
    """One parameter's field: labelled with its name (never cut: each field gets room for it) and explained by
    its method's field comment (the catalog's "help"), with the paper default named."""
    kind, default, label = p["type"], p["default"], p["name"]
    info = "; ".join(x for x in (p.get("help", ""), f"default {default!r}") if x)
    if kind == "bool":
        return gr.Checkbox(value=bool(default), label=label, info=info, min_width=200)
    if kind == "int":
        return gr.Number(value=default, precision=0, label=label, info=info, min_width=200)
    if kind == "float":
        return gr.Number(value=default, label=label, info=info, min_width=200)
    if kind == "choice":
        return gr.Dropdown(choices=p["choices"], value=default, label=label, info=info, min_width=200)
    return gr.Textbox(value="" if default is None else str(default), label=label, info=info, min_width=200)


def default_picks(stages: dict[str, list[dict]]) -> list[str]:
    """Round-robin over the stages (first method of each, then the second, ...) up to PICKED_BY_DEFAULT."""
    out: list[str] = []
    for depth in range(max((len(ms) for ms in stages.values()), default=0)):
        out += [ms[depth]["name"] for ms in stages.values() if depth < len(ms)]
    return out[:PICKED_BY_DEFAULT]


class MethodControls:
    def __init__(self, catalog: list[dict]):
        self.catalog = [m for m in catalog if m["stage"] != "baseline"]
        self.stages: dict[str, list[dict]] = {}
        for m in self.catalog:  # the catalog comes sorted by stage
            self.stages.setdefault(m["stage"], []).append(m)
        self.groups: list[gr.CheckboxGroup] = []
        self.fields: list[tuple[str, str, Any, gr.components.Component]] = []

    def picker(self) -> None:
        """One checkbox group per stage (render inside the layout)."""
        if not self.catalog:
            gr.Markdown("Only the baseline is registered so far; methods added to `methods/` appear here.")
        picked = default_picks(self.stages)
        for ms in self.stages.values():
            names = [m["name"] for m in ms]
            self.groups.append(gr.CheckboxGroup(choices=names, value=[n for n in names if n in picked],
                                                label=stage_label(ms[0])))

    def parameters(self) -> None:
        """One row of fields per method with parameters; the budget field is left to the keep slider."""
        shown = False
        for m in self.catalog:
            params = [p for p in m["params"] if p["name"] != m.get("budget_field")]
            if not params:
                continue
            shown = True
            gr.Markdown(f"**{m['name']}**: {m['summary']}")
            with gr.Row():
                for p in params:
                    self.fields.append((m["name"], p["name"], p["default"], _field(p)))
        if not shown:
            gr.Markdown("No registered method has parameters besides its visual-token budget.")

    @property
    def inputs(self) -> list:
        return [*self.groups, *(f[3] for f in self.fields)]

    def collect(self, *values) -> tuple[list[str], dict[str, dict]]:
        picked = [n for group in values[:len(self.groups)] for n in (group or [])]
        params: dict[str, dict] = {}
        for (method, name, default, _), v in zip(self.fields, values[len(self.groups):]):
            if method in picked and v is not None and v != default:
                params.setdefault(method, {})[name] = v
        return ["baseline", *picked], params


def methods_table(catalog: list[dict]) -> str:
    """Markdown table of every registered method: what it does, where it acts, how faithful it is."""
    rows = ["| method | stage | paper | fidelity | what it does |", "| --- | --- | --- | --- | --- |"]
    for m in catalog:
        rows.append(f"| {m['name']} | {stage_label(m)} | {m['paper']} | "
                    f"{m['fidelity']} | {m['summary']} |")
    return "\n".join(rows)
