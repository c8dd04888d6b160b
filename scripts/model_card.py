"""Fill the built-in model card's accuracy tables from the held-out sets: `python scripts/model_card.py`.

Sets (assets/heldout/, drawn by the independent eval renderer): `heldout.jsonl` (the five one-word kinds),
`describe.jsonl` (descriptions of 1-4 objects), `video.jsonl` (clips, 8 frames sampled as the app samples).
Rows: the baseline on every item, the baseline with shuffled inputs (image dependence), and every registered
method, budgeted ones at keep 100/50/25/10 %, the others at their paper setting, on the first `--per-kind` items
of each kind (the same items for every method). Columns: accuracy per kind (normalised exact match), describe's
object-level F1, the mean over kinds, agreement with the baseline on the same items. The table replaces the block
between `<!-- eval:start -->` and `<!-- eval:end -->` in assets/tiny-llava-shapes/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.evaluate import evaluate, load_items  # noqa: E402
from backends.models import load_model  # noqa: E402
from backends.settings import BUILTIN, BUILTIN_DIR, Settings  # noqa: E402
from backends.types import MethodSpec  # noqa: E402
from methods import registry  # noqa: E402

KINDS = ["color", "shape_at", "count", "total", "exists", "describe", "direction", "at_start", "at_end", "vtotal"]
SETS = ("heldout.jsonl", "describe.jsonl", "video.jsonl")


def row(label: str, r: dict, own_baseline: bool = False) -> str:
    """own_baseline: the run is a baseline itself (its agreement with itself says nothing)."""
    acc = [100 * r["by_kind"][k] for k in KINDS if k in r["by_kind"]]
    cells = " | ".join(f"{100 * r['by_kind'][k]:.1f}" if k in r["by_kind"] else "-" for k in KINDS)
    f1 = r["f1_by_kind"].get("describe")
    agree = "-" if own_baseline or r["agreement_with_baseline"] is None else f"{100 * r['agreement_with_baseline']:.1f}"
    return (f"| {label} | {sum(acc) / len(acc):.1f} | {cells} | {'-' if f1 is None else f'{f1:.3f}'} | {agree} |")


def subset(items: list[dict], per_kind: int) -> list[dict]:
    seen: dict[str, int] = {}
    out = []
    for it in items:
        k = it.get("kind", "all")
        if seen.get(k, 0) < per_kind:
            seen[k] = seen.get(k, 0) + 1
            out.append(it)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(ROOT / "assets" / "heldout"))
    p.add_argument("--keeps", default="1.0,0.5,0.25,0.1")
    p.add_argument("--per-kind", type=int, default=40, help="items per kind for the method rows")
    p.add_argument("--methods", default=None, help="comma-separated subset of the registry (default: all)")
    p.add_argument("--card", default=str(BUILTIN_DIR / "README.md"))
    p.add_argument("--model", default=BUILTIN, help="the model to score (default: the built-in one)")
    p.add_argument("--base-per-kind", type=int, default=0, help="items per kind for the baseline rows (0: all)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    p.add_argument("--block", default="eval", help="card block to replace (<!-- BLOCK:start --> .. <!-- BLOCK:end -->)")
    p.add_argument("--no-baseline-rows", action="store_true", help="only the method rows (a second block)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    s = Settings()
    lm = load_model(args.model, s)
    items = [it for name in SETS for it in load_items(Path(args.data) / name, s, frames=8)]
    if args.base_per_kind:
        items = subset(items, args.base_per_kind)
    t0 = time.time()
    base = MethodSpec("baseline")
    rows = []
    if not args.no_baseline_rows:
        rows.append(row(f"baseline, all tokens ({len(items)} items)", evaluate(lm, items, [base], s, 48)[0], True))
        rows.append(row("baseline, shuffled inputs", evaluate(lm, items, [base], s, 48, True)[0], True))
    specs = [base]
    for name in (args.methods.split(",") if args.methods else registry.names()[1:]):
        cls = registry.get(name)
        keeps = [float(k) for k in args.keeps.split(",")] if cls.budget_field else [None]
        specs += [MethodSpec(name, {cls.budget_field: k} if k else {}) for k in keeps]
    sub = subset(items, args.per_kind)
    results = evaluate(lm, sub, specs, s, 48)
    rows.append(row(f"baseline, the method rows' {len(sub)} items", results[0], True))
    for spec, r in zip(specs[1:], results[1:]):
        keep = spec.params.get(registry.get(spec.name).budget_field or "", None)
        rows.append(row(f"{spec.name}, keep {100 * keep:.0f}%" if keep else f"{spec.name} (paper setting)", r))
    table = (f"Held-out sets: {', '.join(SETS)} ({len(items)} items; method rows on the first {args.per_kind} of each "
             f"kind), greedy, up to 48 new tokens, videos at 8 sampled frames; accuracy in % (normalised exact match), "
             f"describe F1 = object-level F1. Generated by `python scripts/model_card.py` in {time.time() - t0:.0f} s."
             "\n\n| setting | mean over kinds | " + " | ".join(KINDS) + " | describe F1 | agreement with baseline |\n"
             "|---|---|" + "---|" * len(KINDS) + "---|---|\n" + "\n".join(rows))
    if not args.no_baseline_rows:  # the long answer under a small budget: four-object descriptions only
        four = [it for it in items if it.get("kind") == "describe" and it["answer"].count(" at the ") == 4]
        b4, r4 = evaluate(lm, four, [base, MethodSpec("random", {"keep": 0.1})], s, 48)
        table += (f"\n\nFour-object descriptions ({len(four)} items): baseline {100 * b4['accuracy']:.1f}% exact, "
                  f"object F1 {b4['f1']:.3f}; `random` at keep 10% {100 * r4['accuracy']:.1f}% exact, object F1 "
                  f"{r4['f1']:.3f}.")
    if args.out:
        Path(args.out).write_text(table + "\n")
    card = Path(args.card)
    text = card.read_text()
    start, end = f"<!-- {args.block}:start -->", f"<!-- {args.block}:end -->"
    block = f"{start}\n{table}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## Accuracy on the held-out sets, per method and budget\n\n{block}\n"
    card.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
