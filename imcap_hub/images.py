"""Safe image decoding: bytes, paths, PIL images or arrays -> RGB uint8 arrays."""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImcapError

ImageInput = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray


class ImageError(ImcapError, ValueError):
    """An input that is not a usable image; the message says what is wrong."""


@dataclass(frozen=True)
class ImageLimits:
    """Refuse inputs that would exhaust memory before decoding them."""

    max_pixels: int = 40_000_000
    max_bytes: int = 25 * 1024 * 1024


DEFAULT_LIMITS = ImageLimits()


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    return f"the {type(source).__name__} input"


def _read_bytes(source: str | os.PathLike, limits: ImageLimits) -> bytes:
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{_describe(source)}: no such file")
    if not path.is_file():
        raise ImageError(f"{_describe(source)}: not a file")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ImageError(
            f"{_describe(source)}: file is {size / 2**20:.1f} MiB, over the "
            f"{limits.max_bytes / 2**20:.0f} MiB limit"
        )
    return path.read_bytes()


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any PIL mode to RGB; transparency goes onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB") if img.mode != "RGB" else img


def _decode_pil(img: Image.Image, what: str, limits: ImageLimits) -> np.ndarray:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{what}: image is {width}x{height} pixels, over the "
            f"{limits.max_pixels / 1e6:.0f} megapixel limit"
        )
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except Image.DecompressionBombError:
        raise ImageError(f"{what}: image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{what}: the image data is damaged or truncated ({e})") from None
    return np.asarray(img, dtype=np.uint8)


def _decode_bytes(data: bytes, what: str, limits: ImageLimits) -> np.ndarray:
    if len(data) == 0:
        raise ImageError(f"{what}: the file is empty")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"{what}: {len(data) / 2**20:.1f} MiB, over the {limits.max_bytes / 2**20:.0f} MiB limit"
        )
    with warnings.catch_warnings():
        # PIL warns (and only later raises) for large images; our own pixel limit decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(f"{what}: not an image (unrecognised format)") from None
        except Image.DecompressionBombError as e:
            # PIL refuses before we see the size; its message carries the pixel count.
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
            raise ImageError(
                f"{what}: image is too large ({size}, over the "
                f"{limits.max_pixels / 1e6:.0f} megapixel limit)"
            ) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{what}: cannot read the image ({e})") from None
        with img:
            return _decode_pil(img, what, limits)


def _from_array(arr: np.ndarray, what: str, limits: ImageLimits) -> np.ndarray:
    """An array as load_image's docstring says; refuse anything else, naming the reason."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{what}: expected an HxW, HxWx1, HxWx3 or HxWx4 array, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{what}: the array has no pixels (shape {arr.shape})")
    if arr.shape[0] * arr.shape[1] > limits.max_pixels:
        raise ImageError(f"{what}: {arr.shape[1]}x{arr.shape[0]} pixels is over the limit")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(f"{what}: the array holds NaN or infinite values")
        scale = 255.0 if float(arr.max()) <= 1.0 else 1.0
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"{what}: pixels of type {arr.dtype} are not an image (use uint8)")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        return np.asarray(_to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode="RGBA")))
    return np.ascontiguousarray(arr)


def load_image(source: ImageInput, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``source`` to an HxWx3 uint8 RGB array with EXIF orientation applied.

    ``source``: a path, bytes, a PIL image or a numpy array. Arrays are read as
    (H, W) or (H, W, 1) grey, (H, W, 3) RGB, or (H, W, 4) RGBA composited on white (as for
    files); uint8 as is, uint16 scaled to 0..255, other integers clipped to 0..255, bool as
    black and white, floats as 0..1 when their maximum is at most 1 and as 0..255 otherwise.
    Refused: other shapes, no pixels (H or W is 0), NaN or infinite floats, other dtypes
    (complex, strings, objects), more pixels than ``limits`` allows.

    Raises ImageError with a one-line reason for anything that is not a usable image.
    """
    what = _describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, what, limits)
    if isinstance(source, Image.Image):
        return _decode_pil(source, what, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(source), what, limits)
    if isinstance(source, (str, os.PathLike)):
        return _decode_bytes(_read_bytes(source, limits), what, limits)
    raise ImageError(f"unsupported image input of type {type(source).__name__}")


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Squash-resize to size x size (bilinear), as the encoder was trained."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
