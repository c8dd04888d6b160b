"""METEOR's stages one by one and together on the two-encoder model, against FastV and random at the same budget.

    python -m bench.meteor_stages [--model builtin-2enc] [--base builtin] [--per-kind 20] [--target 0.24]

Held-out items of every kind (assets/heldout: the five image kinds, descriptions, video questions at --frames),
the first --per-kind of each. Rows: the two-encoder baseline (and the one-encoder --base model on the same items);
stage 1 alone (encoder_keep = target, stage 2 and 3 keeping all), stage 2 alone (fusion_keep = target), stage 3
alone (prompt-adaptive: its share is whatever its heads say), stages 1-3 with encoder_keep = fusion_keep = sqrt(target
/ stage 3's measured share), then FastV and random at the share stages 1-3 measured. The share is the visual tokens
reaching the last decoder layer over the model's input tokens, mean (min-max) over items: measured, not set.
Accuracy is normalised exact match per kind; descriptions also report object F1. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict

from backends import runner
from backends.evaluate import answer_f1, load_items, normalize
from backends.models import load_model
from backends.settings import BUILTIN, BUILTIN_2ENC, ROOT, Settings
from backends.types import GenerationSettings, MethodSpec, RunRequest

FILES = ("heldout.jsonl", "describe.jsonl", "video.jsonl")


def items_of_every_kind(per_kind: int, frames: int, settings: Settings) -> list[dict]:
    out, seen = [], defaultdict(int)
    for name in FILES:
        for it in load_items(ROOT / "assets" / "heldout" / name, settings, frames):
            if seen[it.get("kind", name)] < per_kind:
                seen[it.get("kind", name)] += 1
                out.append(it)
    return out


def score(lm, items: list[dict], spec: MethodSpec, settings: Settings) -> dict:
    gen = GenerationSettings(max_new_tokens=48, warmup=0, repeats=1)
    hits, f1, share, errors = defaultdict(list), [], [], []
    for it in items:
        res = runner.run(RunRequest(it["media"], it["question"], spec, gen), lm, settings)
        if not res.ok:
            errors.append(res.error)
            continue
        kind = it.get("kind", "all")
        hits[kind].append(normalize(res.answer) == normalize(it["answer"]))
        if kind == "describe":
            f1.append(answer_f1(res.answer, it["answer"]))
        share.append(res.visual_tokens.per_layer[-1] / res.visual_tokens.input)
    if errors:
        raise SystemExit(f"{spec.name} {spec.params}: {errors[0]}")
    acc = {k: 100.0 * sum(v) / len(v) for k, v in sorted(hits.items())}
    return {"spec": spec, "by_kind": acc, "overall": sum(acc.values()) / len(acc),
            "describe_f1": 100.0 * sum(f1) / len(f1) if f1 else None,
            "share": (sum(share) / len(share), min(share), max(share))}


def row(label: str, r: dict, kinds: list[str]) -> str:
    s = r["share"]
    f1 = f"{r['describe_f1']:.1f}" if r["describe_f1"] is not None else "-"
    return (f"| {label} | {100 * s[0]:.1f}% ({100 * s[1]:.0f}-{100 * s[2]:.0f}) | "
            + " | ".join(f"{r['by_kind'].get(k, float('nan')):.1f}" for k in kinds) + f" | {r['overall']:.1f} | {f1} |")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.meteor_stages", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=BUILTIN_2ENC)
    p.add_argument("--base", default=BUILTIN, help="the one-encoder model to compare the baseline with ('' = none)")
    p.add_argument("--per-kind", type=int, default=20)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--target", type=float, default=0.24, help="share of visual tokens kept (the paper's ~242/1024)")
    args = p.parse_args(argv)
    settings, t0 = Settings.from_env(), time.time()
    lm = load_model(args.model, settings)
    items = items_of_every_kind(args.per_kind, args.frames, settings)
    t = args.target
    rows = [("baseline (two encoders)", score(lm, items, MethodSpec("baseline"), settings))]
    if args.base:
        rows.append((f"baseline ({args.base}, one encoder)", score(load_model(args.base, settings), items,
                                                                    MethodSpec("baseline"), settings)))
    keep_all = {"stages": "1-3", "encoder_keep": 1.0, "fusion_keep": 1.0, "lam": 1e6}
    for label, params in [("METEOR stage 1 alone", {**keep_all, "encoder_keep": t}),
                          ("METEOR stage 2 alone", {**keep_all, "fusion_keep": t}), ("METEOR stage 3 alone", {})]:
        rows.append((label, score(lm, items, MethodSpec("meteor", params), settings)))
    e = min(1.0, math.sqrt(t / max(t, rows[-1][1]["share"][0])))
    rows.append((f"METEOR stages 1-3 (encoder_keep = fusion_keep = {e:.3f})",
                 score(lm, items, MethodSpec("meteor", {"stages": "1-3", "encoder_keep": e, "fusion_keep": e}),
                       settings)))
    same = round(rows[-1][1]["share"][0], 4)
    for name in ("fastv", "random"):
        rows.append((f"{name} keep={same}", score(lm, items, MethodSpec(name, {"keep": same}), settings)))
    kinds = sorted({k for _, r in rows for k in r["by_kind"]})
    print(f"Model {args.model}; {len(items)} held-out items (first {args.per_kind} of each kind; video at "
          f"{args.frames} frames); greedy, up to 48 tokens; {(time.time() - t0) / 60:.1f} min.\n")
    print("| run | visual tokens at the last layer, mean (min-max) | " + " | ".join(kinds) + " | mean | describe F1 |")
    print("|---|---|" + "---|" * (len(kinds) + 2))
    for label, r in rows:
        print(row(label, r, kinds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
