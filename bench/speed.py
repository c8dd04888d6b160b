"""Speed benchmark: every registered method at keep 1.0 / 0.25 / 0.1, measured vs FLOP-ideal speedup.

    python bench/speed.py --shape interleave-0.5b --dtype bfloat16     # random weights, a real model's shape
    python bench/speed.py --shape builtin                                # the built-in model

Each configuration runs through the app's own runner (1 warm-up run, then the median of --repeats timed runs,
one run at a time on this machine). Methods without a budget (PruMerge, METEOR, ShortV) run once at their
paper setting. The FLOP-ideal speedup counts dense matmuls and attention of the vision tower, the LLM prefill
(with each layer's visual-token count) and the decode steps (the runner computes it: `flop_ideal_speedup`,
backends/measure.py), so it shows what the method could save at best.
Prints a markdown table and writes it to bench/results/ with the machine it ran on. Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from backends import media, runner, shapes  # noqa: E402
from backends.models import load_model  # noqa: E402
from backends.settings import BUILTIN, Settings  # noqa: E402
from backends.types import GenerationSettings, MethodSpec, RunRequest  # noqa: E402
from methods import registry  # noqa: E402


def configs(keeps: list[float]) -> list[tuple[str, dict, str]]:
    out = []
    for name in registry.names():
        cls = registry.get(name)
        if cls.budget_field:
            out += [(name, {cls.budget_field: k}, f"{k:g}") for k in keeps]
        else:
            out.append((name, {}, "paper"))
    return out


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    gpu = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}); " if torch.cuda.is_available() else ""
    return (f"{gpu}{cpu}; {os.cpu_count()} cores; torch {torch.__version__} with {torch.get_num_threads()} thread(s); "
            f"python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}")


def random_model(shape: str, dtype: str, model_dir: str | None) -> str:
    """Folder of a random model of `shape`: built into model_dir (a temp folder if None), or reused when model_dir
    already holds one (the GPU script builds LLaVA-1.5-7B once, 13.5 GB, for both benchmarks)."""
    if model_dir and Path(model_dir, "config.json").is_file():
        return model_dir
    out = model_dir or tempfile.mkdtemp(prefix="bench-")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return str(shapes.build(shape, out, dtype=getattr(torch, dtype), device=dev))


def flips(res) -> str:
    """Note for a run whose repeats gave different tokens (a CUDA near-tie flipped; the runner records it)."""
    n = res.info.get("runs_with_other_tokens")
    return f"tokens differed in {n} timed runs" if n else ""


def kernel_note(lm, peak_kind: str) -> str:
    """How the numbers were taken: attention kernel, clocks and memory."""
    sync = "torch.cuda.synchronize before every clock read" if lm.device.type == "cuda" else "CPU clocks"
    return (f"Attention kernel: {lm.adapter.attn_implementation} (PyTorch scaled_dot_product_attention picks its own "
            f"backend on CUDA). Timing: {sync}. Peak = {peak_kind or 'peak memory growth'} over a run.")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="interleave-0.5b", help=f"{', '.join(shapes.SHAPES)} or builtin")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--keeps", default="1.0,0.25,0.1")
    p.add_argument("--methods", default="", help="comma list (default: all registered)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--image", default="assets/examples/blue_count.png")
    p.add_argument("--model-dir", default=None, help="build the random model here, or reuse the one already there")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("VLM_THREADS", "1")))
    settings = Settings(dtype=args.dtype if args.shape != BUILTIN else "float32")
    src = BUILTIN if args.shape == BUILTIN else random_model(args.shape, args.dtype, args.model_dir)
    lm = load_model(src, settings)
    if args.shape != BUILTIN:  # ShortV needs a layer ranking for this random model: a quick one
        from backends import calibrate

        calibrate.write_calibration(lm, calibrate._generated(2), src, "2 generated scenes (benchmark)")
    med = media.image_media(args.image, settings)
    gen = GenerationSettings(max_new_tokens=args.max_new_tokens, warmup=1, repeats=args.repeats)
    chosen = [m for m in args.methods.split(",") if m]
    rows, base, peak_kind = [], None, ""
    # one untimed pass first: the first runs of a fresh process pay allocator and cache warm-up for everyone
    runner.run(RunRequest(med, "how many shapes are there?", MethodSpec("baseline"), gen), lm, settings)
    for name, params, keep in configs([float(k) for k in args.keeps.split(",")]):
        if chosen and name not in chosen:
            continue
        try:
            res = runner.run(RunRequest(med, "how many shapes are there?", MethodSpec(name, params), gen), lm, settings)
        except Exception as e:  # e.g. PruMerge on a tower without CLS: say so in the table
            rows.append(f"| {name} | {keep} | - | - | - | - | - | - | - | - | {str(e)[:60]} |")
            continue
        t = res.timings_ms
        base, peak_kind = base or t, res.memory.peak_kind
        rows.append(f"| {name} | {keep} | {res.visual_tokens.kept} / {res.visual_tokens.effective:.0f} | "
                    f"{t.vision:.0f} | {t.prefill:.0f} | {t.decode:.0f} | {t.total:.0f} | "
                    f"{res.memory.peak_bytes / 2**20:.0f} | {base.total / t.total:.2f}x | "
                    f"{res.flop_ideal_speedup:.2f}x | {flips(res)} |")
        print(rows[-1], flush=True)
    head = (f"# Speed: {args.shape} ({args.dtype}), {args.max_new_tokens} new tokens, median of {args.repeats} "
            f"after 1 warm-up\n\nMachine: {machine()}\n\n{kernel_note(lm, peak_kind)} "
            "Speedup = baseline total / method total; ideal = FLOP ratio."
            "\n\n| method | keep | visual kept / effective | vision ms | prefill ms | decode ms | total ms | "
            "peak MB | speedup | FLOP-ideal | note |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    table = head + "\n".join(rows) + "\n"
    print(table)
    out = Path(__file__).parent / "results" / f"speed-{args.shape}-{time.strftime('%Y%m%d-%H%M')}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
