"""imcap's Gradio app (the Hugging Face Space): the page and its wiring. ``imcap_hub.serving``
picks (the demo model when none is configured or the Hub is out of reach), warms up, describes
and serves the model. ``python app.py [--model REPO_OR_DIR] [--revision REV] [--port 7860]``.
API: ``/caption`` (batched), ``/caption_details`` (options, n-best, attention), ``/model_info``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home: read at import
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr
from gradio import queueing

from imcap_hub import serving
from imcap_hub.images import ImageLimits
from imcap_hub.serving import load_model

log = logging.getLogger("imcap.app")

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
"""
PATCHED_GRADIO = "6.31.0"  # the Gradio version _accept_batched_validator_answers was written for


def _accept_batched_validator_answers() -> bool:
    """Work around a Gradio 6.31 bug: a ``batch=True`` event's validator answers a tuple, which
    ``process_validation_response`` takes for "valid", so a bad image would fail its batch.
    On another version: skipped with a warning, not refused (the bug costs a batch, not the
    server; patching a private function that changed could break every request)."""
    original = queueing.process_validation_response
    if getattr(original, "_imcap_fixed", False):
        return True
    if gr.__version__ != PATCHED_GRADIO:
        log.warning(
            f"Skipped the batched-validator patch: it was written for Gradio {PATCHED_GRADIO} and "
            f"this is {gr.__version__}; a bad image may fail the other requests of its batch"
        )
        return False

    @functools.wraps(original)  # the original stays reachable as __wrapped__
    def process_validation_response(validation_response, fn=None):
        if isinstance(validation_response, tuple):
            validation_response = list(validation_response)
        return original(validation_response, fn)

    process_validation_response._imcap_fixed = True  # type: ignore[attr-defined]
    queueing.process_validation_response = process_validation_response
    return True


def _endpoint(method, batch: bool = False):
    """``method`` for Gradio: a serving.RequestError becomes a message for the user, with no
    traceback in the log; ``batch``: answers as batch functions do. Keeps signature and docs."""

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
        beam = gr.Slider(1, MAX_BEAM_UI, value=3, step=1, label="Beam width (beam search)")
        count = gr.Slider(1, MAX_CAPTIONS_UI, value=1, step=1, label="Number of captions", info="beam search: at most the beam width; greedy: 1")  # fmt: skip
        length = gr.Slider(1, model_max, value=model_max, step=1, label="Maximum length (words)")
        with gr.Row():
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature (sampling)")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (sampling)")
            seed = gr.Number(value=0, precision=0, label="Seed (sampling)")
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


def _results() -> tuple[gr.Textbox, gr.Dataframe, gr.Markdown, gr.JSON]:
    """The best caption, the n-best table, the time taken and the raw answer."""
    best = gr.Textbox(
        label="Caption", lines=2, interactive=False, buttons=["copy"], elem_id="best-caption"
    )
    timing = gr.Markdown(elem_id="timing")
    nbest = gr.Dataframe(
        headers=["#", "caption", "score", "log-prob"],
        datatype=["number", "str", "number", "number"],
        label="n-best (score: log-probability per token)",
        interactive=False,
        elem_id="nbest",
        column_widths=["8%", "60%", "16%", "16%"],
        wrap=True,
    )
    with gr.Accordion("Raw /caption_details answer (JSON)", open=False):
        details = gr.JSON(label="caption_details")
    return best, nbest, timing, details


