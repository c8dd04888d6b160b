"""Reading user media: images (PIL) and videos (OpenCV, N evenly spaced frames), with size limits.

Every failure raises `RequestError` with a message a user can act on. No torch import (the UI uses this).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from backends.settings import Settings
from backends.types import Media, RequestError


def check_prompt(prompt: str, settings: Settings) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise RequestError("the prompt is empty: ask a question about the image")
    if len(prompt) > settings.max_prompt_chars:
        raise RequestError(f"the prompt has {len(prompt)} characters; the limit is {settings.max_prompt_chars}")
    return prompt


def _check_size(path: Path, settings: Settings) -> None:
    if not path.is_file():
        raise RequestError(f"file not found: {path.name}")
    mb = path.stat().st_size / 2**20
    if mb > settings.max_upload_mb:
        raise RequestError(f"{path.name} is {mb:.1f} MB; the limit is {settings.max_upload_mb:g} MB")


def _png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return Media.encode_png(buf.getvalue())


def open_image(data: bytes, settings: Settings, name: str = "image") -> Image.Image:
    """Decode image bytes to RGB, refusing corrupt files and images over the pixel limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > settings.max_image_pixels:
                raise RequestError(f"{name} is {w}x{h} pixels; the limit is {settings.max_image_pixels:,} pixels")
            img.load()
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(f"{name} is too large to decode safely") from None
    except Exception:
        raise RequestError(f"{name} is not a readable image (corrupt or unsupported format)") from None
    if min(img.size) < 1:
        raise RequestError(f"{name} is empty")
    return img.convert("RGB")


def image_media(path: str | os.PathLike, settings: Settings) -> Media:
    p = Path(path)
    _check_size(p, settings)
    img = open_image(p.read_bytes(), settings, p.name)
    return Media(kind="image", frames_png=[_png(img)], name=p.name)


def sample_video(
    path: str | os.PathLike, settings: Settings, frames: int | None = None
) -> tuple[list[Image.Image], float]:
    """Decode a video with OpenCV and return `frames` evenly spaced RGB frames and the clip length (s)."""
    import cv2  # local: importing OpenCV costs ~0.2 s and only video needs it

    p = Path(path)
    _check_size(p, settings)
    n = frames or settings.frames
    if not 1 <= n <= 64:
        raise RequestError(f"frames must be in 1..64, got {n}")
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise RequestError(f"{p.name} is not a readable video")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if total <= 0 or fps <= 0:
            raise RequestError(f"{p.name} is not a readable video (no frames or no frame rate)")
        duration = total / fps
        if duration > settings.max_video_seconds:
            raise RequestError(f"{p.name} lasts {duration:.0f} s; the limit is {settings.max_video_seconds:g} s")
        wanted = sorted(set(np.linspace(0, total - 1, n).round().astype(int).tolist()))
        out, i = [], 0
        for idx in wanted:
            while i < idx:  # grab() skips without converting the frame
                if not cap.grab():
                    break
                i += 1
            ok, frame = cap.read()
            i += 1
            if not ok:
                break
            h, w = frame.shape[:2]
            if w * h > settings.max_image_pixels:
                raise RequestError(f"{p.name} frames are {w}x{h}; the limit is {settings.max_image_pixels:,} pixels")
            out.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    finally:
        cap.release()
    if not out:
        raise RequestError(f"{p.name} is not a readable video (no frame could be decoded)")
    return out, duration


def video_media(path: str | os.PathLike, settings: Settings, frames: int | None = None) -> Media:
    imgs, duration = sample_video(path, settings, frames)
    return Media(kind="video", frames_png=[_png(i) for i in imgs], name=Path(path).name, duration_s=duration)


def frames_of(media: Media, settings: Settings) -> list[Image.Image]:
    """Decode a request's frames (they came over the wire: validate them again)."""
    return [open_image(b, settings, f"frame {i}") for i, b in enumerate(media.frame_bytes())]
