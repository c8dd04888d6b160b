"""The web page: one input, one question, the baseline and every chosen method side by side, streamed.

    demo = build_demo(pool, settings); demo.queue(...).launch(**launch_options(), ...)   (app.py does this)

Layout only: controls come from the registry (`ui.controls`), the handler streams cards and the summary
(`ui.handler`), rendering lives in `ui.cards` / `ui.summary` / `ui.heatmap`. Never imports torch: the pool
is reached through `pool.compare` / `pool.catalog` and the plain types of `backends.types`.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from backends.settings import BUILTIN, ROOT, Settings
from ui.controls import MethodControls, methods_table
from ui.fmt import esc
from ui.gpu import on_gpu
from ui.handler import REPEAT_BUDGET_S, TIMED_RUNS, make_compare, make_preview
from ui.style import CSS

EXAMPLES = ROOT / "assets" / "examples"
TITLE = "VLM efficiency methods, side by side"
ABOUT = f"""**About the model.** `{BUILTIN}` is a small LLaVA-architecture VLM trained in this project on synthetic
images of 1-4 coloured circles, squares and triangles on a 3x3 grid. It answers questions like the examples'
(how many, what colour, what shape where, is there a ...) and nothing else: use it to see what each method does
to the visual tokens, the timings and the memory, not to judge answers on real photos. To compare on a real
model, start the app with `VLM_MODEL=llava-hf/llava-1.5-7b-hf` (a Hugging Face LLaVA id or a local folder) and
list the other ids users may pick in `VLM_ALLOWED_MODELS=id1,id2`.

**About the numbers.** Every number is measured on this server for this request: the summary says how
(warm-up and timed runs, statistic, clock, device sync, threads) and each card names its attention kernel and
device. Speedups compare against the baseline run of the same request."""


def _examples(kind: str) -> list[list[str]]:
    listing = EXAMPLES / "examples.json"
    if not listing.is_file():
        return []
    return [[str(EXAMPLES / e["file"]), e["prompt"]] for e in json.loads(listing.read_text())[kind]
            if (EXAMPLES / e["file"]).is_file()]


def _model_label(m: str) -> tuple[str, str]:
    if m == BUILTIN:
        return f"{BUILTIN} (tiny shapes model)", m
    return (f"{Path(m).name} (local folder)" if Path(m).is_dir() else m), m


def launch_options() -> dict:
    """What `launch()` needs from the UI (gradio 6 takes theme and CSS there)."""
    return {"theme": gr.themes.Soft(), "css": CSS, "footer_links": ["api", "gradio", "settings"]}


def build_demo(pool, settings: Settings) -> gr.Blocks:
    catalog = pool.catalog()
    workers = getattr(pool, "workers", 1)
    compare = on_gpu(make_compare(pool, settings), settings.job_timeout)
    controls = MethodControls(catalog)
    with gr.Blocks(title=TITLE, fill_width=True) as demo:
        gr.HTML(f'<div class="vc-header"><div><h1>{TITLE}</h1><div>One input, one question: the baseline and each '
                f"method answer, with measured latency, memory and the visual tokens they kept.</div></div>"
                f'<div class="vc-chips"><span>model: {esc(_model_label(settings.model)[0])}</span>'
                f"<span>{workers} worker{'s' if workers != 1 else ''}</span>"
                f"<span>{len(catalog)} methods registered</span></div></div>")
        with gr.Accordion("About the model and the numbers", open=settings.model == BUILTIN):
            gr.Markdown(ABOUT)
        source = gr.State("auto")  # the open input tab; API calls keep "auto" and send one file
        methods = gr.Dropdown(choices=[m["name"] for m in catalog], multiselect=True, allow_custom_value=True,
                              visible=False, label="methods")
        params = gr.JSON(visible=False, label="params")
        prompt = gr.Textbox(label="Question", value="how many shapes are there?", max_lines=3, render=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                with gr.Tabs():
                    with gr.Tab("Image") as image_tab:
                        image = gr.Image(type="filepath", sources=["upload", "clipboard"],
                                         label="Image (upload or paste)")
                        if _examples("images"):
                            gr.Examples(_examples("images"), [image, prompt], label="Examples (built-in model)")
                    with gr.Tab("Video") as video_tab:
                        video = gr.Video(sources=["upload"], label="Video", height=220)
                        frames = gr.Slider(1, 16, value=min(settings.frames, 16), step=1, label="Frames sampled")
                        gallery = gr.Gallery(label="Sampled frames", columns=4, height=170, allow_preview=False)
                        if _examples("videos"):
                            gr.Examples(_examples("videos"), [video, prompt], label="Examples (built-in model)")
                prompt.render()
                gr.Markdown("**Methods** (the baseline always runs first)")
                controls.picker()
                keep = gr.Slider(0.05, 1.0, value=0.25, step=0.05, label="Visual-token budget: share kept (keep)",
                                 info="sets the budget of every budgeted method")
                with gr.Accordion("Method parameters (paper defaults)", open=False):
                    controls.parameters()
                with gr.Accordion("Generation and model", open=False):
                    max_new = gr.Slider(1, 64, value=8, step=1, label="Max new tokens")
                    model = gr.Dropdown([_model_label(m) for m in settings.models()], value=settings.model,
                                        label="Model")
                    with gr.Row():
                        warmup = gr.Number(1, precision=0, minimum=0, maximum=5, label="Warm-up runs")
                        repeats = gr.Number(TIMED_RUNS, precision=0, minimum=1, maximum=20,
                                            label="Timed runs (at least)")
                        budget = gr.Number(REPEAT_BUDGET_S, minimum=0, maximum=60, label="Repeat budget (s)",
                                           info="more timed runs (up to 20) while totals spread over 10%")
                run = gr.Button("Compare", variant="primary")
            with gr.Column(scale=4):
                banner = gr.HTML()
                cards = gr.HTML('<div class="vc-note">Pick an example (or upload your own), tick methods, press '
                                "<b>Compare</b>: one card per run appears here as soon as it finishes.</div>")
                summary = gr.HTML()
                download = gr.File(label="Download the comparison (JSON)")
                with gr.Accordion("Comparison document (JSON, as the CLI prints it)", open=False):
                    doc = gr.JSON(label="document")
                with gr.Accordion("Registered methods", open=False):
                    gr.Markdown(methods_table(catalog))
        image_tab.select(lambda: "image", None, source, api_visibility="private", queue=False)
        video_tab.select(lambda: "video", None, source, api_visibility="private", queue=False)
        video.change(make_preview(settings), [video, frames], gallery, preprocess=False, api_visibility="private")
        # The click is the API's "compare"; Enter in the question runs the same chain without a second endpoint.
        for trigger, api in ((run.click, "public"), (prompt.submit, "private")):
            trigger(controls.collect, controls.inputs, [methods, params], api_visibility="private", queue=False).then(
                compare, [image, video, prompt, methods, keep, params, max_new, model, frames, warmup, repeats, source,
                          budget],
                [banner, cards, summary, download, doc], api_name="compare" if api == "public" else None,
                api_visibility=api, preprocess=False, concurrency_limit=workers, concurrency_id="compare",
                show_progress="minimal")
    return demo
