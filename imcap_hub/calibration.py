"""Calibration images: a few of a model's own training images, stored with the model.

The int8 encoder runtime (``openvino-int8``) quantises the encoder once, and its activation
ranges come from these images. They are the training images, resized to the encoder's input size
and stored as JPEG bytes in ``calibration.safetensors`` (two tensors: ``jpeg``, every image's
bytes one after the other, and ``offsets``, where each image starts and the last one ends).
JPEG keeps the file small: 128 ResNet50-sized images take about 2 MB instead of 19 MB of pixels,
and calibration needs the activations' ranges, not the exact pixels.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImcapError
from .files import load_tensors, save_tensors
from .images import ImageError, load_image, resize

CALIBRATION_FILE = "calibration.safetensors"
CALIBRATION_FORMAT = "imcap-calibration/1"
# Enough for NNCF's statistics (its default subset is 300 images), small enough for a Hub repo.
DEFAULT_CALIBRATION_IMAGES = 128
MAX_CALIBRATION_IMAGES = 1000
JPEG_QUALITY = 90


class CalibrationError(ImcapError, ValueError):
    """Calibration images that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class CalibrationSet:
    """JPEG-encoded RGB images of ``image_size`` x ``image_size`` pixels."""

    jpegs: tuple[bytes, ...]
    image_size: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.jpegs) <= MAX_CALIBRATION_IMAGES:
            raise CalibrationError(
                f"a calibration set holds 1 to {MAX_CALIBRATION_IMAGES} images, "
                f"not {len(self.jpegs)}"
            )

    def __len__(self) -> int:
        return len(self.jpegs)

    @classmethod
    def from_images(cls, images: Sequence[np.ndarray], image_size: int) -> CalibrationSet:
        """RGB uint8 images, squash-resized to ``image_size`` as the encoder reads them."""
        from PIL import Image

        jpegs = []
        for image in images:
            buffer = io.BytesIO()
            # 4:4:4 chroma: the synthetic and real colours the encoder sees, not blurred ones.
            Image.fromarray(resize(image, image_size)).save(
                buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0
            )
            jpegs.append(buffer.getvalue())
        return cls(tuple(jpegs), image_size)

    def fingerprint(self) -> str:
        """A hash of the images (part of the int8 encoder's cache key)."""
        h = hashlib.sha256(f"{CALIBRATION_FORMAT}:{self.image_size}".encode())
        for data in self.jpegs:
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()[:16]

    def images(self) -> list[np.ndarray]:
        """The decoded images, each checked to be ``image_size`` x ``image_size`` RGB."""
        decoded = []
        for i, data in enumerate(self.jpegs):
            try:
                image = load_image(data)
            except ImageError as e:
                raise CalibrationError(f"calibration image {i}: {e}") from None
            if image.shape[:2] != (self.image_size, self.image_size):
                raise CalibrationError(
                    f"calibration image {i} is {image.shape[1]}x{image.shape[0]}; the encoder "
                    f"reads {self.image_size}x{self.image_size}"
                )
            decoded.append(image)
        return decoded

    def nbytes(self) -> int:
        return sum(len(data) for data in self.jpegs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``calibration.safetensors`` (atomically)."""
        offsets = np.cumsum([0, *(len(data) for data in self.jpegs)], dtype=np.int64)
        jpeg = np.frombuffer(b"".join(self.jpegs), dtype=np.uint8)
        return save_tensors({"jpeg": jpeg, "offsets": offsets}, path, CALIBRATION_FORMAT)

    @classmethod
    def load(cls, path: str | os.PathLike, image_size: int) -> CalibrationSet:
        """Read and check ``calibration.safetensors``: its tensors, and every image decoded (a
        model is checked when it loads, not when the int8 encoder is first built)."""
        from safetensors import SafetensorError

        name = Path(path).name
        try:
            tensors = load_tensors(path)
        except (SafetensorError, OSError) as e:
            raise CalibrationError(f"cannot read {name}: {e}") from None
        if set(tensors) != {"jpeg", "offsets"}:
            raise CalibrationError(
                f"{name} must hold the tensors jpeg and offsets, not {', '.join(sorted(tensors))}"
            )
        jpeg, offsets = tensors["jpeg"], tensors["offsets"]
        if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
            raise CalibrationError(f"{name}: tensor jpeg must be 1-d uint8 (the images' bytes)")
        if offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 2:
            raise CalibrationError(f"{name}: tensor offsets must be 1-d int64 with n + 1 entries")
        if offsets[0] != 0 or offsets[-1] != len(jpeg) or np.any(np.diff(offsets) <= 0):
            raise CalibrationError(
                f"{name}: offsets must rise from 0 to the length of jpeg ({len(jpeg)})"
            )
        data = jpeg.tobytes()
        try:
            calibration = cls(
                tuple(data[a:b] for a, b in itertools.pairwise(offsets.tolist())), image_size
            )
            calibration.images()
        except CalibrationError as e:
            raise CalibrationError(f"{name}: {e}") from None
        return calibration
