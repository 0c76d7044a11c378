"""Readers for the common image-caption dataset layouts, all producing one table.

Every reader returns ``(table, report)``:

* ``table``: a :class:`pandas.DataFrame` with one row per kept caption and the columns
  ``image`` (absolute path, str), ``caption`` (raw caption, stripped) and ``split``
  (``"train"``, ``"val"`` or ``"test"``).
* ``report``: a :class:`ReadReport` saying how many caption rows were read, kept and dropped,
  and why.

A caption row is dropped for the first reason that applies, checked in this order:
``malformed_line`` (the annotation line or record cannot be parsed), ``empty_caption``,
``missing_image`` (no such file), ``no_split`` (the image is in no split), ``unreadable_image``
(PIL cannot open it; only with ``check_images=True``). Missing or unreadable images are
reported, never fatal; only a missing annotation file raises.

Layouts (see :data:`LAYOUTS`): ``flickr8k`` (the official token and split files),
``captions_txt`` (the Kaggle Flickr8k ``captions.txt``), ``coco`` (standard COCO caption files
or a Karpathy ``dataset_*.json`` split file) and ``imagefolder`` (the Hugging Face layout with
``metadata.csv`` / ``metadata.jsonl``).

Where a layout has no split information, each image is assigned a split by
:func:`hash_split`: a stable hash of the image's file name as written in the annotations, so
the assignment is the same on every machine and run, and all captions of one image land in
the same split. The default fractions are :data:`DEFAULT_SPLIT_FRACTIONS` = 0.8 / 0.1 / 0.1
(train / val / test): on Flickr8k-sized data (8,091 images) that gives about 800 validation
and 800 test images, close to the official 1,000 / 1,000.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

SPLITS: tuple[str, ...] = ("train", "val", "test")
LAYOUTS: tuple[str, ...] = ("flickr8k", "captions_txt", "coco", "imagefolder")
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DROP_REASONS: tuple[str, ...] = (
    "malformed_line",
    "empty_caption",
    "missing_image",
    "no_split",
    "unreadable_image",
)
MAX_EXAMPLES = 10

FLICKR8K_TOKEN_FILE = "Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES: dict[str, str] = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
# "Flicker8k_Dataset" (sic) is the folder name inside the official Flickr8k_Dataset.zip.
FLICKR8K_IMAGE_DIRS: tuple[str, ...] = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")
CAPTIONS_TXT_FILE = "captions.txt"
CAPTIONS_TXT_IMAGE_DIRS: tuple[str, ...] = ("Images", "images", "Flicker8k_Dataset")
IMAGEFOLDER_METADATA: tuple[str, ...] = ("metadata.csv", "metadata.jsonl")
IMAGEFOLDER_TEXT_COLUMNS: tuple[str, ...] = ("text", "caption", "captions", "sentence")

# Split names as they appear in the wild -> our three splits. Karpathy's "restval" (COCO
# validation images not used for val/test) is training data by convention.
_SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "restval": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
# Subfolder names of the imagefolder layout that name a split (as Hugging Face accepts them).
_IMAGEFOLDER_SPLIT_DIRS: tuple[str, ...] = (
    "train",
    "training",
    "validation",
    "valid",
    "val",
    "dev",
    "test",
    "testing",
)


@dataclass
class ReadReport:
    """What a reader read, kept and dropped.

    ``dropped`` counts caption rows by reason, ``dropped_images`` the distinct images behind
    them, and ``examples`` holds up to :data:`MAX_EXAMPLES` image names (or line references
    for ``malformed_line``) per reason. ``notes`` collects non-fatal remarks, e.g. that no
    image folder was found or that splits were assigned by hash.
    """

    layout: str
    root: str
    images_dir: str | None = None
    checked_images: bool = True
    n_rows_read: int = 0
    n_rows_kept: int = 0
    n_images: int = 0
    split_rows: dict[str, int] = field(default_factory=dict)
    split_images: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_images: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        """Caption rows dropped, all reasons together."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``n_dropped`` included for readers of the JSON)."""
        d = asdict(self)
        d["n_dropped"] = self.n_dropped
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadReport:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary(self) -> str:
        """A short human-readable multi-line account."""
        splits = " / ".join(f"{s} {self.split_images.get(s, 0)}" for s in SPLITS)
        lines = [
            f"{self.layout} at {self.root}",
            f"images from {self.images_dir}" + ("" if self.checked_images else " (not opened)"),
            f"read {self.n_rows_read} caption rows; kept {self.n_rows_kept} rows "
            f"for {self.n_images} images ({splits})",
        ]
        if self.dropped:
            lines.append(f"dropped {self.n_dropped} rows:")
            for reason in DROP_REASONS:
                if reason not in self.dropped:
                    continue
                ex = ", ".join(self.examples.get(reason, [])[:3])
                lines.append(
                    f"  {reason}: {self.dropped[reason]} rows "
                    f"({self.dropped_images.get(reason, 0)} images), e.g. {ex}"
                )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def hash_split(name: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Assign ``name`` to train/val/test by a stable hash (SHA-256, not Python's ``hash``,
    which is salted per process), with ``fractions`` = (train, val, test)."""
    fr = _check_fractions(fractions)
    u = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64
    cum = 0.0
    for split, f in zip(SPLITS, fr, strict=True):
        cum += f
        if u < cum:
            return split
    # Rounding can leave u just above the last cumulative sum: the last non-empty split.
    return [s for s, f in zip(SPLITS, fr, strict=True) if f > 0][-1]


def normalize_split(name: str | None) -> str | None:
    """Map a split name as found in the wild ("dev", "validation", "restval", ...) to one of
    :data:`SPLITS`, or None when it names none."""
    if name is None:
        return None
    return _SPLIT_ALIASES.get(str(name).strip().lower())


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1: {fr}")
    return fr  # type: ignore[return-value]


class _TableBuilder:
    """Collects caption rows, applies the drop rules and builds the table and report."""

    def __init__(self, layout: str, root: Path, *, check_images: bool) -> None:
        self.report = ReadReport(layout=layout, root=os.path.abspath(root))
        self.report.checked_images = check_images
        self._check = check_images
        self._images: list[str] = []
        self._captions: list[str] = []
        self._splits: list[str] = []
        self._exists: dict[str, bool] = {}
        self._readable: dict[str, bool] = {}
        self._dropped_images: dict[str, set[str]] = {}

    def set_images_dir(self, path: Path | str | None) -> None:
        self.report.images_dir = None if path is None else os.path.abspath(path)

    def note(self, text: str) -> None:
        self.report.notes.append(text)

    def malformed(self, where: str) -> None:
        """Count an annotation line/record that could not be parsed as a dropped row."""
        self.report.n_rows_read += 1
        self._drop("malformed_line", where)

    def add(self, name: str, path: Path | str, caption: Any, split: str | None) -> None:
        """One caption row: ``name`` is the image as the annotations name it (for the
        report), ``path`` where it should be."""
        self.report.n_rows_read += 1
        caption = "" if caption is None else str(caption).strip()
        if not caption:
            self._drop("empty_caption", name)
            return
        p = os.path.abspath(path)
        exists = self._exists.get(p)
        if exists is None:
            exists = self._exists[p] = os.path.isfile(p)
        if not exists:
            self._drop("missing_image", name)
            return
        if split not in SPLITS:
            self._drop("no_split", name)
            return
        if self._check and not self._is_readable(p):
            self._drop("unreadable_image", name)
            return
        self._images.append(p)
        self._captions.append(caption)
        self._splits.append(split)

    def _is_readable(self, p: str) -> bool:
        ok = self._readable.get(p)
        if ok is None:
            try:
                with Image.open(p) as im:
                    im.verify()
                ok = True
            # UnidentifiedImageError is an OSError; truncated or corrupt files raise the others.
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                ok = False
            self._readable[p] = ok
        return ok

    def _drop(self, reason: str, name: str) -> None:
        r = self.report
        r.dropped[reason] = r.dropped.get(reason, 0) + 1
        seen = self._dropped_images.setdefault(reason, set())
        if name not in seen:
            seen.add(name)
            ex = r.examples.setdefault(reason, [])
            if len(ex) < MAX_EXAMPLES:
                ex.append(name)

    def finish(self) -> tuple[pd.DataFrame, ReadReport]:
        table = pd.DataFrame(
            {"image": self._images, "caption": self._captions, "split": self._splits},
            columns=["image", "caption", "split"],
        ).astype(str)
        r = self.report
        r.n_rows_kept = len(table)
        r.n_images = int(table["image"].nunique())
        r.split_rows = {s: int((table["split"] == s).sum()) for s in SPLITS}
        per_image = table.drop_duplicates("image")
        r.split_images = {s: int((per_image["split"] == s).sum()) for s in SPLITS}
        # Keep the reason order stable in the JSON so reports diff cleanly.
        r.dropped = {k: r.dropped[k] for k in DROP_REASONS if k in r.dropped}
        r.dropped_images = {k: len(self._dropped_images[k]) for k in r.dropped}
        r.examples = {k: r.examples[k] for k in r.dropped}
        return table, r


def _first_dir(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _resolve_images_dir(
    b: _TableBuilder, images_dir: Path | str | None, bases: Sequence[Path], names: Sequence[str]
) -> Path:
    """The explicit ``images_dir``, else the first of ``bases/names`` that exists (noting it
    when none does: every image will then be reported missing)."""
    if images_dir is not None:
        d = Path(images_dir)
        if not d.is_dir():
            b.note(f"images_dir {d} does not exist")
    else:
        candidates = [base / n for base in bases for n in names]
        found = _first_dir(candidates)
        if found is None:
            b.note("no image folder found (looked for " + ", ".join(names) + ")")
            d = candidates[0]
        else:
            d = found
    b.set_images_dir(d)
    return d


def _read_lines(path: Path) -> list[str]:
    # utf-8-sig drops a BOM; universal newlines turn the real files' CRLF into "\n".
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return f.read().splitlines()


def _read_split_files(text_dir: Path, b: _TableBuilder) -> tuple[dict[str, str], bool]:
    """Flickr8k-style split files in ``text_dir`` -> ({image name: split}, any found)."""
    splits: dict[str, str] = {}
    found = False
    for split, fname in FLICKR8K_SPLIT_FILES.items():
        path = text_dir / fname
        if not path.is_file():
            continue
        found = True
        for line in _read_lines(path):
            name = line.strip()
            if not name:
                continue
            if name in splits and splits[name] != split:
                b.note(f"{name} is in more than one split file; kept {splits[name]}")
                continue
            splits[name] = split
    return splits, found


# ---------------------------------------------------------------------------------------------
# flickr8k


def read_flickr8k(
    root: Path | str,
    *,
    images_dir: Path | str | None = None,
    token_file: str = FLICKR8K_TOKEN_FILE,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    check_images: bool = True,
) -> tuple[pd.DataFrame, ReadReport]:
    """Read Flickr8k as distributed: ``Flickr8k.token.txt`` (``IMAGE.jpg#N<TAB>caption``) and
    the ``Flickr_8k.{train,dev,test}Images.txt`` split files (dev -> "val").

    ``root`` is the folder holding the text files (or a ``Flickr8k_text/`` subfolder of it),
    or the token file itself. Images are looked for in ``images_dir``, else in
    ``Flicker8k_Dataset/``, ``Flickr8k_Dataset/``, ``Images/`` or ``images/`` under ``root``.
    Images in no split file are dropped as ``no_split``; only when there are no split files at
    all are splits assigned by :func:`hash_split` with ``split_fractions``.
    """
    root = Path(root)
    if root.is_file():
        token_path, root = root, root.parent
    else:
        token_path = root / token_file
        if not token_path.is_file() and (root / "Flickr8k_text" / token_file).is_file():
            token_path = root / "Flickr8k_text" / token_file
    if not token_path.is_file():
        raise FileNotFoundError(f"no Flickr8k token file {token_file} in {root}")
    text_dir = token_path.parent
    b = _TableBuilder("flickr8k", root, check_images=check_images)
    img_dir = _resolve_images_dir(b, images_dir, [root, text_dir], FLICKR8K_IMAGE_DIRS)
    splits, have_split_files = _read_split_files(text_dir, b)
    if not have_split_files:
        b.note(f"no split files; splits assigned by hash with fractions {tuple(split_fractions)}")

    for lineno, line in enumerate(_read_lines(token_path), start=1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        key = key.strip()
        if not sep or not key:
            b.malformed(f"{token_path.name}:{lineno}")
            continue
        # "IMAGE.jpg#3" -> "IMAGE.jpg". Names like "x.jpg.1" are kept as written: they name
        # no file and are reported as missing_image.
        name, hashmark, n = key.rpartition("#")
        if not hashmark or not n.isdigit() or not name:
            name = key
        split = splits.get(name) if have_split_files else hash_split(name, split_fractions)
        b.add(name, img_dir / name, caption, split)
    return b.finish()


# ---------------------------------------------------------------------------------------------
# captions_txt


def _parse_captions_line(line: str) -> tuple[str, str] | None:
    """``image,caption`` where the caption is everything after the first comma, possibly
    quoted CSV-style (``"a dog, running"`` with ``""`` for a quote). None if malformed."""
    if line.startswith('"'):
        # A quoted image name: let the csv module unquote it, then rejoin the rest.
        try:
            fields_ = next(csv.reader([line]))
        except csv.Error:
            return None
        if len(fields_) < 2:
            return None
        return fields_[0].strip(), ",".join(fields_[1:])
    name, sep, rest = line.partition(",")
    if not sep:
        return None
    rest = rest.strip()
    if len(rest) >= 2 and rest[0] == '"' and rest[-1] == '"':
        rest = rest[1:-1].replace('""', '"')
    return name.strip(), rest


def read_captions_txt(
    root: Path | str,
    *,
    images_dir: Path | str | None = None,
    captions_file: str = CAPTIONS_TXT_FILE,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    check_images: bool = True,
) -> tuple[pd.DataFrame, ReadReport]:
    """Read the Kaggle Flickr8k ``captions.txt`` (CSV, header ``image,caption``).

    ``root`` is the folder holding it, or the file itself. Images are looked for in
    ``images_dir``, else ``Images/`` (or ``images/``, ``Flicker8k_Dataset/``) next to it.
    Splits: Flickr8k-style split files next to it if present (images in none -> ``no_split``),
    else :func:`hash_split` of the image name with ``split_fractions``.
    Captions spanning several lines (embedded newlines) are not supported; the Kaggle file
    has none.
    """
    root = Path(root)
    if root.is_file():
        cap_path, root = root, root.parent
    else:
        cap_path = root / captions_file
    if not cap_path.is_file():
        raise FileNotFoundError(f"no {captions_file} in {root}")
    b = _TableBuilder("captions_txt", root, check_images=check_images)
    img_dir = _resolve_images_dir(b, images_dir, [root], CAPTIONS_TXT_IMAGE_DIRS)
    splits, have_split_files = _read_split_files(root, b)
    if have_split_files:
        b.note("splits from Flickr8k split files")
    else:
        b.note(f"splits assigned by hash with fractions {tuple(split_fractions)}")

    first = True
    for lineno, line in enumerate(_read_lines(cap_path), start=1):
        if not line.strip():
            continue
        parsed = _parse_captions_line(line)
        if first:
            first = False
            # A header row names the columns; recognise it by its first field.
            if parsed is not None and parsed[0].lower() in {
                "image",
                "image_name",
                "filename",
                "file_name",
            }:
                continue
        if parsed is None or not parsed[0]:
            b.malformed(f"{cap_path.name}:{lineno}")
            continue
        name, caption = parsed
        split = splits.get(name) if have_split_files else hash_split(name, split_fractions)
        b.add(name, img_dir / name, caption, split)
    return b.finish()


# ---------------------------------------------------------------------------------------------
# coco


def _split_from_filename(stem: str) -> str | None:
    """captions_train2014 -> train, captions_val2017 -> val, captions_restval -> train."""
    s = stem.lower().removeprefix("captions_").removeprefix("dataset_")
    for alias in sorted(_SPLIT_ALIASES, key=len, reverse=True):
        if s.startswith(alias):
            return _SPLIT_ALIASES[alias]
    return None


def _pick_base(candidates: Sequence[Path], rel_paths: Sequence[str]) -> Path | None:
    """The candidate folder holding most of a sample of the images (None if it holds none)."""
    sample = rel_paths[:20]
    best, best_hits = None, 0
    for c in candidates:
        if not c.is_dir():
            continue
        hits = sum((c / p).is_file() for p in sample)
        if hits > best_hits:
            best, best_hits = c, hits
    return best


def _read_coco_standard(
    b: _TableBuilder, path: Path, data: dict, split: str | None, images_dir: Path | None
) -> None:
    split_ = normalize_split(split) if split else _split_from_filename(path.stem)
    if split_ is None:
        b.note(f"no split for {path.name}: pass split=...")
    images: dict[Any, str] = {}
    for img in data.get("images", []):
        if isinstance(img, dict) and "id" in img and img.get("file_name"):
            images[img["id"]] = str(img["file_name"])
    base = path.parent.parent if path.parent.name == "annotations" else path.parent
    sub = path.stem.lower().removeprefix("captions_")  # e.g. "train2014", the image folder
    if images_dir is not None:
        img_dir = images_dir
    else:
        candidates = [base / sub, base / "images" / sub, base / "images", base]
        img_dir = _pick_base(candidates, list(images.values())) or _first_dir(candidates)
        if img_dir is None:
            img_dir = candidates[0]
            b.note(f"no image folder found for {path.name}")
    b.set_images_dir(img_dir)
    for i, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            b.malformed(f"{path.name}: annotation {i}")
            continue
        name = images[ann["image_id"]]
        b.add(name, img_dir / name, ann.get("caption"), split_)


def _read_karpathy(b: _TableBuilder, path: Path, data: dict, images_dir: Path | None) -> None:
    records = [img for img in data.get("images", []) if isinstance(img, dict)]

    def rel(img: dict) -> str:
        fp = img.get("filepath") or ""
        return f"{fp}/{img['filename']}" if fp else str(img["filename"])

    named = [img for img in records if img.get("filename")]
    rels = [rel(img) for img in named]
    base_dir = path.parent
    bases = (
        [images_dir]
        if images_dir is not None
        else [base_dir] + [base_dir / n for n in ("images", "Images", *FLICKR8K_IMAGE_DIRS)]
    )
    # Images may sit under filepath/filename (COCO: train2014/...) or flat in one folder.
    base = _pick_base(bases, rels)
    use_filepath = True
    if base is None:
        flat = _pick_base(bases, [str(img["filename"]) for img in named])
        if flat is not None:
            base, use_filepath = flat, False
        else:
            base = bases[0]
            b.note(f"no image folder found for {path.name}")
    b.set_images_dir(base)

    for i, img in enumerate(records):
        if not img.get("filename") or not isinstance(img.get("sentences"), list):
            b.malformed(f"{path.name}: image {i}")
            continue
        name = rel(img) if use_filepath else str(img["filename"])
        split = normalize_split(img.get("split"))
        for sent in img["sentences"]:
            if not isinstance(sent, dict):
                b.malformed(f"{path.name}: image {i}")
                continue
            raw = sent.get("raw")
            if raw is None and isinstance(sent.get("tokens"), list):
                raw = " ".join(str(t) for t in sent["tokens"])
            b.add(name, base / name, raw, split)


def _is_karpathy(data: Any) -> bool:
    imgs = data.get("images") if isinstance(data, dict) else None
    return (
        isinstance(imgs, list)
        and "annotations" not in data
        and any(isinstance(i, dict) and "sentences" in i for i in imgs[:10])
    )


def read_coco(
    root: Path | str,
    *,
    split: str | None = None,
    images_dir: Path | str | None = None,
    check_images: bool = True,
) -> tuple[pd.DataFrame, ReadReport]:
    """Read COCO-style captions: standard COCO caption files or a Karpathy split file.

    ``root`` is a JSON file or a folder. In a folder, Karpathy files (``dataset_*.json``, e.g.
    ``dataset_coco.json``, ``dataset_flickr8k.json``) are preferred, as they carry all splits;
    otherwise every ``captions_*.json`` in it or in ``annotations/`` is read.

    Standard files (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
    "caption"}]}``): the split is ``split`` if given, else from the file name
    (``captions_train2014.json`` -> train, ``captions_val2014.json`` -> val); images are looked
    for in ``images_dir``, else ``train2014/``, ``images/train2014/``, ``images/`` next to the
    annotations. Karpathy files carry a split per image ("restval" -> train) and ``split`` is
    ignored; images are at ``filepath/filename`` or ``filename`` under ``images_dir`` or the
    file's folder (or its ``images/``, ``Images/``, ``Flicker8k_Dataset/``).
    """
    root = Path(root)
    if root.is_file():
        files, base = [root], root.parent
    else:
        base = root
        files = sorted(root.glob("dataset_*.json"))
        if not files:
            files = sorted(root.glob("captions_*.json")) + sorted(
                (root / "annotations").glob("captions_*.json")
            )
    if not files:
        raise FileNotFoundError(
            f"no COCO caption files (dataset_*.json, captions_*.json) in {root}"
        )
    b = _TableBuilder("coco", base, check_images=check_images)
    img_dir = None if images_dir is None else Path(images_dir)
    if img_dir is not None and not img_dir.is_dir():
        b.note(f"images_dir {img_dir} does not exist")
    for path in files:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if _is_karpathy(data):
            _read_karpathy(b, path, data, img_dir)
        elif isinstance(data, dict) and "annotations" in data:
            _read_coco_standard(b, path, data, split, img_dir)
        else:
            raise ValueError(f"{path} is neither a COCO captions file nor a Karpathy split file")
    return b.finish()


# ---------------------------------------------------------------------------------------------
# imagefolder


def _metadata_records(path: Path, b: _TableBuilder) -> list[dict[str, Any]]:
    """Rows of a metadata.csv / metadata.jsonl as dicts (unparseable jsonl lines counted)."""
    if path.suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.DictReader(f))
    records = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            b.malformed(f"{path.parent.name}/{path.name}:{lineno}")
            continue
        records.append(rec)
    return records


def _read_metadata(
    b: _TableBuilder,
    path: Path,
    split: str | None,
    text_column: str | None,
    split_fractions: Sequence[float],
) -> None:
    folder = path.parent
    records = _metadata_records(path, b)
    col = text_column
    if col is None:
        keys = set().union(*(r.keys() for r in records)) if records else set()
        col = next((c for c in IMAGEFOLDER_TEXT_COLUMNS if c in keys), "text")
    for i, rec in enumerate(records):
        name = rec.get("file_name")
        if not name or not isinstance(name, str) or col not in rec:
            b.malformed(f"{folder.name}/{path.name}: row {i + 1}")
            continue
        name = name.strip()
        if split is not None:
            split_ = split
        else:
            # A root metadata file may still name split folders: "train/x.jpg".
            head = name.split("/", 1)[0]
            split_ = (
                normalize_split(head)
                if "/" in name and head in _IMAGEFOLDER_SPLIT_DIRS
                else hash_split(name, split_fractions)
            )
        texts = rec[col]
        # jsonl may hold several captions for one image as a list.
        for text in texts if isinstance(texts, list) else [texts]:
            b.add(name, folder / name, text, split_)


def read_imagefolder(
    root: Path | str,
    *,
    text_column: str | None = None,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    check_images: bool = True,
) -> tuple[pd.DataFrame, ReadReport]:
    """Read the Hugging Face ``imagefolder`` layout: ``metadata.csv`` or ``metadata.jsonl``
    with a ``file_name`` column (relative to the metadata file) and a text column
    (``text_column``, else the first of ``text``, ``caption``, ``captions``, ``sentence``).

    Splits come from subfolders ``train/``, ``validation/`` (or ``valid``, ``val``, ``dev``:
    -> "val"), ``test/``, each with its own metadata file; else from a single root metadata
    file, where a ``file_name`` under a split folder gives that split and any other is split
    by :func:`hash_split` with ``split_fractions``. An image may have several rows (one per
    caption), and a jsonl text may be a list of captions: all are kept.
    """
    root = Path(root)
    if root.is_file():
        root = root.parent
    b = _TableBuilder("imagefolder", root, check_images=check_images)
    b.set_images_dir(root)
    found = False
    for d in _IMAGEFOLDER_SPLIT_DIRS:
        for m in IMAGEFOLDER_METADATA:
            path = root / d / m
            if path.is_file():
                found = True
                _read_metadata(b, path, normalize_split(d), text_column, split_fractions)
    if not found:
        for m in IMAGEFOLDER_METADATA:
            path = root / m
            if path.is_file():
                found = True
                _read_metadata(b, path, None, text_column, split_fractions)
        if found:
            b.note(f"single metadata file; splits by hash with fractions {tuple(split_fractions)}")
    if not found:
        raise FileNotFoundError(f"no metadata.csv or metadata.jsonl in {root} or its split folders")
    return b.finish()


# ---------------------------------------------------------------------------------------------
# dispatch

_READERS = {
    "flickr8k": read_flickr8k,
    "captions_txt": read_captions_txt,
    "coco": read_coco,
    "imagefolder": read_imagefolder,
}


def detect_layout(root: Path | str) -> str:
    """Guess the layout of ``root`` (a folder or an annotation file) from the files present.

    Raises ValueError when nothing recognisable is there.
    """
    root = Path(root)
    if root.is_file():
        name = root.name.lower()
        if name.endswith(".json"):
            return "coco"
        if name in IMAGEFOLDER_METADATA:
            return "imagefolder"
        if "token" in name:
            return "flickr8k"
        if name.endswith((".txt", ".csv")):
            return "captions_txt"
        raise ValueError(f"cannot tell the layout of file {root}")
    if not root.is_dir():
        raise ValueError(f"{root} does not exist")
    if (root / FLICKR8K_TOKEN_FILE).is_file() or (
        root / "Flickr8k_text" / FLICKR8K_TOKEN_FILE
    ).is_file():
        return "flickr8k"
    if (root / CAPTIONS_TXT_FILE).is_file():
        return "captions_txt"
    dirs = [root, *(root / d for d in _IMAGEFOLDER_SPLIT_DIRS)]
    if any((d / m).is_file() for d in dirs for m in IMAGEFOLDER_METADATA):
        return "imagefolder"
    if (
        any(root.glob("dataset_*.json"))
        or any(root.glob("captions_*.json"))
        or any((root / "annotations").glob("captions_*.json"))
    ):
        return "coco"
    raise ValueError(
        f"cannot tell the layout of {root}: expected {FLICKR8K_TOKEN_FILE}, {CAPTIONS_TXT_FILE}, "
        "metadata.csv/jsonl, dataset_*.json or captions_*.json"
    )


def read_dataset(layout: str, root: Path | str, **kw: Any) -> tuple[pd.DataFrame, ReadReport]:
    """Read ``root`` with the reader for ``layout`` (one of :data:`LAYOUTS`, or ``"auto"`` to
    :func:`detect_layout`); ``kw`` go to that reader."""
    if layout == "auto":
        layout = detect_layout(root)
    try:
        reader = _READERS[layout]
    except KeyError:
        raise ValueError(
            f"unknown layout {layout!r}; expected one of {LAYOUTS} or 'auto'"
        ) from None
    return reader(root, **kw)
