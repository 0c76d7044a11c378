"""What a server needs, without gradio: which model to serve (the configured one, or the bundled
demo model, saying why), its warm-up, what it says about itself (``/model_info`` and the model
panel) and the captioning service behind the app's endpoints (one lock around the model, the
batching bookkeeping, decoding options, answers, and messages that name the user's file).

Errors a server must show are :class:`ImcapError` subclasses: :class:`ServingError` (nothing
sensible to serve: the app exits with one line) and :class:`RequestError` (a request refused;
``title`` heads the message the user sees).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import html
import importlib.util
import logging
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from huggingface_hub import ModelCard

from . import __version__
from .caption_files import format_rows
from .demo import DEMO_MODEL_DIR
from .errors import ImcapError
from .heatmaps import for_display, overlay
from .images import DEFAULT_LIMITS, ImageLimits, load_image, resize
from .inference import DecodeOptions, OptionsError, Prediction, predict, predict_many
from .model import ImageCaptioner, ModelLoadError
from .startup import step

log = logging.getLogger(__name__)

NO_IMAGE = "No image: upload one, paste one or take a webcam picture first."
# For the visitor (the page and /model_info); what the operator should do goes to the log.
DEMO_NOTICE = (
    "This demo model only knows coloured shapes (circles, squares and triangles), so a photo "
    "gets a wrong caption."
)
OFFLINE_NOTICE = (
    "The model this page should serve could not be downloaded, so the demo model answers "
    "instead. It only knows coloured shapes, so a photo gets a wrong caption."
)
NO_MODEL_LOG = (
    "No model configured: serving the bundled demo model. Pass --model REPO_OR_DIR, or set "
    "IMCAP_MODEL (a Space variable), to serve yours."
)
MAX_METRIC_ROWS = 40
DEFAULT_MAX_BATCH = 8
MAX_BATCH_FILES = 64  # images in one /caption_batch request
DEFAULT_UPLOAD_TTL = 600  # seconds an upload is kept: long past any queued request's wait


class ServingError(ImcapError):
    """There is nothing sensible to serve; the message says what to configure."""


class RequestError(ImcapError):
    """A request the service refuses; the message is for the user, ``title`` heads it."""

    title = "Cannot caption this image"


class NoImageError(RequestError):
    title = "No image"


class BadOptionError(RequestError):
    title = "Bad decoding option"


# --- which model ---------------------------------------------------------------------------------


class AttentionView(NamedTuple):
    """One word's attention map over the image: ``label`` ("2. dog") and the RGB ``image``."""

    label: str
    image: np.ndarray


class CardSummary(NamedTuple):
    """What the app shows of a model card: its header's datasets and license, and its body."""

    datasets: list[str]
    license: str | None
    body: str


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def parse_card(card: str | None) -> CardSummary:
    """Read a model card (README.md) with ``huggingface_hub.ModelCard``. A card without a
    metadata header, or with one that does not parse, is all body: no datasets, no license."""
    if not card:
        return CardSummary([], None, "")
    text = card.lstrip("\ufeff")
    if not text.lstrip().startswith("---"):  # no header (ModelCard would log a warning)
        return CardSummary([], None, text)
    try:
        parsed = ModelCard(text, ignore_metadata_errors=True)
    except (ValueError, TypeError, yaml.YAMLError) as e:
        log.warning("ignoring the model card's metadata header, which cannot be read: %s", e)
        return CardSummary([], None, text)
    licenses = _as_list(parsed.data.license)
    return CardSummary(
        _as_list(parsed.data.datasets), licenses[0] if licenses else None, parsed.text.lstrip("\n")
    )


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

    @cached_property
    def card(self) -> CardSummary:
        return parse_card(self.model.card)


def _load_demo(demo_dir: str | os.PathLike, runtime: str) -> ImageCaptioner:
    try:
        return ImageCaptioner.from_pretrained(demo_dir, runtime=runtime)
    except ImcapError as e:
        raise ServingError(f"cannot load the bundled demo model ({demo_dir}): {e}") from None


def warm_up(model: ImageCaptioner) -> float:
    """Caption a flat grey image once (builds the encoder runtime); returns the seconds taken."""
    start = time.perf_counter()
    with step(log, "warming up", "one caption of a grey image; prepares the encoder runtime"):
        predict(model, np.full((32, 32, 3), 128, dtype=np.uint8), DecodeOptions())
    return time.perf_counter() - start


