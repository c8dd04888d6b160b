"""Kept-token heatmaps: a run's `kept_map` (per frame, rows x cols shares in 0..1) drawn over its input frame.

The input stays readable: a patch kept as it is keeps its true colours (a yellow triangle stays yellow), a
dropped patch is dimmed to dark grey, and a patch merged or pooled with others (its share of a token is
between 0 and 1) keeps its colours under a diagonal hatch drawn in the scale's colour for that share, so "16
tokens pooled from 64" reads as pooled, not as dropped. One fixed colour scale (viridis over 0..1) for every
card (hatches, layer strips, legend). Pure numpy + OpenCV + PIL (no torch); images leave as inline
`data:image/png;base64` URIs for gr.HTML.
"""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
from PIL import Image

# viridis at 9 evenly spaced points (matplotlib's table, sampled): perceptually even, readable when printed grey
_STOPS = np.array([(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
                   (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=np.float32)
LUT = np.stack([np.interp(np.linspace(0, 8, 256), np.arange(9), _STOPS[:, c]) for c in range(3)], 1)


def colour(share: float) -> str:
    """The scale's CSS colour for a share in 0..1 (layer strips and the legend use the same scale)."""
    r, g, b = LUT[int(round(float(np.clip(share, 0, 1)) * 255))]
    return f"rgb({r:.0f},{g:.0f},{b:.0f})"


def gradient_css() -> str:
    stops = ", ".join(f"{colour(i / 8)} {i * 12.5:.1f}%" for i in range(9))
    return f"linear-gradient(90deg, {stops})"


def square(img: Image.Image) -> Image.Image:
    """The centre square: LLaVA-style processors resize the short side and centre-crop, so the token grid
    covers this square, not the whole picture."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.convert("RGB").crop((left, top, left + s, top + s))


def decode_frames(frames_png: list[str], side: int) -> list[np.ndarray]:
    """The request's frames (base64 PNG) as side x side RGB float arrays, ready to be overlaid."""
    out = []
    for b64 in frames_png:
        img = square(Image.open(io.BytesIO(base64.b64decode(b64))))
        out.append(np.asarray(img.resize((side, side), Image.BILINEAR), dtype=np.float32))
    return out


KEPT, DROPPED = 0.999, 0.001  # shares at or past which a patch counts as kept whole / dropped
HATCH = 5  # pixels between the diagonal lines of a merged patch


def overlay(frame: np.ndarray, kept: list[list[float]] | None) -> np.ndarray:
    """Draw `frame` (H x W x 3 float) by the kept share of each patch; None draws the frame as is."""
    if kept is None:
        return frame.astype(np.uint8)
    grid = np.clip(np.asarray(kept, dtype=np.float32), 0, 1)
    h, w = frame.shape[:2]
    rows, cols = grid.shape
    share = cv2.resize(grid, (w, h), interpolation=cv2.INTER_NEAREST)  # nearest: one flat block per token
    out = frame.copy()
    dropped = share <= DROPPED
    out[dropped] = 25 + 0.3 * frame[dropped].mean(-1, keepdims=True)  # dark grey: the shape still shows faintly
    merged = (share > DROPPED) & (share < KEPT)
    yy, xx = np.mgrid[0:h, 0:w]
    hatch = merged & ((yy + xx) % HATCH < 2)  # 2-pixel diagonal lines in the scale colour of the share
    out[hatch] = LUT[np.rint(share[hatch] * 255).astype(np.int32)]
    # token borders, so the eye can count patches
    ys = (np.arange(1, rows) * h / rows).astype(int)
    xs = (np.arange(1, cols) * w / cols).astype(int)
    out[ys, :] *= 0.7
    out[:, xs] *= 0.7
    return np.clip(out, 0, 255).astype(np.uint8)


def data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def map_uris(frames: list[np.ndarray], maps: list[list[list[float]]]) -> list[str]:
    """One overlay per frame; frames beyond the reported maps are drawn without a map."""
    return [data_uri(overlay(f, maps[i] if i < len(maps) else None)) for i, f in enumerate(frames)]


def mean_share(maps: list[list[list[float]]]) -> float:
    """Mean kept share over all patches of all frames (what the map shows, as one number)."""
    return float(np.mean([np.mean(m) for m in maps])) if maps else 0.0
