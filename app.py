"""imcap's Gradio app (the Hugging Face Space): the page and its wiring. ``imcap_hub.serving``
picks (the demo model when none is configured or the Hub is out of reach), warms up, describes
and serves the model. ``python app.py [--model REPO_OR_DIR] [--revision REV] [--port 7860]``.
API and MCP tools: ``/caption`` (batched), ``/caption_details`` (options, n-best, attention),
``/caption_batch`` (several images), ``/model_info``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home: read at import
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
log = logging.getLogger("imcap.app")
if __name__ == "__main__":  # importing Gradio takes seconds: say so first
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.info("importing Gradio and imcap_hub...")

import gradio as gr  # noqa: E402
from gradio import queueing, route_utils  # noqa: E402

from imcap_hub import gradio_fixes, serving, startup  # noqa: E402
from imcap_hub.images import ImageLimits  # noqa: E402
from imcap_hub.inference import MAX_SEED  # noqa: E402
from imcap_hub.serving import load_model  # noqa: E402

TITLE = "imcap: image captioning"
EXAMPLES = sorted(map(os.fspath, Path(__file__).resolve().with_name("examples").glob("*.png")))
MAX_UPLOAD_MB = 10  # Gradio refuses bigger uploads; imcap_hub refuses bigger images too
LIMITS = ImageLimits(max_pixels=40_000_000, max_bytes=MAX_UPLOAD_MB * 2**20)
DECODING_CHOICES = [("beam search", "beam"), ("greedy", "greedy"), ("sampling", "sample")]
MAX_BEAM_UI = MAX_CAPTIONS_UI = 10
THEME = gr.themes.Default(  # system fonts only: the page must work with no network at all
    font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)
CSS = """
#best-caption textarea { font-size: 1.6rem !important; line-height: 1.35 !important; font-weight: 600; color: var(--body-text-color) !important; -webkit-text-fill-color: var(--body-text-color); opacity: 1 !important; }
#model-notice { border-left: 4px solid #d97706; background: #fffbeb; color: #78350f; padding: 0.5rem 0.9rem; border-radius: 4px; }
#model-notice p { margin: 0.2rem 0; }
#model-panel table { display: block; overflow-x: auto; }
@media (max-width: 640px) { #best-caption textarea { font-size: 1.2rem !important; } h1 { font-size: 1.5rem !important; } }
"""


def int_slider(minimum: int, maximum: int, **kwargs: Any) -> gr.Slider:
    """A slider of whole numbers whose API and MCP schema says so, with its bounds (set on the
    instance: a subclass of a Gradio component makes Gradio write a .pyi beside app.py)."""
    slider = gr.Slider(minimum, maximum, step=1, **kwargs)
    slider.api_info = lambda: {"type": "integer", "minimum": minimum, "maximum": maximum}
    return slider


def _endpoint(method, batch: bool = False):
    """``method`` for Gradio: a RequestError is a message for the user (no traceback logged)."""

    @functools.wraps(method)
    def endpoint(*args, **kwargs):
        try:
            answer = method(*args, **kwargs)
        except serving.RequestError as e:
            raise gr.Error(str(e), title=e.title, print_exception=False) from None
        return (answer,) if batch else answer

    return endpoint


def _decoding_options(model_max: int, has_attention: bool) -> list[gr.components.Component]:
    """The decoding options' controls, in /caption_details' parameter order."""
    with gr.Accordion("Decoding options", open=False):
        decoding = gr.Radio(DECODING_CHOICES, value="beam", label="Decoding")
        beam = int_slider(1, MAX_BEAM_UI, value=3, label="Beam width (beam search)")
        count = int_slider(1, MAX_CAPTIONS_UI, value=1, label="Number of captions", info="beam search: at most the beam width; greedy: 1")  # fmt: skip
        length = int_slider(1, model_max, value=model_max, label="Maximum length (words)")
        with gr.Row():
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature (sampling)")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (sampling)")
            seed = gr.Number(value=0, precision=0, label="Seed (sampling)")
            seed.api_info = lambda: {"type": "integer", "minimum": 0, "maximum": MAX_SEED}
        no_maps = "Pick a word after captioning: its map over the image." if has_attention else "This model has no attention: it reads one pooled vector per image."  # fmt: skip
        attention = gr.Checkbox(False, label="Show where the model looked", interactive=has_attention, info=no_maps, elem_id="attention-option")  # fmt: skip
    return [decoding, beam, count, length, temperature, top_p, seed, attention]


def _attention_view() -> tuple[gr.Radio, gr.Image, gr.Gallery]:
    """Where the model looked: a word to pick, its map over the image, and every word's."""
    with gr.Accordion("Where the model looked", open=True, elem_id="attention-view"):
        word = gr.Radio([], label="Word", type="index", elem_id="attention-word")
        heat = gr.Image(label="Its attention map", interactive=False, elem_id="attention-map")
        strip = gr.Gallery(label="Every word", columns=6, height=240, elem_id="attention-strip")
    return word, heat, strip


def _results() -> tuple[gr.Textbox, gr.Dataframe]:
    """The best caption, under the Caption button, and the n-best table (for n > 1 captions)."""
    best = gr.Textbox(label="Caption", lines=2, interactive=False, buttons=["copy"], elem_id="best-caption")  # fmt: skip
    nbest = gr.Dataframe(
        headers=["#", "caption", "score", "log-prob"],
        datatype=["number", "str", "number", "number"],
        label="n-best (score: log-probability per token)",
        interactive=False,
        elem_id="nbest",
        column_widths=["8%", "60%", "16%", "16%"],
        wrap=True,
        visible=False,
    )
    return best, nbest


def _batch_tab() -> tuple[gr.File, gr.Button, gr.Gallery, gr.Markdown, gr.File, gr.JSON]:
    """Several images at once: the files, the button, the captions and their downloads."""
    with gr.Tab("Several images", id="batch"):
        files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="batch-files")  # fmt: skip
        run = gr.Button("Caption all", variant="primary", elem_id="batch-button")
        gallery = gr.Gallery(label="Captions", columns=3, elem_id="batch-gallery")
        problems = gr.Markdown(elem_id="batch-problems")
        downloads = gr.File(label="Download the captions (CSV, JSON Lines)", file_count="multiple", interactive=False, elem_id="batch-downloads")  # fmt: skip
    return files, run, gallery, problems, downloads, gr.JSON(visible=False)


