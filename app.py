"""imcap's Gradio app (the Hugging Face Space): UI and API wiring around ``imcap_hub.predict``.

    python app.py [--model REPO_OR_DIR] [--revision REV] [--port 7860]

The model loads once at start-up and is warmed up with one dummy caption. With no model
configured (``--model`` / ``IMCAP_MODEL``), or a Hub model that cannot be reached and is not
cached, the app serves the bundled demo model and says so on the page and in ``/model_info``.

API (gradio_client): ``/caption`` (image -> best caption; concurrent calls are batched into one
encoder call), ``/caption_details`` (image + options -> JSON), ``/model_info`` (-> JSON).
"""

from __future__ import annotations

import argparse
import collections
import html
import importlib.util
import logging
import os
import struct
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home: read at import
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr

import imcap_hub
from imcap_hub import (
    DecodeOptions,
    ImageCaptioner,
    ImcapError,
    ModelLoadError,
    Prediction,
    predict_many,
)
from imcap_hub.demo import DEMO_MODEL_DIR, demo_model_available
from imcap_hub.images import ImageLimits

log = logging.getLogger("imcap.app")

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
MAX_UPLOAD_MB = 10  # Gradio refuses bigger uploads; imcap_hub refuses bigger images too
LIMITS = ImageLimits(max_pixels=40_000_000, max_bytes=MAX_UPLOAD_MB * 2**20)
DEFAULT_MAX_BATCH = 8
DECODING_CHOICES = [("beam search", "beam"), ("greedy", "greedy"), ("sampling", "sample")]
MAX_BEAM_UI = 10
MAX_CAPTIONS_UI = 10
THEME = gr.themes.Default(  # system fonts only: the page must work with no network at all
    font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)
CSS = """
#best-caption textarea { font-size: 1.6rem !important; line-height: 1.35 !important; font-weight: 600; color: var(--body-text-color) !important; -webkit-text-fill-color: var(--body-text-color); opacity: 1 !important; }
#model-notice { border-left: 4px solid #d97706; background: #fffbeb; color: #78350f; padding: 0.5rem 0.9rem; border-radius: 4px; }
#model-notice p { margin: 0.2rem 0; }
"""


def _accept_batched_validator_answers() -> None:
    """Work around a Gradio 6.31 bug: a validator on a ``batch=True`` event answers a tuple,
    which ``process_validation_response`` takes for "valid" (it only inspects lists), so bad
    images would join a batch and fail every request in it. Harmless once fixed upstream."""
    import gradio.queueing as queueing

    original = getattr(queueing, "process_validation_response", None)
    if original is None or getattr(original, "_imcap_fixed", False):
        return

    def process_validation_response(validation_response, fn=None):
        if isinstance(validation_response, tuple):
            validation_response = list(validation_response)
        return original(validation_response, fn)

    process_validation_response._imcap_fixed = True  # type: ignore[attr-defined]
    queueing.process_validation_response = process_validation_response


_accept_batched_validator_answers()


class AppConfigError(RuntimeError):
    """The app cannot start: the message says what to configure."""


# --- model source -------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """The model being served and why this one (``notice`` is shown on the page and in the API)."""

    model: ImageCaptioner
    requested: str | None  # what --model / IMCAP_MODEL named (None: nothing configured)
    requested_revision: str | None
    is_demo: bool
    notice: str | None
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0


def _hub_unreachable(error: ModelLoadError) -> bool:
    """Whether a load failed only because the Hub could not be reached and nothing was cached."""
    return error.reason == "offline"


def _load_demo(runtime: str) -> ImageCaptioner:
    if not demo_model_available():
        raise AppConfigError(
            f"the bundled demo model is not present ({DEMO_MODEL_DIR} has no config.json); "
            "pass --model REPO_OR_DIR or set IMCAP_MODEL"
        )
    return ImageCaptioner.from_pretrained(DEMO_MODEL_DIR, runtime=runtime)


