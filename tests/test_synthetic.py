"""The synthetic shapes dataset: determinism, captions that match the pixels, round trips."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from training.datasets import LAYOUTS, detect_layout, read_coco, read_dataset
from training.synthetic import (
    COLOUR_RGB,
    MAX_CAPTIONS_PER_IMAGE,
    SIZE_FRACTIONS,
    TEMPLATES,
    SyntheticConfig,
    SyntheticItem,
    assign_splits,
    captions_for,
    encode_image,
    generate,
    vocabulary,
    write_dataset,
)

SMALL = SyntheticConfig(n_images=30, seed=3, max_shapes=3, captions_per_image=5)


@pytest.fixture(scope="module")
def items() -> list[SyntheticItem]:
    return generate(SMALL)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# config


def test_config_round_trips_through_json() -> None:
    cfg = SyntheticConfig(n_images=7, colours=("red", "white"), split_fractions=(0.6, 0.2, 0.2))
    again = SyntheticConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert SyntheticConfig.from_dict(SyntheticConfig().to_dict()) == SyntheticConfig()


@pytest.mark.parametrize(
    "bad",
    [
        {"colours": ("red", "mauve")},
        {"colours": ("red", "red")},
        {"shapes": ()},
        {"max_shapes": 4},
        {"captions_per_image": MAX_CAPTIONS_PER_IMAGE + 1},
        {"split_fractions": (0.5, 0.2, 0.2)},
        {"image_format": "gif"},
        {"image_size": 16},
        {"sizes": ("large",), "max_shapes": 3},  # three large shapes never fit side by side
    ],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)
    with pytest.raises(ValueError):
        SyntheticConfig.from_dict({"n_imagse": 3})


# ---------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_bytes(items: list[SyntheticItem]) -> None:
    again = generate(SMALL)
    assert [encode_image(i.image, SMALL) for i in items] == [
        encode_image(i.image, SMALL) for i in again
    ]
    assert [i.scene() for i in items] == [i.scene() for i in again]
    other = generate(SyntheticConfig(n_images=30, seed=4, max_shapes=3, captions_per_image=5))
    assert [i.scene() for i in other] != [i.scene() for i in items]


def test_larger_n_extends_smaller(items: list[SyntheticItem]) -> None:
    fewer = generate(SyntheticConfig(**{**SMALL.to_dict(), "n_images": 10}))
    for a, b in zip(fewer, items, strict=False):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.captions == b.captions


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_write_is_byte_identical(tmp_path: Path, layout: str, image_format: str) -> None:
    cfg = SyntheticConfig(n_images=8, seed=1, image_format=image_format)
    a = _tree(write_dataset(tmp_path / "a", cfg, layout))
    b = _tree(write_dataset(tmp_path / "b", cfg, layout))
    assert a == b
    ext = ".jpg" if image_format == "jpeg" else ".png"
    assert sum(k.endswith(ext) for k in a) == cfg.n_images


# ---------------------------------------------------------------------------------------------
# scenes and captions


def test_scenes_are_sane(items: list[SyntheticItem]) -> None:
    size = SMALL.image_size
    for it in items:
        assert 1 <= len(it.shapes) <= SMALL.max_shapes
        assert it.image.size == (size, size) and it.image.mode == "RGB"
        xs = [(s.x, s.x + s.side) for s in it.shapes]
        # Left to right, no two shapes share a pixel column, all inside the image.
        assert all(r0 < l1 for (_, r0), (l1, _) in itertools.pairwise(xs))
        for s in it.shapes:
            lo, hi = SIZE_FRACTIONS[s.size]
            assert round(lo * size) <= s.side <= round(hi * size)
            assert s.x >= 0 and s.y >= 0
            assert s.x + s.side <= size and s.y + s.side <= size
        assert len({s.phrase for s in it.shapes}) == len(it.shapes)


def test_pixels_match_the_scene(items: list[SyntheticItem]) -> None:
    """The colour named in the caption is the colour drawn where the scene says."""
    for it in items:
        pixels = np.asarray(it.image).astype(int)
        for s in it.shapes:
            # A point well inside every shape kind (triangles are apex-up).
            cx, cy = s.x + s.side // 2, s.y + (2 * s.side) // 3
            patch = pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(axis=0)
            assert np.abs(patch - COLOUR_RGB[s.colour]).max() < 40, (it.file_name, s)
        # The corner is always background (shapes keep a margin): no shape colour there.
        corner = pixels[0, 0]
        assert min(np.abs(corner - c).max() for c in COLOUR_RGB.values()) > 60


def test_captions_are_consistent_with_the_scene(items: list[SyntheticItem]) -> None:
    vocab = set(vocabulary(SMALL))
    for it in items:
        assert len(it.captions) == SMALL.captions_per_image
        assert len(set(it.captions)) == len(it.captions)
        # The canonical caption comes first: the shapes left to right.
        assert it.captions[0] == captions_for(it.shapes)[0]
        assert it.captions[0].startswith("a " + it.shapes[0].phrase)
        assert set(it.captions) <= set(captions_for(it.shapes))
        for cap in it.captions:
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", cap), cap
            assert set(cap.split()) <= vocab
            for s in it.shapes:
                assert s.colour in cap and s.shape in cap and s.size in cap
            colours_named = {w for w in cap.split() if w in COLOUR_RGB}
            assert colours_named == {s.colour for s in it.shapes}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_templates_are_small_and_systematic(n: int, items: list[SyntheticItem]) -> None:
    assert len(TEMPLATES[n]) == MAX_CAPTIONS_PER_IMAGE
    for t in TEMPLATES[n]:
        # Every template names every shape, each exactly once.
        named = [k for k in "abc" if "{" + k + "}" in t or "{" + k + "_shape}" in t]
        assert named == list("abc"[:n]), t
    assert len(vocabulary()) < 40
    assert any(len(it.shapes) == n for it in items)


def test_splits_are_exact_and_seeded() -> None:
    splits = assign_splits(100, (0.8, 0.1, 0.1), seed=0)
    assert splits.count("val") == 10 and splits.count("test") == 10
    assert splits == assign_splits(100, (0.8, 0.1, 0.1), seed=0)
    assert splits != assign_splits(100, (0.8, 0.1, 0.1), seed=1)
    small = assign_splits(5, (0.8, 0.1, 0.1), seed=0)
    assert small.count("val") == 1 and small.count("test") == 1  # never an empty eval split
    assert set(assign_splits(5, (1.0, 0.0, 0.0), seed=0)) == {"train"}


# ---------------------------------------------------------------------------------------------
# round trips through the readers


@pytest.mark.parametrize(
    ("layout", "kw"),
    [(layout, {}) for layout in LAYOUTS] + [("imagefolder", {"metadata_format": "jsonl"})],
)
def test_write_then_read_round_trips(
    tmp_path: Path, items: list[SyntheticItem], layout: str, kw: dict
) -> None:
    root = write_dataset(tmp_path / layout, SMALL, layout, items=items, **kw)
    assert detect_layout(root) == layout
    table, report = read_dataset(layout, root)
    assert report.n_dropped == 0, report.summary()
    assert report.n_images == len(items)
    assert report.n_rows_kept == len(items) * SMALL.captions_per_image
    by_name = {Path(p).name: g for p, g in table.groupby("image")}
    for it in items:
        rows = by_name[it.file_name]
        assert set(rows["split"]) == {it.split}
        assert list(rows["caption"]) == it.captions
    expected = {s: sum(it.split == s for it in items) for s in ("train", "val", "test")}
    assert report.split_images == expected
    meta = json.loads((root / "synthetic.json").read_text())
    assert SyntheticConfig.from_dict(meta["config"]) == SMALL
    assert [s["captions"] for s in meta["scenes"]] == [it.captions for it in items]


def test_coco_standard_files_read_back(tmp_path: Path, items: list[SyntheticItem]) -> None:
    root = write_dataset(tmp_path / "coco", SMALL, "coco", items=items)
    table, report = read_coco(root / "annotations" / "captions_val.json")
    assert report.n_dropped == 0
    assert set(table["split"]) == {"val"}
    assert report.n_images == sum(it.split == "val" for it in items)