def build_app(
    loaded: serving.LoadedModel,
    *,
    max_batch_size: int = serving.DEFAULT_MAX_BATCH,
    upload_ttl: int = serving.DEFAULT_UPLOAD_TTL,
) -> gr.Blocks:
    """The Gradio Blocks for ``loaded`` (``max_batch_size=1``: no request batching)."""
    gradio_fixes.accept_batched_validator_answers(queueing, gr.__version__)
    gradio_fixes.sweep_uploads_safely(route_utils, gr.__version__)
    service = serving.CaptionService(loaded, LIMITS)

    def validate_caption(image: list[Any]) -> tuple[list[dict[str, Any]]]:
        # Refuse an unusable image before it joins a batch: it must not fail the good ones.
        problems = [service.image_problem(item) for item in image]
        return ([gr.validate(p is None, p or "") for p in problems],)

    def show_attention(details: dict | None, image: Any) -> tuple[gr.Radio, Any, list]:
        views = _endpoint(service.attention_views)(details, image)
        labels = [(view.label, i) for i, view in enumerate(views)]
        first = views[0].image if views else None
        return gr.Radio(labels, value=0 if views else None), first, [v[::-1] for v in views]

    def show_details(details: dict | None) -> tuple[str, gr.Dataframe, str]:
        caption, rows, timing = serving.render_details(details)
        return caption, gr.Dataframe(rows, visible=len(rows) > 1), timing

    sweep = (max(1, upload_ttl // 2), upload_ttl)  # a long-running Space must not keep uploads
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=sweep) as demo:
        gr.Markdown(f"# {TITLE}\nA ResNet-style encoder reads the image and an LSTM writes the caption. Upload, paste or snap an image, then press **Caption**.")  # fmt: skip
        with gr.Tab("One image", id="one"), gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Image", sources=["upload", "webcam", "clipboard"], type="filepath", elem_id="input-image", height=320)  # fmt: skip
                run = gr.Button("Caption", variant="primary", elem_id="caption-button")
                best, nbest = _results()
                if loaded.notice:  # next to the result: the visitor reads it with the caption
                    gr.Markdown(f"**Demo model.** {loaded.notice}", elem_id="model-notice")
                decoder = loaded.model.config.decoder
                options = _decoding_options(int(decoder.max_length), decoder.kind == "attention")
                if EXAMPLES:
                    names = [Path(p).stem.replace("_", " ") for p in EXAMPLES]
                    gr.Examples(EXAMPLES, inputs=[image], label="Examples (synthetic shapes)", example_labels=names)  # fmt: skip
            with gr.Column(scale=1):
                word, heat, strip = _attention_view()
                with gr.Accordion("Time taken and the raw answer", open=False, elem_id="details"):
                    timing = gr.Markdown(elem_id="timing")
                    details = gr.JSON(label="/caption_details answer")
        files, run_all, gallery, problems, downloads, answers = _batch_tab()
        with gr.Accordion("Model", open=False, elem_id="model-accordion"):
            gr.Markdown(serving.model_panel_markdown(service.info), elem_id="model-panel")
            if loaded.card.body:
                with gr.Accordion("Model card", open=False):
                    gr.Markdown(loaded.card.body, elem_id="model-card")

        # UI: clear stale results, caption through the API endpoint, then render its answer.
        private = {"queue": False, "api_visibility": "private"}
        model_queue = {"preprocess": False, "concurrency_id": "model", "concurrency_limit": 1}
        run.click(lambda: (*show_details(None), None), outputs=[best, nbest, timing, details], **private).then(
            _endpoint(service.caption_details), inputs=[image, *options], outputs=[details],
            api_name="caption_details", show_progress_on=[best], **model_queue,
        ).success(show_details, inputs=[details], outputs=[best, nbest, timing], **private).success(
            show_attention, inputs=[details, image], outputs=[word, heat, strip], **private
        )  # fmt: skip
        word.select(lambda views, i: views[i][0], inputs=[strip, word], outputs=[heat], **private)
        run_all.click(lambda: ([], "", None), outputs=[gallery, problems, downloads], **private).then(
            _endpoint(service.caption_batch), inputs=[files], outputs=[answers],
            api_name="caption_batch", show_progress_on=[gallery], **model_queue,
        ).success(
            service.batch_view, inputs=[files, answers], outputs=[gallery, problems, downloads], **private
        )  # fmt: skip

        # API: /caption batches concurrent requests into one encoder call.
        gr.Button(visible=False).click(
            _endpoint(service.caption, batch=True),
            inputs=[image],
            outputs=[best],
            api_name="caption",
            batch=True,
            max_batch_size=max(1, int(max_batch_size)),
            validator=validate_caption,
            **model_queue,
        )
        gr.api(service.model_info, api_name="model_info", queue=False)
        docs = [(service.caption_details, [image, *options]), (service.caption_batch, [files])]
        gradio_fixes.describe_parameters(gr.utils.get_function_description, docs)
    demo.queue(default_concurrency_limit=1, max_size=256)
    demo.imcap_service = service  # for tests and the benchmark
    return demo


@contextlib.asynccontextmanager
async def _lifespan(server_app):
    """While the server runs: MCP answers in JSON, and the emptied upload folders swept."""
    gradio_fixes.fix_mcp_server(server_app.get_blocks())
    async with serving.sweep_empty_upload_folders(server_app):
        yield


def launch_kwargs(**overrides: Any) -> dict[str, Any]:
    """How to launch (show_error off: gr.Error messages still show, nothing else does)."""
    return dict(max_file_size=f"{MAX_UPLOAD_MB}mb", theme=THEME, css=CSS, js=gradio_fixes.name_textarea("best-caption", "Caption"), ssr_mode=False, show_error=False,
                footer_links=["api", "gradio"], mcp_server=serving.mcp_available(),
                app_kwargs={"lifespan": _lifespan}) | overrides  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    startup.quiet_tensorflow()  # no TensorFlow/absl start-up noise; real errors still show
    args = serving.argument_parser("imcap's Gradio app (the Hugging Face Space).").parse_args(argv)
    try:
        mcp = serving.mcp_wanted(args.mcp)
        loaded = load_model(args.model, args.revision, runtime=args.runtime)
    except serving.ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("building the page and starting the server...")
    demo = build_app(loaded, max_batch_size=args.max_batch_size, upload_ttl=args.upload_ttl)
    demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs(mcp_server=mcp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
