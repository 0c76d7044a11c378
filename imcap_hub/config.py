"""Model configuration: dataclasses that round-trip to ``config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImcapError
from .files import atomic_write
from .typed_json import from_json_object, read_json_file

FORMAT_VERSION = 1
ARCHITECTURES = ("resnet50", "tiny_resnet")
WEIGHT_SOURCES = ("imagenet", "repo", "random")
PREPROCESSING = ("caffe", "unit")
FEATURE_KINDS = ("pooled", "spatial")
DECODER_KINDS = ("init_state_lstm", "attention")
MIN_SPATIAL_GRID = 4


class ConfigError(ImcapError, ValueError):
    """A config.json that this version of imcap cannot use."""


def check_choice(
    value: Any, allowed: tuple[str, ...], what: str, error: type[ConfigError] = ConfigError
) -> None:
    """Raise ``error`` unless ``value`` is one of ``allowed`` (the config and run config rule)."""
    if value not in allowed:
        raise error(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def check_positive(value: Any, what: str, error: type[ConfigError] = ConfigError) -> None:
    """Raise ``error`` unless ``value`` is an int > 0 (a bool is not an int here)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise error(f"{what} must be a positive integer, got {value!r}")


@dataclass
class EncoderConfig:
    """The image encoder.

    ``weights``: ``imagenet`` (Keras' own ImageNet download), ``repo`` (``encoder.safetensors``
    in the model repo, for encoders that are not stock), or ``random`` (tests, benchmarks).
    ``features``: ``pooled`` (global average, ``feature_dim``) or ``spatial`` (the last
    feature grid: 7x7 for ResNet50 at 224 px, at least 4x4).
    ``widths`` and ``blocks`` only shape the ``tiny_resnet`` architecture.
    """

    architecture: str = "resnet50"
    weights: str = "imagenet"
    image_size: int = 224
    preprocessing: str = "caffe"
    features: str = "pooled"
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    blocks: int = 1

    def validate(self) -> None:
        check_choice(self.architecture, ARCHITECTURES, "encoder architecture")
        check_choice(self.weights, WEIGHT_SOURCES, "encoder weights source")
        check_choice(self.preprocessing, PREPROCESSING, "preprocessing")
        check_choice(self.features, FEATURE_KINDS, "feature kind")
        check_positive(self.image_size, "encoder.image_size")
        if self.architecture == "resnet50":
            if self.image_size < 32:
                raise ConfigError("resnet50 needs image_size >= 32")
            if self.weights == "imagenet" and self.preprocessing != "caffe":
                raise ConfigError("ImageNet ResNet50 weights expect 'caffe' preprocessing")
        else:
            if self.weights == "imagenet":
                raise ConfigError("tiny_resnet has no ImageNet weights; use 'repo' or 'random'")
            if not self.widths:
                raise ConfigError("tiny_resnet needs at least one width")
            for w in self.widths:
                check_positive(w, "encoder.widths[]")
            check_positive(self.blocks, "encoder.blocks")
        if self.features == "spatial" and self.feature_shape[0] < MIN_SPATIAL_GRID:
            # Attention over fewer cells than this cannot say where anything is.
            raise ConfigError(
                f"spatial features need a grid of at least {MIN_SPATIAL_GRID}x{MIN_SPATIAL_GRID}; "
                f"{self.architecture} at image_size {self.image_size} gives "
                f"{self.feature_shape[0]}x{self.feature_shape[1]} (raise image_size"
                + (" or use fewer widths)" if self.architecture == "tiny_resnet" else ")")
            )

    @property
    def feature_dim(self) -> int:
        """Channels of one feature vector (2048 for ResNet50)."""
        return 2048 if self.architecture == "resnet50" else self.widths[-1]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        if self.features == "pooled":
            return (self.feature_dim,)
        grid = self.image_size // 32 if self.architecture == "resnet50" else self._tiny_grid()
        return (grid, grid, self.feature_dim)

    def _tiny_grid(self) -> int:
        size = self.image_size // 2  # stem stride
        for _ in self.widths[1:]:
            size = (size + 1) // 2
        return size

    def cache_key(self) -> dict[str, Any]:
        """What determines the encoder's outputs (for feature and runtime caches)."""
        return asdict(self)


@dataclass
class DecoderConfig:
    """The LSTM decoder. ``max_length`` counts words, not the start/end tokens.

    ``kind``: ``init_state_lstm`` (pooled features set the LSTM's initial state, Show and Tell)
    or ``attention`` (soft attention over the spatial grid, Show, Attend and Tell), which needs
    ``attention_dim`` and ``encoder.features == "spatial"``.
    """

    kind: str = "init_state_lstm"
    embedding_dim: int = 256
    units: int = 512
    max_length: int = 30
    dropout: float = 0.3
    attention_dim: int | None = None

    def validate(self) -> None:
        check_choice(self.kind, DECODER_KINDS, "decoder kind")
        check_positive(self.embedding_dim, "decoder.embedding_dim")
        check_positive(self.units, "decoder.units")
        check_positive(self.max_length, "decoder.max_length")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"decoder.dropout must be in [0, 1), got {self.dropout!r}")
        if self.kind == "attention":
            check_positive(self.attention_dim, "decoder.attention_dim")
        elif self.attention_dim is not None:
            raise ConfigError(
                f"decoder.attention_dim is only for the attention kind, not {self.kind!r}"
            )


@dataclass
class CaptionerConfig:
    """Everything needed to rebuild a captioner, written as ``config.json``."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    vocab_size: int = 0
    format_version: int = FORMAT_VERSION
    library: str = "imcap"

    def validate(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"config.json has format_version {self.format_version!r}; "
                f"this imcap reads version {FORMAT_VERSION}. Upgrade imcap or re-export the model."
            )
        self.encoder.validate()
        self.decoder.validate()
        check_positive(self.vocab_size, "vocab_size")
        wanted = "spatial" if self.decoder.kind == "attention" else "pooled"
        if self.encoder.features != wanted:
            raise ConfigError(
                f"decoder {self.decoder.kind!r} needs encoder.features={wanted!r}, "
                f"got {self.encoder.features!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["decoder"]["attention_dim"] is None:  # pooled models keep their config.json
            del data["decoder"]["attention_dim"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionerConfig:
        if not isinstance(data, dict):
            raise ConfigError("config.json must hold a JSON object")
        data = dict(data)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"config.json has format_version {version!r}; this imcap reads version "
                f"{FORMAT_VERSION}. Upgrade imcap or re-export the model."
            )
        config = from_json_object(cls, data, "", ConfigError)
        config.validate()
        return config

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CaptionerConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config.json is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        atomic_write(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> CaptionerConfig:
        """Read config.json; every error is a ConfigError whose message names the file."""
        return read_json_file(path, ConfigError, cls.from_dict)
