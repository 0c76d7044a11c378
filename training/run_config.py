"""The one JSON file that describes a training run: ``python -m training run CONFIG.json``.

A :class:`RunConfig` has a section per stage (dataset, vocab, model, features, training,
evaluation, publish) and round-trips to JSON (:meth:`RunConfig.to_dict`,
:meth:`RunConfig.from_dict`). Unknown keys and wrong types are errors that name the key, so a
typo never passes silently. Relative paths are taken relative to the current directory.

Everything a run writes goes under ``<work_dir>/<name>/`` (see :class:`RunPaths`), so a run
that breaks or is killed loses nothing: ``prepare`` and ``train`` resume where they stopped.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imcap_hub.calibration import DEFAULT_CALIBRATION_IMAGES, MAX_CALIBRATION_IMAGES
from imcap_hub.config import (
    CaptionerConfig,
    ConfigError,
    DecoderConfig,
    EncoderConfig,
    check_choice,
    check_positive,
)
from imcap_hub.encoder import EXACT_RUNTIMES
from imcap_hub.files import atomic_write
from imcap_hub.inference import DecodeOptions, OptionsError
from imcap_hub.typed_json import from_json_object
from training.datasets import LAYOUTS, SPLITS

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
LR_SCHEDULES = ("constant", "cosine")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunConfigError(ConfigError):
    """A run config that cannot be used; the message names the key."""


@dataclass
class DatasetSection:
    """Where the captions come from.

    ``path``: the dataset folder (or annotation file), read with ``layout`` (``auto`` detects
    it). ``synthetic``: instead of ``path``, the fields of a
    :class:`training.synthetic.SyntheticConfig`; the shapes dataset is then drawn into the run
    folder in ``synthetic_layout`` and read back like any other dataset. ``reader_options``
    go to the reader (e.g. ``images_dir``, ``split_fractions``, ``check_images``).
    ``name``, ``url`` and ``license`` describe the dataset on the model card.
    """

    name: str = ""
    url: str | None = None
    license: str | None = None
    path: str | None = None
    layout: str = "auto"
    synthetic: dict | None = None
    synthetic_layout: str = "flickr8k"
    reader_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        check_choice(self.layout, ("auto", *LAYOUTS), "dataset.layout", RunConfigError)
        check_choice(self.synthetic_layout, LAYOUTS, "dataset.synthetic_layout", RunConfigError)
        if (self.path is None) == (self.synthetic is None):
            raise RunConfigError("dataset: give exactly one of dataset.path or dataset.synthetic")
        if self.synthetic is not None:
            from training.synthetic import SyntheticConfig

            try:
                SyntheticConfig.from_dict(self.synthetic)
            except (TypeError, ValueError) as e:
                raise RunConfigError(f"dataset.synthetic: {e}") from None

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.synthetic is not None:
            return "synthetic-shapes"
        return Path(self.path or "dataset").name


@dataclass
class VocabSection:
    """The vocabulary: words seen at least ``min_count`` times in the training captions, at
    most ``max_size`` tokens (specials included). Training captions longer than
    ``max_length`` words are dropped; ``max_length`` becomes the decoder's ``max_length``."""

    min_count: int = 5
    max_size: int | None = None
    max_length: int = 30

    def validate(self) -> None:
        check_positive(self.min_count, "vocab.min_count", RunConfigError)
        check_positive(self.max_length, "vocab.max_length", RunConfigError)
        if self.max_size is not None:
            check_positive(self.max_size, "vocab.max_size", RunConfigError)
            if self.max_size <= 4:
                raise RunConfigError("vocab.max_size must leave room for words (> 4)")


