"""Held-out sets of the v2 task, drawn by the independent `render_eval` renderer, in the eval format of `app.py eval`.

    python -m backends.tiny.heldout_v2 --out assets/heldout     # writes describe / conversations / video sets

Next to v1's `heldout.jsonl` (the five one-word kinds), this writes:
  describe.jsonl        {"image", "question", "answer", "kind": "describe"}: descriptions of 1-4 objects, equal counts
  conversations.jsonl   {"image", "turns": [{"question", "answer", "kind"}, ...]}: 2-4 turns about one image; every
                        later turn asks about another object (or cell) than the turns before it. 400 (133 reach turn
                        4); the first 100 are the set's first version (one draw: a longer set is the same lines first)
  video.jsonl           {"video", "question", "answer", "kind"}: 24-frame VP9 WebM clips (vid/), one or two questions
Seeds differ from every seed `train.py` / `train_v2.py` use (they use seed .. seed+2999 with seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .arch import POSITIONS
from .clips import VIDEO_KINDS, make_video_question, sample_clip
from .scenes import DESCRIBE_PROMPTS, describe, make_question, sample_scene

SEED = 737373
VIDEO_FRAMES = 24
VIDEO_FPS = 8


def _save_image(objs, rng, out: Path, name: str) -> str:
    from .render_eval import render

    img = render(objs, rng, size=int(rng.choice((96, 128))), noise=bool(rng.random() < 0.2))
    img.save(out / name, optimize=True)
    return name


def write_describe(out: Path, rng, per_count: int = 40) -> list[dict]:
    lines = []
    for n in (1, 2, 3, 4):
        for _ in range(per_count):
            objs = sample_scene(rng, n_objects=n)
            name = _save_image(objs, rng, out, f"img/d{len(lines) + 1:04d}.png")
            lines.append(dict(image=name, question=DESCRIBE_PROMPTS[len(lines) % 3], answer=describe(objs),
                              kind="describe", scene=[o.to_dict() for o in objs]))
    return lines


def _about(q: dict, objs) -> set:
    """What a question is about: the cells it names or whose object it names (empty: the whole scene)."""
    text = q["question"].rstrip("?")
    if q["kind"] == "shape_at":
        return {POSITIONS.index(text.split(" at the ")[1])}
    if q["kind"] == "color":
        return {o.cell for o in objs if o.shape == text.split()[-1]}
    if q["kind"] == "exists":
        col, shape = text.split()[-2:]
        return {o.cell for o in objs if o.shape == shape and o.color == col} or {("absent", col, shape)}
    return set()


def write_conversations(out: Path, rng, n: int = 100) -> list[dict]:
    kinds = ["color", "shape_at", "count", "total", "exists", "describe"]
    lines = []
    while len(lines) < n:
        objs = sample_scene(rng, n_objects=int(rng.integers(2, 5)))
        want = 2 + len(lines) % 3  # 2, 3, 4 turns in equal shares
        turns, asked = [], set()
        for _ in range(60):
            if len(turns) == want:
                break
            q = make_question(objs, kinds[int(rng.integers(len(kinds)))], rng)
            if q is None or any(t["question"] == q["question"] for t in turns):
                continue
            about = _about(q, objs)
            if turns and about and about & asked:  # later turns ask about other objects / cells
                continue
            asked |= about
            turns.append(dict(question=q["question"], answer=q["answer"], kind=q["kind"]))
        if len(turns) < want:
            continue
        name = _save_image(objs, rng, out, f"img/c{len(lines) + 1:04d}.png")
        lines.append(dict(image=name, turns=turns, scene=[o.to_dict() for o in objs]))
    return lines


def write_video_clip(path: Path, clip, rng) -> None:
    import cv2

    from .render_eval import render

    size, seed = int(rng.choice((96, 128, 160))), int(rng.integers(2**31))
    noise = bool(rng.random() < 0.25)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"vp09"), VIDEO_FPS, (size, size))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write VP9 WebM here")
    for t in np.linspace(0.0, 1.0, VIDEO_FRAMES):  # one style per clip: the same renderer seed every frame
        frame = np.asarray(render(clip.at(float(t)), np.random.default_rng(seed), size=size, noise=noise))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def write_video(out: Path, rng, per_kind: int = 40) -> list[dict]:
    (out / "vid").mkdir(parents=True, exist_ok=True)
    need = {k: per_kind for k in VIDEO_KINDS}
    lines, n = [], 0
    while sum(need.values()):
        clip = sample_clip(rng)
        qs = []
        for k in [k for k in VIDEO_KINDS if need[k]][:2]:
            q = make_video_question(clip, k, rng)
            if q is not None:
                qs.append(q)
        if not qs:
            continue
        n += 1
        name = f"vid/{n:04d}.webm"
        write_video_clip(out / name, clip, rng)
        for q in qs:
            need[q["kind"]] -= 1
            lines.append(dict(video=name, question=q["question"], answer=q["answer"], kind=q["kind"],
                              clip=clip.to_dict()))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backends.tiny.heldout_v2", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="assets/heldout")
    p.add_argument("--seed", type=int, default=SEED)
    # 100 conversations gave turn 4 33 questions, one of them 3 points: too coarse for a 95% line.
    p.add_argument("--conversations", type=int, default=400, help="conversations to draw")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    for i, (fname, fn) in enumerate((("describe.jsonl", write_describe), ("conversations.jsonl", write_conversations),
                                     ("video.jsonl", write_video))):
        extra = {"n": args.conversations} if fn is write_conversations else {}
        lines = fn(out, np.random.default_rng(args.seed + i), **extra)
        (out / fname).write_text("".join(json.dumps(ln) + "\n" for ln in lines))
        print(f"wrote {out / fname}: {len(lines)} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
