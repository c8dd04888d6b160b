"""Exports of a finished comparison, from its document alone: the JSON document, a CSV with one row per run,
and a one-page Markdown run card for slides. Files go to a fresh folder under the temp dir (gradio serves
them from there); folders older than an hour are removed when new ones are written.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from backends.types import RunResult, from_dict
from ui import fmt

DOWNLOADS = Path(tempfile.gettempdir()) / "vlm-compare-downloads"
KEEP_DOWNLOADS_S = 3600  # export folders older than this are removed when a new one is written
CSV_COLUMNS = ["run", "method", "params", "ok", "error", "answer", "vs_baseline", "visual_tokens_input",
               "visual_tokens_kept", "visual_tokens_effective", "ttft_ms", "total_ms", "total_min_ms",
               "total_max_ms", "timed_runs", "speedup", "speedup_range", "flop_ideal_speedup", "decode_tok_s",
               "peak_bytes", "kv_cache_bytes", "confidence_mean", "confidence_min"]


def results(doc: dict) -> list[RunResult]:
    keys = set(RunResult.__dataclass_fields__)
    return [from_dict(RunResult, {k: v for k, v in r.items() if k in keys}) for r in doc.get("runs", [])]


def rows(doc: dict) -> list[dict]:
    runs = results(doc)
    ref = runs[0] if runs and runs[0].ok and runs[0].method == "baseline" else None
    out = []
    for i, r in enumerate(runs):
        totals = [t.total for t in r.timings_ms_all] or [r.timings_ms.total]
        rng, rate = fmt.speedup_range(r, ref), fmt.decode_rate(r)
        out.append({
            "run": i + 1, "method": r.method, "params": json.dumps(r.params, sort_keys=True), "ok": r.ok,
            "error": r.error or "", "answer": r.answer,
            "vs_baseline": "reference" if r is ref else fmt.agreement(r, ref),
            "visual_tokens_input": r.visual_tokens.input, "visual_tokens_kept": r.visual_tokens.kept,
            "visual_tokens_effective": round(r.visual_tokens.effective, 2),
            "ttft_ms": round(r.timings_ms.ttft, 3), "total_ms": round(r.timings_ms.total, 3),
            "total_min_ms": round(min(totals), 3), "total_max_ms": round(max(totals), 3),
            "timed_runs": len(r.timings_ms_all),
            "speedup": "" if r is ref or fmt.speedup(r, ref) is None else round(fmt.speedup(r, ref), 3),
            "speedup_range": f"{rng[0]:.3f}-{rng[1]:.3f}" if rng and r is not ref else "",
            "flop_ideal_speedup": r.flop_ideal_speedup if r.ok else "",
            "decode_tok_s": "" if rate is None else round(rate, 2), "peak_bytes": r.memory.peak_bytes,
            "kv_cache_bytes": r.memory.kv_cache_bytes, "confidence_mean": r.confidence.get("mean", ""),
            "confidence_min": r.confidence.get("min", "")})
    return out


def to_csv(doc: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows(doc))
    return buf.getvalue()


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def run_card(doc: dict, link: str = "") -> str:
    """One page of Markdown: what was asked, the table of runs, and how the numbers were measured."""
    runs, gen, model = rows(doc), doc.get("generation", {}), doc.get("model", {})
    inp = doc.get("input", {})
    lines = [f"# {_cell(doc.get('prompt', ''))}", "",
             f"**Model** `{model.get('name', '?')}` on {model.get('device', '?')} ({model.get('dtype', '?')}, "
             f"{model.get('attn_implementation', '?')}) · **input** {inp.get('kind', '?')} {_cell(inp.get('name', ''))}"
             f" ({inp.get('frames', '?')} frame(s), {inp.get('visual_tokens', '?')} visual tokens) · "
             f"**generation** greedy, {gen.get('max_new_tokens', '?')} new tokens at most", "",
             "| # | method | answer | vs baseline | tokens kept | total (min-max) | speedup (range) | FLOP-ideal |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        if not r["ok"]:
            lines.append(f"| {r['run']} | {r['method']} | failed: {_cell(r['error'])} | | | | | |")
            continue
        speed = "reference" if r["vs_baseline"] == "reference" else (
            f"×{r['speedup']} ({r['speedup_range']})" if r["speedup_range"] else (f"×{r['speedup']}" if r["speedup"]
                                                                                 else ""))
        lines.append(f"| {r['run']} | {r['method']} | {_cell(r['answer'])} | {r['vs_baseline']} | "
                     f"{r['visual_tokens_kept']}/{r['visual_tokens_input']} | {r['total_ms']:.1f} ms "
                     f"({r['total_min_ms']:.1f}-{r['total_max_ms']:.1f}) | {speed} | ×{r['flop_ideal_speedup']} |")
    lines += ["", f"Timings: median of each run's timed runs ({gen.get('repeats', '?')} at least, after "
              f"{gen.get('warmup', '?')} warm-up), min-max in brackets; a speedup range is baseline fastest / "
              "this slowest to baseline slowest / this fastest. FLOP-ideal is computed from the model config, "
              "not measured."]
    if link:
        lines += ["", f"Reopen: {link}"]
    return "\n".join(lines) + "\n"


def write(doc: dict, link: str = "") -> list[str]:
    """The three export files of one comparison: comparison.json, runs.csv, run-card.md."""
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in DOWNLOADS.iterdir():  # don't let a long-running server fill the disk
        if old.is_dir() and now - old.stat().st_mtime > KEEP_DOWNLOADS_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = DOWNLOADS / uuid.uuid4().hex
    folder.mkdir()
    files = {"comparison.json": json.dumps(doc, indent=1), "runs.csv": to_csv(doc), "run-card.md": run_card(doc, link)}
    for name, text in files.items():
        (folder / name).write_text(text)
    return [str(folder / name) for name in files]
