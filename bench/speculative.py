"""Decode benchmark of the trained extras on the built-in model: long answers, decode rate, speculation, KV bytes.

    python bench/speculative.py [--n 8] [--max-new-tokens 64] [--repeats 3]

Runs the baseline, `twigvlm` with speculation only (prune=false: the baseline's own tokens), `twigvlm` at its
defaults and `matvlm` through the app's runner on held-out descriptions of two or more objects, each with
1 warm-up and the median of --repeats timed runs, one thread. Per method, summed over the items: answer score
against the references (`answer_f1`: object-level F1 for descriptions), decode rate (tokens after the first / decode
time), acceptance rate and tokens per base pass (speculation), KV-cache bytes at the end, Mamba-2 state bytes,
and the decoder-layer forward ratio: layer calls plain greedy decoding spends on the same tokens / layer calls
spent (base and twig layers; computed, not measured). On a large model decoding is bound by reading each layer's
weights, so a layer call over 6 tokens costs about what one over 1 token does and that ratio approaches the
decode speedup; on this 8-layer, 128-wide model each call costs mostly fixed framework overhead, which the ratio
also describes, but the twig's extra work weighs more. Writes the table to bench/results/. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from backends import media, runner  # noqa: E402
from backends.evaluate import answer_f1  # noqa: E402
from backends.models import load_model  # noqa: E402
from backends.settings import BUILTIN, Settings  # noqa: E402
from backends.types import GenerationSettings, MethodSpec, RunRequest  # noqa: E402
from bench.speed import machine  # noqa: E402

RUNS = [("baseline", {}), ("twigvlm", {"prune": False}), ("twigvlm", {}), ("matvlm", {})]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8, help="held-out items")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("VLM_THREADS", "1")))
    settings = Settings(dtype="float32")
    lm = load_model(BUILTIN, settings)
    held = ROOT / "assets" / "heldout" / "describe.jsonl"  # v2's descriptions, else v1's one-word set
    held = held if held.is_file() else held.parent / "heldout.jsonl"
    items = [json.loads(line) for line in held.read_text().splitlines()]
    items = ([it for it in items if " and " in it["answer"]] or items)[: args.n]  # two or more objects
    gen = GenerationSettings(max_new_tokens=args.max_new_tokens, warmup=1, repeats=args.repeats)
    rows = []
    for name, params in RUNS:
        acc = {"score": 0.0, "tokens": 0, "decode_ms": 0.0, "kv": 0, "state": 0, "drafted": 0, "accepted": 0,
               "rounds": 0, "emitted": 0, "plain": 0, "spent": 0}
        for it in items:
            req = RunRequest(media.image_media(held.parent / it["image"], settings), it["question"],
                             MethodSpec(name, params), gen)
            res = runner.run(req, lm, settings)
            acc["score"] += answer_f1(res.answer, it["answer"])
            acc["tokens"] += res.output_tokens - 1
            acc["decode_ms"] += statistics.median(t.decode for t in res.timings_ms_all)
            acc["kv"] += res.memory.kv_cache_bytes
            info = res.info
            acc["state"] += info.get("mamba_state_bytes", 0)
            if "draft_rounds" in info:
                acc["drafted"] += info["drafted"]
                acc["accepted"] += info["accepted"]
                acc["rounds"] += info["draft_rounds"]
                emitted = round(info["tokens_per_base_pass"] * info["draft_rounds"])  # decode steps served
                acc["emitted"] += emitted
                plain = emitted * len(lm.adapter.layers)
                acc["plain"] += plain
                acc["spent"] += plain * (1 - info["base_layer_forwards_saved"]) + info["twig_layer_forwards"]
        rate = 1000 * acc["tokens"] / acc["decode_ms"] if acc["decode_ms"] else 0.0
        spec = acc["rounds"] > 0
        rows.append(f"| {name} | {json.dumps(params)} | {100 * acc['score'] / len(items):.1f} | {acc['tokens']} | "
                    f"{rate:.0f} | {acc['accepted'] / max(1, acc['drafted']):.3f} | "
                    f"{acc['emitted'] / acc['rounds'] if spec else 1:.2f} | "
                    f"{acc['plain'] / acc['spent'] if spec else 1:.2f}x | {acc['kv'] / len(items) / 1024:.0f} | "
                    f"{acc['state'] / len(items) / 1024:.0f} |")
        print(rows[-1], flush=True)
    head = (f"# Decode: built-in model, {len(items)} held-out items ({items[0].get('kind', '?')}...), up to "
            f"{args.max_new_tokens} new tokens, median of {args.repeats} after 1 warm-up\n\nMachine: {machine()}\n\n"
            "| method | params | answer score % | decoded tokens | decode tok/s | acceptance | tokens per base pass | "
            "layer-forward ratio (computed) | KV KiB at end (mean) | Mamba state KiB (mean) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    table = head + "\n".join(rows) + "\n"
    print(table)
    out = ROOT / "bench" / "results" / f"speculative-builtin-{time.strftime('%Y%m%d-%H%M')}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
