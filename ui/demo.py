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
from backends.types import DEFAULT_MAX_NEW_TOKENS
from ui.controls import MethodControls, methods_table
from ui.fmt import esc
from ui.gpu import on_gpu
from ui.handler import REPEAT_BUDGET_S, TIMED_RUNS, make_compare
from ui.pareto import ParetoBox, make_pareto
from ui.preview import make_image_check, make_preview
from ui.saved import make_finish, make_open
from ui.style import CSS
from ui.sweep import SweepTab, make_sweep
from ui.uploads import image_upload, video_upload

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
device. Speedups compare against the baseline run of the same request: each timing is the median of its timed
runs with their min-max, a speedup is "about the same" unless every pairing of the runs agrees, and the
FLOP-ideal speedup is computed from the model's config (what the token selection could save at best)."""
INTRO = ('<div class="vc-note vc-intro">Pick an example below (or upload your own image), tick methods, press '
         "<b>Compare</b>: the baseline and one card per method appear here as each run finishes.</div>")
# Runs in the browser on Compare: bring the results area into view (on a phone it sits under the controls).
SCROLL_TO_RESULTS = "() => document.getElementById('vc-results')?.scrollIntoView({behavior: 'smooth', block: 'start'})"


def examples(kind: str, inputs: list, tabs: gr.Tabs, source: gr.State) -> None:
    """The example inputs (scenes the built-in model knows); picking one also opens its input tab."""
    rows = _examples(kind + "s")
    if rows:
        ex = gr.Examples(rows, inputs, label=f"Examples ({'click one, then Compare' if kind == 'image' else kind})",
                         examples_per_page=6)
        ex.dataset.click(lambda: (gr.Tabs(selected=kind), kind), None, [tabs, source], queue=False,
                         api_visibility="private")


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


def queue_options(settings: Settings, workers: int) -> dict:
    """gradio's queue: one comparison per worker at a time and at most `settings.max_queue` waiting (past it gradio
    answers "Queue is full ... try again" at once); `api_open=False` closes the direct REST route
    (POST /gradio_api/run/compare) that would run the handler outside the queue and its limits."""
    return {"default_concurrency_limit": workers, "max_size": settings.max_queue, "api_open": False}


