"""Batch A/B on labelled data: `python app.py eval --data FILE.jsonl [--methods a,b] [--keep R] [--json]`.

Each line of FILE.jsonl is {"image": path relative to the file, "question": ..., "answer": ...} (or "video"
instead of "image"; an optional "kind" groups the accuracy). Per method: accuracy (normalised exact match),
accuracy per kind, agreement with the baseline's answers, mean latency (total ms, one timed run per item
after one warm-up run per method). Lines with "turns" instead of a question are conversations, answered turn by
turn on one cache and scored per turn (backends/evaluate_turns.py). Works for any model the app loads; a
progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

from backends import media, runner
from backends.cli import method_specs, parse_sets
from backends.evaluate_turns import evaluate_turns, parse_turns
from backends.evaluate_turns import table as turns_table
from backends.labels import normalize
from backends.settings import BUILTIN, Settings
from backends.types import GenerationSettings, MethodSpec, RequestError, RunRequest


def answer_f1(pred: str, answer: str) -> float:
    """Object-level F1 when the reference names objects ("a red circle at the top left, ..."), else exact match:
    one wrong object in a four-object description costs a quarter, not the whole answer."""
    from backends.tiny.scenes import object_f1, objects_of

    if objects_of(answer):
        return object_f1(pred, answer)
    return float(normalize(pred) == normalize(answer))


def load_items(path: str | Path, settings: Settings, frames: int | None = None) -> list[dict]:
    """Lines of a JSONL file with their media read; video lines sampled as the app samples (`frames`, default the
    deployment's)."""
    path = Path(path)
    if not path.is_file():
        raise RequestError(f"data file not found: {path}")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key = "image" if "image" in item else "video"
            item["media"] = (media.image_media(path.parent / item[key], settings) if key == "image"
                             else media.video_media(path.parent / item[key], settings, frames))
            if "turns" in item:  # a conversation: backends/evaluate_turns.py
                item["turns"] = parse_turns(item, f"{path.name} line {n}")
            else:
                item["question"], item["answer"] = str(item["question"]), str(item["answer"])
        except (KeyError, json.JSONDecodeError) as e:
            raise RequestError(f"{path.name} line {n}: needs image (or video), question and answer ({e})") from None
        items.append(item)
    if not items:
        raise RequestError(f"{path.name} has no items")
    return items


def evaluate(lm, items: list[dict], specs: list[MethodSpec], settings: Settings, max_new_tokens: int = 8,
             shuffle_images: bool = False, progress: bool = True) -> list[dict]:
    """Run every item through every method; returns one summary dict per method (baseline-relative agreement
    needs `baseline` among the specs, else it is None)."""
    from tqdm import tqdm

    media_of = [it["media"] for it in items]
    if shuffle_images:  # image dependence: the same questions over other items' images
        random.Random(0).shuffle(media_of)
    answers: dict[str, list[str]] = {}
    out = []
    bar = tqdm(total=len(items) * len(specs), file=sys.stderr, disable=not progress, desc="eval")
    for spec in specs:
        gen = GenerationSettings(max_new_tokens=max_new_tokens, warmup=0, repeats=1)
        runner.run(RunRequest(media_of[0], items[0]["question"], spec, gen), lm, settings)  # warm-up
        preds, lat, by_kind = [], [], defaultdict(list)
        for it, med in zip(items, media_of):
            res = runner.run(RunRequest(med, it["question"], spec, gen), lm, settings)
            ok = normalize(res.answer) == normalize(it["answer"])
            preds.append(res.answer)
            lat.append(res.timings_ms.total)
            by_kind[it.get("kind", "all")].append(ok)
            bar.update(1)
        answers[spec.name + json.dumps(spec.params, sort_keys=True)] = preds
        correct = [normalize(p) == normalize(it["answer"]) for p, it in zip(preds, items)]
        f1 = [answer_f1(p, it["answer"]) for p, it in zip(preds, items)]
        f1_kind = defaultdict(list)
        for v, it in zip(f1, items):
            f1_kind[it.get("kind", "all")].append(v)
        base = next((v for k, v in answers.items() if k.startswith("baseline")), None)
        agree = None if base is None else sum(normalize(a) == normalize(b) for a, b in zip(preds, base)) / len(preds)
        out.append({"method": spec.name, "params": spec.params, "accuracy": sum(correct) / len(correct),
                    "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
                    "agreement_with_baseline": agree, "mean_latency_ms": sum(lat) / len(lat),
                    "f1": sum(f1) / len(f1), "f1_by_kind": {k: sum(v) / len(v) for k, v in sorted(f1_kind.items())}})
    bar.close()
    return out


def main(argv: list[str]) -> int:
    from backends.models import ModelLoadError, load_model

    p = argparse.ArgumentParser(prog="app.py eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--methods", default="baseline")
    p.add_argument("--keep", type=float, default=None)
    p.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE")
    p.add_argument("--model", default=BUILTIN)
    p.add_argument("--max-new-tokens", type=int, default=48, help="default fits a four-object description")
    p.add_argument("--frames", type=int, default=8, help="frames sampled from each video line (as the app does)")
    p.add_argument("--shuffle-images", action="store_true", help="pair each question with another item's image")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    try:
        names = ["baseline"] + [m for m in args.methods.split(",") if m.strip() and m.strip() != "baseline"]
        specs = method_specs(",".join(names), args.keep, parse_sets(args.set))
        items = load_items(args.data, settings, args.frames)
        lm = load_model(args.model, settings)
    except (RequestError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(settings.threads)
    if any("turns" in it for it in items):  # conversations (single questions among them count as one turn)
        for it in items:
            it.setdefault("turns", [{"question": it.get("question"), "answer": it.get("answer")}])
        results = evaluate_turns(lm, items, specs, settings, args.max_new_tokens)
        doc = {"model": lm.info(), "n": len(items), "data": str(args.data), "conversations": True, "results": results}
        print(json.dumps(doc, indent=1) if args.json else turns_table(results))
        return 0
    results = evaluate(lm, items, specs, settings, args.max_new_tokens, args.shuffle_images)
    doc = {"model": lm.info(), "n": len(items), "data": str(args.data), "shuffled_images": args.shuffle_images,
           "results": results}
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        for r in results:
            kinds = " ".join(f"{k}={v:.3f}" for k, v in r["by_kind"].items())
            agree = "-" if r["agreement_with_baseline"] is None else f"{r['agreement_with_baseline']:.3f}"
            print(f"{r['method']:<14} acc={r['accuracy']:.3f} f1={r['f1']:.3f} agree={agree} "
                  f"{r['mean_latency_ms']:.1f} ms  {kinds}")
    return 0
