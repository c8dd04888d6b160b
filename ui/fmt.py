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
