"""How often does the page colour a method that does the baseline's own work? A measurement, not a test.

    python bench/keepall_drift.py [--n 20] [--method random] [--hogs 0] [--max-new-tokens 3]

Runs --n comparisons of [baseline, --method at keep 1.0] on the built-in model through the in-process pool, the
page's defaults otherwise (1 warm-up, at least 3 timed runs, median), and applies the page's verdict rule
(`ui.fmt.verdict`: coloured only when the whole min-max speedup range is beyond ×SAME_BAND). The method's answers
are the baseline's (checked), so every coloured comparison is a false claim caused by the machine drifting between
the two runs. `--hogs K` starts K busy-looping processes for the second half of the comparisons, to show what load
that starts or stops between two runs does (the failure a CI run once hit: ×0.72 on a shared 2-core machine).
Prints a table and writes it to bench/results/.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends import media  # noqa: E402
from backends.pool import LocalPool  # noqa: E402
from backends.settings import Settings  # noqa: E402
from backends.types import Comparison, GenerationSettings, MethodSpec  # noqa: E402
from ui import fmt  # noqa: E402


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10000))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--method", default="random")
    p.add_argument("--hogs", type=int, default=0, help="busy processes started halfway through (0: none)")
    p.add_argument("--max-new-tokens", type=int, default=3)
    args = p.parse_args()
    settings = Settings(dtype="float32")
    pool = LocalPool(settings)
    img = media.image_media(ROOT / "assets" / "examples" / "three_shapes.png", settings)
    comp = Comparison(img, "how many shapes are there?", [MethodSpec("baseline"), MethodSpec(args.method,
                                                                                              {"keep": 1.0})],
                      GenerationSettings(max_new_tokens=args.max_new_tokens, warmup=1, repeats=3, repeat_budget_s=2.0))
    stop, hogs, rows = mp.Event(), [], []
    try:
        for k in range(args.n):
            if args.hogs and k == args.n // 2:
                hogs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.hogs)]
                for h in hogs:
                    h.start()
            runs = sorted(pool.compare(comp), key=lambda r: r.index)
            base, run = runs
            if not (base.ok and run.ok) or run.output_ids != base.output_ids:
                raise SystemExit(f"comparison {k}: not the baseline's work ({base.error or run.error or 'tokens'})")
            lo, hi = fmt.speedup_range(run, base)
            rows.append((k, bool(hogs), fmt.speedup(run, base), lo, hi, fmt.verdict(run, base)))
    finally:
        stop.set()
        for h in hogs:
            h.join(5)
        pool.close()
    lines = [f"# keep-all colouring: baseline vs {args.method} keep 1.0, {args.n} comparisons, "
             f"{args.max_new_tokens} new tokens, band ×{fmt.SAME_BAND:.2f}, {os.cpu_count()} CPUs, "
             f"hogs {args.hogs} from comparison {args.n // 2 if args.hogs else '-'}", "",
             "| # | hogs running | speedup (median) | range | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {'yes' if h else 'no'} | ×{sp:.2f} | {lo:.2f}–{hi:.2f} | {v} |" for k, h, sp, lo, hi, v in rows]
    wrong = [r for r in rows if r[5] != "same"]
    lines += ["", f"coloured: {len(wrong)}/{len(rows)}; median speedup ×{statistics.median(r[2] for r in rows):.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / f"keepall-drift-{time.strftime('%Y%m%d-%H%M')}.md"
    out.write_text(text)
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
