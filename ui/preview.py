"""The Video tab's strip of sampled frames: what a comparison would feed the model from the uploaded clip. It
follows the frames slider, and a clip the app cannot read is refused here, at upload, with the same message
a comparison would give."""

from __future__ import annotations

import gradio as gr

from backends import media
from backends.settings import Settings
from backends.types import RequestError
from ui.request import number, upload_path


def make_preview(settings: Settings):
    def preview(video, frames):
        """The frames a comparison would sample from the uploaded video (shown under it)."""
        got = upload_path(video) if isinstance(video, dict) or video is None else None
        if not got:
            return []
        try:
            imgs, duration = media.sample_video(got[0], settings, number(frames or settings.frames, "frames"))
        except RequestError as e:
            gr.Warning(str(e))
            return []
        label = f"Sampled frames: {len(imgs)} of a {duration:.1f} s clip"
        return gr.Gallery(value=[(img, str(i + 1)) for i, img in enumerate(imgs)], label=label)

    return preview
