"""Held-out renderer: independent of `render_train` (other drawing code, sizes, jitter and noise).

PIL `ImageDraw` polygons/ellipses drawn at 4x the output size, then LANCZOS-downsampled to the output size
(96-320 px by default; the processor resizes to 128). Background: a grey level U(225, 255) with a faint linear
gradient (up to +-5 levels) in half of the images. Colour jitter +-20 per channel. Noise, added at the output
size: none in half of the images, else Gaussian with sigma ~ U(2, 10).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scenes import RGB, Obj

SIZES = (96, 128, 160, 224, 320)
SUPER = 4


def render(objs: list[Obj], rng: np.random.Generator, size: int | None = None,
           noise: bool | None = None) -> Image.Image:
    """The scene as a PIL RGB image of `size` px (random from SIZES when None)."""
    size = int(rng.choice(SIZES)) if size is None else int(size)
    big = size * SUPER
    level = rng.uniform(225, 255)
    base = np.full((big, big, 3), level, dtype=np.float32)
    if rng.random() < 0.5:  # faint gradient in a random direction
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big - 0.5
        base += (np.cos(ang) * xx + np.sin(ang) * yy)[..., None] * rng.uniform(0, 10)
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    cell = big / 3
    for o in objs:
        r, c = divmod(o.cell, 3)
        s = o.size * cell
        x0 = c * cell + o.cx * cell - s / 2
        y0 = r * cell + o.cy * cell - s / 2
        col = tuple(int(v) for v in np.clip(np.array(RGB[o.color]) + rng.integers(-20, 21, size=3), 0, 255))
        if o.shape == "circle":
            draw.ellipse([x0, y0, x0 + s, y0 + s], fill=col)
        elif o.shape == "square":
            draw.rectangle([x0, y0, x0 + s, y0 + s], fill=col)
        else:
            draw.polygon([(x0 + s / 2, y0), (x0 + s, y0 + s), (x0, y0 + s)], fill=col)
    im = im.resize((size, size), Image.Resampling.LANCZOS)
    if noise if noise is not None else rng.random() < 0.5:
        a = np.asarray(im).astype(np.float32) + rng.normal(0, rng.uniform(2, 10), size=(size, size, 3))
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    return im
