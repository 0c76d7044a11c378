"""The bad-input corpus: files, numpy arrays, PIL images, other objects and decoding options,
made by the tests themselves (nothing from outside the repository), each with what it is and
what every entry point must do with it (tests/test_bad_inputs.py runs them).

The expected outcomes come from the documented contract, not from what the code does today:
``imcap_hub.images.load_image``'s docstring for images (arrays: (H, W), (H, W, 1), (H, W, 3) or
(H, W, 4) RGBA composited on white; uint8, uint16 scaled, other integers clipped, bool, floats
0..1 or 0..255; refused: other shapes and dtypes, no pixels, NaN/inf, more than ``ImageLimits``)
and ``imcap_hub.inference.DecodeOptions`` for options. A case is an image (``problem`` is None:
every entry point must caption it) or not (``problem``: a regex the one-line refusal matches).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from helpers import random_image
from PIL import Image

PYTHON, CLI, APP = "python", "cli", "app"
EVERYWHERE = frozenset({PYTHON, CLI, APP})
NO_UPLOAD = frozenset({PYTHON, CLI})  # not a file gradio_client can upload (a folder, nothing)
PYTHON_ONLY = frozenset({PYTHON})
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Case:
    """One input. ``make(folder)`` returns it (file cases write their file into ``folder`` and
    return its path). ``problem``: None for an image (a caption is expected), else a regex the
    refusal's message must match. ``via``: the entry points that can take it. ``pixel``: the
    top-left RGB pixel ``load_image`` must give, where the contract fixes it. ``names``: a regex
    for how the message names the input (default: the file's path, the array's shape, the PIL
    image's mode; options name themselves in ``problem``).

    Options cases caption a good PNG with ``options`` (Python keywords); ``cli`` is the same as
    command-line arguments and ``app`` as /caption_details arguments (None: that entry point
    cannot express it)."""

    id: str
    kind: str  # "file", "array", "pil", "object" or "options"
    what: str
    make: Callable[[Path], Any]
    problem: str | None = None
    via: frozenset[str] = EVERYWHERE
    pixel: tuple[int, int, int] | None = None
    names: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    cli: tuple[str, ...] | None = None
    app: dict[str, Any] | None = None

    @property
    def is_image(self) -> bool:
        return self.problem is None


# --- the bytes of files --------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, depth: int = 8, color: int = 2, rows: bytes = bytes(1024)) -> bytes:  # fmt: skip
    """A PNG written by hand, with any header (sizes PIL would refuse to make) and ``rows`` as
    its (filter byte + pixels) scanlines: a few zero bytes by default, all a bomb needs."""
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def picture(seed: int = 0, size: tuple[int, int] = (24, 32)) -> Image.Image:
    """A small noisy RGB picture (``size`` is height, width)."""
    return Image.fromarray(random_image(seed, size))


def rgb16_png() -> bytes:
    """An 8x6 PNG of 16 bits per channel (PIL cannot write one), all white."""
    return raw_png(8, 6, depth=16, color=2, rows=(b"\0" + b"\xff" * 6 * 8) * 6)


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20 with a red left stripe, EXIF orientation 6: shown 20x40, stripe on top."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif, quality=95)


def palette_with_transparency() -> Image.Image:
    img = Image.new("P", (8, 6), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (4, 0, 8, 6))  # right half red, left half index 0: transparent
    img.info["transparency"] = 0
    return img


def animated(fmt: str) -> bytes:
    """Three frames, red first."""
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def corrupt(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


def text_bomb_png() -> bytes:
    """A valid 8x6 PNG carrying a zTXt chunk that inflates to 64 MiB (over PIL's text limit)."""
    good = encode(picture(5, (6, 8)), "PNG")
    ztxt = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(bytes(64 << 20), 9))
    return good[:33] + ztxt + good[33:]  # after the signature and IHDR


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def gif_bomb() -> bytes:
    """A GIF whose logical screen is 40000x40000, holding a 1x1 image."""
    screen = b"GIF89a" + struct.pack("<HH", 40000, 40000) + b"\0\0\0"
    return screen + b",\0\0\0\0\x01\0\x01\0\0\x02\x02D\x01\0;"


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_dir(path: Path) -> Path:
    path.mkdir()
    return path


def make_symlink_to_nothing(path: Path) -> Path:
    path.symlink_to("nowhere.png")
    return path


# --- the corpus: files ---------------------------------------------------------------------------


def _file(case_id: str, what: str, name: str, content: Callable[[], bytes] | None, problem: str | None = None, *, via: frozenset[str] = EVERYWHERE, pixel: tuple[int, int, int] | None = None, make: Callable[[Path], Path] | None = None, names: str | None = None) -> Case:  # fmt: skip
    """A file case: ``content()`` written to ``name``, in a folder of its own (names repeat), or
    ``make(path)`` for what is not plain bytes (``content`` None)."""

    def build(folder: Path) -> Path:
        path = folder / case_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            return make(path) if make else path
        path.write_bytes(content())
        return path

    return Case(case_id, "file", what, build, problem, via, pixel, names)


NOT_AN_IMAGE = r": not an image \(unrecognised format\)"
DAMAGED = r": (cannot read the image|the image data is damaged or truncated)"
TOO_LARGE = r": image is (too large|\d+x\d+ pixels), over the 40 megapixel limit|: image is too large \(\d+ megapixels, over the 40 megapixel limit\)"
OVER_BYTES = (  # gradio_client refuses to upload it: "File <path> exceeds the maximum..."
    r"(: file is 26\.0 MiB, over the 25 MiB limit| exceeds the maximum file size of 10485760 bytes)"
)

# fmt: off
FILES = [
    # real images, in the formats and shapes users bring
    _file("png", "PNG, RGB", "photo.png", lambda: encode(picture(1), "PNG")),
    _file("jpeg", "JPEG, RGB", "photo.jpg", lambda: encode(picture(2), "JPEG", quality=90)),
    _file("jpeg_progressive", "progressive JPEG", "prog.jpg", lambda: encode(picture(3), "JPEG", progressive=True)),
    _file("jpeg_grey", "greyscale JPEG", "grey.jpg", lambda: encode(picture(4).convert("L"), "JPEG")),
    _file("webp", "WebP, lossy", "photo.webp", lambda: encode(picture(5), "WEBP")),
    _file("webp_alpha_clear", "lossless WebP, fully transparent: white", "clear.webp", lambda: encode(Image.new("RGBA", (8, 6), (9, 9, 9, 0)), "WEBP", lossless=True), pixel=WHITE),
    _file("bmp", "BMP", "photo.bmp", lambda: encode(picture(6), "BMP")),
    _file("gif", "GIF", "photo.gif", lambda: encode(picture(7).convert("P"), "GIF")),
    _file("gif_animated", "animated GIF: its first frame", "anim.gif", lambda: animated("GIF"), pixel=(255, 0, 0)),
    _file("png_animated", "animated PNG (APNG): its first frame", "anim.png", lambda: animated("PNG"), pixel=(255, 0, 0)),
    _file("tiff", "TIFF, LZW", "photo.tif", lambda: encode(picture(8), "TIFF", compression="tiff_lzw")),
    _file("tiff_multipage", "multi-page TIFF: its first page", "pages.tiff", lambda: animated("TIFF"), pixel=(255, 0, 0)),
    _file("ico", "Windows icon", "favicon.ico", lambda: encode(picture(9, (32, 32)), "ICO")),
    _file("ppm", "PPM", "photo.ppm", lambda: encode(picture(10), "PPM")),
    _file("png_1x1", "1x1 pixel", "dot.png", lambda: encode(Image.new("RGB", (1, 1), (7, 8, 9)), "PNG"), pixel=(7, 8, 9)),
    _file("png_1x4000", "1 px wide, 4000 px tall", "tall.png", lambda: encode(Image.new("L", (1, 4000), 30), "PNG"), pixel=(30, 30, 30)),
    _file("png_4000x1", "4000 px wide, 1 px tall", "wide.png", lambda: encode(Image.new("L", (4000, 1), 40), "PNG"), pixel=(40, 40, 40)),
    _file("png_12mp", "4000x3000: large, under the 40 megapixel limit", "big.png", lambda: encode(Image.new("RGB", (4000, 3000), (1, 2, 3)), "PNG"), pixel=(1, 2, 3)),
    _file("png_rgb16", "16 bits per channel RGB", "deep.png", rgb16_png, pixel=WHITE),
    _file("png_grey16", "16-bit grey (I;16) PNG", "grey16.png", lambda: encode(Image.new("I;16", (8, 6), 65535), "PNG"), pixel=WHITE),
    _file("jpeg_cmyk", "CMYK JPEG", "cmyk.jpg", lambda: encode(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG")),
    _file("png_palette_alpha", "palette PNG with a transparent index: white", "pal.png", lambda: encode(palette_with_transparency(), "PNG"), pixel=WHITE),
    _file("jpeg_exif_rotated", "EXIF orientation 6: shown rotated", "rotated.jpg", exif_rotated_jpeg, pixel=(255, 0, 0)),
    _file("png_rgba_clear", "fully transparent RGBA PNG: white", "clear.png", lambda: encode(Image.new("RGBA", (8, 6), (0, 0, 0, 0)), "PNG"), pixel=WHITE),
    _file("png_trailing_garbage", "PNG with junk after IEND", "tail.png", lambda: encode(picture(11), "PNG") + b"junk" * 100),
    _file("png_named_jpg", "a PNG named .jpg", "really-a-png.jpg", lambda: encode(picture(12), "PNG")),
    _file("jpeg_no_extension", "a JPEG with no extension", "photo", lambda: encode(picture(13), "JPEG")),
    _file("unicode_name", "spaces, accents and emoji in the name", "café au lait ☕ 1.png", lambda: encode(picture(14), "PNG")),
    # not images, or not usable ones
    _file("text_named_jpg", "a text file named .jpg", "notes.jpg", lambda: b"this is a text file, not a JPEG\n", NOT_AN_IMAGE),
    _file("html_named_png", "an HTML page named .png", "page.png", lambda: b"<!doctype html><html><body>404 Not Found</body></html>\n", NOT_AN_IMAGE),
    _file("svg_named_png", "an SVG (vector) named .png", "logo.png", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>', NOT_AN_IMAGE),
    _file("pdf_named_jpg", "a PDF named .jpg", "scan.jpg", lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", NOT_AN_IMAGE),
    _file("zip_named_png", "a zip archive named .png", "images.png", lambda: b"PK\x03\x04" + bytes(60), NOT_AN_IMAGE),
    _file("empty_file", "an empty file", "empty.png", lambda: b"", r": the file is empty"),
    _file("truncated_jpeg", "the first 600 bytes of a JPEG", "cut.jpg", lambda: encode(picture(15, (60, 80)), "JPEG")[:600], DAMAGED),
    _file("truncated_png", "the first half of a PNG", "half.png", lambda: half(encode(picture(16), "PNG")), DAMAGED),
    _file("png_header_garbage", "a PNG signature and then garbage", "garbage.png", lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, DAMAGED),
    _file("png_bad_crc", "a PNG whose header chunk fails its checksum", "crc.png", lambda: corrupt(encode(picture(17), "PNG"), 29, 0), DAMAGED),
    _file("png_zero_width", "a PNG header claiming 0x6 pixels", "zero.png", lambda: raw_png(0, 6), DAMAGED),
    _file("png_text_bomb", "a PNG with a zTXt chunk inflating to 64 MiB", "textbomb.png", text_bomb_png, DAMAGED),
    _file("jpeg_header_only", "a JPEG start marker and nothing else", "start.jpg", lambda: b"\xff\xd8\xff\xe0" + bytes(16), DAMAGED),
    _file("gif_truncated", "a GIF cut after its header", "cut.gif", lambda: encode(picture(18).convert("P"), "GIF")[:40], DAMAGED),
    _file("webp_truncated", "the first half of a WebP", "half.webp", lambda: half(encode(picture(19), "WEBP")), DAMAGED),
    _file("qoi_damaged", "a QOI whose width says 65568 but whose data is 32 wide", "bad.qoi", lambda: corrupt(encode(picture(19), "QOI"), 5, 1), DAMAGED),
    _file("dds_damaged", "a DDS with no pixel format flags", "bad.dds", lambda: corrupt(encode(picture(20), "DDS"), 80, 0), DAMAGED),
    _file("bomb_png_900mp", "a 30000x30000 PNG, small on disk", "bomb.png", lambda: raw_png(30000, 30000), TOO_LARGE),
    _file("bomb_png_49mp", "a 7000x7000 PNG: over the limit, under PIL's", "big7000.png", lambda: raw_png(7000, 7000), TOO_LARGE),
    _file("bomb_gif", "a GIF claiming a 40000x40000 screen", "bomb.gif", gif_bomb, TOO_LARGE),
    _file("over_byte_limit", "26 MiB (over the 25 MiB limit, and the app's 10)", "huge.png", lambda: b"\x89PNG\r\n\x1a\n" + bytes(26 << 20), OVER_BYTES),
    _file("newline_in_name", "a text file whose name has a newline", "two\nlines.png", lambda: b"not an image", NOT_AN_IMAGE, names=r"two(\\n|%0A|)lines\.png"),
    _file("directory", "an empty folder", "a-folder.png", None, r": (not a file|a folder with no image files in it)", via=NO_UPLOAD, make=make_dir),
    _file("nonexistent", "a path to nothing", "missing.jpg", None, r": no such file", via=NO_UPLOAD),
    _file("broken_symlink", "a symbolic link to nothing", "link.png", None, r": no such file", via=NO_UPLOAD, make=make_symlink_to_nothing),
    _file("fifo", "a named pipe (reading it would block)", "pipe.png", None, r": not a file", via=NO_UPLOAD, make=make_fifo),
    _file("name_too_long", "a file name of 300 characters", "x" * 296 + ".png", None, r": cannot read the file \(File name too long\)", via=NO_UPLOAD),
    Case("empty_path", "file", "an empty path", lambda folder: "", r" names no image file", NO_UPLOAD, names=r"^an empty path \(''\)"),
]
# fmt: on


# --- the corpus: arrays, PIL images and other objects (Python only) ------------------------------


def _array(case_id: str, what: str, make: Callable[[], Any], problem: str | None = None, pixel: tuple[int, int, int] | None = None) -> Case:  # fmt: skip
    return Case(case_id, "array", what, lambda folder: make(), problem, PYTHON_ONLY, pixel)


def _u8(shape: tuple[int, ...], value: int = 100) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def _readonly() -> np.ndarray:
    arr = _u8((6, 8, 3), 60)
    arr.flags.writeable = False
    return arr


def _matrix() -> np.ndarray:
    with warnings.catch_warnings():  # numpy recommends against np.matrix; users still have them
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(_u8((6, 8), 50))


def _with_nan() -> np.ndarray:
    arr = np.full((6, 8, 3), 0.5, np.float32)
    arr[2, 3, 1] = np.nan
    return arr


SHAPE = r": expected an HxW, HxWx1, HxWx3 or HxWx4 array"
NO_PIXELS = r": the array has no pixels"
NOT_FINITE = r": the array holds NaN or infinite values"
DTYPE = r": pixels of type .+ are not an image"

# fmt: off
ARRAYS = [
    _array("a_u8_hw", "uint8 (H, W): grey", lambda: _u8((6, 8)), pixel=(100, 100, 100)),
    _array("a_u8_hw1", "uint8 (H, W, 1): grey", lambda: _u8((6, 8, 1), 90), pixel=(90, 90, 90)),
    _array("a_u8_hw3", "uint8 (H, W, 3)", lambda: random_image(0, (6, 8))),
    _array("a_u8_rgba", "uint8 (H, W, 4), black at half opacity: grey on white", lambda: np.dstack([_u8((6, 8, 3), 0), _u8((6, 8), 128)]), pixel=(127, 127, 127)),
    _array("a_f32_unit", "float32 in [0, 1]: scaled", lambda: np.full((6, 8, 3), 0.5, np.float32), pixel=(128, 128, 128)),
    _array("a_f64_255", "float64 in [0, 255]: as is", lambda: np.full((6, 8, 3), 200.0), pixel=(200, 200, 200)),
    _array("a_f16", "float16 in [0, 1]", lambda: np.full((6, 8), 0.25, np.float16), pixel=(64, 64, 64)),
    _array("a_bool", "bool: black and white", lambda: np.ones((6, 8), bool), pixel=WHITE),
    _array("a_i64", "int64 over 255: clipped", lambda: np.full((6, 8, 3), 1000, np.int64), pixel=WHITE),
    _array("a_i16_negative", "int16 below 0: clipped", lambda: np.full((6, 8, 3), -7, np.int16), pixel=(0, 0, 0)),
    _array("a_u16", "uint16: scaled to 0..255", lambda: np.full((6, 8, 3), 32768, np.uint16), pixel=(127, 127, 127)),
    _array("a_u16_big_endian", "big-endian uint16: scaled as any uint16", lambda: np.full((6, 8, 3), 32768, ">u2"), pixel=(127, 127, 127)),
    _array("a_strided", "a reversed, strided view", lambda: random_image(1, (12, 16))[::-1, ::2]),
    _array("a_readonly", "a read-only array", _readonly, pixel=(60, 60, 60)),
    _array("a_matrix", "a numpy matrix (an ndarray subclass)", _matrix, pixel=(50, 50, 50)),
    _array("a_hw2", "(H, W, 2)", lambda: _u8((6, 8, 2)), SHAPE),
    _array("a_hw5", "(H, W, 5)", lambda: _u8((6, 8, 5)), SHAPE),
    _array("a_1d", "1-D", lambda: _u8((48,)), SHAPE),
    _array("a_4d", "4-D: a batch", lambda: _u8((2, 6, 8, 3)), SHAPE),
    _array("a_0d", "a 0-d array", lambda: np.array(7, np.uint8), SHAPE),
    _array("a_0x0x3", "(0, 0, 3)", lambda: _u8((0, 0, 3)), NO_PIXELS),
    _array("a_0x5x3", "(0, 5, 3)", lambda: _u8((0, 5, 3)), NO_PIXELS),
    _array("a_5x0", "(5, 0)", lambda: _u8((5, 0)), NO_PIXELS),
    _array("a_nan", "float32 with one NaN", _with_nan, NOT_FINITE),
    _array("a_inf", "float64 of inf", lambda: np.full((6, 8, 3), np.inf), NOT_FINITE),
    _array("a_object", "object dtype (of ints)", lambda: np.zeros((6, 8, 3), object), DTYPE),
    _array("a_complex", "complex64", lambda: np.zeros((6, 8, 3), np.complex64), DTYPE),
    _array("a_str", "strings", lambda: np.full((6, 8, 3), "x"), DTYPE),
    _array("a_datetime", "datetime64", lambda: np.zeros((6, 8, 3), "M8[s]"), DTYPE),
    _array("a_timedelta", "timedelta64 (numpy counts it as an integer)", lambda: np.zeros((6, 8, 3), "m8[s]"), DTYPE),
    _array("a_structured", "a structured dtype", lambda: np.zeros((6, 8, 3), "i4,i4"), DTYPE),
    _array("a_too_many_pixels", "8000x6000 (a broadcast view, no memory): over the limit", lambda: np.broadcast_to(np.uint8(3), (6000, 8000, 3)), r": 8000x6000 pixels is over the 40 megapixel limit"),
]
# fmt: on

# PIL images in every mode PIL makes: mode -> (fill value, the RGB it must give, or None where
# the contract does not fix it, and whether a TIFF keeps the mode: then it is a file case too).
PIL_MODES = {
    "1": (1, WHITE, True),
    "L": (100, (100, 100, 100), True),
    "P": (0, (0, 0, 0), True),
    "RGB": ((1, 2, 3), (1, 2, 3), True),
    "RGBA": ((10, 20, 30, 0), WHITE, True),
    "RGBX": ((1, 2, 3, 0), (1, 2, 3), False),
    "RGBa": ((10, 20, 30, 255), (10, 20, 30), False),
    "CMYK": ((0, 0, 0, 0), WHITE, True),
    "YCbCr": ((255, 128, 128), WHITE, False),
    "LAB": ((100, 0, 0), None, True),
    "HSV": ((0, 0, 255), WHITE, False),
    "I": (70, (70, 70, 70), True),
    "I;16": (65535, WHITE, True),
    "I;16B": (65535, WHITE, True),
    "F": (0.5, (128, 128, 128), True),
    "LA": ((100, 0), WHITE, True),
    "La": ((100, 255), (100, 100, 100), False),
    "PA": ((0, 0), WHITE, True),
}


def _pil_image(mode: str) -> Image.Image:
    return Image.new(mode, (8, 6), PIL_MODES[mode][0])


def _closed_pil_image(folder: Path) -> Image.Image:
    path = folder / "closed.png"
    picture(21).save(path)
    with Image.open(path) as img:  # opened lazily: the pixels were never read
        pass
    return img


def _nan_float_image() -> Image.Image:
    return Image.fromarray(np.full((6, 8), np.nan, np.float32))


def _good_png_bytes() -> bytes:
    return encode(picture(22), "PNG")


def _good_path(folder: Path) -> Path:
    path = folder / "objects" / "p.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(24).save(path)
    return path


NAN_IMAGE = r": the image holds NaN or infinite values"

# fmt: off
PILS = [
    Case(f"pil_{mode}", "pil", f"PIL image, mode {mode}", lambda folder, m=mode: _pil_image(m), via=PYTHON_ONLY, pixel=rgb)
    for mode, (_, rgb, _) in PIL_MODES.items()
] + [
    _file(f"tiff_{mode}", f"TIFF in PIL mode {mode}", f"mode-{mode.replace(';', '')}.tif", lambda m=mode: encode(_pil_image(m), "TIFF"), pixel=rgb)
    for mode, (_, rgb, as_tiff) in PIL_MODES.items()
    if as_tiff
] + [
    Case("pil_0x0", "pil", "a 0x0 PIL image", lambda folder: Image.new("RGB", (0, 0)), r": image has no pixels", PYTHON_ONLY),
    Case("pil_closed", "pil", "a lazily opened PIL image whose file was closed", _closed_pil_image, r": its file was closed before its pixels were read", PYTHON_ONLY),
    Case("pil_F_nan", "pil", "a float (F) PIL image of NaN", lambda folder: _nan_float_image(), NAN_IMAGE, PYTHON_ONLY),
    _file("tiff_F_nan", "a float (F) TIFF of NaN", "nan.tif", lambda: encode(_nan_float_image(), "TIFF"), NAN_IMAGE),
]

OBJECTS = [
    Case("o_bytes", "object", "a PNG's bytes", lambda folder: _good_png_bytes(), via=PYTHON_ONLY),
    Case("o_bytearray", "object", "a JPEG's bytearray", lambda folder: bytearray(encode(picture(23), "JPEG")), via=PYTHON_ONLY),
    Case("o_memoryview", "object", "a memoryview of a PNG", lambda folder: memoryview(_good_png_bytes()), via=PYTHON_ONLY),
    Case("o_pathlib", "object", "a pathlib.Path", _good_path, via=PYTHON_ONLY),
    Case("o_bytes_empty", "object", "b''", lambda folder: b"", r"^the bytes input \(0 bytes\): the file is empty", PYTHON_ONLY),
    Case("o_bytes_text", "object", "bytes of text", lambda folder: b"hello", r"^the bytes input \(5 bytes\)" + NOT_AN_IMAGE, PYTHON_ONLY),
    Case("o_none", "object", "None (the app: no image sent)", lambda folder: None, r"^unsupported image input of type NoneType|^No image: upload one", frozenset({PYTHON, APP})),
    Case("o_int", "object", "an int", lambda folder: 12345, r"^unsupported image input of type int", PYTHON_ONLY),
    Case("o_list", "object", "a nested list of pixels", lambda folder: [[0, 255], [255, 0]], r"^unsupported image input of type list", PYTHON_ONLY),
    Case("o_file_object", "object", "an open binary file", lambda folder: io.BytesIO(_good_png_bytes()), r"^unsupported image input of type BytesIO", PYTHON_ONLY),
    Case("o_nul_in_path", "object", "a path with a NUL character", lambda folder: str(folder / "a\0b.png"), r": no such file \(the path holds a NUL character\)", PYTHON_ONLY, names=r"a\\x00b\.png"),
    Case("o_url", "object", "a URL (not a path)", lambda folder: "https://example.com/dog.jpg", r": no such file", PYTHON_ONLY),
]
# fmt: on


# --- the corpus: decoding options ----------------------------------------------------------------


def _good_image_for_options(folder: Path) -> Path:
    path = folder / "options" / "for-options.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(25).save(path)
    return path


def _options(case_id: str, options: dict[str, Any], problem: str | None = None, cli: tuple[str, ...] | None = None, app: dict[str, Any] | None = None) -> Case:  # fmt: skip
    via = {PYTHON} | ({CLI} if cli is not None else set()) | ({APP} if app is not None else set())
    what = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "the defaults"
    return Case(case_id, "options", what, _good_image_for_options, problem, frozenset(via), options=options, cli=cli, app=app)  # fmt: skip


SAME = object()  # the app takes the Python options as they are


def _o(case_id: str, options: dict[str, Any], problem: str | None = None, cli: tuple[str, ...] | None = None, app: Any = SAME) -> Case:  # fmt: skip
    return _options(case_id, options, problem, cli, dict(options) if app is SAME else app)


BEAM = r"beam[_-]size"
INT_20 = r" must be an integer from 1 to 20, got "
SEED = r"seed must be an integer from 0 to 4294967295, got "
SAMPLE = ("--decoding", "sample")

# fmt: off
OPTIONS = [
    # good options: captions, as many as asked for
    _o("o_defaults", {}, cli=()),
    _o("o_greedy", {"decoding": "greedy"}, cli=("--decoding", "greedy")),
    _o("o_beam_5_of_3", {"beam_size": 5, "num_captions": 3}, cli=("--beam-size", "5", "--num-captions", "3")),
    _o("o_beam_float_3", {"beam_size": 3.0}),
    _o("o_beam_np_int", {"beam_size": np.int64(4)}, app=None),
    _o("o_sample", {"decoding": "sample", "num_captions": 2, "temperature": 0.7, "top_p": 0.9, "seed": 7}, cli=(*SAMPLE, "--num-captions", "2", "--temperature", "0.7", "--top-p", "0.9", "--seed", "7")),
    _o("o_sample_seed_none", {"decoding": "sample", "seed": None}),
    _o("o_max_length_1", {"max_length": 1}, cli=("--max-length", "1")),
    _o("o_top_p_1", {"decoding": "sample", "top_p": 1}, cli=(*SAMPLE, "--top-p", "1")),
    # bad options: one line naming the option and its allowed values
    _o("o_beam_0", {"beam_size": 0}, BEAM + INT_20 + "0", cli=("--beam-size", "0")),
    _o("o_beam_negative", {"beam_size": -1}, BEAM + INT_20 + "-1", cli=("--beam-size", "-1")),
    _o("o_beam_2_5", {"beam_size": 2.5}, BEAM + r"(: invalid int value: '2\.5'|" + INT_20 + r"2\.5)", cli=("--beam-size", "2.5")),
    _o("o_beam_string", {"beam_size": "3"}, BEAM + INT_20 + "'3'"),
    _o("o_beam_none", {"beam_size": None}, BEAM + INT_20 + "None"),
    _o("o_beam_true", {"beam_size": True}, BEAM + INT_20 + "True"),
    _o("o_beam_21", {"beam_size": 21}, BEAM + INT_20 + "21", cli=("--beam-size", "21")),
    _o("o_beam_nan", {"beam_size": float("nan")}, BEAM + INT_20 + "nan", app=None),
    _o("o_seed_negative", {"decoding": "sample", "seed": -1}, SEED + "-1", cli=(*SAMPLE, "--seed", "-1")),
    _o("o_seed_string", {"decoding": "sample", "seed": "x"}, r"seed(: invalid int value: 'x'| must be an integer from 0 to 4294967295, got 'x')", cli=(*SAMPLE, "--seed", "x")),
    _o("o_seed_fraction", {"decoding": "sample", "seed": 1.5}, r"seed(: invalid int value: '1\.5'| must be an integer from 0 to 4294967295, got 1\.5)", cli=(*SAMPLE, "--seed", "1.5")),
    _o("o_seed_2_32", {"decoding": "sample", "seed": 2**32}, SEED + "4294967296", cli=(*SAMPLE, "--seed", "4294967296")),
    _o("o_max_length_0", {"max_length": 0}, r"max_length must be a positive integer \(words\), got 0", cli=("--max-length", "0")),
    _o("o_max_length_negative", {"max_length": -3}, r"max_length must be a positive integer \(words\), got -3", cli=("--max-length", "-3")),
    _o("o_max_length_over_model", {"max_length": 9}, r"max_length must be an integer from 1 to 8 \(this model's limit\), got 9", cli=("--max-length", "9")),
    _o("o_temperature_0", {"decoding": "sample", "temperature": 0}, r"temperature must be a number > 0, got 0", cli=(*SAMPLE, "--temperature", "0")),
    _o("o_temperature_negative", {"decoding": "sample", "temperature": -1}, r"temperature must be a number > 0, got -1", cli=(*SAMPLE, "--temperature", "-1")),
    _o("o_temperature_nan", {"decoding": "sample", "temperature": float("nan")}, r"temperature must be a number > 0, got nan", cli=(*SAMPLE, "--temperature", "nan"), app=None),
    _o("o_temperature_inf", {"decoding": "sample", "temperature": float("inf")}, r"temperature must be a number > 0, got inf", cli=(*SAMPLE, "--temperature", "inf"), app=None),
    _o("o_top_p_0", {"decoding": "sample", "top_p": 0}, r"top_p must be a number in \(0, 1\], got 0", cli=(*SAMPLE, "--top-p", "0")),
    _o("o_top_p_1_5", {"decoding": "sample", "top_p": 1.5}, r"top_p must be a number in \(0, 1\], got 1\.5", cli=(*SAMPLE, "--top-p", "1.5")),
    _o("o_top_p_nan", {"decoding": "sample", "top_p": float("nan")}, r"top_p must be a number in \(0, 1\], got nan", cli=(*SAMPLE, "--top-p", "nan"), app=None),
    _o("o_num_captions_0", {"num_captions": 0}, r"num_captions must be an integer from 1 to 3, got 0 \(for beam decoding\)", cli=("--num-captions", "0")),
    _o("o_num_captions_over_beam", {"beam_size": 2, "num_captions": 3}, r"num_captions must be an integer from 1 to 2, got 3 \(for beam decoding\)", cli=("--beam-size", "2", "--num-captions", "3")),
    _o("o_num_captions_greedy_2", {"decoding": "greedy", "num_captions": 2}, r"num_captions must be an integer from 1 to 1, got 2 \(for greedy decoding\)", cli=("--decoding", "greedy", "--num-captions", "2")),
    _o("o_decoding_foo", {"decoding": "foo"}, r"decoding( must be one of greedy, beam, sample, got 'foo'|: invalid choice: 'foo')", cli=("--decoding", "foo")),
    _o("o_decoding_none", {"decoding": None}, r"decoding must be one of greedy, beam, sample, got None"),
    _o("o_length_penalty_negative", {"length_penalty": -1}, r"length_penalty must be a number >= 0, got -1", app=None),
    _o("o_unknown_option", {"beam_sise": 4}, r"unknown decoding option\(s\) beam_sise|unrecognized arguments: --beam-sise", cli=("--beam-sise", "4"), app=None),
    _o("o_attention_pooled_model", {"return_attention": True}, r"return_attention: this model's decoder has no attention", app={"attention": True}),
]
# fmt: on

CASES: list[Case] = [*FILES, *ARRAYS, *PILS, *OBJECTS, *OPTIONS]
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def cases(via: str, kinds: tuple[str, ...] | None = None) -> list[Case]:
    """The cases an entry point (``python``, ``cli`` or ``app``) can take, of ``kinds``."""
    return [c for c in CASES if via in c.via and (kinds is None or c.kind in kinds)]