def load_model(
    model: str | None = None,
    revision: str | None = None,
    *,
    runtime: str = "auto",
    token: str | None = None,
    warmup: bool = True,
    demo_dir: str | os.PathLike = DEMO_MODEL_DIR,
) -> LoadedModel:
    """Load the configured model, or the demo model (in ``demo_dir``) saying why, and warm it up.

    Nothing configured: the demo model. The Hub unreachable and the model not cached
    (``ModelLoadError.reason == "offline"``): the demo model, with a notice. Any other failure
    raises :class:`ServingError` with a one-line reason.
    """
    start = time.perf_counter()
    requested = model or None
    demo_present = (Path(demo_dir) / "config.json").is_file()
    if requested is None:
        if not demo_present:
            raise ServingError(
                f"the bundled demo model is not present ({demo_dir} has no config.json); "
                "pass --model REPO_OR_DIR or set IMCAP_MODEL"
            )
        log.warning(NO_MODEL_LOG)
        captioner, is_demo, notice = _load_demo(demo_dir, runtime), True, DEMO_NOTICE
    else:
        try:
            captioner = ImageCaptioner.from_pretrained(
                requested, revision=revision, runtime=runtime, token=token
            )
            is_demo, notice = False, None
        except ImcapError as e:
            if not (isinstance(e, ModelLoadError) and e.reason == "offline"):
                raise ServingError(f"cannot load model {requested!r}: {e}") from None
            if not demo_present:
                raise ServingError(
                    f"cannot load model {requested!r}: {e}; and the bundled demo model is not "
                    f"present ({demo_dir})"
                ) from None
            log.warning("%s; serving the bundled demo model instead", e)
            captioner, is_demo, notice = _load_demo(demo_dir, runtime), True, OFFLINE_NOTICE
    loaded = LoadedModel(captioner, requested, revision, is_demo, notice)
    loaded.load_seconds = time.perf_counter() - start
    if warmup:
        try:
            loaded.warmup_seconds = warm_up(captioner)
        except ImcapError as e:
            raise ServingError(
                f"model {requested or 'imcap-demo'!r} fails its warm-up: {e}"
            ) from None
    info = model_info(loaded)
    log.info(
        "serving %s (revision %s, runtime %s): loaded in %.1f s, warmed up in %.1f s",
        info["model_id"],
        info["revision"],
        info["runtime"],
        loaded.load_seconds,
        loaded.warmup_seconds,
    )
    return loaded


def mcp_available() -> bool:
    """Gradio's MCP server needs the ``mcp`` package (``pip install "gradio[mcp]"``)."""
    return importlib.util.find_spec("mcp") is not None


def mcp_wanted(flag: bool | None) -> bool:
    """Whether to serve MCP for ``--mcp``/``--no-mcp`` (None: where the package is installed);
    ServingError when it is asked for and not installed."""
    if flag and not mcp_available():
        raise ServingError('--mcp needs the mcp package: pip install "gradio[mcp]"')
    return mcp_available() if flag is None else flag


def argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The server's command line; the environment (IMCAP_MODEL, IMCAP_REVISION, IMCAP_RUNTIME,
    IMCAP_MAX_BATCH_SIZE) gives the defaults, as a Space sets them."""
    env = os.environ.get
    p = argparse.ArgumentParser(description=description)
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
        "--upload-ttl",
        type=int,
        default=int(env("IMCAP_UPLOAD_TTL") or DEFAULT_UPLOAD_TTL),
        metavar="SECONDS",
        help="delete uploads older than this (env IMCAP_UPLOAD_TTL)",
    )
    p.add_argument(
        "--mcp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve Gradio's MCP server (default: on when the mcp package is installed)",
    )
    return p


def remove_empty_folders(root: str | os.PathLike, older_than: float) -> int:
    """Remove the empty folders directly in ``root`` left alone for ``older_than`` seconds;
    returns how many went. Gradio's upload cleanup deletes each upload but not its folder."""
    removed = 0
    cutoff = time.time() - older_than
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.rmdir(entry.path)  # refuses a folder that is not empty
                    removed += 1
            except OSError:
                continue
    return removed


