"""Number formatting and the derived figures shown on cards and in the summary (from measured fields only).

Every figure here is computed from a `RunResult`'s measured fields; where an input is missing (a failed
run, a single output token) the figure is None and the page shows a dash, never a guess.
"""

from __future__ import annotations

import html

from backends.types import RunResult

DASH = "–"


def stage_label(entry: dict) -> str:
    """The registry's page label of a method's stage (catalog entries carry it; the UI keeps no list)."""
    return entry.get("stage_label") or entry["stage"]


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def size(n: int | None) -> str:
    if n is None:
        return DASH
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def decode_rate(r: RunResult) -> float | None:
    """Tokens per second after the first: (output tokens - 1) / decode time."""
    if not r.ok or r.output_tokens < 2 or r.timings_ms.decode <= 0:
        return None
    return (r.output_tokens - 1) / (r.timings_ms.decode / 1000)


def speedup(r: RunResult, ref: RunResult | None) -> float | None:
    """Baseline total / this run's total (both measured on this request)."""
    if ref is None or not r.ok or not ref.ok or r.timings_ms.total <= 0:
        return None
    return ref.timings_ms.total / r.timings_ms.total


def spread(r: RunResult, field: str) -> tuple[float, float] | None:
    """(min, max) of one timing over the run's timed runs; None when there is only one."""
    runs = [getattr(t, field) for t in r.timings_ms_all] if r.ok else []
    return (min(runs), max(runs)) if len(runs) > 1 else None


def ms_spread(r: RunResult, field: str) -> str:
    """'45 ms (42–51)': the median and the min–max over the timed runs."""
    mid, rng = ms(getattr(r.timings_ms, field)) if r.ok else DASH, spread(r, field)
    return mid if rng is None else f"{mid} ({ms(rng[0]).split()[0]}–{ms(rng[1])})"


SAME_BAND = 1.10  # a speedup whose interval reaches into (1/1.10, 1.10) is "about the same": between separately
# timed runs on a shared CPU, drift of a few percent is common (a keep-all method was coloured against its own
# baseline in full-suite runs); benchmark tools use the same 10% threshold (asv's default factor)


def speedup_range(r: RunResult, ref: RunResult | None) -> tuple[float, float] | None:
    """The widest speedup the timed runs allow: (baseline fastest / this slowest, baseline slowest / this
    fastest). Conservative on purpose: it is what a presenter may claim without luck."""
    a, b = spread(ref, "total") if ref is not None else None, spread(r, "total")
    if a is None or b is None or b[0] <= 0:
        return None
    return a[0] / b[1], a[1] / b[0]


def verdict(r: RunResult, ref: RunResult | None) -> str:
    """'faster' / 'slower' only when the whole speedup range says so; else 'same' (or '' when unknown).
    With a single timed run there is no range, so no claim either way."""
    sp, rng = speedup(r, ref), speedup_range(r, ref)
    if sp is None:
        return ""
    if rng is None:
        return "same"
    if rng[0] > SAME_BAND:
        return "faster"
    if rng[1] < 1 / SAME_BAND:
        return "slower"
    return "same"


def speedup_text(r: RunResult, ref: RunResult | None) -> str:
    if r is ref:
        return "reference"
    sp, rng = speedup(r, ref), speedup_range(r, ref)
    if sp is None:
        return DASH
    if rng is None:
        return f"×{sp:.2f} (one timed run: no range)"
    span = f"×{sp:.2f} ({rng[0]:.2f}–{rng[1]:.2f})"
    return f"about the same: {span}" if verdict(r, ref) == "same" else span


def confidence_text(r: RunResult) -> str:
    c = r.confidence if r.ok else {}
    return f"{c['mean']:.2f} (min {c['min']:.2f})" if c else DASH


def flop_text(r: RunResult) -> str:
    return DASH if not r.ok or r.flop_ideal_speedup is None else f"×{r.flop_ideal_speedup:.2f}"


def divergence(r: RunResult, ref: RunResult | None) -> int | None:
    """Index of the first output token that differs from the baseline's; -1 if none; None if unknown."""
    if ref is None or not r.ok or not ref.ok:
        return None
    a, b = r.output_ids, ref.output_ids
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return -1 if len(a) == len(b) else min(len(a), len(b))


def agreement(r: RunResult, ref: RunResult | None) -> str:
    """'same' / 'differs at token k' / '' for the baseline itself or when unknown."""
    if ref is None or r is ref:
        return ""
    d = divergence(r, ref)
    if d is None:
        return ""
    return "same tokens" if d < 0 else f"differs at token {d + 1}"


def kept_text(r: RunResult) -> str:
    vt = r.visual_tokens
    return f"{vt.kept}/{vt.input}" if r.ok else DASH


def times(x: float | None, digits: int = 2) -> str:
    return DASH if x is None else f"×{x:.{digits}f}"
