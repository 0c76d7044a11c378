"""Plain helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np

from imcap_hub import CaptionerConfig, DecoderConfig, EncoderConfig

TINY_WORDS = [
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "small",
    "large",
    "left",
    "right",
    "of",
    "the",
]


def tiny_config(**decoder):
    """A tiny_resnet + LSTM config small enough to build in well under a second."""
    return CaptionerConfig(
        encoder=EncoderConfig(
            architecture="tiny_resnet",
            weights="repo",
            image_size=32,
            preprocessing="unit",
            widths=[8, 16],
        ),
        decoder=DecoderConfig(
            **{"embedding_dim": 8, "units": 16, "max_length": 8, "dropout": 0.0, **decoder}
        ),
        vocab_size=4 + len(TINY_WORDS),
    )


def tiny_attention_config(**decoder):
    """``tiny_config`` with an attention decoder over the encoder's 4x4x12 grid."""
    config = tiny_config(**{"kind": "attention", "attention_dim": 10, **decoder})
    config.encoder.features = "spatial"
    config.encoder.widths = [8, 16, 12]
    config.validate()
    return config


def random_image(seed: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
