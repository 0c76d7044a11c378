"""Many images, batch by batch, with the stages overlapped: while the encoder runs on one batch,
a thread reads (decodes) the next and another writes the captions of the one before.

The encoder keeps both cores busy on its own; what overlapping buys is the time it would wait
for JPEG decoding (PIL releases the GIL) and for the decoder's numpy loop (small matrices, one
BLAS thread): ``bench/bench_folder.py`` measures it against one stage after another.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from .images import DEFAULT_LIMITS, ImageInput, ImageLimits
from .inference import (
    DecodeOptions,
    Prediction,
    caption_features,
    encode_images,
    read_images,
)

if TYPE_CHECKING:
    from .model import ImageCaptioner


def caption_batches(
    model: ImageCaptioner,
    batches: Sequence[Sequence[ImageInput]],
    options: DecodeOptions,
    limits: ImageLimits = DEFAULT_LIMITS,
    *,
    overlap: bool = True,
) -> Iterator[list[Prediction]]:
    """The predictions of each batch, in order: one encoder call per batch. ``overlap``
    False runs the stages one after another (the same results)."""
    options.validate(model.config)
    size = model.config.encoder.image_size
    if not overlap:
        for images in batches:
            batch = read_images(images, limits, size)
            yield caption_features(model, batch, *encode_images(model, batch), [options])[0]
        return
    with (
        ThreadPoolExecutor(1, "imcap-read") as reader,
        ThreadPoolExecutor(1, "imcap-decode") as writer,
    ):
        reading = reader.submit(read_images, batches[0], limits, size) if batches else None
        captioning: Future | None = None
        for i in range(len(batches)):
            batch = reading.result()
            if i + 1 < len(batches):
                reading = reader.submit(read_images, batches[i + 1], limits, size)
            features, encode_ms = encode_images(model, batch)
            if captioning is not None:
                yield captioning.result()[0]
            captioning = writer.submit(
                caption_features, model, batch, features, encode_ms, [options]
            )
        if captioning is not None:
            yield captioning.result()[0]
