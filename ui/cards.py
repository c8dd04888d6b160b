"""Result cards: one HTML card per run of a comparison, in request order (baseline first).

A card is pending until its run finishes, then shows the answer (marked where its tokens leave the
baseline's), the kept-token maps over the input (per frame; per stage when the method reports stages),
a strip of decoder layers coloured by the visual tokens each one processes (frozen layers marked, when a
method reports them in `info["frozen_layers"]`), the measured numbers, and the kernel/device it ran on.
A failed run shows its error and nothing else; other cards are unaffected. Card HTML is a pure function
of the results, so the handler re-renders all cards on every streamed update.
"""

from __future__ import annotations

from backends.types import MethodSpec, RunResult
from ui import fmt, heatmap
from ui.fmt import esc


def _params_text(spec: MethodSpec, entry: dict | None) -> str:
    """The parameters this run used that differ from the paper defaults (the budget always shown)."""
    if not entry:
        return ""
    defaults = {p["name"]: p["default"] for p in entry["params"]}
    budget = entry.get("budget_field")
    parts = [f"{budget} {spec.params[budget]:g}"] if budget and budget in spec.params else []
    parts += [f"{k}={v}" for k, v in spec.params.items() if k != budget and defaults.get(k) != v]
    return " · ".join(parts)


def _maps(uris: list[str], method: str, label: str = "") -> str:
    """The maps of one card; each names its method in its alt text and enlarges on click (CSS :focus)."""
    cls = "vc-maps" if len(uris) == 1 else "vc-maps vc-frames"
    what = label or "input"
    imgs = "".join(f'<img src="{u}" tabindex="0" alt="{esc(method)}: {esc(what)}, frame {i + 1} of {len(uris)}" '
                   f'title="{esc(method)} · {esc(what)} · frame {i + 1} (click to enlarge)">'
                   for i, u in enumerate(uris))
    head = f'<div class="vc-maplabel">{esc(label)}</div>' if label else ""
    return f'{head}<div class="{cls}">{imgs}</div>'


def _layer_strip(r: RunResult) -> str:
    per_layer, n = r.visual_tokens.per_layer, r.visual_tokens.input
    if not per_layer or n <= 0:
        return ""
    frozen = set(r.info.get("frozen_layers") or [])
    cells = []
    for i, k in enumerate(per_layer):
        mark = " vc-frozen" if i in frozen else ""
        note = " (frozen)" if i in frozen else ""
        cells.append(f'<span class="vc-layer{mark}" style="background:{heatmap.colour(k / n)}" '
                     f'title="layer {i}: {k} visual tokens{note}">{"F" if i in frozen else ""}</span>')
    legend = f"{len(frozen)} frozen" if frozen else f"eff {r.visual_tokens.effective:.1f} tokens/layer"
    return (f'<div class="vc-layers"><span class="vc-maplabel">layers · {legend}</span>'
            f'<div class="vc-strip">{"".join(cells)}</div></div>')


def _cell(label: str, value: str, title: str = "", cls: str = "") -> str:
    return (f'<div class="vc-num {cls}" title="{esc(title)}"><span>{esc(label)}</span>'
            f"<b>{esc(value)}</b></div>")


def _numbers(r: RunResult, ref: RunResult | None) -> str:
    m, vt = r.memory, r.visual_tokens
    rate = fmt.decode_rate(r)
    verdict = fmt.verdict(r, ref)
    runs = f"median (min–max) of {len(r.timings_ms_all)} timed runs"
    cells = [
        _cell("total", fmt.ms_spread(r, "total"), f"preprocess + vision + prefill + decode: {runs}"),
        _cell("speedup (measured)", fmt.speedup_text(r, ref),
              "baseline median total / this median total; in brackets the widest ratio the timed runs allow "
              "(baseline fastest / this slowest .. baseline slowest / this fastest); coloured only when that "
              f"whole range is beyond ×{fmt.SAME_BAND:.2f} either way", "vc-good" if verdict == "faster"
              else ("vc-bad" if verdict == "slower" else "")),
        _cell("TTFT", fmt.ms_spread(r, "ttft"), f"time to first token: preprocess + vision + prefill; {runs}"),
        _cell("FLOP-ideal (computed)", "reference" if r is ref else fmt.flop_text(r),
              "computed, not measured: baseline FLOPs / this run's FLOPs (vision, prefill with each layer's "
              "visual tokens, decode) from the model's config: what this token selection could save at best"),
        _cell("decode", fmt.DASH if rate is None else f"{rate:.1f} tok/s", "(output tokens - 1) / decode time"),
        _cell("confidence", fmt.confidence_text(r),
              "softmax probability of each answer token (greedy): mean and lowest"),
        _cell("peak mem", fmt.size(m.peak_bytes), m.peak_kind),
        _cell("KV cache", fmt.size(m.kv_cache_bytes),
              f"keys + values of every layer: {fmt.size(m.kv_cache_bytes_prefill)} after prefill, "
              f"{fmt.size(m.kv_cache_bytes)} at the end"),
        _cell("visual tokens", fmt.kept_text(r), "tokens entering the LLM / tokens the vision encoder made"),
        _cell("effective", f"{vt.effective:.1f}", "mean visual tokens per decoder layer"),
    ]
    return f'<div class="vc-nums">{"".join(cells)}</div>'