@dataclass
class ModelSection:
    """The captioner: ``encoder`` and ``decoder`` as in ``config.json`` (the decoder's
    ``max_length`` comes from ``vocab.max_length``). ``encoder_weights``: a local ResNet50
    ImageNet ``.h5`` file (machines without network access), or the ``encoder.safetensors``
    to start from for ``weights: "repo"``."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    encoder_weights: str | None = None


@dataclass
class FeaturesSection:
    """The encoder feature cache (frozen encoder only). ``cache_dir``: default
    ``<run>/features``; ``flush_seconds``: how often progress is made durable."""

    batch_size: int = 32
    runtime: str = "auto"
    cache_dir: str | None = None
    flush_seconds: float = 5.0

    def validate(self) -> None:
        check_positive(self.batch_size, "features.batch_size", RunConfigError)
        # Cached features train the decoder: exact runtimes only.
        check_choice(self.runtime, EXACT_RUNTIMES, "features.runtime", RunConfigError)
        if not self.flush_seconds >= 0:
            raise RunConfigError("features.flush_seconds must be >= 0")


@dataclass
class TrainingSection:
    """Fitting the decoder (and the encoder with ``train_encoder``).

    ``patience``: stop after this many epochs without a better validation loss (0: never
    stop early); the best epoch's weights are kept either way. ``strategy``: ``auto``
    (MirroredStrategy when there are several GPUs), ``default`` (one device), ``mirrored``
    (all GPUs, or ``devices``), ``multiworker`` (MultiWorkerMirroredStrategy from
    ``TF_CONFIG``). ``lr_schedule``: ``constant``, or ``cosine`` (decays to 1% of
    ``learning_rate`` over ``epochs``). ``attention_penalty``: the attention decoder's weight
    on the doubly stochastic penalty ``sum_i (1 - sum_t alpha_ti)^2`` (Xu et al.'s lambda).
    The paper's lambda = 1 weighs it against a loss summed over a caption's words; imcap's loss
    is a mean over words, so the same balance is lambda / (mean caption length), about 0.1.
    ``mixed_precision``: compute in float16 with loss scaling where a GPU is visible, in
    bfloat16 otherwise, keeping the weights (and so the published files) and the logits in
    float32 (``training.train.precision_policy``).
    """

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    clipnorm: float | None = 5.0
    patience: int = 3
    min_delta: float = 0.0
    train_encoder: bool = False
    strategy: str = "auto"
    devices: list[str] | None = None
    deterministic: bool = True
    attention_penalty: float = 0.1
    mixed_precision: bool = False

    def validate(self) -> None:
        check_positive(self.epochs, "training.epochs", RunConfigError)
        check_positive(self.batch_size, "training.batch_size", RunConfigError)
        if not self.learning_rate > 0:
            raise RunConfigError("training.learning_rate must be > 0")
        check_choice(self.lr_schedule, LR_SCHEDULES, "training.lr_schedule", RunConfigError)
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise RunConfigError("training.clipnorm must be > 0 or null")
        if self.patience < 0:
            raise RunConfigError("training.patience must be >= 0")
        if self.min_delta < 0:
            raise RunConfigError("training.min_delta must be >= 0")
        check_choice(self.strategy, STRATEGIES, "training.strategy", RunConfigError)
        if not self.attention_penalty >= 0:
            raise RunConfigError("training.attention_penalty must be >= 0")


@dataclass
class EvaluationSection:
    """Scoring the trained model with the coco-caption metrics (``training.evaluate``).
    ``decodings``: ``greedy``, ``beam-K`` (K up to ``imcap_hub.inference.MAX_BEAM``), ``sample``."""

    enabled: bool = True
    split: str = "test"
    decodings: list[str] = field(default_factory=lambda: ["greedy", "beam-3"])
    max_images: int | None = None

    def validate(self) -> None:
        check_choice(self.split, SPLITS, "evaluation.split", RunConfigError)
        if not self.decodings:
            raise RunConfigError("evaluation.decodings must name at least one decoding")
        for d in self.decodings:
            try:
                DecodeOptions.from_label(d)
            except OptionsError as e:
                raise RunConfigError(f"evaluation.decodings: {e}") from None
        if self.max_images is not None:
            check_positive(self.max_images, "evaluation.max_images", RunConfigError)


@dataclass
class PublishSection:
    """The model folder (``out_dir``, default ``<run>/model``) and, with ``repo_id``, the Hub
    repo it is pushed to; ``model_name`` titles the model card when there is no repo id
    (default: the run name); ``notes``: a paragraph for the card, under its summary (Markdown:
    why this model, what it is for). ``calibration_images``: how many training images go into
    ``calibration.safetensors``, which the ``openvino-int8`` encoder runtime calibrates on (0:
    no such file). The token is never stored here: pass ``--token`` or set ``HF_TOKEN`` (or log
    in with ``hf auth login``)."""

    out_dir: str | None = None
    repo_id: str | None = None
    private: bool | None = None
    model_name: str | None = None
    notes: str | None = None
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES

    def validate(self) -> None:
        n = self.calibration_images
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_CALIBRATION_IMAGES:
            raise RunConfigError(
                f"publish.calibration_images must be an integer from 0 to "
                f"{MAX_CALIBRATION_IMAGES}, got {n!r}"
            )


@dataclass
class RunConfig:
    """A whole training run. ``name`` picks the run folder ``<work_dir>/<name>``."""

    name: str
    dataset: DatasetSection
    work_dir: str = "runs"
    seed: int = 0
    vocab: VocabSection = field(default_factory=VocabSection)
    model: ModelSection = field(default_factory=ModelSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    publish: PublishSection = field(default_factory=PublishSection)

    # --- checks -------------------------------------------------------------------------------

    def validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise RunConfigError(
                f"name {self.name!r} must be letters, digits, '.', '_' or '-' (it names the run folder)"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise RunConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.dataset.validate()
        self.vocab.validate()
        self.features.validate()
        self.training.validate()
        self.evaluation.validate()
        self.publish.validate()
        try:
            self.captioner_config(vocab_size=8).validate()
        except ConfigError as e:
            raise RunConfigError(f"model: {e}") from None
        enc = self.model.encoder
        if (
            not self.training.train_encoder
            and enc.weights == "repo"
            and self.model.encoder_weights is None
        ):
            raise RunConfigError(
                "model.encoder: a frozen encoder with weights 'repo' needs "
                "model.encoder_weights (an encoder.safetensors); or set "
                "training.train_encoder: true to train it"
            )

    def captioner_config(self, vocab_size: int) -> CaptionerConfig:
        """The model's ``config.json`` for a vocabulary of ``vocab_size`` tokens."""
        decoder = DecoderConfig(
            **{**asdict(self.model.decoder), "max_length": self.vocab.max_length}
        )
        return CaptionerConfig(
            encoder=EncoderConfig(**asdict(self.model.encoder)),
            decoder=decoder,
            vocab_size=vocab_size,
        )

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"]["decoder"].pop("max_length", None)  # it is vocab.max_length
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        if not isinstance(data, dict):
            raise RunConfigError("the run config must be a JSON object")
        decoder = (
            (data.get("model") or {}).get("decoder")
            if isinstance(data.get("model"), dict)
            else None
        )
        if isinstance(decoder, dict) and "max_length" in decoder:
            raise RunConfigError(
                "model.decoder.max_length: set vocab.max_length instead (the caption length limit)"
            )
        config = from_json_object(cls, data, "", RunConfigError)
        config.validate()
        return config

    @classmethod
    def from_json(cls, text: str, where: str = "config") -> RunConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RunConfigError(f"{where} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise RunConfigError(f"config file {path} does not exist")
        return cls.from_json(path.read_text(encoding="utf-8"), where=str(path))

    def save(self, path: str | Path) -> None:
        atomic_write(path, self.to_json())

    def with_overrides(self, assignments: list[str]) -> RunConfig:
        """A copy with ``section.key=value`` assignments applied (value: JSON, else a string)."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise RunConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.epochs=5")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                if not isinstance(child, dict):
                    raise RunConfigError(f"--set {key}: {part!r} is not a section")
                node = child
            node[parts[-1]] = value
        return RunConfig.from_dict(data)

    # --- where things go ----------------------------------------------------------------------

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.work_dir) / self.name, self)


class RunPaths:
    """The layout of a run folder."""

    def __init__(self, root: Path, config: RunConfig) -> None:
        self.root = root
        self.config_file = root / "config.json"
        self.data = root / "data"  # the synthetic dataset, when drawn
        self.prepared = root / "prepared"
        self.captions = self.prepared / "captions.csv"  # image, caption, split (raw references)
        self.vocab = self.prepared / "vocab.json"
        self.prepare_info = self.prepared / "prepare.json"
        self.frozen_encoder = self.prepared / "encoder.safetensors"
        self.features = (
            Path(config.features.cache_dir) if config.features.cache_dir else root / "features"
        )
        self.checkpoints = root / "checkpoints"
        self.trained = root / "trained"  # the best model, save_pretrained layout, no card
        self.train_info = root / "train.json"
        self.metrics = root / "metrics.json"
        self.model = Path(config.publish.out_dir) if config.publish.out_dir else root / "model"
        self.stages = root / "stages.json"


# --- helpers ----------------------------------------------------------------------------------
