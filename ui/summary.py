"""The summary under the cards: a table of every run, where the time goes (stacked bars of the measured
stages) and memory per run, and how the numbers were measured (from each result's `measurement`)."""

from __future__ import annotations

from backends.types import MethodSpec, RunResult
from ui import fmt
from ui.fmt import esc

# Stage segments of the latency bars: (field of Timings, label, colour)
SEGMENTS = (("preprocess", "preprocess", "#b8bcc6"), ("vision", "vision", "#7b8494"),
            ("prefill", "prefill", "#4a6cf7"), ("decode", "decode", "#f59e0b"))


def table(specs: list[MethodSpec], results: dict[int, RunResult], ref: RunResult | None) -> str:
    head = ("<tr><th>#</th><th>method</th><th>answer</th><th>vs baseline</th><th>visual tokens (eff)</th>"
            "<th>TTFT</th><th>total</th><th>speedup</th><th>decode</th><th>peak mem</th><th>KV cache</th></tr>")
    rows = []
    for i, spec in enumerate(specs):
        r = results.get(i)
        lead = f"<td>{i + 1}</td><td>{esc(spec.name)}</td>"
        if r is None:
            rows.append(f'<tr class="vc-wait">{lead}<td colspan="9">running…</td></tr>')
            continue
        if not r.ok:
            rows.append(f'<tr class="vc-failed">{lead}<td colspan="9">failed: {esc(r.error)}</td></tr>')
            continue
        t, rate = r.timings_ms, fmt.decode_rate(r)
        cells = [esc(r.answer), esc(fmt.agreement(r, ref) or ("reference" if r is ref else fmt.DASH)),
                 f"{fmt.kept_text(r)} ({r.visual_tokens.effective:.1f})", fmt.ms(t.ttft), fmt.ms(t.total),
                 "reference" if r is ref else fmt.times(fmt.speedup(r, ref)),
                 fmt.DASH if rate is None else f"{rate:.1f} tok/s", fmt.size(r.memory.peak_bytes),
                 fmt.size(r.memory.kv_cache_bytes)]
        rows.append(f"<tr>{lead}{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    return f'<table class="vc-table">{head}{"".join(rows)}</table>'


def _bar(label: str, segments: list[tuple[float, str, str]], scale: float, text: str) -> str:
    spans = "".join(f'<span style="width:{100 * v / scale:.2f}%;background:{c}" title="{esc(t)}"></span>'
                    for v, c, t in segments if v > 0)
    return (f'<div class="vc-barrow"><span class="vc-barlabel">{esc(label)}</span>'
            f'<span class="vc-bar">{spans}</span><span class="vc-barval">{esc(text)}</span></div>')


def bars(specs: list[MethodSpec], results: dict[int, RunResult]) -> str:
    done = [(i, results[i]) for i in range(len(specs)) if i in results and results[i].ok]
    if not done:
        return ""
    tmax = max(sum(getattr(r.timings_ms, f) for f, _, _ in SEGMENTS) for _, r in done) or 1.0
    mmax = max(max(r.memory.peak_bytes, r.memory.kv_cache_bytes) for _, r in done) or 1
    time_rows, mem_rows = [], []
    for i, r in done:
        label = f"{i + 1}. {r.method}"
        segs = [(getattr(r.timings_ms, f), c, f"{name}: {fmt.ms(getattr(r.timings_ms, f))}") for f, name, c in SEGMENTS]
        time_rows.append(_bar(label, segs, tmax, fmt.ms(r.timings_ms.total)))
        mem_rows.append(_bar(label, [(r.memory.peak_bytes, "#8b5cf6", f"peak: {fmt.size(r.memory.peak_bytes)}")],
                             mmax, fmt.size(r.memory.peak_bytes)))
        mem_rows.append(_bar("  KV cache", [(r.memory.kv_cache_bytes, "#14b8a6",
                                              f"KV cache: {fmt.size(r.memory.kv_cache_bytes)}")],
                             mmax, fmt.size(r.memory.kv_cache_bytes)))
    keys = "".join(f'<span><i style="background:{c}"></i>{n}</span>' for _, n, c in SEGMENTS)
    return (f'<div class="vc-plots"><div class="vc-plot"><h4>Where the time goes</h4>{"".join(time_rows)}'
            f'<div class="vc-keys">{keys}</div></div>'
            f'<div class="vc-plot"><h4>Memory: peak growth and KV cache</h4>{"".join(mem_rows)}'
            f'<div class="vc-keys"><span><i style="background:#8b5cf6"></i>peak</span>'
            f'<span><i style="background:#14b8a6"></i>KV cache</span></div></div></div>')


def _how(m: dict, peak_kind: str) -> str:
    v = m.get("versions", {})
    return (f"Each timing is the {m.get('statistic', '?')} of {m.get('timed_runs', '?')} timed run(s) after "
            f"{m.get('warmup_runs', '?')} untimed warm-up run(s); clock {m.get('clock', '?')}; device sync: "
            f"{m.get('sync', '?')}. Decoding: {m.get('decoding', '?')}. Attention kernel "
            f"{m.get('attn_implementation', '?')} on {m.get('device_name', '?')} ({m.get('device', '?')}, "
            f"{m.get('dtype', '?')}, {m.get('threads', '?')} torch thread(s)); "
            + ", ".join(f"{k} {val}" for k, val in v.items()) + f". Peak memory: {peak_kind}.")


def measured(results: dict[int, RunResult]) -> str:
    """One sentence per distinct way of measuring among the finished runs (usually exactly one)."""
    groups: dict[str, list[str]] = {}
    for i in sorted(results):
        r = results[i]
        if r.ok and r.measurement:
            m = {k: v for k, v in r.measurement.items() if k != "started_unix"}
            groups.setdefault(_how(m, r.memory.peak_kind), []).append(f"{i + 1}. {r.method}")
    if not groups:
        return ""
    lines = [f"<p>{esc(text)}" + (f" <i>({esc(', '.join(who))})</i>" if len(groups) > 1 else "") + "</p>"
             for text, who in groups.items()]
    return f'<div class="vc-how"><b>How these numbers were measured</b>{"".join(lines)}</div>'


def summary(specs: list[MethodSpec], results: dict[int, RunResult], ref: RunResult | None) -> str:
    return (f'<div class="vc-summary"><h3>Summary</h3>{table(specs, results, ref)}{bars(specs, results)}'
            f"{measured(results)}</div>")
