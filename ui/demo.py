"""The web page: an image and a question in, the comparison document out (the side-by-side cards come
with the UI issue). Pure functions on top, one `gr.Blocks` body, events wired with `api_name`."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from backends import media
from backends.document import document
from backends.settings import Settings
from backends.types import Comparison, GenerationSettings, MethodSpec, RequestError


def make_compare(pool, settings: Settings):
    def compare(image: str | None, prompt: str, max_new_tokens: float):
        """Run the baseline on `image` (a file path) and return the comparison document."""
        try:
            if not image:
                raise RequestError("upload an image first")
            med = media.image_media(image, settings)
            med.name = Path(image).name
            prompt = media.check_prompt(prompt, settings)
            comp = Comparison(med, prompt, [MethodSpec("baseline")],
                              GenerationSettings(max_new_tokens=int(max_new_tokens)), settings.model)
        except RequestError as e:
            raise gr.Error(str(e)) from None
        results = list(pool.compare(comp))
        return document(comp, results)

    return compare


def build_demo(pool, settings: Settings) -> gr.Blocks:
    compare = make_compare(pool, settings)
    with gr.Blocks(title="VLM efficiency methods, side by side") as demo:
        gr.Markdown("# VLM efficiency methods, side by side")
        with gr.Row():
            image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"])
            with gr.Column():
                prompt = gr.Textbox(label="Question", value="how many shapes are there?")
                max_new = gr.Slider(1, 64, value=8, step=1, label="Max new tokens")
                run = gr.Button("Compare", variant="primary")
        out = gr.JSON(label="Comparison")
        run.click(compare, [image, prompt, max_new], out, api_name="compare")
    return demo