def build_demo(pool, settings: Settings, store=None) -> gr.Blocks:
    catalog = pool.catalog()
    by_name = {m["name"]: m for m in catalog}
    workers = getattr(pool, "workers", 1)
    compare = on_gpu(make_compare(pool, settings, store), settings.job_timeout)
    sweep = on_gpu(make_sweep(pool, settings), settings.job_timeout)
    controls = MethodControls(catalog)
    with gr.Blocks(title=TITLE, fill_width=True) as demo:
        gr.HTML(f'<div class="vc-header"><h1>{TITLE}</h1><div class="vc-chips">'
                f"<span>model: {esc(_model_label(settings.model)[0])}</span>"
                f"<span>{workers} worker{'s' if workers != 1 else ''}</span>"
                f"<span>{len(catalog)} methods registered</span></div></div>")
        source = gr.State("auto")  # the open input tab; API calls keep "auto" and send one file
        methods = gr.Dropdown(choices=[m["name"] for m in catalog], multiselect=True, allow_custom_value=True,
                              visible=False, label="methods")
        params = gr.JSON(visible=False, label="params")
        prompt = gr.Textbox(label="Question", value="how many shapes are there?", max_lines=3, render=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=360, elem_id="vc-controls") as controls_col:
                with gr.Tabs() as tabs:
                    with gr.Tab("Image", id="image") as image_tab:
                        image = image_upload(type="filepath", sources=["upload", "clipboard"], height=120,
                                         label="Image (upload or paste)")
                    with gr.Tab("Video", id="video") as video_tab:
                        video = video_upload(sources=["upload"], label="Video", height=120)
                        frames = gr.Slider(1, 16, value=min(settings.frames, 16), step=1, label="Frames sampled")
                        gallery = gr.Gallery(label="Sampled frames", columns=4, height=120, allow_preview=True)
                        playable = gr.Video(label="Preview, re-encoded for the browser (the comparison reads your "
                                            "upload)", visible=False, interactive=False, height=120,
                                            elem_id="vc-playable")
                        examples("video", [video, prompt], tabs, source)
                prompt.render()
                controls.picker()
                keep = gr.Slider(0.05, 1.0, value=0.25, step=0.05, label="Visual-token budget: share kept (keep)")
                run = gr.Button("Compare", variant="primary", elem_id="vc-run")
                with gr.Accordion("Follow-up questions (a conversation)", open=False):
                    follow_ups = gr.Textbox(label="Follow-up questions (one a line)", lines=2, max_lines=7,
                                            placeholder="asked in turn, each on the run's own KV cache")
                with gr.Accordion("Method parameters (paper defaults)", open=False):
                    controls.parameters()
                with gr.Accordion("Generation, timing and model", open=False):
                    max_new = gr.Slider(1, 128, value=DEFAULT_MAX_NEW_TOKENS, step=1, label="Max new tokens")
                    model = gr.Dropdown([_model_label(m) for m in settings.models()], value=settings.model,
                                        label="Model")
                    with gr.Row():
                        warmup = gr.Number(1, precision=0, minimum=0, maximum=5, label="Warm-up runs")
                        repeats = gr.Number(TIMED_RUNS, precision=0, minimum=1, maximum=20,
                                            label="Timed runs (at least)")
                        budget = gr.Number(REPEAT_BUDGET_S, minimum=0, maximum=60, label="Repeat budget (s)",
                                           info="more timed runs (up to 20) while totals spread over 10%")
                with gr.Accordion("About the model and the numbers", open=False):
                    gr.Markdown(ABOUT)
            with gr.Column(scale=4, elem_id="vc-results", elem_classes=["vc-main"]) as main_col:
                with gr.Tabs():
                    with gr.Tab("Comparison"):
                        banner = gr.HTML()
                        cards = gr.HTML(INTRO)
                        with gr.Accordion("Example inputs", open=True) as example_box:  # folds when a run starts
                            examples("image", [image, prompt], tabs, source)
                        summary = gr.HTML()
                        with gr.Row():
                            lat_plot = gr.BarPlot(x="run", y="ms", color="stage", visible=False, x_label_angle=-20,
                                                  title="Where the time goes (median ms per stage)", sort=None)
                            mem_plot = gr.BarPlot(x="bar", y="MiB", color="kind", visible=False, x_label_angle=-20,
                                                  title="Memory: peak growth and KV cache (MiB)", sort=None)
                        with gr.Group(visible=False) as export_group:
                            link = gr.Textbox(label="Permalink (reopens this comparison read-only)",
                                              buttons=["copy"], interactive=False, elem_id="vc-permalink")
                            files = gr.File(label="Exports: JSON, CSV (one row a run), Markdown run card",
                                            file_count="multiple", interactive=False)
                        download = gr.File(visible=False, label="comparison.json")
                        with gr.Accordion("Comparison document (JSON, as the CLI prints it)", open=False):
                            doc = gr.JSON(label="document")
                    with gr.Tab("Budget sweep"):
                        sweep_ui = SweepTab([m["name"] for m in catalog])
                        pareto_ui = ParetoBox([m["name"] for m in catalog])
                    with gr.Tab("Saved"):
                        recent = gr.HTML()
                    with gr.Tab("Methods"):
                        gr.Markdown(methods_table(catalog))
        image_tab.select(lambda: "image", None, source, api_visibility="private", queue=False)
        video_tab.select(lambda: "video", None, source, api_visibility="private", queue=False)
        preview = make_preview(settings)
        video.change(preview, [video, frames], [gallery, playable], preprocess=False, api_visibility="private")
        # `change` (not only `release`): typing a number moves the strip too; always_last drops stale drags
        frames.change(preview, [video, frames], [gallery, playable], preprocess=False, api_visibility="private",
                      trigger_mode="always_last")
        image.upload(make_image_check(settings), image, image, preprocess=False, api_visibility="private")
        finished = [link, files, export_group, lat_plot, mem_plot, recent]

        def start(*values):
            """The picked methods and changed parameters, and the page cleared of the previous comparison's
            permalink, exports and charts (the compare handler's first update replaces cards and summary)."""
            return (*controls.collect(*values), "", None, gr.Group(visible=False), gr.BarPlot(visible=False),
                    gr.BarPlot(visible=False), gr.skip(), gr.Accordion(open=False))

        inputs = [image, video, prompt, methods, keep, params, max_new, model, frames, warmup, repeats, source, budget,
                  follow_ups]
        # The click is the API's "compare"; Enter in the question runs the same chain without a second endpoint.
        # The first step clears what an earlier comparison left (a refused one then leaves nothing stale).
        for trigger, api in ((run.click, "public"), (prompt.submit, "private")):
            trigger(None, js=SCROLL_TO_RESULTS)
            trigger(start, controls.inputs, [methods, params, *finished, example_box], api_visibility="private",
                    queue=False).then(
                compare, inputs, [banner, cards, summary, download, doc],
                api_name="compare" if api == "public" else None, api_visibility=api, preprocess=False,
                concurrency_limit=workers, concurrency_id="compare", show_progress="hidden").success(
                make_finish(store), doc, finished, api_visibility="private", queue=False)
        sweep_ui.wire(sweep, controls, methods, [image, video, prompt, methods], [max_new, model, frames, warmup],
                      source, workers)
        pareto_ui.wire(on_gpu(make_pareto(pool, settings), settings.job_timeout), controls, methods, sweep_ui.keeps,
                       [max_new, model, frames], workers)
        demo.load(make_open(store, by_name), None, [banner, cards, summary, doc, controls_col, main_col, *finished],
                  api_visibility="private", queue=False)
    return demo
