"""Caption tables on disk: one row per image, ``file``, ``caption`` and ``error``, as CSV or as
JSON Lines (chosen by the file's suffix). The app's batch downloads and the folder CLI write them;
the CLI reads one back to resume."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import ImcapError

FIELDS = ("file", "caption", "error")
SUFFIXES = (".csv", ".jsonl")


class CaptionFileError(ImcapError, ValueError):
    """A caption table that cannot be written or read back."""


def table_format(path: str | os.PathLike) -> str:
    """``csv`` or ``jsonl``, from the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise CaptionFileError(
            f"{os.fspath(path)}: write captions to a .csv or a .jsonl file, not {suffix or 'no suffix'}"
        )
    return suffix[1:]


def _row(entry: Mapping[str, str | None]) -> dict[str, str]:
    return {key: str(entry.get(key) or "") for key in FIELDS}


def format_rows(entries: Iterable[Mapping[str, str | None]], fmt: str, header: bool) -> str:
    """``entries`` as CSV lines (with a header line when ``header``) or JSON Lines."""
    if fmt == "jsonl":
        lines = []
        for entry in entries:
            row = {k: v for k, v in _row(entry).items() if v or k == "file"}
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        return "".join(lines)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(_row(e) for e in entries)
    return buffer.getvalue()


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a caption table, each with ``file``, ``caption`` and ``error`` ("" where
    absent); none when it does not exist yet. A JSON Lines row cut short by a crash is skipped."""
    path = Path(path)
    fmt = table_format(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
        else:
            rows = []
            for line in text.splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    rows.append(json.loads(line))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CaptionFileError(f"{path}: cannot be read back: {e}") from None
    return [_row(row) for row in rows if isinstance(row, dict) and row.get("file")]


def read_done(path: str | os.PathLike) -> set[str]:
    """The files a caption table has a row for, captioned or not: a rerun skips them."""
    return {row["file"] for row in read_rows(path)}
