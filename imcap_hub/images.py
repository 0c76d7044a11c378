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


def _one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines too) as one space: messages are one line."""
    return " ".join(str(text).split())


def _describe(source: object) -> str:
    """How messages name ``source``: a path quoted (control characters escaped, so that the
    message stays one line), an array by its shape, a PIL image by its mode and size."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return f"'{path}'" if path.isprintable() else repr(path)
    if isinstance(source, np.ndarray):
        return f"the array of shape {source.shape}"
    if isinstance(source, Image.Image):
        return f"the {source.mode} PIL image of {source.width}x{source.height} pixels"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"the {type(source).__name__} input ({memoryview(source).nbytes} bytes)"
    return f"the {type(source).__name__} input"


def _read_bytes(source: str | os.PathLike, limits: ImageLimits) -> bytes:
    what = _describe(source)
    if not os.fspath(source):
        raise ImageError("an empty path ('') names no image file")
    if "\0" in os.fsdecode(source):
        raise ImageError(f"{what}: no such file (the path holds a NUL character)")
    path = Path(source)
    try:
        if not path.exists():
            raise ImageError(f"{what}: no such file")
        if not path.is_file():  # a folder, a pipe or a device: reading it could block
            raise ImageError(f"{what}: not a file")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageError(
                f"{what}: file is {size / 2**20:.1f} MiB, over the "
                f"{limits.max_bytes / 2**20:.0f} MiB limit"
            )
        return path.read_bytes()
    except ImageError:
        raise
    except OSError as e:  # no permission, a name too long, an I/O error...
        raise ImageError(f"{what}: cannot read the file ({e.strerror or _one_line(e)})") from None
    except ValueError as e:  # a NUL character in the path
        raise ImageError(f"{what}: not a usable path ({_one_line(e)})") from None


class _NotFinite(ValueError):
    """A float image holding NaN or infinite values (refused, as for arrays)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any PIL mode to RGB; transparency goes onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise _NotFinite("the image holds NaN or infinite values")
        top = 1.0 if arr.max() <= 1.0 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8))
    elif img.mode == "La":  # premultiplied alpha: PIL converts it to LA only
        img = img.convert("LA")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB") if img.mode != "RGB" else img


# A JPEG that is going to be resized to ``target_size`` is decoded at a reduced scale (libjpeg's
# DCT scaling: PIL's draft mode) only while both its sides stay at least this many times
# ``target_size``, so the resize still averages at least 2 x 2 decoded pixels into each of its
# own. Five Flickr8k photos enlarged to 12 megapixels (a phone photo's size), by hand: 182 to
# 270 ms to decode and resize to 224 px here, 23 to 32 ms so, and the 224 px pixels differ from
# the full decode's by at most 2 levels of 255 (mean 0.14 to 0.18). Flickr8k's and COCO's own
# images (at most 500 or 640 px) are too small for it: decoded exactly as before.
DRAFT_MARGIN = 2


def _decode_pil(
    img: Image.Image, what: str, limits: ImageLimits, target_size: int | None = None
) -> np.ndarray:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{what}: image is {width}x{height} pixels, over the "
            f"{limits.max_pixels / 1e6:.0f} megapixel limit"
        )
    if getattr(img, "tile", None) and getattr(img, "fp", False) is None:
        raise ImageError(
            f"{what}: its file was closed before its pixels were read (call .load() before "
            "closing it, or pass the path)"
        )
    try:
        if target_size and img.format == "JPEG":
            img.draft(None, (DRAFT_MARGIN * target_size, DRAFT_MARGIN * target_size))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except Image.DecompressionBombError:
        raise ImageError(f"{what}: image is too large to decode safely") from None
    except _NotFinite as e:
        raise ImageError(f"{what}: {e}") from None
    except MemoryError:
        raise ImageError(f"{what}: not enough memory to decode the image") from None
    except Exception as e:  # a decoder fed damaged data may raise anything (IndexError, ...)
        raise ImageError(f"{what}: the image data is damaged or truncated ({_reason(e)})") from None
    return np.asarray(img, dtype=np.uint8)


def _reason(error: Exception) -> str:
    """A decoder's exception in one line, its type named where its message says little."""
    text = _one_line(error)
    if isinstance(error, (OSError, SyntaxError, ValueError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# Formats whose first bytes say what they are: data that starts so but does not decode is a
# damaged image, not "not an image".
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\0": "TIFF",
    b"MM\0*": "TIFF",
    b"qoif": "QOI",
    b"DDS ": "DDS",
}


def _signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)


