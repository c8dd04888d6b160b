"""Render the app's example inputs into assets/examples/: shape scenes the built-in model was trained on.

    .venv/bin/python scripts/make_examples.py        # rewrites assets/examples/ (deterministic, ~50 KB)

Each scene is 1-4 filled circles / squares / triangles (upward, base = height) on a 3x3 grid, light
background, the six task colours, shape size 40-85% of the cell: the built-in model's task, so its answers
mean something. Drawn with PIL at 4x and downsampled (anti-aliased edges), no noise. `examples.json` lists
each file with a question that fits it; the UI reads that list (nothing about the examples is hard-coded
there). The two short videos are VP9 WebM: OpenCV writes them and every browser plays them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "assets" / "examples"
SIDE = 256  # saved size; the processor resizes anyway, and small files keep the repo light
SS = 4  # supersampling factor for anti-aliased edges
BACKGROUND = (236, 236, 232)
RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
       "purple": (150, 60, 190), "orange": (240, 140, 30)}

# (cell 0..8 row-major, shape, colour, size as a share of the cell, centre offset in cell units)
SCENES = {
    "three_shapes.png": ([(0, "circle", "red", 0.7, (0, 0)), (4, "square", "blue", 0.6, (0.05, -0.05)),
                          (8, "triangle", "green", 0.75, (0, 0.05))], "how many shapes are there?"),
    "top_left.png": ([(0, "triangle", "yellow", 0.8, (0.02, 0.04)), (2, "circle", "purple", 0.55, (-0.1, 0.1)),
                      (7, "square", "orange", 0.5, (0.1, 0))], "what shape is at the top left?"),
    "red_circle.png": ([(3, "circle", "red", 0.65, (0.1, 0)), (1, "circle", "blue", 0.5, (0, 0.1)),
                        (7, "square", "orange", 0.7, (-0.05, 0))], "is there a red circle?"),
    "square_color.png": ([(4, "square", "green", 0.7, (0, 0)), (2, "circle", "yellow", 0.6, (0, 0.05))],
                         "what color is the square?"),
    "blue_count.png": ([(0, "triangle", "blue", 0.6, (0.1, 0.05)), (5, "circle", "blue", 0.5, (0, -0.1)),
                        (6, "square", "red", 0.8, (0, 0)), (2, "triangle", "purple", 0.45, (-0.1, 0.1))],
                       "how many blue shapes are there?"),
    "describe.png": ([(0, "circle", "red", 0.65, (0, 0)), (2, "square", "green", 0.6, (-0.05, 0.05)),
                      (4, "triangle", "blue", 0.7, (0, 0)), (7, "circle", "orange", 0.55, (0.1, -0.05))],
                     "describe the image"),
}


def draw(objs, side: int = SIDE, clamp: bool = True) -> Image.Image:
    """One scene as an RGB image; `objs` are (cell, shape, colour, size, (dx, dy)) tuples, (dx, dy) in cell units
    (kept inside the cell unless clamp=False: a moving object passes between cells)."""
    n = side * SS
    img = Image.new("RGB", (n, n), BACKGROUND)
    d, cell = ImageDraw.Draw(img), n / 3
    for c, shape, colour, size, (dx, dy) in objs:
        if not 0.40 <= size <= 0.85:
            raise ValueError(f"size {size} outside the task's 40-85% of a cell")
        s = size * cell
        # keep the whole shape inside its cell, as the training scenes do
        slack = (cell - s) / 2
        lim = slack if clamp else 3 * cell
        cx = (c % 3 + 0.5) * cell + float(np.clip(dx * cell, -lim, lim))
        cy = (c // 3 + 0.5) * cell + float(np.clip(dy * cell, -lim, lim))
        box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
        if shape == "circle":
            d.ellipse(box, fill=RGB[colour])
        elif shape == "square":
            d.rectangle(box, fill=RGB[colour])
        else:
            d.polygon([(box[0], box[3]), (box[2], box[3]), (cx, box[1])], fill=RGB[colour])
    return img.resize((side, side), Image.LANCZOS)


def video_frames(kind: str, n: int = 16) -> list[Image.Image]:
    """Frames of a short clip in the built-in model's video task: one object moving at a steady pace along a
    straight path of one or two cells (frame i at t = i / (n - 1)), the others still."""
    if kind == "moving":  # a blue square slides right across the middle row, a yellow circle stays at the top left
        still, (cell, shape, colour, size), cells, (dr, dc) = [(0, "circle", "yellow", 0.6, (0, 0))], \
            (3, "square", "blue", 0.6), 2, (0, 1)
    else:  # "rising": a red triangle moves up from the bottom middle to the centre, a green circle at the top right
        still, (cell, shape, colour, size), cells, (dr, dc) = [(2, "circle", "green", 0.55, (0, 0))], \
            (7, "triangle", "red", 0.65), 1, (-1, 0)
    return [draw(still + [(cell, shape, colour, size, (dc * cells * i / (n - 1), dr * cells * i / (n - 1)))],
                 clamp=False) for i in range(n)]


def write_video(path: Path, frames: list[Image.Image], fps: int = 8) -> None:
    import cv2  # only the videos need OpenCV

    w, h = frames[0].size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"vp09"), fps, (w, h))
    if not out.isOpened():
        raise RuntimeError("OpenCV cannot write VP9 WebM here")
    for f in frames:
        out.write(cv2.cvtColor(np.asarray(f), cv2.COLOR_RGB2BGR))
    out.release()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    listing = {"images": [], "videos": []}
    for name, (objs, question) in SCENES.items():
        draw(objs).save(OUT / name, optimize=True)
        listing["images"].append({"file": name, "prompt": question})
    for kind, question in (("moving", "which way does the blue square move?"),
                           ("rising", "what shape is at the center at the end?")):
        write_video(OUT / f"{kind}.webm", video_frames(kind))
        listing["videos"].append({"file": f"{kind}.webm", "prompt": question})
    (OUT / "examples.json").write_text(json.dumps(listing, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KB, to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
