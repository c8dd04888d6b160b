"""The summary under the cards: a table of every run (timings with their min-max over the timed runs) and how
the numbers were measured (from each result's `measurement`). The charts of where the time goes and of memory
are gradio plots next to it (`ui.plots`). The table scrolls sideways on a narrow screen."""

from __future__ import annotations

from backends.types import MethodSpec, RunResult
from ui import fmt
from ui.fmt import esc


def table(specs: list[MethodSpec], results: dict[int, RunResult], ref: RunResult | None) -> str:
    head = ("<tr><th>#</th><th>method</th><th>answer</th><th>vs baseline</th><th>visual tokens (eff)</th>"
            "<th>TTFT (min–max)</th><th>total (min–max)</th><th>speedup, measured (range)</th>"
            "<th>FLOP-ideal, computed</th><th>decode</th><th>confidence (min)</th><th>peak mem</th>"
            "<th>KV cache</th></tr>")
    rows = []
    for i, spec in enumerate(specs):
        r = results.get(i)
        lead = f"<td>{i + 1}</td><td>{esc(spec.name)}</td>"
        if r is None:
            rows.append(f'<tr class="vc-wait">{lead}<td colspan="11">running…</td></tr>')
            continue
        if not r.ok:
            rows.append(f'<tr class="vc-failed">{lead}<td colspan="11">failed: {esc(r.error)}</td></tr>')
            continue
        rate = fmt.decode_rate(r)
        cells = [esc(r.answer), esc(fmt.agreement(r, ref) or ("reference" if r is ref else fmt.DASH)),
                 f"{fmt.kept_text(r)} ({r.visual_tokens.effective:.1f})", fmt.ms_spread(r, "ttft"),
                 fmt.ms_spread(r, "total"), esc(fmt.speedup_text(r, ref)),
                 "reference" if r is ref else fmt.flop_text(r), fmt.DASH if rate is None else f"{rate:.1f} tok/s",
                 fmt.confidence_text(r), fmt.size(r.memory.peak_bytes), fmt.size(r.memory.kv_cache_bytes)]
        rows.append(f"<tr>{lead}{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    return f'<div class="vc-scroll"><table class="vc-table">{head}{"".join(rows)}</table></div>'


def _how(m: dict, peak_kind: str) -> str:
    v = m.get("versions", {})
    return (f"Each timing is the {m.get('statistic', '?')} of the timed runs ({m.get('repeat_rule', '?')}) after "
            f"{m.get('warmup_runs', '?')} untimed warm-up run(s), with the min-max over them; "
            f"clock {m.get('clock', '?')}; device sync: "
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
    return (f'<div class="vc-summary"><h3>Summary</h3>{table(specs, results, ref)}'
            f"{measured(results)}</div>")
