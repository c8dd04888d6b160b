"""Does the input look like the built-in model's scenes? A cheap pixel check, so cards can say when the
built-in model answers about something it was never trained on (a photo, a screenshot).

The scene spec (backends/tiny/scenes.py and its renderers): 1-4 flat, saturated shapes on a light grey
background, objects at most 85% of a 3x3 grid cell, so the background covers well over half the picture.
The check asks exactly that of the (centre-cropped) frames: a mostly light, unsaturated background, and
saturated colour in most of the rest. It reads pixels only (no torch, no model).
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_BACKGROUND = 0.45  # four shapes of the largest size cover about a third of the picture
MIN_SATURATED = 0.6  # the task's six colours are all far from grey; anti-aliased edges are the rest
LOW_CONFIDENCE = 0.5  # mean answer-token probability under which an answer is called a guess


def scene_check(frames: list[np.ndarray]) -> str:
    """'' when every frame (H x W x 3, 0..255) looks like a scene, else why not (for the card's note)."""
    for i, f in enumerate(frames):
        # averaged down first: pixel noise and anti-aliasing (the renderers add both) are not content
        rgb = cv2.resize(np.asarray(f, dtype=np.float32), (48, 48), interpolation=cv2.INTER_AREA)
        sat = rgb.max(-1) - rgb.min(-1)
        background = (rgb.mean(-1) > 195) & (sat < 30)
        bg_share = float(background.mean())
        rest = ~background
        colourful = float((sat[rest] > 70).mean()) if rest.any() else 1.0
        where = f"frame {i + 1}" if len(frames) > 1 else "the input"
        if bg_share < MIN_BACKGROUND:
            return f"{where} is not mostly a light plain background ({bg_share:.0%} of it is)"
        if colourful < MIN_SATURATED:
            return f"{where} has few flat saturated colours outside the background ({colourful:.0%})"
    return ""


def warning(builtin: bool, scene_problem: str, confidence: dict) -> str:
    """The out-of-domain note of one card, '' when there is nothing to warn about."""
    if not builtin:
        return ""
    why = []
    if scene_problem:
        why.append(f"{scene_problem}, unlike the shapes scenes it was trained on")
    if confidence and confidence.get("mean", 1.0) < LOW_CONFIDENCE:
        why.append(f"its answer is a guess (mean token probability {confidence['mean']:.2f})")
    return ("Out of domain for the built-in model: " + "; ".join(why) + ".") if why else ""