def load_model(
    model: str | None = None,
    revision: str | None = None,
    *,
    runtime: str = "auto",
    token: str | None = None,
    warmup: bool = True,
) -> LoadedModel:
    """Load the configured model (or the demo model, saying why) and warm it up.

    Raises AppConfigError with a one-line reason when there is nothing sensible to serve.
    """
    start = time.perf_counter()
    requested = model or None
    if requested is None:
        notice = (
            "No model configured (--model / IMCAP_MODEL): serving the bundled demo model, "
            "a tiny captioner of synthetic shapes. It only knows coloured circles, squares "
            "and triangles."
        )
        captioner, is_demo = _load_demo(runtime), True
    else:
        try:
            captioner = ImageCaptioner.from_pretrained(
                requested, revision=revision, runtime=runtime, token=token
            )
            is_demo, notice = False, None
        except ModelLoadError as e:
            if not _hub_unreachable(e):
                raise AppConfigError(f"cannot load model {requested!r}: {e}") from None
            if not demo_model_available():
                raise AppConfigError(
                    f"cannot load model {requested!r}: {e}; and the bundled demo model is not "
                    f"present ({DEMO_MODEL_DIR})"
                ) from None
            log.warning("%s; serving the bundled demo model instead", e)
            notice = (
                f"The Hub could not be reached and {requested!r} is not cached ({e}). "
                "Serving the bundled demo model instead: a tiny captioner of synthetic shapes."
            )
            captioner, is_demo = _load_demo(runtime), True
        except ImcapError as e:
            raise AppConfigError(f"cannot load model {requested!r}: {e}") from None
    loaded = LoadedModel(
        captioner,
        requested,
        revision,
        is_demo,
        notice,
        load_seconds=time.perf_counter() - start,
    )
    if warmup:
        start = time.perf_counter()
        imcap_hub.predict(captioner, _blank_png(), DecodeOptions())  # builds the runtime
        loaded.warmup_seconds = time.perf_counter() - start
    return loaded


