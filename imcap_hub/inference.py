"""predict(): the one captioning function behind the app, the Python API and the CLI."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import ThreadpoolController

from .errors import ImcapError
from .images import DEFAULT_LIMITS, ImageError, ImageInput, ImageLimits, load_image
from .search import Hypothesis, beam_search, greedy, sample
from .vocab import join_words

if TYPE_CHECKING:
    from .config import CaptionerConfig
    from .model import ImageCaptioner

DECODINGS = ("greedy", "beam", "sample")
MAX_BEAM = 20
MAX_CAPTIONS = 20
MAX_SEED = 2**32 - 1
_BEAM_LABEL = re.compile(r"beam-(\d+)")


class OptionsError(ImcapError, ValueError):
    """A decoding option of the wrong type or out of range; the message names it."""


def _integer(value: Any, name: str, low: int, high: int, allowed: str | None = None) -> int:
    """``value`` as an int in [low, high]; integral floats (3.0, as UIs send them) are accepted.
    ``allowed``: the range in words, when ``high`` is not what the user should read."""
    allowed = allowed or f"an integer from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptionsError(f"{name} must be {allowed}, got {value!r}")
    if not math.isfinite(value) or value != int(value) or not low <= int(value) <= high:
        raise OptionsError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _number(value: Any, name: str, allowed: str, ok: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptionsError(f"{name} must be {allowed}, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and ok(value)):
        raise OptionsError(f"{name} must be {allowed}, got {value!r}")
    return value


@dataclass
class DecodeOptions:
    """How to turn features into captions; every option is checked here, once, for every path
    (Python, CLI, app, run configs). ``max_length`` defaults to the model's own limit.

    A wrong option raises :class:`OptionsError` naming the option and its allowed range.
    """

    decoding: str = "beam"
    beam_size: int = 3
    num_captions: int = 1
    max_length: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = 0
    length_penalty: float = 1.0
    return_attention: bool = False

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise OptionsError(
                f"decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}"
            )
        self.beam_size = _integer(self.beam_size, "beam_size", 1, MAX_BEAM)
        limit = {"greedy": 1, "beam": self.beam_size, "sample": MAX_CAPTIONS}[self.decoding]
        try:
            self.num_captions = _integer(self.num_captions, "num_captions", 1, limit)
        except OptionsError as e:
            raise OptionsError(f"{e} (for {self.decoding} decoding)") from None
        if self.max_length is not None:
            self.max_length = _integer(
                self.max_length, "max_length", 1, 10_000, "a positive integer (words)"
            )
        self.temperature = _number(self.temperature, "temperature", "a number > 0", lambda v: v > 0)
        self.top_p = _number(self.top_p, "top_p", "a number in (0, 1]", lambda v: 0 < v <= 1)
        if self.seed is not None:
            self.seed = _integer(self.seed, "seed", 0, MAX_SEED)
        self.length_penalty = _number(
            self.length_penalty, "length_penalty", "a number >= 0", lambda v: v >= 0
        )
        if not isinstance(self.return_attention, (bool, np.bool_)):
            raise OptionsError(
                f"return_attention must be true or false, got {self.return_attention!r}"
            )
        self.return_attention = bool(self.return_attention)

    def validate(self, model_config: CaptionerConfig) -> None:
        """The checks that need the model: ``max_length`` within the model's own limit, and
        ``return_attention`` only for a model with an attention decoder."""
        model_max_length = model_config.decoder.max_length
        if self.return_attention and model_config.decoder.kind != "attention":
            raise OptionsError(
                "return_attention: this model's decoder has no attention (it reads one pooled "
                "feature vector per image); only an attention decoder gives per-word maps"
            )
        if self.max_length is not None and self.max_length > model_max_length:
            raise OptionsError(
                f"max_length must be an integer from 1 to {model_max_length} (this model's "
                f"limit), got {self.max_length}"
            )

    @classmethod
    def from_kwargs(cls, **options: Any) -> DecodeOptions:
        """Options given by name (``caption(image, beam_size=5)``); a misspelt one is named."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise OptionsError(
                f"unknown decoding option(s) {', '.join(unknown)}; the options are {', '.join(known)}"
            )
        return cls(**options)

    @classmethod
    def from_label(cls, label: str) -> DecodeOptions:
        """``"greedy"``, ``"beam-K"`` (K the beam size) or ``"sample"`` -> one caption's options."""
        text = label.strip().lower() if isinstance(label, str) else ""
        if text in ("greedy", "sample"):
            return cls(decoding=text, beam_size=1, num_captions=1)
        match = _BEAM_LABEL.fullmatch(text)
        if match:
            try:
                return cls(decoding="beam", beam_size=int(match.group(1)), num_captions=1)
            except OptionsError as e:
                raise OptionsError(f"decoding {label!r}: {e}") from None
        raise OptionsError(
            f"unknown decoding {label!r}: use 'greedy', 'sample' or 'beam-K' with K the beam "
            f"size from 1 to {MAX_BEAM} (e.g. 'beam-3')"
        )

    @property
    def label(self) -> str:
        """The name metrics.json, run configs and the model card use: greedy, beam-K, sample."""
        return f"beam-{self.beam_size}" if self.decoding == "beam" else self.decoding

    def describe(self) -> str:
        """The label in words, for the model card."""
        if self.decoding == "beam":
            return f"beam search (beam {self.beam_size})"
        return {"greedy": "greedy decoding", "sample": "sampling"}[self.decoding]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


