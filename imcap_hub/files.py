"""The one atomic file writer, and safetensors I/O, for every file imcap writes.

A file is written to a temporary name in its own folder, flushed and fsynced, then renamed over
the target: a reader sees the old file or the new one, never half of one, and a crash leaves at
most a ``.*.tmp`` file beside it. The temporary file is created with ``open(..., "x")``, so it
gets the mode any other new file gets (``0o666`` less the umask); ``mkstemp`` would make it 0600.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike


def atomic_write(path: PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 with ``\\n`` line ends) to ``path`` atomically and durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 2, **dumps: Any) -> Path:
    """``obj`` as JSON plus a final newline, written with :func:`atomic_write`."""
    return atomic_write(path, json.dumps(obj, indent=indent, **dumps) + "\n")


def save_tensors(tensors: Mapping[str, np.ndarray], path: PathLike, kind: str) -> Path:
    """Write ``tensors`` as safetensors with ``{"format": kind}`` as metadata, atomically.

    One metadata key only: safetensors writes a metadata map in no fixed order, so two keys
    give different bytes for the same weights (and a needless re-upload to the Hub).
    """
    from safetensors.numpy import save

    # ascontiguousarray makes 0-d arrays 1-d: keep the shape (optimizer step counters).
    arrays = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in tensors.items()}
    return atomic_write(path, save(arrays, metadata={"format": kind}))


def load_tensors(path: PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file (raises safetensors' own errors and OSError)."""
    from safetensors.numpy import load_file

    return load_file(os.fspath(path))
