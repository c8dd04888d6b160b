"""Conversation lines for `app.py eval`: {"image" (or "video"): path, "turns": [{"question", "answer", "kind"}, ...]}.

Each conversation runs as the app runs one: a single cache per conversation and method, the first question
prefilled with the image, each later one prefilled on the cache the method left (backends/turns.py). Per
method: accuracy, object-level F1 and agreement with the baseline for each turn index, over every
conversation that has that turn ("by_turn": {"1": acc, ...}, details in "turns_detail"), accuracy and F1 per kind
over every turn ("by_kind", "f1_by_kind"; a turn without a kind counts as "all"), and the mean latency of a whole
conversation (the sum of its turns' totals).
The per-turn table is what shows a method that prunes for the first question losing later ones.
"""

from __future__ import annotations

import json
import sys

from backends import runner
from backends.types import MAX_TURNS, GenerationSettings, RequestError, RunRequest


def parse_turns(item: dict, where: str) -> list[dict]:
    """The validated turns of one JSONL line (1..MAX_TURNS, each with a question and an answer)."""
    turns = item["turns"]
    if not isinstance(turns, list) or not 1 <= len(turns) <= MAX_TURNS:
        raise RequestError(f"{where}: turns must be a list of 1..{MAX_TURNS} {{question, answer}} objects")
    try:
        return [{"question": str(t["question"]), "answer": str(t["answer"]), "kind": str(t.get("kind", "all"))}
                for t in turns]
    except (KeyError, TypeError):
        raise RequestError(f"{where}: every turn needs a question and an answer") from None


def evaluate_turns(lm, items: list[dict], specs, settings, max_new_tokens: int = 8, progress: bool = True,
                   media_of: list | None = None) -> list[dict]:
    """One summary per method: {"method", "params", "by_turn": {"1": accuracy, ...}, "turns_detail": [{"turn", "n",
    "accuracy", "f1", "agreement"}], "by_kind", "f1_by_kind", "accuracy", "f1", "agreement_with_baseline" (every turn
    of every conversation), "mean_latency_ms" (per conversation)}."""
    from tqdm import tqdm

    from backends.evaluate import answer_f1, normalize

    media_of = media_of or [it["media"] for it in items]
    base: list[list[str]] | None = None
    out = []
    bar = tqdm(total=len(items) * len(specs), file=sys.stderr, disable=not progress, desc="eval (conversations)")
    gen = GenerationSettings(max_new_tokens=max_new_tokens, warmup=0, repeats=1)
    for spec in specs:
        first = items[0]["turns"]
        runner.run(RunRequest(media_of[0], first[0]["question"], spec, gen,
                              follow_ups=[t["question"] for t in first[1:]]), lm, settings)  # warm-up
        preds, lat = [], []
        for it, med in zip(items, media_of):
            qs = [t["question"] for t in it["turns"]]
            res = runner.run(RunRequest(med, qs[0], spec, gen, follow_ups=qs[1:]), lm, settings)
            preds.append([t.answer for t in res.turns])
            lat.append(sum(t.timings_ms.total for t in res.turns))
            bar.update(1)
        if spec.name == "baseline" and base is None:
            base = preds
        rows, every_ok, every_f1, every_agree = [], [], [], []
        kinds: dict[str, list[tuple[bool, float]]] = {}
        for k in range(max(len(it["turns"]) for it in items)):
            idx = [i for i, it in enumerate(items) if len(it["turns"]) > k]
            ok = [normalize(preds[i][k]) == normalize(items[i]["turns"][k]["answer"]) for i in idx]
            f1 = [answer_f1(preds[i][k], items[i]["turns"][k]["answer"]) for i in idx]
            agree = None if base is None else sum(normalize(preds[i][k]) == normalize(base[i][k])
                                                  for i in idx) / len(idx)
            rows.append({"turn": k + 1, "n": len(idx), "accuracy": sum(ok) / len(ok), "f1": sum(f1) / len(f1),
                         "agreement": agree})
            every_ok += ok
            every_f1 += f1
            every_agree += [] if base is None else [normalize(preds[i][k]) == normalize(base[i][k]) for i in idx]
            for i, o, f in zip(idx, ok, f1):
                kinds.setdefault(items[i]["turns"][k].get("kind", "all"), []).append((o, f))
        out.append({"method": spec.name, "params": spec.params,
                    "by_turn": {str(r["turn"]): r["accuracy"] for r in rows}, "turns_detail": rows,
                    "by_kind": {k: sum(o for o, _ in v) / len(v) for k, v in sorted(kinds.items())},
                    "f1_by_kind": {k: sum(f for _, f in v) / len(v) for k, v in sorted(kinds.items())},
                    "accuracy": sum(every_ok) / len(every_ok), "f1": sum(every_f1) / len(every_f1),
                    "agreement_with_baseline": sum(every_agree) / len(every_agree) if every_agree else None,
                    "mean_latency_ms": sum(lat) / len(lat)})
    bar.close()
    return out


def table(results: list[dict]) -> str:
    """Plain-text table, one row per method: accuracy / object F1 of each turn and of all turns."""
    turns = max(len(r["turns_detail"]) for r in results)
    head = f"{'method':<14}{'params':<34}" + "".join(f"{'turn ' + str(k + 1):>12}" for k in range(turns))
    rows = [head + f"{'all':>12}{'ms/conv':>10}", f"{'':<48}(accuracy / F1)"]
    for r in results:
        cells = "".join(f"{t['accuracy']:>7.2f}/{t['f1']:.2f}" for t in r["turns_detail"])
        cells += " " * 12 * (turns - len(r["turns_detail"]))
        rows.append(f"{r['method']:<14}{json.dumps(r['params'])[:33]:<34}{cells}{r['accuracy']:>7.2f}/{r['f1']:.2f}"
                    f"{r['mean_latency_ms']:>10.1f}")
    return "\n".join(rows)
