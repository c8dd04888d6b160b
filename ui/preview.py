"""Upload-time feedback for the input: the Video tab's strip of sampled frames (what a comparison would feed
the model; it follows the frames slider), a small copy browsers can play when the upload's codec is not one
they play (MPEG-4 part 2, Motion JPEG, ...), and the same checks a comparison would make, run at upload so a
file the app cannot use is refused there with its message.

The comparison itself always reads the uploaded file, never the preview copy.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import gradio as gr

from backends import media
from backends.settings import Settings
from backends.types import RequestError
from ui.request import number, upload_folder, upload_path

# codecs that Chromium and Firefox play in a <video> element (as OpenCV reports their FourCC)
PLAYABLE = {"vp80", "vp90", "vp09", "av01", "avc1", "h264"}
PREVIEW_SIDE, PREVIEW_FPS = 320, 12  # enough to see the clip; small enough to encode in a moment


def codec(path: str) -> str:
    cap = cv2.VideoCapture(path)
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
    finally:
        cap.release()
    return "".join(chr((code >> 8 * i) & 0xFF) for i in range(4)).lower().strip("\x00 ")


def browser_copy(path: str, settings: Settings) -> str | None:
    """A VP9 WebM preview of a clip browsers cannot play (None when they can), at most PREVIEW_SIDE pixels and
    PREVIEW_FPS frames a second, written inside gradio's upload folder. Call after the clip passed the checks
    (duration, frame count, shape), which bound the work here."""
    if codec(path) in PLAYABLE:
        return None
    cap = cv2.VideoCapture(path)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or PREVIEW_FPS
        step = max(1, round(fps / PREVIEW_FPS))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        scale = min(1.0, PREVIEW_SIDE / max(w, h, 1))
        size = (max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2))
        out_path = upload_folder() / "previews" / uuid.uuid4().hex / (Path(path).stem + ".webm")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"vp09"), fps / step, size)
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i % step == 0:
                out.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
            i += 1
        out.release()
    finally:
        cap.release()
    return str(out_path)


def make_preview(settings: Settings):
    def preview(video, frames):
        """(sampled frames, browser copy): the frames a comparison would sample from the uploaded video, and a
        playable copy when the browser cannot play the upload itself (hidden otherwise)."""
        got = upload_path(video) if isinstance(video, dict) or video is None else None
        if not got:
            return [], gr.Video(value=None, visible=False)
        try:
            imgs, duration = media.sample_video(got[0], settings, number(frames or settings.frames, "frames"))
        except RequestError as e:
            gr.Warning(str(e))
            return [], gr.Video(value=None, visible=False)
        label = f"Sampled frames: {len(imgs)} of a {duration:.1f} s clip"
        copy = browser_copy(got[0], settings)
        return (gr.Gallery(value=[(img, str(i + 1)) for i, img in enumerate(imgs)], label=label),
                gr.Video(value=copy, visible=copy is not None))

    return preview


def make_image_check(settings: Settings):
    def check(image):
        """The checks a comparison makes of an image, at upload: a file it would refuse is cleared with why."""
        got = upload_path(image) if isinstance(image, dict) or image is None else None
        if not got:
            return gr.skip()
        try:
            media.image_media(got[0], settings)
        except RequestError as e:
            gr.Warning(str(e))
            return None
        return gr.skip()

    return check
