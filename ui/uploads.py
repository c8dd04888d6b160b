"""The page's upload components, refusing with a message what gradio would turn into its generic error.

gradio validates an event's file inputs against the component's data model before the handler runs, even with
`preprocess=False`: an API caller who sends a bare path or URL string (instead of `handle_file(...)`) got "The
upstream Gradio app has raised an exception". These components check the payload's shape first and raise
`gr.Error` before gradio's validation, so the caller reads what to do instead. Files are still opened only
inside gradio's upload folder (ui/request.py).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.data_classes import FileData, ImageData

NOT_A_FILE = ("must be an uploaded file, not a path or URL string: upload it on the page, or send "
              "gradio_client.handle_file(path_or_url) from a program")


def _file_or_nothing(value: Any, what: str) -> Any:
    if value is not None and not isinstance(value, dict):
        raise gr.Error(f"the {what} {NOT_A_FILE}", title="Bad input")
    return value


class _ImageFile(ImageData):
    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> _ImageFile:
        # checked outside pydantic's validators: there a gr.Error (a ValueError) would be wrapped again
        return super().model_validate(_file_or_nothing(obj, "image"), *args, **kwargs)


class _VideoFile(FileData):
    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> _VideoFile:
        return super().model_validate(_file_or_nothing(obj, "video"), *args, **kwargs)


def image_upload(**kwargs: Any) -> gr.Image:
    """`gr.Image(**kwargs)` whose payload must be a file description. (An instance attribute, not a subclass:
    gradio writes a .pyi file next to the module of every component subclass.)"""
    image = gr.Image(**kwargs)
    image.data_model = _ImageFile
    return image


def video_upload(**kwargs: Any) -> gr.Video:
    """`gr.Video(**kwargs)` whose payload must be a file description."""
    video = gr.Video(**kwargs)
    video.data_model = _VideoFile
    return video