END_LABEL = "<end>"


@dataclass
class Caption:
    """One caption: its text, length-normalised score, total log-probability and words.

    ``attention`` (only when asked for, attention decoders only): one (H, W) map per word and
    a last one for the ``<end>`` step, each summing to 1; ``attention_labels`` names them.
    """

    text: str
    score: float
    logprob: float
    tokens: list[str]
    attention: np.ndarray | None = field(default=None, repr=False)

    @property
    def attention_labels(self) -> list[str]:
        return [*self.tokens, END_LABEL]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "text": self.text,
            "score": self.score,
            "logprob": self.logprob,
            "tokens": list(self.tokens),
        }
        if self.attention is not None:
            data["attention"] = [
                {"word": word, "grid": np.round(grid.astype(np.float64), 6).tolist()}
                for word, grid in zip(self.attention_labels, self.attention)
            ]
        return data


@dataclass
class Prediction:
    """The captions for one image, best first, with timings in milliseconds."""

    captions: list[Caption] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def text(self) -> str:
        return self.captions[0].text if self.captions else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "captions": [c.to_dict() for c in self.captions],
            "timings_ms": self.timings_ms,
            "error": self.error,
        }


def _search_arguments(model: ImageCaptioner, options: DecodeOptions) -> dict[str, Any]:
    vocab = model.vocab
    arguments: dict[str, Any] = {
        "start_id": vocab.start_id,
        "end_id": vocab.end_id,
        "max_length": int(options.max_length or model.config.decoder.max_length),
        "banned": (vocab.pad_id, vocab.start_id, vocab.unk_id),
        "length_penalty": options.length_penalty,
    }
    if options.return_attention:
        arguments["attention"] = model.decoder.attention
    return arguments


def search_features(
    model: ImageCaptioner, features: np.ndarray, options: DecodeOptions
) -> list[Hypothesis]:
    """The hypotheses for one image's encoder features (what :func:`predict` runs per image)."""
    common = _search_arguments(model, options)
    state = model.decoder.init_state(features[None])
    if options.decoding == "greedy":
        return greedy(model.decoder.step, state, **common)
    if options.decoding == "beam":
        return beam_search(
            model.decoder.step,
            state,
            beam_size=options.beam_size,
            num_results=options.num_captions,
            **common,
        )
    return sample(
        model.decoder.step,
        state,
        num_samples=options.num_captions,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed,
        **common,
    )


def search_batch(
    model: ImageCaptioner, features: np.ndarray, options: DecodeOptions
) -> list[list[Hypothesis]]:
    """The hypotheses of each image of an encoded batch (one row of ``features`` each).

    Greedy decodes the whole batch at once: each step is one matrix product for all the images
    that are still writing, instead of one per image (bench/bench_folder.py measures it). Beam
    search and sampling go one image at a time (sampling's draws are seeded per image).
    """
    if options.decoding != "greedy" or len(features) < 2:
        return [search_features(model, row, options) for row in features]
    state = model.decoder.init_state(features)
    return [[h] for h in greedy(model.decoder.step, state, **_search_arguments(model, options))]


_BLAS = ThreadpoolController()


def single_threaded_blas():
    """The decoder's matrices are small: one BLAS thread is as fast, and leaves no OpenBLAS
    workers spinning to steal the CPU from the next encoder call (measured: 70 -> 44 ms per
    caption end to end on 2 vCPUs, bench/bench_inference.py)."""
    return _BLAS.limit(limits=1, user_api="blas")