def _decode_bytes(
    data: bytes, what: str, limits: ImageLimits, target_size: int | None = None
) -> np.ndarray:
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
            fmt = _signature(data)
            if fmt:
                raise ImageError(
                    f"{what}: the image data is damaged or truncated (it starts as a {fmt} file "
                    "but cannot be decoded)"
                ) from None
            raise ImageError(f"{what}: not an image (unrecognised format)") from None
        except Image.DecompressionBombError as e:
            # PIL refuses before we see the size; its message carries the pixel count.
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
            raise ImageError(
                f"{what}: image is too large ({size}, over the "
                f"{limits.max_pixels / 1e6:.0f} megapixel limit)"
            ) from None
        except Exception as e:  # a decoder fed damaged data may raise anything
            raise ImageError(f"{what}: cannot read the image ({_reason(e)})") from None
        with img:
            return _decode_pil(img, what, limits, target_size)


def _from_array(arr: np.ndarray, what: str, limits: ImageLimits) -> np.ndarray:
    """An array as load_image's docstring says; refuse anything else, naming the reason."""
    arr = np.asarray(arr)  # a subclass (np.matrix, a masked array) as a plain array
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{what}: expected an HxW, HxWx1, HxWx3 or HxWx4 array, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{what}: the array has no pixels (shape {arr.shape})")
    if arr.shape[0] * arr.shape[1] > limits.max_pixels:
        raise ImageError(
            f"{what}: {arr.shape[1]}x{arr.shape[0]} pixels is over the "
            f"{limits.max_pixels / 1e6:.0f} megapixel limit"
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(f"{what}: the array holds NaN or infinite values")
        scale = 255.0 if float(arr.max()) <= 1.0 else 1.0
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # uint16, either byte order
        arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif arr.dtype.kind in "iu":  # not timedelta64, which numpy counts as an integer
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"{what}: pixels of type {arr.dtype} are not an image (use uint8)")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        return np.asarray(_to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode="RGBA")))
    return np.ascontiguousarray(arr)


def load_image(
    source: ImageInput, limits: ImageLimits = DEFAULT_LIMITS, target_size: int | None = None
) -> np.ndarray:
    """Decode ``source`` to an HxWx3 uint8 RGB array with EXIF orientation applied.

    ``target_size``: the size the caller will resize the image to (the encoder's input), if it
    will: a large JPEG file is then decoded at a reduced scale, both sides still at least
    ``DRAFT_MARGIN`` times ``target_size`` (see there). None: every pixel, always.

    ``source``: a path, bytes, a PIL image or a numpy array. Arrays are read as
    (H, W) or (H, W, 1) grey, (H, W, 3) RGB, or (H, W, 4) RGBA composited on white (as for
    files); uint8 as is, uint16 scaled to 0..255, other integers clipped to 0..255, bool as
    black and white, floats as 0..1 when their maximum is at most 1 and as 0..255 otherwise.
    Refused: other shapes, no pixels (H or W is 0), NaN or infinite floats, other dtypes
    (complex, strings, objects, dates and times), more pixels than ``limits`` allows. A float
    ("F") image holding NaN or infinite values is refused as such an array is.

    Raises ImageError with a one-line reason naming the input (a path, an array by its shape,
    a PIL image by its mode and size) for anything that is not a usable image: a decoder's own
    exception on damaged data never escapes.
    """
    what = _describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, what, limits)
    if isinstance(source, Image.Image):
        return _decode_pil(source, what, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(source), what, limits, target_size)
    if isinstance(source, (str, os.PathLike)):
        return _decode_bytes(_read_bytes(source, limits), what, limits, target_size)
    raise ImageError(f"unsupported image input of type {type(source).__name__}")


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Squash-resize to size x size (bilinear), as the encoder was trained."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