def build_app(
    loaded: serving.LoadedModel,
    *,
    max_batch_size: int = serving.DEFAULT_MAX_BATCH,
    upload_ttl: int = serving.DEFAULT_UPLOAD_TTL,
) -> gr.Blocks:
    """The Gradio Blocks for ``loaded`` (``max_batch_size=1``: no request batching)."""
    _accept_batched_validator_answers()
    service = serving.CaptionService(loaded, LIMITS)

    def validate_caption(image: list[Any]) -> tuple[list[dict[str, Any]]]:
        """Refuse an unusable image before it joins a batch (one bad upload must not fail the
        good requests batched with it)."""
        problems = [service.image_problem(item) for item in image]
        return ([gr.validate(p is None, p or "") for p in problems],)

    def show_attention(details: dict | None, image: Any) -> tuple[gr.Radio, Any, list]:
        views = _endpoint(service.attention_views)(details, image)
        labels = [(view.label, i) for i, view in enumerate(views)]
        first = views[0].image if views else None
        return gr.Radio(labels, value=0 if views else None), first, [v[::-1] for v in views]

    sweep = (max(1, upload_ttl // 2), upload_ttl)  # a long-running Space must not keep uploads
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=sweep) as demo:
        gr.Markdown(
            f"# {TITLE}\n"
            "A ResNet-style encoder reads the image and an LSTM writes the caption. "
            "Upload, paste or snap an image, then press **Caption**."
        )
        if loaded.notice:
            gr.Markdown(f"**Demo model.** {loaded.notice}", elem_id="model-notice")
        with gr.Row():
            with gr.Column(scale=1):
                where = ["upload", "webcam", "clipboard"]
                image = gr.Image(
                    label="Image", sources=where, type="filepath", elem_id="input-image", height=320
                )
                run = gr.Button("Caption", variant="primary", elem_id="caption-button")
                decoder = loaded.model.config.decoder
                options = _decoding_options(int(decoder.max_length), decoder.kind == "attention")
                if EXAMPLES:
                    gr.Examples(EXAMPLES, inputs=[image], label="Examples (synthetic shapes)")
            with gr.Column(scale=1):
                best, nbest, timing, details = _results()
                word, heat, strip = _attention_view()
        with gr.Accordion("Model", open=True):
            gr.Markdown(serving.model_panel_markdown(service.info), elem_id="model-panel")
            if loaded.card.body:
                with gr.Accordion("Model card", open=False):
                    gr.Markdown(loaded.card.body, elem_id="model-card")

        # UI: clear stale results, caption through the API endpoint, then render its answer.
        private = {"queue": False, "api_visibility": "private"}
        model_queue = {"preprocess": False, "concurrency_id": "model", "concurrency_limit": 1}
        run.click(
            lambda: ("", [], "", None), outputs=[best, nbest, timing, details], **private
        ).then(
            _endpoint(service.caption_details),
            inputs=[image, *options],
            outputs=[details],
            api_name="caption_details",
            show_progress_on=[best],
            **model_queue,
        ).success(
            serving.render_details, inputs=[details], outputs=[best, nbest, timing], **private
        ).success(show_attention, inputs=[details, image], outputs=[word, heat, strip], **private)
        word.select(lambda views, i: views[i][0], inputs=[strip, word], outputs=[heat], **private)

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
    demo.queue(default_concurrency_limit=1, max_size=256)
    demo.imcap_service = service  # for tests and the benchmark
    return demo


def mcp_available() -> bool:
    """Gradio's MCP server needs the ``mcp`` package (``pip install "gradio[mcp]"``)."""
    return importlib.util.find_spec("mcp") is not None


def launch_kwargs(**overrides: Any) -> dict[str, Any]:
    """How to launch: upload limit, theme, CSS, no SSR/Node, MCP server where installed, and
    the sweep of emptied upload folders. show_error off: gr.Error messages still show."""
    return dict(max_file_size=f"{MAX_UPLOAD_MB}mb", theme=THEME, css=CSS, ssr_mode=False, show_error=False,
                footer_links=["api", "gradio"], mcp_server=mcp_available(),
                app_kwargs={"lifespan": serving.sweep_empty_upload_folders}) | overrides  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = serving.argument_parser("imcap's Gradio app (the Hugging Face Space).").parse_args(argv)
    mcp = mcp_available() if args.mcp is None else args.mcp
    if mcp and not mcp_available():
        print('error: --mcp needs the mcp package: pip install "gradio[mcp]"', file=sys.stderr)
        return 2
    try:
        loaded = load_model(args.model, args.revision, runtime=args.runtime)
    except serving.ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_app(loaded, max_batch_size=args.max_batch_size, upload_ttl=args.upload_ttl)
    demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs(mcp_server=mcp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
