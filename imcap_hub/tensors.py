"""Writing safetensors files the same way everywhere (weights, checkpoints)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

# safetensors creates files with mode 0600; give them the mode any other file would get.
_UMASK = os.umask(0)
os.umask(_UMASK)


def save_tensors(tensors: Mapping[str, np.ndarray], path: str | os.PathLike, kind: str) -> None:
    """Write ``tensors`` to ``path`` with ``{"format": kind}`` as metadata.

    One metadata key only: safetensors writes a metadata map in no fixed order, so two keys
    give different bytes for the same weights (and a needless re-upload to the Hub).
    """
    from safetensors.numpy import save_file

    save_file(
        # ascontiguousarray makes 0-d arrays 1-d: keep the shape (optimizer step counters).
        {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in tensors.items()},
        os.fspath(path),
        metadata={"format": kind},
    )
    os.chmod(path, 0o666 & ~_UMASK)
