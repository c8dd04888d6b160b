"""Tables behind the page's charts (gradio's native plots draw pandas DataFrames): where a comparison's time
goes, its memory, and a budget sweep's points. Every value is a measured field of the comparison document
(or, for `flop_ideal`, the runner's computed figure, labelled so); nothing here measures anything.
"""

from __future__ import annotations

import pandas as pd

MIB = 2**20
STAGES = ("preprocess", "vision", "prefill", "decode")  # the parts of `total`, in the order they run


def run_label(i: int, run: dict) -> str:
    return f"{i + 1}. {run['method']}"


def latency(doc: dict | None) -> pd.DataFrame:
    """One row per (run, stage): the median ms of that stage; stacked, the bars add up to each run's total."""
    rows = [{"run": run_label(i, r), "stage": s, "ms": r["timings_ms"][s]}
            for i, r in enumerate((doc or {}).get("runs", [])) if r["ok"] for s in STAGES]
    return pd.DataFrame(rows, columns=["run", "stage", "ms"])


def memory(doc: dict | None) -> pd.DataFrame:
    """One row per (run, kind): peak memory growth and the KV cache at the end, in MiB."""
    rows = []
    for i, r in enumerate((doc or {}).get("runs", [])):
        if r["ok"]:
            m, label = r["memory"], run_label(i, r)
            rows += [{"bar": f"{label} · peak", "kind": "peak growth", "MiB": m["peak_bytes"] / MIB},
                     {"bar": f"{label} · KV", "kind": "KV cache", "MiB": m["kv_cache_bytes"] / MIB}]
    return pd.DataFrame(rows, columns=["bar", "kind", "MiB"])


def agreement(run: dict, ref: dict | None) -> float | None:
    """Share of the baseline's answer tokens this run reproduces before its first different token (1.0 = the
    same answer, 0.0 = differs from the first token)."""
    if ref is None or not run["ok"] or not ref["ok"]:
        return None
    a, b = run["output_ids"], ref["output_ids"]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return 1.0 if a == b else same / max(len(a), len(b), 1)


def sweep_points(doc: dict | None, budgets: dict[str, str | None]) -> pd.DataFrame:
    """One row per finished sweep run: method, keep, its answer, agreement with the baseline, the median total
    with its min and max over the timed runs, and the computed FLOP-ideal speedup. The baseline is drawn at
    keep 1.0 under its own name, as the reference line. `budgets`: each method's budget field (catalog)."""
    runs = (doc or {}).get("runs", [])
    ref = runs[0] if runs and runs[0]["method"] == "baseline" else None
    rows = []
    for r in runs:
        if not r["ok"]:
            continue
        budget = budgets.get(r["method"])
        keep = r["params"].get(budget, 1.0) if budget else 1.0
        totals = [t["total"] for t in r.get("timings_ms_all") or [r["timings_ms"]]]
        rows.append({"method": r["method"], "keep": float(keep), "answer": r["answer"],
                     "agreement": agreement(r, ref), "total_ms": r["timings_ms"]["total"],
                     "total_min_ms": min(totals), "total_max_ms": max(totals),
                     "flop_ideal_speedup": r.get("flop_ideal_speedup")})
    cols = ["method", "keep", "answer", "agreement", "total_ms", "total_min_ms", "total_max_ms", "flop_ideal_speedup"]
    return pd.DataFrame(rows, columns=cols)