def _blank_png(size: int = 32, rgb: tuple[int, int, int] = (128, 128, 128)) -> bytes:
    """A flat grey PNG, made with the standard library (the warm-up image)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = b"\0" + bytes(rgb) * size
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )


# --- what the model panel and /model_info say ---------------------------------------------------


def _card_header_and_body(card: str | None) -> tuple[str, str]:
    if not card:
        return "", ""
    text = card.lstrip("\ufeff")
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            return text[3:end], text[end + 4 :].lstrip("\n")
    return "", text


def _card_list(header: str, key: str) -> list[str]:
    """A top-level YAML list (``key:`` then ``- item`` lines, or ``key: [a, b]``) from a header."""
    values: list[str] = []
    lines = header.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(f"{key}:"):
            continue
        rest = line[len(key) + 1 :].strip()
        if rest.startswith("[") and rest.endswith("]"):
            return [v.strip().strip("'\"") for v in rest[1:-1].split(",") if v.strip()]
        if rest:
            return [rest.strip("'\"")]
        for item in lines[i + 1 :]:
            stripped = item.strip()
            if stripped.startswith("- "):
                values.append(stripped[2:].strip().strip("'\""))
            elif stripped and not item.startswith(" "):
                break
        return values
    return values


def _flatten(metrics: Any, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            rows += _flatten(value, f"{prefix}{key}" if not prefix else f"{prefix} / {key}")
    elif isinstance(metrics, list) and all(not isinstance(v, (dict, list)) for v in metrics):
        rows.append((prefix, ", ".join(str(v) for v in metrics)))
    elif isinstance(metrics, list):
        for i, value in enumerate(metrics):
            rows += _flatten(value, f"{prefix}[{i}]")
    else:
        rows.append((prefix, metrics))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    """What is being served, for ``/model_info``, ``/caption_details`` and the model panel."""
    info = loaded.model.info()
    header, _ = _card_header_and_body(loaded.model.card)
    runtime = info.get("runtime") or {}
    return {
        "model_id": "imcap-demo" if loaded.is_demo else info.get("model_id"),
        "source": "demo" if loaded.is_demo else info.get("kind"),
        "revision": info.get("revision"),
        "requested_model": loaded.requested,
        "requested_revision": loaded.requested_revision,
        "is_demo_model": loaded.is_demo,
        "notice": loaded.notice,
        "runtime": runtime.get("name"),
        "datasets": _card_list(header, "datasets"),
        "license": (_card_list(header, "license") or [None])[0],
        "metrics": loaded.model.metrics,
        "config": info.get("config"),
        "imcap_hub_version": imcap_hub.__version__,
        "load_seconds": round(loaded.load_seconds, 3),
        "warmup_seconds": round(loaded.warmup_seconds, 3),
    }


def _metrics_markdown(metrics: Any) -> list[str]:
    """metrics.json as a table: one row per decoding (training/evaluate.py's layout), or the
    flattened numbers of any other layout."""
    if not metrics:
        return ["No metrics.json: this model has not been evaluated."]
    decodings = metrics.get("decodings") if isinstance(metrics, dict) else None
    if (
        isinstance(decodings, dict)
        and decodings
        and all(isinstance(v, dict) for v in decodings.values())
    ):
        names = list(dict.fromkeys(k for scores in decodings.values() for k in scores))
        where = f"split `{metrics.get('split', '?')}`"
        if metrics.get("n_images") is not None:
            where += f", {metrics['n_images']} images"
        out = [
            f"**Evaluation** ({where}; from `metrics.json`):",
            "",
            "| decoding | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for spec, scores in decodings.items():
            cells = " | ".join(_fmt(scores.get(n, "")) for n in names)
            out.append(f"| {html.escape(str(spec))} | {cells} |")
        return out
    rows = [(k, v) for k, v in _flatten(metrics) if isinstance(v, (int, float, str)) and k][:40]
    out = ["**Metrics** (from `metrics.json`):", "", "| metric | value |", "|---|---|"]
    return out + [f"| {html.escape(str(k))} | {html.escape(_fmt(v))} |" for k, v in rows]


def model_panel_markdown(info: dict[str, Any]) -> str:
    """The model panel: repo, revision, runtime, training data and metrics."""
    model_id = info["model_id"]
    if info["source"] == "hub":
        shown = f"[{model_id}](https://huggingface.co/{model_id})"
    elif info["source"] == "demo":
        shown = "the bundled demo model (`imcap_hub/demo_model`)"
    else:
        shown = f"`{model_id}` (local folder)"
    revision = info["revision"] or "n/a (not from the Hub)"
    config = info.get("config") or {}
    encoder, decoder = config.get("encoder", {}), config.get("decoder", {})
    lines = [
        f"**Model:** {shown}  ",
        f"**Revision:** `{revision}`  ",
        f"**Runtime:** encoder on `{info['runtime']}`; LSTM decoder in numpy  ",
        f"**Architecture:** {encoder.get('architecture', '?')} encoder "
        f"({encoder.get('image_size', '?')} px) + LSTM ({decoder.get('units', '?')} units), "
        f"vocabulary of {config.get('vocab_size', '?')} words, captions up to "
        f"{decoder.get('max_length', '?')} words  ",
        f"**Trained on:** {', '.join(info['datasets']) or 'not stated in the model card'}",
    ]
    lines += ["", *_metrics_markdown(info.get("metrics"))]
    return "\n".join(lines)


# --- the functions the events call ---------------------------------------------------------------


NO_IMAGE = "No image: upload one, paste one or take a webcam picture first."


def _user_error(message: str, title: str = "Cannot caption this image") -> gr.Error:
    """A message for the user (no traceback in the server log: it is the user's input)."""
    return gr.Error(message, title=title, print_exception=False)


def _image_path(image: Any) -> tuple[str, str]:
    """The uploaded file's path and the name to show in messages (events run preprocess=False,
    so imcap_hub, not Gradio, decodes the upload: one decoder, one set of limits and messages)."""
    if image is None:
        raise _user_error(NO_IMAGE, "No image")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        return path, os.path.basename(path)
    if isinstance(image, dict) and image.get("path"):
        return image["path"], image.get("orig_name") or os.path.basename(image["path"])
    raise _user_error(NO_IMAGE, "No image")


def _user_message(error: str, path: str, name: str) -> str:
    return error.replace(f"'{path}'", f"'{name}'").replace(path, name)


class Captioner:
    """The served model behind a lock: the encoder runtime is not thread-safe, and MCP calls
    may bypass the queue's concurrency limit."""

    def __init__(self, loaded: LoadedModel, limits: ImageLimits = LIMITS) -> None:
        self.loaded = loaded
        self.limits = limits
        self.info = model_info(loaded)
        self._lock = threading.Lock()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # /caption

    def _predict_many(self, paths: list[str], options: DecodeOptions) -> list[Prediction]:
        with self._lock:
            return predict_many(self.loaded.model, paths, options, self.limits)

    def caption(self, image: list[Any]) -> tuple[list[str]]:
        """Caption an image: returns the best caption (beam search, width 3).

        Args:
            image: the image to caption (JPEG, PNG, WebP, ...).
        """
        # batch=True: Gradio hands over up to max_batch_size queued requests at once.
        named = [_image_path(x) for x in image]
        self.batch_sizes.append(len(named))
        results = self._predict_many([p for p, _ in named], DecodeOptions())
        errors = [_user_message(r.error, p, n) for r, (p, n) in zip(results, named) if r.error]
        if errors:  # the validator refuses bad images before they join a batch
            raise _user_error(errors[0])
        return ([r.text for r in results],)

    def validate_caption(self, image: list[Any]) -> tuple[list[dict[str, Any]]]:
        """Refuse an unusable image before it joins a batch (one bad upload must not fail the
        good requests batched with it)."""
        verdicts = []
        for item in image:
            try:
                path, name = _image_path(item)
                imcap_hub.load_image(path, self.limits)
                verdicts.append(gr.validate(True, ""))
            except gr.Error as e:
                verdicts.append(gr.validate(False, e.message))
            except ImcapError as e:
                verdicts.append(gr.validate(False, _user_message(str(e), path, name)))
        return (verdicts,)

    def caption_details(
        self,
        image: Any,
        decoding: str = "beam",
        beam_size: float = 3,
        num_captions: float = 1,
        max_length: float | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: float = 0,
    ) -> dict[str, Any]:
        """Caption an image with decoding options; returns the n-best captions with scores,
        the timings in milliseconds and the model id and revision.

        Args:
            image: the image to caption.
            decoding: "beam", "greedy" or "sample".
            beam_size: beam width (beam search).
            num_captions: how many captions to return, best first.
            max_length: the longest caption in words (default: the model's).
            temperature: sampling temperature.
            top_p: nucleus sampling threshold.
            seed: random seed for sampling.
        """
        path, name = _image_path(image)
        try:
            options = DecodeOptions(
                decoding=str(decoding),
                beam_size=int(beam_size),
                num_captions=int(num_captions),
                max_length=int(max_length) if max_length else None,
                temperature=float(temperature),
                top_p=float(top_p),
                seed=int(seed),
            )
            options.validate(self.loaded.model.config.decoder.max_length)
        except (TypeError, ValueError) as e:
            raise _user_error(f"Bad option: {e}", "Bad decoding option") from None
        result = self._predict_many([path], options)[0]
        if result.error:
            raise _user_error(_user_message(result.error, path, name))
        info = self.info
        return {
            "caption": result.text,
            "captions": [c.to_dict() for c in result.captions],
            "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
            "options": asdict(options),
            "model": {
                k: info[k]
                for k in (
                    "model_id",
                    "revision",
                    "source",
                    "is_demo_model",
                    "notice",
                    "runtime",
                )
            },
        }

    def model_info(self) -> dict[str, Any]:
        """What model this app serves: repo id, revision (commit hash), runtime, training data,
        metrics, and whether it is the bundled demo model (and why)."""
        return self.info


def render_details(details: dict[str, Any] | None) -> tuple[str, list[list[Any]], str]:
    """The UI's view of a /caption_details answer: best caption, n-best table, time taken."""
    if not details:
        return "", [], ""
    rows = [
        [rank, c["text"], round(c["score"], 4), round(c["logprob"], 4)]
        for rank, c in enumerate(details["captions"], 1)
    ]
    t = details["timings_ms"]
    timing = (
        f"**{t.get('total', 0):.0f} ms** in the model (load {t.get('load', 0):.1f} ms, "
        f"encode {t.get('encode', 0):.1f} ms, decode {t.get('decode', 0):.1f} ms)"
    )
    return details["caption"], rows, timing


# --- the Blocks ---------------------------------------------------------------------------------


def example_images() -> list[str]:
    return sorted(os.fspath(p) for p in EXAMPLES_DIR.glob("*.png"))


def build_app(loaded: LoadedModel, *, max_batch_size: int = DEFAULT_MAX_BATCH) -> gr.Blocks:
    """The Gradio Blocks for ``loaded``. ``max_batch_size=1`` turns request batching off."""
    service = Captioner(loaded)
    info = service.info
    model_max = int(loaded.model.config.decoder.max_length)
    with gr.Blocks(title="imcap: image captioning", analytics_enabled=False) as demo:
        gr.Markdown(
            "# imcap: image captioning\n"
            "A ResNet-style encoder reads the image and an LSTM writes the caption. "
            "Upload, paste or snap an image, then press **Caption**."
        )
        if loaded.notice:
            gr.Markdown(f"**Demo model.** {loaded.notice}", elem_id="model-notice")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image",
                    sources=["upload", "webcam", "clipboard"],
                    type="filepath",
                    elem_id="input-image",
                    height=320,
                )
                run = gr.Button("Caption", variant="primary", elem_id="caption-button")
                with gr.Accordion("Decoding options", open=False):
                    decoding = gr.Radio(DECODING_CHOICES, value="beam", label="Decoding")
                    beam_size = gr.Slider(
                        1, MAX_BEAM_UI, value=3, step=1, label="Beam width (beam search)"
                    )
                    num_captions = gr.Slider(
                        1,
                        MAX_CAPTIONS_UI,
                        value=1,
                        step=1,
                        label="Number of captions",
                        info="beam search: at most the beam width; greedy: 1",
                    )
                    max_length = gr.Slider(
                        1, model_max, value=model_max, step=1, label="Maximum length (words)"
                    )
                    with gr.Row():
                        temperature = gr.Slider(
                            0.1, 2.0, value=1.0, step=0.05, label="Temperature (sampling)"
                        )
                        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (sampling)")
                        seed = gr.Number(value=0, precision=0, label="Seed (sampling)")
                examples = example_images()
                if examples:
                    gr.Examples(examples, inputs=[image], label="Examples (synthetic shapes)")
            with gr.Column(scale=1):
                best = gr.Textbox(
                    label="Caption",
                    lines=2,
                    interactive=False,
                    buttons=["copy"],
                    elem_id="best-caption",
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
        with gr.Accordion("Model", open=True):
            gr.Markdown(model_panel_markdown(info), elem_id="model-panel")
            _, card_body = _card_header_and_body(loaded.model.card)
            if card_body:
                with gr.Accordion("Model card", open=False):
                    gr.Markdown(card_body, elem_id="model-card")

        # UI: clear stale results, caption through the API endpoint, then render its answer.
        options = [decoding, beam_size, num_captions, max_length, temperature, top_p, seed]
        run.click(
            lambda: ("", [], "", None),
            outputs=[best, nbest, timing, details],
            queue=False,
            api_visibility="private",
        ).then(
            service.caption_details,
            inputs=[image, *options],
            outputs=[details],
            api_name="caption_details",
            preprocess=False,
            concurrency_id="model",
            concurrency_limit=1,
            show_progress_on=[best],
        ).success(
            render_details,
            inputs=[details],
            outputs=[best, nbest, timing],
            queue=False,
            api_visibility="private",
        )

        # API: /caption batches concurrent requests into one encoder call.
        api_trigger = gr.Button(visible=False)
        api_trigger.click(
            service.caption,
            inputs=[image],
            outputs=[best],
            api_name="caption",
            preprocess=False,
            batch=True,
            max_batch_size=max(1, int(max_batch_size)),
            concurrency_id="model",
            concurrency_limit=1,
            validator=service.validate_caption,
        )
        gr.api(service.model_info, api_name="model_info", queue=False)
    demo.queue(default_concurrency_limit=1, max_size=256)
    demo.imcap_service = service  # for tests and the benchmark
    return demo


def launch_kwargs(**overrides: Any) -> dict[str, Any]:
    """How to launch: upload limit, theme, CSS, no SSR/Node, MCP server where installed."""
    kwargs: dict[str, Any] = {
        "max_file_size": f"{MAX_UPLOAD_MB}mb",
        "theme": THEME,
        "css": CSS,
        "ssr_mode": False,
        "show_error": False,  # gr.Error messages still show; anything else stays generic
        "footer_links": ["api", "gradio"],
        "mcp_server": mcp_available(),
    }
    kwargs.update(overrides)
    return kwargs


def mcp_available() -> bool:
    """Gradio's MCP server needs the ``mcp`` package (``pip install "gradio[mcp]"``)."""
    return importlib.util.find_spec("mcp") is not None


# --- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(description="imcap's Gradio app (the Hugging Face Space).")
    p.add_argument(
        "--model",
        default=env("IMCAP_MODEL") or None,
        help="Hub repo id or local model folder (env IMCAP_MODEL; default: the bundled demo model)",
    )
    p.add_argument(
        "--revision",
        default=env("IMCAP_REVISION") or None,
        help="branch, tag or commit hash (env IMCAP_REVISION)",
    )
    p.add_argument("--runtime", default=env("IMCAP_RUNTIME") or "auto", help="encoder runtime")
    p.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=int(env("IMCAP_MAX_BATCH_SIZE") or DEFAULT_MAX_BATCH),
        help="requests batched into one encoder call on /caption (1: no batching)",
    )
    p.add_argument(
        "--mcp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve Gradio's MCP server (default: on when the mcp package is installed)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = _parser().parse_args(argv)
    try:
        loaded = load_model(args.model, args.revision, runtime=args.runtime)
    except AppConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = model_info(loaded)
    log.info(
        "serving %s (revision %s, runtime %s): loaded in %.1f s, warmed up in %.1f s",
        info["model_id"],
        info["revision"],
        info["runtime"],
        loaded.load_seconds,
        loaded.warmup_seconds,
    )
    if loaded.notice:
        log.warning(loaded.notice)
    mcp = mcp_available() if args.mcp is None else args.mcp
    if mcp and not mcp_available():
        print('error: --mcp needs the mcp package: pip install "gradio[mcp]"', file=sys.stderr)
        return 2
    demo = build_app(loaded, max_batch_size=args.max_batch_size)
    demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs(mcp_server=mcp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
