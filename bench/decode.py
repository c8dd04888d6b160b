"""Decode benchmark: KV-cache methods on a long multi-frame prompt and a fixed-length answer.

    python bench/decode.py --shape interleave-0.5b --dtype bfloat16 --frames 3 --tokens 256 --repeats 3

A random-weight model of a real model's shape (default: llava-interleave-qwen-0.5b: SigLIP-so400m, 729 tokens a
frame, + Qwen2-0.5B) answers one question about `--frames` frames of a clip (3 frames: a prompt of ~2.2k
tokens). EOS is ignored (the model's EOS id is set to -1, which no token has), so every run generates exactly
`--tokens` tokens and decode times compare like for like. Every run goes through the app's own runner:
1 warm-up run, then the median of `--repeats` timed runs, with min-max over them in brackets (the noise).

Per method: decode ms/token, KV-cache bytes after prefill and at the end, prefill time (for AirCache it holds
the scoring: same tokens as the baseline, so the difference is the scoring's cost), the measured decode speedup
and the ideal one: decode at batch 1 is bound by the bytes each step reads (LLM weights + the KV cache), so
ideal = (weights + baseline KV) / (weights + method KV), KV taken mid-answer. That ideal is computed, not
measured. The papers' figures are beside it (different models, batch sizes and engines). The 1-minute load
average at the start and the end says how busy the machine was. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from backends import media, runner, shapes  # noqa: E402
from backends.models import load_model  # noqa: E402
from backends.settings import Settings  # noqa: E402
from backends.types import GenerationSettings, MethodSpec, RunRequest  # noqa: E402
from bench.speed import flips, kernel_note, machine, random_model  # noqa: E402

CONFIGS = [  # (method, params, what the paper reports for its decode)
    ("baseline", {}, ""),
    ("aircache", {"keep": 0.1}, "AirCache: decode latency -29% (bs 8, 2k prompt) to -66% (bs 8, 32k) [abstract]"),
    ("sparsevila", {"keep": 0.4, "retrieve": 0.25}, "SparseVILA: up to 2.5x decode (long video, W4A16 engine)"),
    ("sparsevila", {"keep": 1.0, "retrieve": 0.1}, "(retrieval alone: no prefill pruning)"),
    ("fastv", {"keep": 0.1}, "(permanent in-LLM pruning, for contrast)"),
]


def weight_bytes(lm) -> int:
    """Bytes of LLM weights one decode step reads: every decoder layer, the final norm and the LM head."""
    ad = lm.adapter
    mods = [*ad.layers, ad.language_model.norm, ad.lm_head]
    return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """median (min-max)"""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="interleave-0.5b", help=", ".join(shapes.SHAPES))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--frames", type=int, default=3, help="frames of the clip (729 tokens each on interleave-0.5b)")
    p.add_argument("--tokens", type=int, default=256, help="generated tokens (EOS ignored)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="", help="comma list of method names from CONFIGS (default: all)")
    p.add_argument("--video", default="assets/examples/moving.webm")
    p.add_argument("--model-dir", default=None, help="build the random model here, or reuse the one already there")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("VLM_THREADS", "1")))
    settings = Settings(dtype=args.dtype)
    src = random_model(args.shape, args.dtype, args.model_dir)
    lm = load_model(src, settings)
    lm.model.generation_config.eos_token_id = -1  # EOS ignored: exactly --tokens tokens every run
    med = media.video_media(args.video, settings, args.frames)
    gen = GenerationSettings(max_new_tokens=args.tokens, warmup=1, repeats=args.repeats)
    w = weight_bytes(lm)
    load = [os.getloadavg()[0]]  # other processes on this machine: the noise's main source on a shared host
    rows, base, n_prompt = [], None, 0
    chosen = [m for m in args.methods.split(",") if m]
    for name, params, paper in CONFIGS:
        if chosen and name not in chosen and name != "baseline":
            continue
        res = runner.run(RunRequest(med, "describe what happens in the clip", MethodSpec(name, params), gen),
                         lm, settings)
        assert res.ok and res.output_tokens == args.tokens, "EOS must be ignored"
        n_prompt = n_prompt or res.info["seq_len"]
        runs = res.timings_ms_all
        per_tok, prefill = [t.per_token for t in runs], [t.prefill for t in runs]
        mem = res.memory
        kv_mid = (mem.kv_cache_bytes_prefill + mem.kv_cache_bytes) / 2
        base = base or {"per_tok": res.timings_ms.per_token, "kv": kv_mid, "prefill": res.timings_ms.prefill,
                        "peak_kind": mem.peak_kind}
        vt = res.visual_tokens
        rows.append(
            f"| {name} | {', '.join(f'{k}={v:g}' for k, v in params.items()) or '-'} | {vt.kept} / "
            f"{vt.effective:.0f} | {mem.kv_cache_bytes_prefill / 2**20:.1f} | {mem.kv_cache_bytes / 2**20:.1f} | "
            f"{spread(prefill, '{:.0f}')} | {res.timings_ms.prefill - base['prefill']:+.0f} | {spread(per_tok)} | "
            f"{base['per_tok'] / res.timings_ms.per_token:.2f}x | {(w + base['kv']) / (w + kv_mid):.3f}x | "
            f"{'; '.join(x for x in (paper, flips(res)) if x)} |")
        print(rows[-1], flush=True)
    load.append(os.getloadavg()[0])
    head = (f"# Decode: {args.shape} ({args.dtype}), {args.frames} frames, {args.tokens} new tokens (EOS ignored), "
            f"median of {args.repeats} timed runs after 1 warm-up, (min-max) over them\n\nMachine: {machine()}; "
            f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end\n\n"
            f"{kernel_note(lm, base['peak_kind'])}\n\n"
            f"Prompt: {n_prompt} tokens ({args.frames} x {lm.adapter.tokens_per_image} visual). LLM weights read per "
            f"decode step: {w / 2**20:.0f} MB. Ideal = (weights + baseline KV) / (weights + this KV), KV mid-answer: "
            "a bandwidth model, computed, not measured. Prefill - baseline: for AirCache (same tokens) the scoring's "
            "cost.\n\n"
            "| method | params | visual kept / per layer (decode) | KV after prefill MB | KV at end MB | prefill ms | "
            "prefill - baseline ms | decode ms/token | decode speedup | ideal (bytes) | paper |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    table = head + "\n".join(rows) + "\n"
    print(table)
    out = Path(__file__).parent / "results" / f"decode-{args.shape}-{time.strftime('%Y%m%d-%H%M')}.md"
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
