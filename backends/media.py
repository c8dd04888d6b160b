"""Reading user media: images (PIL) and videos (OpenCV, N evenly spaced frames), with limits that bound memory
and time before anything expensive runs.

Images: pixel count and aspect ratio are read from the header and checked before decoding (the processor scales
the short side up to its input size, so a 20000x1 image would become gigabytes). Videos: frame count, rate and
duration come from the container header; the sampled frames are reached by seeking (never by decoding every
frame) under a decode-time budget. Every failure raises `RequestError` with a message a user can act on.
No torch import (the UI uses this).
"""

from __future__ import annotations

import io
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from backends.settings import Settings
from backends.types import Media, RequestError

# Placeholders the processors expand into visual tokens: typed by a user they break the token count check
# inside transformers for every run ("Image features and image tokens do not match").
RESERVED = ("<image>", "<video>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def check_prompt(prompt: str, settings: Settings) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise RequestError("the prompt is empty: ask a question about the image")
    if len(prompt) > settings.max_prompt_chars:
        raise RequestError(f"the prompt has {len(prompt)} characters; the limit is {settings.max_prompt_chars}")
    for tag in RESERVED:
        if tag in prompt:
            raise RequestError(f"the prompt contains {tag}, which the model reserves for the picture; the app "
                               "places the image itself: remove it from the question")
    return prompt


def check_frames(frames: int, settings: Settings) -> int:
    """The number of frames to sample: 1..max_frames (0 is refused, not replaced by the default)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= settings.max_frames:
        raise RequestError(f"frames must be in 1..{settings.max_frames}, got {frames!r}")
    return frames


def check_shape(w: int, h: int, settings: Settings, name: str) -> None:
    """Pixel count and aspect ratio, from the header: refused before decoding or processing."""
    if w < 1 or h < 1:
        raise RequestError(f"{name} is empty ({w}x{h} pixels)")
    if w * h > settings.max_image_pixels:
        raise RequestError(f"{name} is {w}x{h} pixels; the limit is {settings.max_image_pixels:,} pixels")
    if max(w, h) / min(w, h) > settings.max_aspect:
        raise RequestError(f"{name} is {w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):.0f}:1; the limit "
                           f"is {settings.max_aspect:g}:1 (the model scales the short side up, so thin strips cost "
                           "gigabytes)")


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
            check_shape(*img.size, settings, name)
            img.load()
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(f"{name} is too large to decode safely") from None
    except Exception:
        raise RequestError(f"{name} is not a readable image (corrupt or unsupported format)") from None
    return img.convert("RGB")


def image_media(path: str | os.PathLike, settings: Settings) -> Media:
    p = Path(path)
    _check_size(p, settings)
    img = open_image(p.read_bytes(), settings, p.name)
    return Media(kind="image", frames_png=[_png(img)], name=p.name)


def sample_video(
    path: str | os.PathLike, settings: Settings, frames: int | None = None
) -> tuple[list[Image.Image], float]:
    """`frames` evenly spaced RGB frames of a video and the clip length (s), from the container header.

    Each wanted frame is reached by seeking (the decoder starts at the nearest key frame before it), so a clip of
    200k tiny frames costs as much as one of 200; the whole decode has `max_decode_s` seconds."""
    import cv2  # local: importing OpenCV costs ~0.2 s and only video needs it

    p = Path(path)
    _check_size(p, settings)
    n = check_frames(settings.frames if frames is None else frames, settings)
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise RequestError(f"{p.name} is not a readable video")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if total <= 0 or not math.isfinite(fps) or fps <= 0:
            raise RequestError(f"{p.name} is not a readable video (no frames or no frame rate)")
        duration = total / fps
        if duration > settings.max_video_seconds:
            raise RequestError(f"{p.name} lasts {duration:.0f} s; the limit is {settings.max_video_seconds:g} s")
        if total > settings.max_video_frames:
            raise RequestError(f"{p.name} has {total:,} frames; the limit is {settings.max_video_frames:,} frames")
        if w and h:
            check_shape(w, h, settings, f"{p.name} frames")
        deadline = time.monotonic() + settings.max_decode_s
        out = []
        for idx in sorted(set(np.linspace(0, total - 1, n).round().astype(int).tolist())):
            if time.monotonic() > deadline:
                raise RequestError(f"{p.name} took over {settings.max_decode_s:g} s to decode {n} frames; "
                                   "re-encode it with more key frames or fewer pixels")
            if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != idx:
                cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
            ok, frame = cap.read()
            if not ok:  # the header promised more frames than the stream holds
                break
            check_shape(frame.shape[1], frame.shape[0], settings, f"{p.name} frames")
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
