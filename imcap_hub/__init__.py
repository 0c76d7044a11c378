"""imcap_hub: caption images with a ResNet50 encoder and an LSTM decoder from the Hugging Face Hub."""

import os

# Keras must use TensorFlow (tf.data and tf.function are used); quiet TF's C++ start-up logs.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .config import CaptionerConfig, ConfigError, DecoderConfig, EncoderConfig
from .errors import ImcapError
from .images import ImageError, load_image
from .inference import Caption, DecodeOptions, Prediction, predict, predict_many
from .model import ImageCaptioner, ModelLoadError
from .vocab import Vocabulary, normalize_caption

__version__ = "0.1.0"

__all__ = [
    "Caption",
    "CaptionerConfig",
    "ConfigError",
    "DecodeOptions",
    "DecoderConfig",
    "EncoderConfig",
    "ImageCaptioner",
    "ImageError",
    "ImcapError",
    "ModelLoadError",
    "Prediction",
    "Vocabulary",
    "load_image",
    "normalize_caption",
    "predict",
    "predict_many",
]
