"""Headless twin of the UI: `python app.py compare ...` (see `--help`).

Bad input exits 2 with one line on stderr; a run that fails inside comes back with `ok: false`.
"""

from __future__ import annotations

import argparse
import json
import sys

from backends import checks
from backends.settings import BUILTIN, Settings
from backends.types import (
    DEFAULT_MAX_NEW_TOKENS,
    Comparison,
    GenerationSettings,
    MethodSpec,
    RequestError,
    check_follow_ups,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise RequestError(message)


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """`["prumerge.keep=0.3", ...]` -> {"prumerge": {"keep": "0.3"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not eq or not dot or not method or not param:
            raise RequestError(f"--set expects METHOD.PARAM=VALUE, got {item!r}")
        out.setdefault(method, {})[param] = value
    return out


def method_specs(names: str, keep: float | None, sets: dict[str, dict[str, str]]) -> list[MethodSpec]:
    """Validated method specs (the registry refuses unknown names/params and bad values)."""
    from methods import registry

    if keep is not None:
        keep = checks.number(keep, "--keep", float, 0.0, 1.0, lo_open=True)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise RequestError("--methods is empty")
    for m in sets:
        if m not in chosen:
            raise RequestError(f"--set names method {m!r}, which is not in --methods")
    specs = []
    for n in chosen:
        built = registry.build(MethodSpec(n, dict(sets.get(n, {}))), keep=keep)
        specs.append(MethodSpec(n, built.params()))
    return specs


def compare_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="app.py compare", description="Run the baseline and methods on one input.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file")
    src.add_argument("--video", help="video file (frames sampled evenly)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--follow-up", action="append", default=[], metavar="QUESTION", dest="follow_up",
                   help="a later question of the same conversation, answered on each run's own KV cache "
                        "(repeatable, in order; at most 7)")
    p.add_argument("--methods", default="baseline", help="comma list from the registry (default: baseline)")
    p.add_argument("--keep", type=float, default=None, help="visual-token budget of budgeted methods, in (0, 1]")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE")
    p.add_argument("--model", default=None, help=f"'{BUILTIN}' (default), a model folder or a Hugging Face id")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--frames", type=int, default=None, help="frames sampled from a video (default 8)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the comparison document")
    p.add_argument("--redis", default=None, metavar="URL", help="run on Redis workers (default: $REDIS_URL, else "
                   "in-process)")
    return p


def build_comparison(args: argparse.Namespace, settings: Settings) -> Comparison:
    from backends import media

    specs = method_specs(args.methods, args.keep, parse_sets(args.set))
    if args.image:
        med = media.image_media(args.image, settings)
    else:
        med = media.video_media(args.video, settings, args.frames)
    prompt = media.check_prompt(args.prompt, settings)
    # the same ranges and messages as the page and the API (ui/request.py)
    gen = GenerationSettings(max_new_tokens=checks.number(args.max_new_tokens, "max_new_tokens", int, 1, 512),
                             warmup=checks.number(args.warmup, "warmup", int, 0, 5),
                             repeats=checks.number(args.repeats, "repeats", int, 1, 20))
    ups = [media.check_prompt(q, settings) for q in check_follow_ups(args.follow_up, settings.max_prompt_chars)]
    comparison = Comparison(med, prompt, specs, gen, args.model or settings.model, follow_ups=ups)
    from backends import turns  # loads torch: after the cheap checks

    turns.precheck(comparison, settings)
    return comparison


def _table(doc: dict) -> str:
    """One row per run (and per follow-up turn); the answer comes last and whole, so a long description is never
    cut."""
    rows = [f"{'method':<16}{'ok':<4}{'kept':>10}{'ttft ms':>10}{'total ms':>10}{'peak MB':>9}  answer"]
    for r in doc["runs"]:
        vt, t = r["visual_tokens"], r["timings_ms"]
        ans = r["answer"] if r["ok"] else f"ERROR: {r['error']}"
        rows.append(f"{r['method']:<16}{'yes' if r['ok'] else 'no':<4}{vt['kept']:>5}/{vt['input']:<4}"
                    f"{t['ttft']:>10.1f}{t['total']:>10.1f}{r['memory']['peak_bytes'] / 2**20:>9.1f}  {ans}")
        for k, turn in enumerate(r.get("turns", [])[1:], 2):  # follow-ups: the answer on this run's own cache
            vt, t = turn["visual_tokens"], turn["timings_ms"]
            rows.append(f"{'  turn ' + str(k):<20}{vt['kept']:>5}/{vt['input']:<4}"
                        f"{t['ttft']:>10.1f}{t['total']:>10.1f}{turn['memory']['peak_bytes'] / 2**20:>9.1f}  "
                        f"{turn['answer']}")
    return "\n".join(rows)


def compare_main(argv: list[str]) -> int:
    from backends.document import document
    from backends.pool import PoolError
    from backends.pools import make_pool

    settings = Settings.from_env()
    try:
        args = compare_parser().parse_args(argv)
        comparison = build_comparison(args, settings)
    except RequestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # a pool that cannot serve (Redis unreachable at start or mid-run): one line, exit 1
        pool = make_pool(settings, args.redis)
        try:
            results = list(pool.compare(comparison))
        finally:
            pool.close()
    except PoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    doc = document(comparison, results)
    print(json.dumps(doc, indent=1) if args.json else _table(doc))
    return 0 if all(r.ok for r in results) else 1
