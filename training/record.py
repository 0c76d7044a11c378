"""The record of a training run, from the train stage to the model card: :class:`TrainRecord`.

What was trained (the model config, the training settings, the encoder trained or frozen, the
``tf.distribute`` strategy), on what data (the dataset, its split sizes, the vocabulary, the
caption rows training used and those it dropped), how long it took (per stage, per epoch) and
how it went (the per-epoch history, the best epoch, early stopping), with the seed and the
hardware. The train stage (:func:`training.stages.train_stage`) writes it to
``<run>/train.json``; ``push`` reads it back and :func:`model_card.render_card` renders it.

It round-trips to JSON (:meth:`TrainRecord.to_dict` / :meth:`TrainRecord.from_dict`); a
``train.json`` that is not a record of this format is a :class:`RecordError` that says what to
do.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from imcap_hub.config import CaptionerConfig, ConfigError
from imcap_hub.errors import ImcapError
from imcap_hub.files import atomic_write_json
from imcap_hub.typed_json import from_json_object
from training.run_config import TrainingSection

RECORD_FORMAT = 1
# The per-epoch metrics kept in the history (Keras logs), in column order.
HISTORY_METRICS = ("loss", "token_accuracy", "val_loss", "val_token_accuracy")


class RecordError(ImcapError, ValueError):
    """A ``train.json`` that cannot be read as a :class:`TrainRecord`; the message says why."""


@dataclass
class DatasetInfo:
    """The dataset as the model card names it: ``name`` (the config's ``dataset.name``, or a
    name made from the path), the ``layout`` it was read in, ``url`` and ``license`` when the
    config gives them, and for the synthetic shapes the ``synthetic_config`` they were drawn
    with."""

    name: str
    layout: str
    synthetic: bool
    url: str | None = None
    license: str | None = None
    synthetic_config: dict[str, Any] | None = None


@dataclass
class SplitSize:
    """One split of the dataset as ``prepare`` read it."""

    images: int
    captions: int


@dataclass
class SplitUse:
    """The caption rows of one split that training used (``captions`` of ``images``) and those
    it dropped: images that could not be read, captions empty or longer than
    ``vocab.max_length`` words."""

    captions: int
    images: int
    dropped_unreadable: int
    dropped_length: int


@dataclass
class VocabStats:
    """The vocabulary ``prepare`` built (``training.prepare.build_vocab``)."""

    size: int
    min_count: int
    max_size: int | None
    max_length: int
    distinct_train_words: int
    train_captions: int
    train_captions_kept: int
    dropped_too_long: int
    dropped_empty: int
    caption_length_mean: float
    caption_length_p95: float
    unknown_token_rate: float


@dataclass
class EpochRecord:
    """One epoch of the history; the ``val_`` metrics are None without a val split."""

    epoch: int
    loss: float
    token_accuracy: float
    seconds: float
    val_loss: float | None = None
    val_token_accuracy: float | None = None


@dataclass
class StrategyInfo:
    """The ``tf.distribute`` strategy: its name, replicas and devices; ``chief``: whether this
    process wrote the run's files (multi-worker training)."""

    name: str
    replicas: int
    devices: list[str] = field(default_factory=list)
    chief: bool = True


@dataclass
class Hardware:
    """The machine that trained."""

    cpu: str
    cpu_count: int | None
    gpus: list[str]
    platform: str
    python: str
    tensorflow: str

    @classmethod
    def detect(cls) -> Hardware:
        """This machine."""
        import tensorflow as tf

        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        return cls(
            cpu=cpu,
            cpu_count=os.cpu_count(),
            gpus=[d.name for d in tf.config.list_physical_devices("GPU")],
            platform=platform.platform(),
            python=platform.python_version(),
            tensorflow=tf.__version__,
        )


def epoch_records(
    history: Mapping[str, Sequence[float]], epoch_seconds: Sequence[float]
) -> list[EpochRecord]:
    """Keras' history (metric -> per-epoch values) and the epoch times -> one record per epoch.
    Seconds are kept to the millisecond."""
    n = len(history.get("loss", ()))
    return [
        EpochRecord(
            epoch=i + 1,
            loss=float(history["loss"][i]),
            token_accuracy=float(history["token_accuracy"][i]),
            seconds=round(float(epoch_seconds[i]), 3),
            val_loss=float(history["val_loss"][i]) if "val_loss" in history else None,
            val_token_accuracy=(
                float(history["val_token_accuracy"][i]) if "val_token_accuracy" in history else None
            ),
        )
        for i in range(n)
    ]


@dataclass
class TrainRecord:
    """What the train stage knows about a run; ``<run>/train.json``.

    ``name``: the run (``RunConfig.name``); ``model``: the config of the model as published;
    ``settings``: the ``training`` section it was trained with; ``splits``: every split of
    the dataset as prepared; ``used``: the ``train`` and ``val`` caption rows training used;
    ``stage_seconds``: how long each stage of the run took (stage -> seconds: the stages done
    so far when the record was written; ``push`` brings it up to date from ``stages.json``);
    ``resumed_from_epoch``: the epoch the last call resumed after (0: it started afresh).
    """

    name: str
    model: CaptionerConfig
    settings: TrainingSection
    strategy: StrategyInfo
    dataset: DatasetInfo
    splits: dict[str, SplitSize]
    used: dict[str, SplitUse]
    vocabulary: VocabStats
    history: list[EpochRecord]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int
    seed: int
    hardware: Hardware
    stage_seconds: dict[str, float] = field(default_factory=dict)
    format: int = RECORD_FORMAT

    @property
    def train_encoder(self) -> bool:
        """Whether the encoder was trained end to end (else frozen, its features cached)."""
        return self.settings.train_encoder

    def with_stage_seconds(self, stage_seconds: Mapping[str, float]) -> TrainRecord:
        """A copy whose ``stage_seconds`` are ``stage_seconds``."""
        return replace(self, stage_seconds=dict(stage_seconds))

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data = {k: asdict(v) if is_dataclass(v) else v for k, v in data.items()}
        data["model"] = self.model.to_dict()
        for key in ("splits", "used"):
            data[key] = {k: asdict(v) for k, v in getattr(self, key).items()}
        data["history"] = [asdict(e) for e in self.history]
        data["stage_seconds"] = dict(self.stage_seconds)
        return {"format": data.pop("format"), **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = "train.json") -> TrainRecord:
        if not isinstance(data, dict):
            raise RecordError(f"{where} is not a JSON object")
        if data.get("format") != RECORD_FORMAT:
            raise RecordError(
                f"{where} is not a training record of format {RECORD_FORMAT} (format "
                f"{data.get('format')!r}; an older imcap wrote it?): run `python -m training "
                "train` with this config again, it resumes from the checkpoints and rewrites it"
            )
        try:
            model = CaptionerConfig.from_dict(data.get("model"))
        except ConfigError as e:
            raise RecordError(f"{where}: model: {e}") from None
        return from_json_object(cls, {**data, "model": model}, where, RecordError)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "train.json") -> TrainRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where} is not valid JSON: {e}") from None
        return cls.from_dict(data, where)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the record (atomically)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike) -> TrainRecord:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecordError(
                f"{path} does not exist: run `python -m training train` with this config first"
            ) from None
        return cls.from_json(text, where=str(path))