@contextlib.asynccontextmanager
async def sweep_empty_upload_folders(app: Any):
    """A server lifespan (``launch(app_kwargs={"lifespan": ...})``): on the Blocks'
    ``delete_cache`` schedule, remove the upload folders its sweep emptied."""
    frequency, age = app.get_blocks().delete_cache or (None, None)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(frequency)
            await asyncio.to_thread(remove_empty_folders, app.uploaded_file_dir, age)

    task = asyncio.create_task(sweep()) if frequency else None
    try:
        yield
    finally:
        if task:
            task.cancel()


# --- what /model_info and the model panel say ----------------------------------------------------


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    """What is being served, for ``/model_info``, ``/caption_details`` and the model panel."""
    info = loaded.model.info()
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
        "datasets": loaded.card.datasets,
        "license": loaded.card.license,
        "metrics": loaded.model.metrics,
        "config": info.get("config"),
        "imcap_hub_version": __version__,
        "load_seconds": round(loaded.load_seconds, 3),
        "warmup_seconds": round(loaded.warmup_seconds, 3),
    }


def flatten_metrics(metrics: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts and lists as ``("a / b[0] / c", value)`` rows; a list of plain values is one
    row, its values joined by commas."""
    rows: list[tuple[str, Any]] = []
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            rows += flatten_metrics(value, f"{prefix} / {key}" if prefix else f"{key}")
    elif isinstance(metrics, list) and all(not isinstance(v, (dict, list)) for v in metrics):
        rows.append((prefix, ", ".join(str(v) for v in metrics)))
    elif isinstance(metrics, list):
        for i, value in enumerate(metrics):
            rows += flatten_metrics(value, f"{prefix}[{i}]")
    else:
        rows.append((prefix, metrics))
    return rows


def four_significant_digits(value: Any) -> str:
    """A metric's table cell: a float to 4 significant digits (``0.98765`` -> ``0.9877``),
    anything else as ``str()`` gives it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metrics_markdown(metrics: Any) -> list[str]:
    """metrics.json as a table: one row per metric and a column per decoding (training/
    evaluate.py's layout: a few columns, readable on a phone), or the flattened numbers of any
    other layout."""
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
            "| metric | " + " | ".join(html.escape(str(d)) for d in decodings) + " |",
            "|---|" + "---|" * len(decodings),
        ]
        for name in names:
            cells = " | ".join(four_significant_digits(s.get(name, "")) for s in decodings.values())
            out.append(f"| {html.escape(str(name))} | {cells} |")
        return out
    rows = [(k, v) for k, v in flatten_metrics(metrics) if isinstance(v, (int, float, str)) and k][
        :MAX_METRIC_ROWS
    ]
    out = ["**Metrics** (from `metrics.json`):", "", "| metric | value |", "|---|---|"]
    return out + [
        f"| {html.escape(str(k))} | {html.escape(four_significant_digits(v))} |" for k, v in rows
    ]


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
    lines += ["", *metrics_markdown(info.get("metrics"))]
    return "\n".join(lines)


# --- the service behind the endpoints ------------------------------------------------------------


def image_path(image: Any) -> tuple[str, str]:
    """An upload's file path and the name to show in messages: a path, or a file dict as Gradio
    passes it with ``preprocess=False`` (``path``, ``orig_name``). Raises NoImageError."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        return path, os.path.basename(path)
    if isinstance(image, dict) and image.get("path"):
        return image["path"], image.get("orig_name") or os.path.basename(image["path"])
    raise NoImageError(NO_IMAGE)


def user_message(error: str, path: str, name: str) -> str:
    """``error`` with the server's path of an upload replaced by the upload's own file name."""
    return error.replace(f"'{path}'", f"'{name}'").replace(path, name)


def render_details(details: dict[str, Any] | None) -> tuple[str, list[list[Any]], str]:
    """The page's view of a /caption_details answer: best caption, n-best rows, time taken."""
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


