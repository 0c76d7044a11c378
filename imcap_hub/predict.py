"""predict(): the one captioning function behind the app, the Python API and the CLI."""

from __future__ import annotations

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
    from .model import ImageCaptioner

DECODINGS = ("greedy", "beam", "sample")
MAX_BEAM = 20


class OptionsError(ImcapError, ValueError):
    """Decoding options out of range."""


@dataclass
class DecodeOptions:
    """How to turn features into captions. ``max_length`` defaults to the model's."""

    decoding: str = "beam"
    beam_size: int = 3
    num_captions: int = 1
    max_length: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = 0
    length_penalty: float = 1.0

    def validate(self, model_max_length: int) -> None:
        if self.decoding not in DECODINGS:
            raise OptionsError(
                f"decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}"
            )
        if not 1 <= int(self.beam_size) <= MAX_BEAM:
            raise OptionsError(f"beam_size must be between 1 and {MAX_BEAM}, got {self.beam_size}")
        limit = self.beam_size if self.decoding == "beam" else MAX_BEAM
        if self.decoding == "greedy":
            limit = 1
        if not 1 <= int(self.num_captions) <= limit:
            raise OptionsError(
                f"num_captions must be between 1 and {limit} for {self.decoding} decoding, got {self.num_captions}"
            )
        if self.max_length is not None and not 1 <= int(self.max_length) <= model_max_length:
            raise OptionsError(
                f"max_length must be between 1 and {model_max_length}, got {self.max_length}"
            )
        if not self.temperature > 0:
            raise OptionsError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise OptionsError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodeOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionsError(f"unknown option(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass
class Caption:
    """One caption: its text, length-normalised score, total log-probability and words."""

    text: str
    score: float
    logprob: float
    tokens: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _search(
    model: ImageCaptioner, features: np.ndarray, options: DecodeOptions
) -> list[Hypothesis]:
    vocab = model.vocab
    common = {
        "start_id": vocab.start_id,
        "end_id": vocab.end_id,
        "max_length": int(options.max_length or model.config.decoder.max_length),
        "banned": (vocab.pad_id, vocab.start_id, vocab.unk_id),
        "length_penalty": options.length_penalty,
    }
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


_BLAS = ThreadpoolController()


def _single_threaded_blas():
    """The decoder's matrices are small: one BLAS thread is as fast, and leaves no OpenBLAS
    workers spinning to steal the CPU from the next encoder call (measured: 70 -> 44 ms per
    caption end to end on 2 vCPUs, bench/bench_inference.py)."""
    return _BLAS.limit(limits=1, user_api="blas")


def _to_caption(model: ImageCaptioner, hyp: Hypothesis) -> Caption:
    words = [model.vocab.tokens[i] for i in hyp.token_ids]
    return Caption(join_words(words), round(hyp.score, 6), round(hyp.logprob, 6), words)


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
        opts.validate(model.config.decoder.max_length)
    results = [[Prediction() for _ in images] for _ in options]
    decoded: list[np.ndarray] = []
    good: list[int] = []
    for i, image in enumerate(images):
        start = time.perf_counter()
        error = None
        try:
            decoded.append(load_image(image, limits))
            good.append(i)
        except ImcapError as e:
            error = str(e)
        load_ms = (time.perf_counter() - start) * 1e3
        for per_option in results:
            per_option[i].error = error
            per_option[i].timings_ms["load"] = load_ms
    if not good:
        return results
    start = time.perf_counter()
    features = model.encoder.encode(decoded)
    encode_ms = (time.perf_counter() - start) * 1e3
    for opts, per_option in zip(options, results):
        for row, i in enumerate(good):
            start = time.perf_counter()
            with _single_threaded_blas():
                hyps = _search(model, features[row], opts)
            per_option[i].captions = [_to_caption(model, h) for h in hyps]
            timings = per_option[i].timings_ms
            timings["encode"] = encode_ms / len(good)
            timings["decode"] = (time.perf_counter() - start) * 1e3
            timings["total"] = timings["load"] + timings["encode"] + timings["decode"]
            timings["batch_size"] = len(good)
    return results


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
