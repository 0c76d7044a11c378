"""What a start-up shows: a line before each slow step and its duration after (:func:`step`),
and TensorFlow imported in one place (:func:`import_tensorflow`, :func:`import_keras`: every
module of imcap_hub that needs TensorFlow or Keras goes through them, never at import time, so a
cached converted encoder captions without TensorFlow).

TensorFlow 2.21 writes its start-up noise to file descriptor 2 before absl's log is set up, so
``TF_CPP_MIN_LOG_LEVEL`` cannot remove it all::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    E0000 00:00:... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

After :func:`quiet_tensorflow` (the CLI and the app call it; library users and notebooks keep
TensorFlow's own behaviour), the import and the device set-up (``list_physical_devices``: cuInit)
run with file descriptor 2 pointed at a temporary file; then every line that is not known noise
(:data:`NOISE`) is written to the real stderr, so a real error still shows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

# A line of TensorFlow's C++ log (absl format): severity and date, time (before absl is set up:
# 00:00:<seconds since 1970>), thread, file:line.
_GLOG = r"[IWEF]\d{4} [\d:.]+\s+\d+ "
NOISE = tuple(
    re.compile(pattern)
    for pattern in (
        r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
        # No GPU, or no CUDA driver: imcap runs on the CPU.
        _GLOG + r"cudart_stub\.cc:\d+\] ",
        _GLOG + r"cuda_platform\.cc:\d+\] failed call to cuInit",
        _GLOG + r"cuda_executor\.cc:\d+\] could not open file to read NUMA node",
        _GLOG + r"gpu_device\.cc:\d+\] Cannot dlopen some GPU libraries",
        _GLOG + r"py_utils\.cc:\d+\] TF-TRT Warning: Could not find TensorRT",
        # CUDA plugins registered twice (TensorFlow and XLA both try).
        _GLOG + r"cuda_(fft|dnn|blas)\.cc:\d+\] Unable to register cu\w+ factory",
        _GLOG + r"computation_placer\.cc:\d+\] computation placer already registered",
        # Build notices.
        _GLOG + r"cpu_feature_guard\.cc:\d+\] ",
        r"To enable the following instructions: .*rebuild TensorFlow with the appropriate "
        r"compiler flags\.",
        _GLOG + r"port\.cc:\d+\] oneDNN custom operations are on",
    )
)

_quiet = False
_ready = False  # TensorFlow imported (and, when quiet, its devices set up) through here
_lock = threading.Lock()


@contextlib.contextmanager
def step(log: logging.Logger, what: str, detail: str | None = None) -> Iterator[None]:
    """Log ``what...`` (with ``detail`` in brackets) at INFO before the block, and
    ``what: done in 1.2 s`` after it (nothing more when it raises: the error says why)."""
    log.info("%s%s...", what, f" ({detail})" if detail else "")
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", what, time.perf_counter() - start)


def quiet_tensorflow(enabled: bool = True) -> None:
    """Filter TensorFlow's start-up noise when :func:`import_tensorflow` first runs (opt-in:
    the command line and the app call this; a library user keeps TensorFlow's behaviour)."""
    global _quiet
    _quiet = enabled


def is_noise(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's known start-up messages (:data:`NOISE`)."""
    text = line.rstrip("\r\n")
    return any(pattern.match(text) for pattern in NOISE)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _flush_python_streams() -> None:
    for stream in {id(s): s for s in (sys.stderr, sys.__stderr__) if s is not None}.values():
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Inside the block, whatever is written to file descriptor 2 (C++ libraries, Python's
    ``sys.stderr``) goes to a temporary file; afterwards its lines are written to the real
    stderr, known noise (:func:`is_noise`) left out. Where fd 2 cannot be redirected (closed,
    or not a file descriptor), the block runs unfiltered."""
    _flush_python_streams()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                _flush_python_streams()
                os.dup2(saved, 2)
                capture.seek(0)
                kept = [
                    line
                    for line in capture.read().splitlines(keepends=True)
                    if not is_noise(line.decode("utf-8", "replace"))
                ]
                _write_all(2, b"".join(kept))
    finally:
        os.close(saved)


def import_tensorflow() -> Any:
    """``import tensorflow``, saying so (it takes seconds); after :func:`quiet_tensorflow`,
    with its start-up noise filtered, its devices set up inside the filter. Returns the module."""
    global _ready
    if _ready:
        return sys.modules["tensorflow"]
    with _lock:
        if not _ready:
            announce = "tensorflow" not in sys.modules
            nothing = contextlib.nullcontext()
            with (
                step(logger, "importing TensorFlow") if announce else nothing,
                filtered_stderr() if _quiet else nothing,
            ):
                import tensorflow as tf

                if _quiet:  # cuInit, and its failure on a machine without a GPU
                    tf.config.list_physical_devices()
            _ready = True
    return sys.modules["tensorflow"]


def import_keras() -> Any:
    """``import keras`` (TensorFlow first, through :func:`import_tensorflow`); returns it."""
    import_tensorflow()
    import keras

    return keras
