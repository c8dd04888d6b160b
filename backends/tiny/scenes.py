"""The tiny model's synthetic task: seeded scene sampler, the five question templates, answer normalisation.

A scene is 1-4 objects on a 3x3 grid, at most one per cell. Each object is a filled circle, square or
triangle (upward, base = height) in one of six colours. Its size is 40-85% of the cell side and it lies
anywhere inside its cell. Geometry is stored in cell units, so any renderer can draw the scene at any size;
pixel-level style (background, colour jitter, noise, anti-aliasing) belongs to the renderers.

Questions (one-word answers):
  color     "what color is the {shape}?"          (only when that shape is unique)  -> colour
  shape_at  "what shape is at the {position}?"                                       -> shape / none
  count     "how many {color} shapes are there?"                                     -> zero..four
  total     "how many shapes are there?"                                             -> one..four
  exists    "is there a {color} {shape}?"                                            -> yes / no
v2 adds a long answer (`make_question(objs, "describe", rng)`, not in KINDS so v1's sampling is unchanged):
  describe  "describe the image" / "what is in the image?" / "list the shapes"
            -> "a {color} {shape} at the {position}" per object in reading order, joined by ", " and " and "
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .arch import COLORS, NUMBERS, POSITIONS, SHAPES

KINDS = ["color", "shape_at", "count", "total", "exists"]
DESCRIBE_PROMPTS = ["describe the image", "what is in the image?", "list the shapes"]
# Nominal colours from the spec; renderers add their own per-object jitter.
RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}


@dataclass
class Obj:
    cell: int  # 0..8, row-major (0 = top left, 4 = center, 8 = bottom right)
    shape: str
    color: str
    size: float  # side / diameter as a fraction of the cell side, 0.40-0.85
    cx: float  # centre inside the cell, in cell units (0..1); the whole shape stays inside the cell
    cy: float

    def to_dict(self) -> dict:
        return dict(cell=self.cell, shape=self.shape, color=self.color, size=self.size, cx=self.cx, cy=self.cy)


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, colors: list[str] | None = None) -> list[Obj]:
    """1-4 objects (uniform count unless `n_objects` is given) in distinct random cells, colours drawn from `colors`
    (default all six)."""
    palette = colors or COLORS
    n = int(rng.integers(1, 5)) if n_objects is None else int(n_objects)
    cells = rng.choice(9, size=n, replace=False)
    objs = []
    for c in sorted(int(x) for x in cells):
        size = float(rng.uniform(0.40, 0.85))
        lo, hi = size / 2, 1 - size / 2
        objs.append(Obj(cell=c, shape=SHAPES[int(rng.integers(3))], color=palette[int(rng.integers(len(palette)))],
                        size=size, cx=float(rng.uniform(lo, hi)), cy=float(rng.uniform(lo, hi))))
    return objs


def _count(objs, color=None, shape=None) -> int:
    return sum(1 for o in objs if (color is None or o.color == color) and (shape is None or o.shape == shape))


def describe(objs: list[Obj]) -> str:
    """Every object in reading order (cells are row-major), "a {color} {shape} at the {position}", joined by ", "
    with " and " before the last one."""
    parts = [f"a {o.color} {o.shape} at the {POSITIONS[o.cell]}" for o in sorted(objs, key=lambda o: o.cell)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def make_question(objs: list[Obj], kind: str, rng: np.random.Generator) -> dict | None:
    """One question of `kind` about the scene, or None when the kind cannot be asked (no unique shape)."""
    if kind == "describe":
        return dict(question=DESCRIBE_PROMPTS[int(rng.integers(len(DESCRIBE_PROMPTS)))], answer=describe(objs),
                    kind=kind)
    if kind == "color":
        unique = [s for s in SHAPES if _count(objs, shape=s) == 1]
        if not unique:
            return None
        s = unique[int(rng.integers(len(unique)))]
        col = next(o.color for o in objs if o.shape == s)
        return dict(question=f"what color is the {s}?", answer=col, kind=kind)
    if kind == "shape_at":
        occupied = [o.cell for o in objs]
        # Half the time an occupied cell, otherwise any cell (so 'none' is common but not dominant).
        cell = occupied[int(rng.integers(len(occupied)))] if rng.random() < 0.6 else int(rng.integers(9))
        ans = next((o.shape for o in objs if o.cell == cell), "none")
        return dict(question=f"what shape is at the {POSITIONS[cell]}?", answer=ans, kind=kind)
    if kind == "count":
        present = sorted({o.color for o in objs})
        col = present[int(rng.integers(len(present)))] if rng.random() < 0.6 else COLORS[int(rng.integers(6))]
        return dict(question=f"how many {col} shapes are there?", answer=NUMBERS[_count(objs, color=col)], kind=kind)
    if kind == "total":
        return dict(question="how many shapes are there?", answer=NUMBERS[len(objs)], kind=kind)
    if kind == "exists":
        if rng.random() < 0.5:  # positive
            o = objs[int(rng.integers(len(objs)))]
            col, s = o.color, o.shape
        else:  # negative; often a near miss (the colour or the shape is present, but not together)
            for _ in range(50):
                r = rng.random()
                o = objs[int(rng.integers(len(objs)))]
                if r < 0.35:
                    col, s = o.color, SHAPES[int(rng.integers(3))]
                elif r < 0.7:
                    col, s = COLORS[int(rng.integers(6))], o.shape
                else:
                    col, s = COLORS[int(rng.integers(6))], SHAPES[int(rng.integers(3))]
                if _count(objs, color=col, shape=s) == 0:
                    break
        ans = "yes" if _count(objs, color=col, shape=s) else "no"
        return dict(question=f"is there a {col} {s}?", answer=ans, kind=kind)
    raise ValueError(f"unknown question kind {kind!r}")


def sample_questions(objs: list[Obj], rng: np.random.Generator, n: int, weights: dict[str, float] | None = None,
                     ) -> list[dict]:
    """`n` questions about one scene, kinds drawn with `weights` (default uniform over the five kinds)."""
    w = np.array([(weights or {}).get(k, 1.0) for k in KINDS], dtype=float)
    w = w / w.sum()
    out: list[dict] = []
    if w[KINDS.index("color")] == 1.0 and make_question(objs, "color", rng) is None:
        raise ValueError("no unique shape in this scene: a 'color' question cannot be asked")
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        q = make_question(objs, KINDS[int(rng.choice(len(KINDS), p=w))], rng)
        tries += 1
        if q is not None and (q["question"] not in seen or tries > 20 * n):  # avoid repeats within one scene
            seen.add(q["question"])
            out.append(q)
    return out


_PUNCT = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """Answer normalisation: lower-case, punctuation dropped, whitespace collapsed ('Two.' == 'two')."""
    return " ".join(_PUNCT.sub(" ", str(text).lower()).split())


_OBJ = re.compile(r"\ba (" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r") at the (" + "|".join(POSITIONS) + ")")


def objects_of(text: str) -> set[tuple[str, str, str]]:
    """The (color, shape, position) triples a description names (after `normalize`)."""
    return set(_OBJ.findall(normalize(text)))


def object_f1(pred: str, answer: str) -> float:
    """Object-level F1 of a description against the reference: one wrong object in four costs 0.25, not 1."""
    p, a = objects_of(pred), objects_of(answer)
    if not p and not a:
        return 1.0
    tp = len(p & a)
    return 0.0 if tp == 0 else 2 * tp / (len(p) + len(a))
