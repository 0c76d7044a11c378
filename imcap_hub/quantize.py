"""Post-training int8 quantisation of the OpenVINO encoder (NNCF's ``nncf.quantize``).

NNCF is optional (``pip install "imcap[fast]"``); this module imports it only when it quantises.
The calibration batches are the model's own training images (``imcap_hub.calibration``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PRESETS = ("performance", "mixed")
OVERFLOW_FIXES = ("first_layer_only", "enable", "disable")
# CPU flags of int8 dot-product instructions that accumulate in 32 bits.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class QuantizationSettings:
    """How ``nncf.quantize`` runs (part of the int8 encoder's cache key).

    ``preset``: ``performance`` (symmetric weights and activations, NNCF's default for CNNs) or
    ``mixed`` (asymmetric activations). ``fast_bias_correction``: NNCF's quick bias correction
    (False: the slower, more accurate one). ``subset_size``: calibration images used (None: all).
    ``ignored_types``: OpenVINO operation types left in float (e.g. ``"Add"``).
    ``overflow_fix``: NNCF's 7-bit weights against int16 saturation, on ``first_layer_only``
    (NNCF's default), every layer (``enable``) or none (``disable``); see :func:`default_settings`.
    """

    preset: str = "performance"
    fast_bias_correction: bool = True
    subset_size: int | None = None
    ignored_types: tuple[str, ...] = ()
    overflow_fix: str = "first_layer_only"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, not {self.preset!r}")
        if self.overflow_fix not in OVERFLOW_FIXES:
            raise ValueError(f"overflow_fix must be one of {OVERFLOW_FIXES}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ignored_types"] = list(self.ignored_types)
        return data


def cpu_has_vnni() -> bool | None:
    """Whether this CPU has VNNI (or AMX) int8 dot products; None where it cannot be read (the
    flags come from Linux's /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return None
    return any(flag in flags for flag in VNNI_FLAGS) if flags else None


def default_settings() -> QuantizationSettings:
    """NNCF's defaults, with the overflow fix on every layer where the CPU has no VNNI.

    Without VNNI, OpenVINO multiplies int8 with AVX2's VPMADDUBSW, which adds pairs of
    products into int16 and saturates; 7-bit weights keep the sums in range. NNCF does this for
    the first layer only; on this project's AVX2 machine, doing it for every layer raised the
    int8 encoder's identical greedy captions from 78.5 % to 83.8 % (bench/bench_fast_mode.py).
    With VNNI (32-bit sums) the fix would only cost a bit of precision.
    """
    if cpu_has_vnni() is False:
        return QuantizationSettings(overflow_fix="enable")
    return QuantizationSettings()


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF writes progress bars and log lines to stdout (where the CLI prints captions) and
    sends usage telemetry: here its output goes to this module's logger (warnings as warnings,
    the rest at debug level), and it sends nothing: a library that quantises while loading a
    model does not report on its user."""
    import nncf.telemetry.decorator as tracking
    from nncf.common.logging.logger import nncf_logger
    from nncf.telemetry.wrapper import NNCFTelemetryStub

    buffer = io.StringIO()
    handlers = [h for h in nncf_logger.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(buffer) for h in handlers]
    telemetry = getattr(tracking, "telemetry", None)
    tracking.telemetry = NNCFTelemetryStub()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        tracking.telemetry = telemetry
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream if stream is not None else sys.stdout)
        for line in buffer.getvalue().splitlines():
            if line.startswith(("WARNING:", "ERROR:")):
                logger.warning("nncf: %s", line)
            elif line.strip():
                logger.debug("nncf: %s", line)


def quantize_openvino(
    fp32_xml: str | os.PathLike,
    batches: Sequence[np.ndarray],
    out_xml: str | os.PathLike,
    settings: QuantizationSettings | None = None,
) -> Path:
    """Quantise the OpenVINO model ``fp32_xml`` to int8, calibrated on ``batches`` (preprocessed
    float32 inputs, one image each), and save it as ``out_xml``. ``settings``: default
    :func:`default_settings`."""
    import nncf
    import openvino as ov

    settings = settings or default_settings()
    model = ov.Core().read_model(os.fspath(fp32_xml))
    ignored = (
        nncf.IgnoredScope(types=list(settings.ignored_types)) if settings.ignored_types else None
    )
    with _quiet_nncf():
        quantized = nncf.quantize(
            model,
            nncf.Dataset(list(batches)),
            preset=nncf.QuantizationPreset(settings.preset),
            subset_size=settings.subset_size or len(batches),
            fast_bias_correction=settings.fast_bias_correction,
            ignored_scope=ignored,
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix(settings.overflow_fix)
            ),
        )
    out_xml = Path(out_xml)
    ov.save_model(quantized, os.fspath(out_xml))
    return out_xml
