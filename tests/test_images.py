import io

import numpy as np
import pytest
from helpers import random_image
from PIL import Image

from imcap_hub import ImageError, load_image
from imcap_hub.images import ImageLimits, resize


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (8, 6), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 4, 6))
    img.info["transparency"] = 0
    return img


@pytest.mark.parametrize(
    ("make", "fmt", "corner"),
    [
        (lambda: Image.new("L", (8, 6), 100), "PNG", (100, 100, 100)),
        (lambda: Image.new("LA", (8, 6), (100, 0)), "PNG", (255, 255, 255)),
        (lambda: Image.new("RGBA", (8, 6), (10, 20, 30, 255)), "PNG", (10, 20, 30)),
        (lambda: Image.new("RGBA", (8, 6), (10, 20, 30, 0)), "PNG", (255, 255, 255)),
        (lambda: Image.new("1", (8, 6), 1), "PNG", (255, 255, 255)),
        (lambda: Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG", None),
        (lambda: Image.new("I;16", (8, 6), 65535), "PNG", (255, 255, 255)),
        (lambda: Image.new("P", (8, 6), 0), "GIF", (0, 0, 0)),
        (_palette_with_transparency, "PNG", (255, 0, 0)),
    ],
    ids=[
        "gray",
        "gray-alpha",
        "rgba-opaque",
        "rgba-clear",
        "1bit",
        "cmyk",
        "16bit",
        "palette",
        "palette-transparent",
    ],
)
def test_every_mode_becomes_rgb_uint8(make, fmt, corner):
    arr = load_image(_encode(make(), fmt))
    assert arr.shape == (6, 8, 3) and arr.dtype == np.uint8
    if corner is not None:
        assert tuple(arr[0, 0]) == pytest.approx(corner, abs=2)
    if fmt == "JPEG":  # CMYK (0,255,255,0) is red
        assert arr[0, 0, 0] > 200 and arr[0, 0, 1] < 60 and arr[0, 0, 2] < 60


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    arr = load_image(_encode(img, "JPEG", exif=exif, quality=95))
    assert arr.shape == (40, 20, 3)
    assert arr[0, 10, 0] > 200 and arr[-1, 10, 0] < 60  # the stripe is now on top


def _photo(width: int, height: int) -> Image.Image:
    """Smooth gradients and mild noise, like a photo (unlike pure noise)."""
    rng = np.random.default_rng(width + height)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 0.11 % 256, y * 0.13 % 256, (x + y) * 0.05 % 256], -1)
    return Image.fromarray((img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("size", "fmt", "decoded"),
    [
        ((4032, 3024), "JPEG", (1008, 756)),  # a phone photo: 1/4 scale, both sides >= 448
        ((2000, 1500), "JPEG", (1000, 750)),
        ((500, 375), "JPEG", (500, 375)),  # Flickr8k's size: every pixel, as before
        ((447, 2000), "JPEG", (447, 2000)),  # one side under 2 x 224 already
        ((2000, 1500), "PNG", (2000, 1500)),  # only JPEG decodes at a reduced scale
    ],
)
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_for_its_target_size(size, fmt, decoded):
    data = _encode(_photo(*size), fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    full = load_image(data)
    reduced = load_image(data, target_size=224)
    assert reduced.shape == (decoded[1], decoded[0], 3)
    if decoded == size:
        np.testing.assert_array_equal(reduced, full)
    else:  # what the encoder sees: within a few levels of the full decode's
        diff = np.abs(resize(full, 224).astype(int) - resize(reduced, 224))
        assert diff.max() <= 4 and diff.mean() < 0.5, (diff.max(), diff.mean())


def test_a_reduced_scale_decode_keeps_the_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _encode(_photo(2000, 1000), "JPEG", exif=exif, quality=90)
    assert load_image(data).shape == (2000, 1000, 3)
    assert load_image(data, target_size=224).shape == (1000, 500, 3)  # 1/2 scale, turned


@pytest.mark.parametrize(
    "source",
    [
        lambda tmp: tmp / "a.png",
        lambda tmp: (tmp / "a.png").read_bytes(),
        lambda tmp: Image.open(tmp / "a.png"),
        lambda tmp: str(tmp / "a.png"),
        lambda tmp: np.asarray(Image.open(tmp / "a.png")),
    ],
    ids=["path", "bytes", "pil", "str", "array"],
)
def test_all_input_kinds_decode_the_same(tmp_path, source):
    expected = random_image(3, (10, 12))
    Image.fromarray(expected).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(source(tmp_path)), expected)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((4, 4), 7, np.uint8), 7),
        (np.full((4, 4, 3), 0.5, np.float32), 128),
        (np.full((4, 4, 1), 65535, np.uint16), 255),
        (np.full((4, 4, 3), 200.0, np.float64), 200),
        (np.full((4, 4, 3), -3, np.int32), 0),
        (np.full((4, 4, 3), 300, np.int64), 255),
        (np.ones((4, 4, 3), bool), 255),
        (np.zeros((4, 4), bool), 0),
        # RGBA: composited on white, as files are; opaque pixels keep their colour
        (np.dstack([np.full((4, 4, 3), 10, np.uint8), np.full((4, 4), 255, np.uint8)]), 10),
        (np.zeros((4, 4, 4), np.uint8), 255),
    ],
)
def test_arrays_of_other_dtypes(array, expected):
    out = load_image(array)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8 and int(out[0, 0, 0]) == expected


@pytest.mark.parametrize("kind", ["text_named_jpg", "truncated_jpeg", "huge_png"])
def test_bad_files_raise_image_error_naming_the_problem(image_files, kind):
    path = image_files["bad"][kind]
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert {
        "text_named_jpg": "not an image",
        "truncated_jpeg": "truncated",
        "huge_png": "too large",
    }[kind] in message


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"", "empty"),
        ("/nonexistent/dog.jpg", "no such file"),
        (np.zeros((4, 4, 5), np.uint8), "expected an HxW"),
        (np.zeros((4, 4, 2), np.uint8), "expected an HxW"),
        (np.zeros((2, 2, 2, 3), np.uint8), "expected an HxW"),
        (np.zeros((0, 0, 3), np.uint8), "has no pixels"),
        (np.zeros((0, 5, 3), np.uint8), "has no pixels"),
        (np.zeros((5, 0), np.uint8), "has no pixels"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), np.inf, np.float64), "NaN or infinite"),
        (np.zeros((4, 4, 3), np.complex64), "complex64 are not an image"),
        (np.full((4, 4, 3), "x"), "are not an image"),
        (12345, "unsupported image input"),
    ],
)
def test_other_bad_inputs(source, message):
    with pytest.raises(ImageError, match=message):
        load_image(source)


def test_pixel_and_byte_limits():
    data = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="100x100 pixels, over the"):
        load_image(data, ImageLimits(max_pixels=5000))
    with pytest.raises(ImageError, match="MiB limit"):
        load_image(data, ImageLimits(max_bytes=10))
