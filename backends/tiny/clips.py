"""The tiny model's video task (v2): seeded clips of one scene in which at most one object moves, and their questions.

A clip is 1-3 objects on the 3x3 grid. At most one object moves in a straight line, horizontally or vertically, by
one or two cells, at a steady pace over the whole clip (passing through the cells between, which are empty), or none
moves. Frame f of T shows time t = f / (T - 1), so the first frame is the start and the last the end (as the app
samples frames: evenly spaced, first and last included). Geometry is in cell units like `scenes.Obj`, so any renderer
draws a frame with its `render(objs, rng)`.

Questions (answers):
  direction  "which way does the {color} {shape} move?"             -> left / right / up / down / still
  at_start   "what shape is at the {position} at the start?"        -> shape / none (first frame)
  at_end     "what shape is at the {position} at the end?"          -> shape / none (last frame)
  vtotal     "how many shapes are there?"                           -> one .. three
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .arch import NUMBERS, POSITIONS
from .scenes import Obj, sample_scene

VIDEO_KINDS = ["direction", "at_start", "at_end", "vtotal"]
MOVES = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


@dataclass
class Clip:
    objs: list[Obj]  # positions at the start
    mover: int | None  # index into objs of the moving object, None when nothing moves
    direction: str  # left / right / up / down / still (of the mover)
    cells: int  # cells travelled (1 or 2; 0 when still)

    def end_cell(self, i: int) -> int:
        o = self.objs[i]
        if i != self.mover:
            return o.cell
        dr, dc = MOVES[self.direction]
        return o.cell + 3 * dr * self.cells + dc * self.cells

    def at(self, t: float) -> list[Obj]:
        """The objects at time t in [0, 1]: the mover's centre is displaced by t x its path, in cell units."""
        out = []
        for i, o in enumerate(self.objs):
            if i == self.mover:
                dr, dc = MOVES[self.direction]
                o = replace(o, cx=o.cx + dc * self.cells * t, cy=o.cy + dr * self.cells * t)
            out.append(o)
        return out

    def cells_at(self, end: bool) -> dict[int, str]:
        """cell -> shape at the start (end=False) or at the end."""
        return {(self.end_cell(i) if end else o.cell): o.shape for i, o in enumerate(self.objs)}

    def to_dict(self) -> dict:
        return dict(objs=[o.to_dict() for o in self.objs], mover=self.mover, direction=self.direction,
                    cells=self.cells)


def sample_clip(rng: np.random.Generator, p_still: float = 0.2) -> Clip:
    """1-3 objects; with probability 1 - p_still one of them moves 1-2 cells along a free straight path."""
    for _ in range(100):
        objs = sample_scene(rng, n_objects=int(rng.integers(1, 4)))
        if rng.random() < p_still:
            return Clip(objs, None, "still", 0)
        i = int(rng.integers(len(objs)))
        r, c = divmod(objs[i].cell, 3)
        taken = {o.cell for j, o in enumerate(objs) if j != i}
        options = []
        for name, (dr, dc) in MOVES.items():
            for k in (1, 2):
                path = [(r + dr * s, c + dc * s) for s in range(1, k + 1)]
                if all(0 <= a < 3 and 0 <= b < 3 and a * 3 + b not in taken for a, b in path):
                    options.append((name, k))
        if options:
            name, k = options[int(rng.integers(len(options)))]
            return Clip(objs, i, name, k)
    raise RuntimeError("could not place a moving object")  # unreachable in practice: one object always can move


def make_video_question(clip: Clip, kind: str, rng: np.random.Generator, p_mover: float = 0.75) -> dict | None:
    """One question of `kind`; None when it cannot be asked unambiguously (no object unique by colour and shape)."""
    objs = clip.objs
    if kind == "direction":
        unique = [i for i, o in enumerate(objs)
                  if sum(1 for p in objs if (p.color, p.shape) == (o.color, o.shape)) == 1]
        if not unique:
            return None
        # Ask about the mover most of the time (p_mover), so "still" is common but not dominant.
        i = clip.mover if clip.mover in unique and rng.random() < p_mover else unique[int(rng.integers(len(unique)))]
        o = objs[i]
        ans = clip.direction if i == clip.mover else "still"
        return dict(question=f"which way does the {o.color} {o.shape} move?", answer=ans, kind=kind, obj=i)
    if kind in ("at_start", "at_end"):
        end = kind == "at_end"
        cells = clip.cells_at(end)
        occupied = sorted(cells)
        if clip.mover is not None and rng.random() < 0.5:  # the cells where motion changes the answer
            cell = clip.end_cell(clip.mover) if rng.random() < 0.5 else objs[clip.mover].cell
        elif rng.random() < 0.6:
            cell = occupied[int(rng.integers(len(occupied)))]
        else:
            cell = int(rng.integers(9))
        when = "end" if end else "start"
        return dict(question=f"what shape is at the {POSITIONS[cell]} at the {when}?", answer=cells.get(cell, "none"),
                    kind=kind, cell=cell)
    if kind == "vtotal":
        return dict(question="how many shapes are there?", answer=NUMBERS[len(objs)], kind=kind)
    raise ValueError(f"unknown video question kind {kind!r}")


def sample_video_questions(clip: Clip, rng: np.random.Generator, n: int, weights: dict[str, float],
                           p_mover: float = 0.75) -> list[dict]:
    """`n` distinct questions about one clip, kinds drawn with `weights`."""
    w = np.array([weights.get(k, 0.0) for k in VIDEO_KINDS], dtype=float)
    w = w / w.sum()
    out, seen = [], set()
    for _ in range(20 * n):
        if len(out) == n:
            break
        q = make_video_question(clip, VIDEO_KINDS[int(rng.choice(len(VIDEO_KINDS), p=w))], rng, p_mover)
        if q is not None and q["question"] not in seen:
            seen.add(q["question"])
            out.append(q)
    return out
