"""The comparison document: the CLI's `--json` output, the UI's download and the API's final output.

    {"model": {"name", "device", "dtype", "attn_implementation"},
     "input": {"kind", "frames", "name", "visual_tokens"}, "prompt",
     "generation": {"max_new_tokens", "warmup", "repeats", "repeat_budget_s", "decoding", "batch_size"},
     "runs": [RunResult as a dict, ...]}          # baseline first, then in the order asked; each run has
                                                  # timings_ms (medians), timings_ms_all (one per timed run),
                                                  # confidence {mean, min} and flop_ideal_speedup (computed)
"""

from __future__ import annotations

from dataclasses import asdict

from backends.types import Comparison, RunResult


def document(comparison: Comparison, results: list[RunResult]) -> dict:
    runs = sorted(results, key=lambda r: r.index)
    ok = [r for r in runs if r.ok]
    m = ok[0].measurement if ok else {}
    model = {"name": comparison.model, "device": m.get("device", ""), "dtype": m.get("dtype", ""),
             "attn_implementation": m.get("attn_implementation", "")}
    media = comparison.media
    return {
        "model": model,
        "input": {"kind": media.kind, "frames": len(media.frames_png), "name": media.name,
                  "visual_tokens": ok[0].visual_tokens.input if ok else None},
        "prompt": comparison.prompt,
        # every setting the runs were generated with, so a document alone says how to reproduce it
        "generation": {**asdict(comparison.generation), "decoding": "greedy", "batch_size": 1},
        "runs": [asdict(r) for r in runs],
    }