def _to_caption(model: ImageCaptioner, hyp: Hypothesis) -> Caption:
    words = [model.vocab.tokens[i] for i in hyp.token_ids]
    maps = None
    if hyp.attention is not None:
        maps = hyp.attention.reshape(-1, *model.config.encoder.feature_shape[:2])
    return Caption(join_words(words), round(hyp.score, 6), round(hyp.logprob, 6), words, maps)


@dataclass
class DecodedImages:
    """Images read for one encoder call: ``pixels`` of the readable ones (indices ``good``),
    and per image its error (None if readable) and the time reading it took."""

    pixels: list[np.ndarray]
    good: list[int]
    errors: list[str | None]
    load_ms: list[float]


def read_images(
    images: Sequence[ImageInput],
    limits: ImageLimits = DEFAULT_LIMITS,
    target_size: int | None = None,
) -> DecodedImages:
    """Decode ``images``; a bad one gets its error, not raised. ``target_size``: the encoder's
    input size (see :func:`imcap_hub.images.load_image`)."""
    batch = DecodedImages([], [], [], [])
    for i, image in enumerate(images):
        start = time.perf_counter()
        error = None
        try:
            batch.pixels.append(load_image(image, limits, target_size))
            batch.good.append(i)
        except ImcapError as e:
            error = str(e)
        batch.errors.append(error)
        batch.load_ms.append((time.perf_counter() - start) * 1e3)
    return batch


def encode_images(model: ImageCaptioner, batch: DecodedImages) -> tuple[np.ndarray, float]:
    """(features of ``batch``'s readable images, one encoder call; its ms)."""
    start = time.perf_counter()
    features = model.encoder.encode(batch.pixels) if batch.pixels else np.zeros((0,))
    return features, (time.perf_counter() - start) * 1e3


def caption_features(
    model: ImageCaptioner,
    batch: DecodedImages,
    features: np.ndarray,
    encode_ms: float,
    options: Sequence[DecodeOptions],
) -> list[list[Prediction]]:
    """The captions of an encoded batch, once per set of options (see predict_decodings)."""
    results = [[Prediction() for _ in batch.errors] for _ in options]
    for per_option in results:
        for prediction, error, load_ms in zip(per_option, batch.errors, batch.load_ms):
            prediction.error = error
            prediction.timings_ms["load"] = load_ms
    n = len(batch.good)
    for opts, per_option in zip(options, results):
        if not n:
            continue
        start = time.perf_counter()
        with single_threaded_blas():
            hyps_per_image = search_batch(model, features, opts)
        # Each image's share of the batch's decoding time (greedy decodes the batch at once).
        decode_ms = (time.perf_counter() - start) * 1e3 / n
        for i, hyps in zip(batch.good, hyps_per_image):
            per_option[i].captions = [_to_caption(model, h) for h in hyps]
            timings = per_option[i].timings_ms
            timings["encode"] = encode_ms / n
            timings["decode"] = decode_ms
            timings["total"] = timings["load"] + timings["encode"] + timings["decode"]
            timings["batch_size"] = n
    return results


def predict_decodings(
    model: ImageCaptioner,
    images: Sequence[ImageInput],
    options: Sequence[DecodeOptions],
    limits: ImageLimits = DEFAULT_LIMITS,
) -> list[list[Prediction]]:
    """Caption images once per set of options, encoding them only once.

    Returns one list of predictions per entry of ``options``, in image order. A bad image gets
    ``error`` set, not raised.
    """
    for opts in options:
        opts.validate(model.config)
    batch = read_images(images, limits, model.config.encoder.image_size)
    features, encode_ms = encode_images(model, batch)
    return caption_features(model, batch, features, encode_ms, options)


def predict_many(
    model: ImageCaptioner,
    images: Sequence[ImageInput],
    options: DecodeOptions | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> list[Prediction]:
    """Caption several images with one encoder call. A bad image gets ``error`` set, not raised."""
    return predict_decodings(model, images, [options or DecodeOptions()], limits)[0]


def predict(
    model: ImageCaptioner,
    image: ImageInput,
    options: DecodeOptions | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> Prediction:
    """Caption one image. Raises ImcapError (ImageError, OptionsError) with a one-line reason."""
    result = predict_many(model, [image], options, limits)[0]
    if result.error is not None:
        raise ImageError(result.error)
    return result