def _footer(r: RunResult) -> str:
    m = r.measurement
    if not m:
        return ""
    bits = [m.get("attn_implementation", ""), m.get("device_name") or m.get("device", ""), m.get("dtype", ""),
            f"{m['threads']} thread{'s' if m.get('threads') != 1 else ''}" if "threads" in m else "", r.worker]
    return f'<div class="vc-foot">{esc(" · ".join(b for b in bits if b))}</div>'


def card(spec: MethodSpec, entry: dict | None, result: RunResult | None, ref: RunResult | None,
         maps: dict[str, list[str]] | None, plain: list[str], warn: str = "") -> str:
    """One card. `maps` holds the rendered overlays of a finished run ("kept" and "stage i"); `plain` is
    the input drawn without a map (pending and failed cards); `warn` an out-of-domain note for its answer."""
    stage = fmt.stage_label(entry) if entry else ""
    sub = " · ".join(x for x in (stage, _params_text(spec, entry)) if x)
    head = (f'<div class="vc-head"><span class="vc-name">{esc(spec.name)}</span>'
            f'<span class="vc-sub" title="{esc(entry.get("summary", "") if entry else "")}">{esc(sub)}</span></div>')
    if result is None:
        body = _maps(plain, spec.name) + '<div class="vc-pending">running… (cards fill in as runs finish)</div>'
        return f'<div class="vc-card vc-wait" data-state="pending" data-method="{esc(spec.name)}">{head}{body}</div>'
    if not result.ok:
        error = esc(result.error or "unknown error")
        body = _maps(plain, spec.name) + f'<div class="vc-error"><b>Run failed.</b> {error}</div>'
        return f'<div class="vc-card vc-failed" data-state="failed" data-method="{esc(spec.name)}">{head}{body}</div>'
    maps = maps or {}
    parts = [head] + [_maps(uris, spec.name, "kept tokens" if label == "kept" else label)
                      for label, uris in maps.items()]
    if not maps:
        parts.append(_maps(plain, spec.name, "no kept-token map reported"))
    parts.append(_layer_strip(result))
    agree = fmt.agreement(result, ref)
    diff = "vc-differs" if agree.startswith("differs") else ("vc-same" if agree else "")
    answer = esc(result.answer) if result.answer else "<i>(empty answer)</i>"
    parts.append(f'<div class="vc-answer {diff}">{answer}</div>')
    if agree:
        parts.append(f'<div class="vc-agree {diff}">{"≠" if diff == "vc-differs" else "="} baseline: {agree}</div>')
    parts.append(_turns(result, ref))
    if warn:
        parts.append(f'<div class="vc-ood" role="note">{esc(warn)}</div>')
    parts += [_numbers(result, ref), _footer(result)]
    cls = "vc-card vc-ref" if result is ref else "vc-card"
    return f'<div class="{cls}" data-state="done" data-method="{esc(spec.name)}">{"".join(parts)}</div>'


def _turns(r: RunResult, ref: RunResult | None) -> str:
    """Follow-up turns (each answered on this run's own KV cache): question, answer, same as the baseline's?"""
    rows = []
    for k, t in enumerate(r.turns[1:], 1):
        base = ref.turns[k] if ref is not None and len(ref.turns) > k and r is not ref else None
        same = "" if base is None else ("vc-same" if base.output_ids == t.output_ids else "vc-differs")
        mark = {"vc-same": " = baseline", "vc-differs": " ≠ baseline"}.get(same, "")
        rows.append(f'<div class="vc-turn {same}" title="{esc(t.prompt)}"><span>turn {k + 1}: {esc(t.prompt)}</span> '
                    f'<b>{esc(t.answer) or "<i>(empty answer)</i>"}</b>{mark}</div>')
    return f'<div class="vc-turns">{"".join(rows)}</div>' if rows else ""


def legend() -> str:
    return (f'<div class="vc-legend">Kept-token maps: <b>true colours</b> = patch kept as it is · '
            f'<b>hatched</b> = merged or pooled with others, hatch colour = its share of a token '
            f'<span>0</span><i style="background:{heatmap.gradient_css()}"></i><span>1</span> · '
            f"<b>dark grey</b> = dropped. Maps cover the centre square the processor crops; click one to enlarge."
            f"</div>")


def grid(cards: list[str]) -> str:
    return legend() + f'<div class="vc-cards">{"".join(cards)}</div>'