class CaptionService:
    """The served model behind a lock (the encoder runtime is not thread-safe, and MCP calls may
    bypass the queue's concurrency limit), and the API's functions: ``caption`` (batched),
    ``caption_details`` and ``model_info``; their docstrings document the app's API. A refused
    request raises :class:`RequestError` with a message for the user."""

    # Images the validator decoded, resized to the encoder's input, waiting for /caption: a
    # photo is decoded once, not twice (a 12-megapixel JPEG takes 0.2 s or more to decode).
    # 64 of 224x224 RGB are under 10 MiB; an entry whose request never runs is pushed out.
    CHECKED_IMAGES = 64

    def __init__(self, loaded: LoadedModel, limits: ImageLimits = DEFAULT_LIMITS) -> None:
        self.loaded = loaded
        self.limits = limits
        self.info = model_info(loaded)
        self._lock = threading.Lock()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # /caption
        self._checked: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._checked_lock = threading.Lock()
        self.decoded_once = 0  # /caption images the validator had decoded (tests, benchmark)

    def predict_many(self, paths: list[str], options: DecodeOptions) -> list[Prediction]:
        with self._lock:
            return predict_many(self.loaded.model, paths, options, self.limits)

    def caption(self, image: list[Any]) -> list[str]:
        """Caption an image: returns the best caption (beam search, width 3).

        Args:
            image: the image (JPEG, PNG, WebP...), an http(s) URL or a data URL (data:image/png;base64,...).
        """
        # Batched: the images of up to max_batch_size queued requests, one encoder call. A bad
        # one refuses the whole batch: image_problem (the app's validator) keeps them out.
        named = [image_path(x) for x in image]
        self.batch_sizes.append(len(named))
        inputs = [self._take_checked(p) for p, _ in named]
        results = self.predict_many(inputs, DecodeOptions())
        errors = [user_message(r.error, p, n) for r, (p, n) in zip(results, named) if r.error]
        if errors:
            raise RequestError(errors[0])
        return [r.text for r in results]

    def image_problem(self, image: Any) -> str | None:
        """Why ``image`` cannot be captioned, for the user; None when it can."""
        try:
            path, name = image_path(image)
        except NoImageError as e:
            return str(e)
        try:
            size = self.loaded.model.config.encoder.image_size
            pixels = resize(load_image(path, self.limits, size), size)
        except ImcapError as e:
            return user_message(str(e), path, name)
        except Exception:  # a bug, not the upload's fault: logged, and still a message
            log.exception("checking the upload %r failed", name)
            return f"'{name}': this image could not be checked (a server error, logged)"
        with self._checked_lock:
            self._checked[path] = pixels
            self._checked.move_to_end(path)
            while len(self._checked) > self.CHECKED_IMAGES:
                self._checked.popitem(last=False)
        return None

    def _take_checked(self, path: str) -> str | np.ndarray:
        """The validator's decoded pixels of ``path`` if it has them, else the path itself."""
        with self._checked_lock:
            pixels = self._checked.pop(path, None)
        if pixels is None:
            return path
        self.decoded_once += 1
        return pixels

    def decode_options(self, **options: Any) -> DecodeOptions:
        """DecodeOptions checked against this model (``max_length=None``: the model's own).
        Raises BadOptionError naming the option."""
        try:
            decode = DecodeOptions.from_kwargs(**options)
            decode.validate(self.loaded.model.config)
        except OptionsError as e:
            raise BadOptionError(f"Bad option: {e}") from None
        return decode

    def caption_details(
        self,
        image: Any,
        decoding: str = "beam",
        beam_size: int = 3,
        num_captions: int = 1,
        max_length: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        attention: bool = False,
    ) -> dict[str, Any]:
        """Caption an image with decoding options; returns the n-best captions with scores,
        the timings in milliseconds and the model id and revision; with ``attention``, also
        where the model looked for each word of the best caption and for the end token:
        "attention" lists {"word", "grid"}, a grid of weights summing to 1.

        Args:
            image: the image to caption, as an http(s) URL or a data URL (data:image/png;base64,...).
            decoding: "beam", "greedy" or "sample".
            beam_size: beam width (beam search), an integer.
            num_captions: how many captions to return, best first (at most the beam width).
            max_length: the longest caption in words (default: the model's), an integer.
            temperature: sampling temperature, above 0.
            top_p: nucleus sampling threshold, in (0, 1].
            seed: random seed for sampling, a non-negative integer.
            attention: also return each word's attention map over the image grid (attention models).
        """
        path, name = image_path(image)
        options = self.decode_options(
            decoding=decoding,
            beam_size=beam_size,
            num_captions=num_captions,
            max_length=max_length,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            return_attention=attention,
        )
        result = self.predict_many([path], options)[0]
        if result.error:
            raise RequestError(user_message(result.error, path, name))
        keys = ("model_id", "revision", "source", "is_demo_model", "notice", "runtime")
        captions = [c.to_dict() for c in result.captions]
        answer = {
            "caption": result.text,
            "captions": [{k: v for k, v in c.items() if k != "attention"} for c in captions],
            "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
            "options": options.to_dict(),
            "model": {k: self.info[k] for k in keys},
        }
        if options.return_attention:
            answer["attention"] = captions[0]["attention"] if captions else []
        return answer

    def attention_views(self, details: dict[str, Any] | None, image: Any) -> list[AttentionView]:
        """The best caption's attention maps drawn over the image, one per word and one for
        ``<end>`` (empty when ``details`` has none)."""
        if not details or not details.get("attention"):
            return []
        path, name = image_path(image)
        try:
            pixels = for_display(load_image(path, self.limits))
        except ImcapError as e:
            raise RequestError(user_message(str(e), path, name)) from None
        return [
            AttentionView(f"{i}. {entry['word']}", overlay(pixels, np.asarray(entry["grid"])))
            for i, entry in enumerate(details["attention"], 1)
        ]

    def caption_batch(self, images: list[Any]) -> list[dict[str, str]]:
        """Caption several images (beam search, width 3); returns one entry per image, in order:
        {"file": its name, "caption": the caption}, or {"file": its name, "error": why} for one
        that cannot be captioned. A bad file never fails the others.

        Args:
            images: at most 64 images, each an http(s) URL or a data URL (data:image/png;base64,...).
        """
        if not images:
            raise NoImageError("No images: upload one or more first.")
        if len(images) > MAX_BATCH_FILES:
            raise RequestError(
                f"{len(images)} images in one request; the limit is {MAX_BATCH_FILES}"
            )
        entries: list[dict[str, str]] = []
        named: list[tuple[int, str, str]] = []
        for item in images:
            try:
                path, name = image_path(item)
            except NoImageError:
                entries.append({"file": "", "error": "not a file"})
                continue
            entries.append({"file": name})
            named.append((len(entries) - 1, path, name))
        results = self.predict_many([path for _, path, _ in named], DecodeOptions())
        for (i, path, name), result in zip(named, results):
            if result.error:
                entries[i]["error"] = user_message(result.error, path, name)
            else:
                entries[i]["caption"] = result.text
        return entries

    def batch_downloads(self, entries: list[dict[str, str]]) -> list[str]:
        """A /caption_batch answer as two files to download, CSV and JSON Lines. The app's
        server copies them into its cache; the copies here go a minute later, at a next call."""
        folder = self._downloads
        for old in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if old.stat().st_mtime < time.time() - 60:
                    old.unlink()
        stem = f"captions-{secrets.token_hex(3)}"
        paths = []
        for fmt in ("csv", "jsonl"):
            path = folder / f"{stem}.{fmt}"
            path.write_text(format_rows(entries, fmt, header=True), encoding="utf-8")
            paths.append(os.fspath(path))
        return paths

    def batch_view(self, files: list[str] | None, entries: list[dict[str, str]] | None) -> tuple:
        """The page's view of a /caption_batch answer for the uploaded ``files``: the gallery's
        (image, caption) pairs, a line per file not captioned, and the two downloads."""
        if not files or not entries:
            return [], "", None
        pairs = [(f, e["caption"]) for f, e in zip(files, entries) if e.get("caption")]
        failed = [f"- {e['error']}" for e in entries if e.get("error")]  # names its file
        note = "\n".join([f"**Not captioned ({len(failed)}):**", *failed]) if failed else ""
        return pairs, note, self.batch_downloads(entries)

    @cached_property
    def _downloads(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="imcap-downloads-"))

    def model_info(self) -> dict[str, Any]:
        """What model this app serves: repo id, revision (commit hash), runtime, training data,
        metrics, and whether it is the bundled demo model (and why)."""
        return self.info
