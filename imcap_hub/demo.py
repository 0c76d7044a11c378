"""The bundled demo model: a tiny captioner of synthetic shapes, shipped inside the package."""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "demo_model"


def demo_model_available() -> bool:
    """Whether the demo model files are present (they are created by ``python -m training ...``)."""
    return (DEMO_MODEL_DIR / "config.json").is_file()
