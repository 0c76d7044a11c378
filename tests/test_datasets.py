"""Readers of training.datasets on small fixtures written in the real formats."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from training.datasets import (
    DEFAULT_SPLIT_FRACTIONS,
    LAYOUTS,
    SPLITS,
    ReadReport,
    detect_layout,
    hash_split,
    normalize_split,
    read_captions_txt,
    read_coco,
    read_dataset,
    read_flickr8k,
    read_imagefolder,
)


def _jpg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG")
    return path


def _not_an_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a JPEG\n")
    return path


def _write(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def _by_image(table: pd.DataFrame) -> dict[str, list[str]]:
    return {Path(k).name: list(g["caption"]) for k, g in table.groupby("image", sort=True)}


def _split_of(table: pd.DataFrame) -> dict[str, str]:
    per_image = table.groupby("image")["split"].agg(set)
    assert per_image.map(len).eq(1).all(), "an image landed in more than one split"
    return {Path(k).name: next(iter(v)) for k, v in per_image.items()}


def _check_table(table: pd.DataFrame, report: ReadReport) -> None:
    """Invariants every reader keeps."""
    assert list(table.columns) == ["image", "caption", "split"]
    assert set(table["split"]) <= set(SPLITS)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["image"])
    assert all(c == c.strip() and c for c in table["caption"])
    assert report.n_rows_kept == len(table)
    assert report.n_rows_read == report.n_rows_kept + report.n_dropped
    assert report.n_images == table["image"].nunique()
    assert sum(report.split_rows.values()) == len(table)
    assert all(len(v) <= 10 for v in report.examples.values())
    # The report survives JSON.
    again = ReadReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    assert isinstance(report.summary(), str) and report.layout in report.summary()


# ---------------------------------------------------------------------------------------------
# flickr8k

TOKEN_LINES = [
    "a.jpg#0\tA dog runs on the grass .",
    "a.jpg#1\t  A brown dog is running .  ",
    "a.jpg#2\tA dog , running .",
    "a.jpg#3\t   ",  # empty caption
    "b.jpg#0\tA cat sleeps .",
    "b.jpg#1\tA cat on a bed .",
    "c.jpg#0\tA bird flies .",
    "d.jpg#0\tAn image in no split file .",
    "e.jpg#0\tThe image file is missing .",
    "x.jpg#0\tA text file named x.jpg .",
    "2258277193_586949ec62.jpg.1#0\tpeople waiting for the subway",
    "this line has no tab",
]


def _flickr8k(tmp_path: Path, images: str = "Flicker8k_Dataset") -> tuple[Path, Path]:
    root = tmp_path / "flickr8k"
    img_dir = root / images if images != "elsewhere" else tmp_path / "elsewhere"
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _jpg(img_dir / name)
    _not_an_image(img_dir / "x.jpg")
    # The real files have CRLF line ends.
    _write(root / "Flickr8k.token.txt", "\n".join(TOKEN_LINES) + "\n", newline="\r\n")
    _write(root / "Flickr_8k.trainImages.txt", "a.jpg\ne.jpg\nx.jpg\n", newline="\r\n")
    _write(root / "Flickr_8k.devImages.txt", "b.jpg\n", newline="\r\n")
    _write(root / "Flickr_8k.testImages.txt", "c.jpg\n", newline="\r\n")
    return root, img_dir


@pytest.mark.parametrize("images", ["Flicker8k_Dataset", "Images", "images", "elsewhere"])
def test_flickr8k(tmp_path: Path, images: str) -> None:
    root, img_dir = _flickr8k(tmp_path, images)
    kw = {"images_dir": img_dir} if images == "elsewhere" else {}
    table, report = read_flickr8k(root, **kw)
    _check_table(table, report)
    assert _by_image(table) == {
        "a.jpg": ["A dog runs on the grass .", "A brown dog is running .", "A dog , running ."],
        "b.jpg": ["A cat sleeps .", "A cat on a bed ."],
        "c.jpg": ["A bird flies ."],
    }
    assert _split_of(table) == {"a.jpg": "train", "b.jpg": "val", "c.jpg": "test"}
    assert report.images_dir == str(img_dir)
    assert report.n_rows_read == len(TOKEN_LINES)
    assert report.dropped == {
        "malformed_line": 1,
        "empty_caption": 1,
        "missing_image": 2,
        "no_split": 1,
        "unreadable_image": 1,
    }
    assert report.examples["missing_image"] == ["e.jpg", "2258277193_586949ec62.jpg.1"]
    assert report.examples["no_split"] == ["d.jpg"]
    assert report.examples["unreadable_image"] == ["x.jpg"]
    assert report.split_images == {"train": 1, "val": 1, "test": 1}
    assert "missing_image: 2 rows" in report.summary()


def test_flickr8k_without_image_check_keeps_unreadable(tmp_path: Path) -> None:
    root, _ = _flickr8k(tmp_path)
    table, report = read_flickr8k(root, check_images=False)
    _check_table(table, report)
    assert "x.jpg" in _split_of(table)
    assert "unreadable_image" not in report.dropped
    assert report.dropped["missing_image"] == 2  # existence is still checked


def test_flickr8k_token_file_as_root_and_no_image_folder(tmp_path: Path) -> None:
    root = tmp_path / "text"
    _write(root / "Flickr8k.token.txt", "a.jpg#0\tA dog .\n")
    _write(root / "Flickr_8k.trainImages.txt", "a.jpg\n")
    table, report = read_flickr8k(root / "Flickr8k.token.txt")
    assert table.empty
    assert report.dropped == {"missing_image": 1}
    assert any("no image folder" in n for n in report.notes)


def test_flickr8k_without_split_files_hashes(tmp_path: Path) -> None:
    root = tmp_path / "f"
    names = [f"{i}.jpg" for i in range(30)]
    for n in names:
        _jpg(root / "Images" / n)
    _write(root / "Flickr8k.token.txt", "".join(f"{n}#0\tcap {n}\n" for n in names))
    table, report = read_flickr8k(root)
    _check_table(table, report)
    assert _split_of(table) == {n: hash_split(n) for n in names}
    assert any("hash" in n for n in report.notes)


def test_missing_annotation_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_flickr8k(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_captions_txt(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_coco(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_imagefolder(tmp_path)


# ---------------------------------------------------------------------------------------------
# captions_txt

CAPTIONS_TXT = """image,caption
a.jpg,A dog runs on the grass .
a.jpg,"A dog , running , fast ."
a.jpg,"He said ""hi"" to the dog ."
b.jpg,A cat, a hat, and a bat .
b.jpg,A "quoted" word in an unquoted caption .
"c.jpg","A quoted image name ."
c.jpg,
missing.jpg,Nothing here .
x.jpg,Not an image .
a line without a comma
"""

CAPTIONS_EXPECTED = {
    "a.jpg": [
        "A dog runs on the grass .",
        "A dog , running , fast .",
        'He said "hi" to the dog .',
    ],
    "b.jpg": ["A cat, a hat, and a bat .", 'A "quoted" word in an unquoted caption .'],
    "c.jpg": ["A quoted image name ."],
}


def _captions_txt(tmp_path: Path, split_files: bool = False) -> Path:
    root = tmp_path / "kaggle"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _jpg(root / "Images" / name)
    _not_an_image(root / "Images" / "x.jpg")
    _write(root / "captions.txt", CAPTIONS_TXT)
    if split_files:
        _write(root / "Flickr_8k.trainImages.txt", "b.jpg\nx.jpg\n")
        _write(root / "Flickr_8k.devImages.txt", "")
        _write(root / "Flickr_8k.testImages.txt", "a.jpg\n")
    return root


@pytest.mark.parametrize("split_files", [False, True])
def test_captions_txt(tmp_path: Path, split_files: bool) -> None:
    root = _captions_txt(tmp_path, split_files)
    table, report = read_captions_txt(root)
    _check_table(table, report)
    expected = dict(CAPTIONS_EXPECTED)
    if split_files:
        del expected["c.jpg"]  # in no split file
        assert _split_of(table) == {"a.jpg": "test", "b.jpg": "train"}
        assert report.dropped["no_split"] == 1
    else:
        assert _split_of(table) == {n: hash_split(n) for n in expected}
        assert "no_split" not in report.dropped
    assert _by_image(table) == expected
    assert report.n_rows_read == 10  # the header is not a row
    for reason, n in {
        "malformed_line": 1,
        "empty_caption": 1,
        "missing_image": 1,
        "unreadable_image": 1,
    }.items():
        assert report.dropped[reason] == n


def test_captions_txt_file_as_root_and_images_dir(tmp_path: Path) -> None:
    img = _jpg(tmp_path / "pics" / "a.jpg")
    cap = _write(tmp_path / "ann" / "my_captions.csv", "a.jpg,One caption\n")  # no header
    table, report = read_captions_txt(cap, images_dir=img.parent)
    _check_table(table, report)
    assert list(table["caption"]) == ["One caption"]


# ---------------------------------------------------------------------------------------------
# hash splits


def test_hash_split_is_stable_and_follows_fractions() -> None:
    names = [f"{i:06d}_abc.jpg" for i in range(4000)]
    splits = [hash_split(n) for n in names]
    assert splits == [hash_split(n) for n in names]
    share = pd.Series(splits).value_counts(normalize=True)
    for split, f in zip(SPLITS, DEFAULT_SPLIT_FRACTIONS, strict=True):
        assert abs(share[split] - f) < 0.03
    assert {hash_split(n, (0.5, 0.0, 0.5)) for n in names} == {"train", "test"}
    assert {hash_split(n, (0.0, 0.0, 1.0)) for n in names} == {"test"}


@pytest.mark.parametrize("bad", [(0.5, 0.5), (0.8, 0.1, 0.2), (1.2, -0.1, -0.1)])
def test_hash_split_rejects_bad_fractions(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        hash_split("a.jpg", bad)


@pytest.mark.parametrize(
    ("raw", "split"),
    [("train", "train"), ("restval", "train"), ("dev", "val"), ("Validation", "val"),
     ("test", "test"), ("other", None), (None, None)],
)  # fmt: skip
def test_normalize_split(raw: str | None, split: str | None) -> None:
    assert normalize_split(raw) == split


# ---------------------------------------------------------------------------------------------
# coco


def _coco_standard(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    for sub, ids in (("train2014", (1, 2)), ("val2014", (3,))):
        images, anns = [], []
        for i in ids:
            name = f"COCO_{sub}_{i:012d}.jpg"
            _jpg(root / sub / name)
            images.append({"id": i, "file_name": name, "width": 8, "height": 8})
            anns += [
                {"id": 10 * i, "image_id": i, "caption": f"Caption one of {i}. "},
                {"id": 10 * i + 1, "image_id": i, "caption": f"Caption two of {i}, with a comma."},
            ]
        if sub == "train2014":
            images.append({"id": 9, "file_name": "COCO_train2014_missing.jpg"})
            anns.append({"id": 90, "image_id": 9, "caption": "No file."})
            anns.append({"id": 91, "image_id": 12345, "caption": "No such image id."})
        data = {"info": {}, "images": images, "annotations": anns}
        _write(root / "annotations" / f"captions_{sub}.json", json.dumps(data))
    return root


def test_coco_standard(tmp_path: Path) -> None:
    root = _coco_standard(tmp_path)
    table, report = read_coco(root)
    _check_table(table, report)
    assert _split_of(table) == {
        "COCO_train2014_000000000001.jpg": "train",
        "COCO_train2014_000000000002.jpg": "train",
        "COCO_val2014_000000000003.jpg": "val",
    }
    assert _by_image(table)["COCO_val2014_000000000003.jpg"] == [
        "Caption one of 3.",
        "Caption two of 3, with a comma.",
    ]
    assert report.dropped == {"malformed_line": 1, "missing_image": 1}


def test_coco_standard_single_file_with_split(tmp_path: Path) -> None:
    root = _coco_standard(tmp_path)
    table, report = read_coco(root / "annotations" / "captions_val2014.json", split="test")
    _check_table(table, report)
    assert set(table["split"]) == {"test"}
    assert report.n_images == 1


def test_coco_standard_unknown_split_is_reported(tmp_path: Path) -> None:
    _jpg(tmp_path / "images" / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [
        {"id": 1, "image_id": 1, "caption": "x"}]}  # fmt: skip
    path = _write(tmp_path / "captions_mine.json", json.dumps(data))
    table, report = read_coco(path)
    assert table.empty and report.dropped == {"no_split": 1}
    table, _ = read_coco(path, split="validation")
    assert list(table["split"]) == ["val"]


def _karpathy(tmp_path: Path, flat: bool) -> tuple[Path, dict[str, str]]:
    """dataset_coco.json (filepath + filename) or dataset_flickr8k.json (flat filenames)."""
    root = tmp_path / "karpathy"
    splits = {"a.jpg": "train", "b.jpg": "restval", "c.jpg": "val", "d.jpg": "test"}
    images = []
    for name, split in splits.items():
        fp = "" if flat else ("train2014" if split == "train" else "val2014")
        _jpg((root / "Flicker8k_Dataset" / name) if flat else (root / fp / name))
        rec = {"filename": name, "split": split, "sentences": [
            {"raw": f"A {name} raw caption .", "tokens": ["a", name, "raw", "caption"]},
            {"tokens": ["only", "tokens"]},
        ]}  # fmt: skip
        if not flat:
            rec["filepath"] = fp
        images.append(rec)
    images.append({"filename": "gone.jpg", "split": "train", "sentences": [{"raw": "x"}]})
    images.append({"split": "train"})  # malformed
    fname = "dataset_flickr8k.json" if flat else "dataset_coco.json"
    _write(root / fname, json.dumps({"dataset": "x", "images": images}))
    expected = {name: ("train" if s == "restval" else s) for name, s in splits.items()}
    return root, expected


@pytest.mark.parametrize("flat", [False, True])
def test_coco_karpathy(tmp_path: Path, flat: bool) -> None:
    root, expected = _karpathy(tmp_path, flat)
    table, report = read_coco(root)
    _check_table(table, report)
    assert {Path(k).name: v for k, v in _split_of(table).items()} == expected
    assert _by_image(table)["a.jpg"] == ["A a.jpg raw caption .", "only tokens"]
    assert report.dropped == {"malformed_line": 1, "missing_image": 1}
    assert report.split_images == {"train": 2, "val": 1, "test": 1}


def test_coco_karpathy_explicit_images_dir(tmp_path: Path) -> None:
    root, expected = _karpathy(tmp_path, flat=True)
    table, report = read_coco(root / "dataset_flickr8k.json", images_dir=root / "Flicker8k_Dataset")
    _check_table(table, report)
    assert report.n_images == len(expected)


# ---------------------------------------------------------------------------------------------
# imagefolder


def _metadata(path: Path, rows: list[tuple[str, object]]) -> None:
    if path.suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file_name", "text"])
        w.writerows(rows)
        _write(path, buf.getvalue())
    else:
        _write(path, "".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in rows))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_imagefolder_split_folders(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "hf"
    layout = {"train": ["a.jpg", "b.jpg"], "validation": ["c.jpg"], "test": ["d.jpg"]}
    for folder, names in layout.items():
        for n in names:
            _jpg(root / folder / n)
        rows = [(n, f"{n} caption {k}, with comma") for n in names for k in range(2)]
        if folder == "train":
            rows.append(("missing.jpg", "gone"))
        _metadata(root / folder / f"metadata.{fmt}", rows)
    table, report = read_imagefolder(root)
    _check_table(table, report)
    assert _split_of(table) == {"a.jpg": "train", "b.jpg": "train", "c.jpg": "val", "d.jpg": "test"}
    assert _by_image(table)["c.jpg"] == [
        "c.jpg caption 0, with comma",
        "c.jpg caption 1, with comma",
    ]
    assert report.dropped == {"missing_image": 1}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_imagefolder_single_metadata(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "hf"
    names = [f"img{i}.jpg" for i in range(12)]
    for n in names:
        _jpg(root / "pics" / n)
    _jpg(root / "train" / "t.jpg")  # a file_name under a split folder gives that split
    rows: list[tuple[str, object]] = [(f"pics/{n}", f"caption of {n}") for n in names]
    rows += [(f"pics/{names[0]}", "a second caption"), ("train/t.jpg", "in train"), ("", "x")]
    _metadata(root / f"metadata.{fmt}", rows)
    table, report = read_imagefolder(root / f"metadata.{fmt}")
    _check_table(table, report)
    splits = _split_of(table)
    assert splits == {**{n: hash_split(f"pics/{n}") for n in names}, "t.jpg": "train"}
    assert _by_image(table)[names[0]] == [f"caption of {names[0]}", "a second caption"]
    assert report.dropped == {"malformed_line": 1}


def test_imagefolder_jsonl_list_text_and_bad_lines(tmp_path: Path) -> None:
    root = tmp_path / "hf"
    _jpg(root / "train" / "a.jpg")
    _write(
        root / "train" / "metadata.jsonl",
        json.dumps({"file_name": "a.jpg", "caption": ["one", "two", " "]}) + "\n{not json\n",
    )
    table, report = read_imagefolder(root)
    _check_table(table, report)
    assert list(table["caption"]) == ["one", "two"]
    assert report.dropped == {"malformed_line": 1, "empty_caption": 1}


# ---------------------------------------------------------------------------------------------
# detection and dispatch


def _imagefolder(tmp_path: Path) -> Path:
    root = tmp_path / "hf"
    _jpg(root / "validation" / "a.jpg")
    _metadata(root / "validation" / "metadata.csv", [("a.jpg", "a caption")])
    return root


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "flickr8k": lambda p: _flickr8k(p)[0],
    "captions_txt": _captions_txt,
    "coco": _coco_standard,
    "karpathy": lambda p: _karpathy(p, flat=False)[0],
    "imagefolder": _imagefolder,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_detect_layout_and_read_dataset(tmp_path: Path, name: str) -> None:
    root = BUILDERS[name](tmp_path)
    layout = "coco" if name == "karpathy" else name
    assert detect_layout(root) == layout
    table, report = read_dataset("auto", root)
    assert report.layout == layout and not table.empty
    table2, report2 = read_dataset(layout, root)
    assert table2.equals(table) and report2 == report


@pytest.mark.parametrize(
    ("file_name", "layout"),
    [("dataset_coco.json", "coco"), ("metadata.jsonl", "imagefolder"),
     ("Flickr8k.token.txt", "flickr8k"), ("captions.txt", "captions_txt")],
)  # fmt: skip
def test_detect_layout_of_files(tmp_path: Path, file_name: str, layout: str) -> None:
    assert detect_layout(_write(tmp_path / file_name, "")) == layout


def test_detect_layout_and_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        detect_layout(tmp_path)
    with pytest.raises(ValueError):
        detect_layout(tmp_path / "nope")
    with pytest.raises(ValueError):
        read_dataset("nonsense", tmp_path)
    assert set(LAYOUTS) == {"flickr8k", "captions_txt", "coco", "imagefolder"}
