"""The image encoder: ResNet50 (or the tiny ResNet of tests and the demo) and its runtimes.

The Keras model is the reference. Where OpenVINO or ONNX Runtime is installed, the encoder is
converted once, checked against Keras on a probe batch, and cached on disk under a key made of
the encoder config, a fingerprint of its weights and the runtime's version. A cached converted
encoder loads without building (or importing) Keras at all.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import EncoderConfig
from .errors import ImcapError
from .files import atomic_write_json, load_tensors
from .images import resize
from .startup import import_keras, import_tensorflow, step

logger = logging.getLogger(__name__)

# "openvino-bf16" is not exact: "auto" never picks it, and feature caches never use it.
EXACT_RUNTIMES = ("auto", "keras", "openvino", "onnxruntime")
RUNTIMES = (*EXACT_RUNTIMES, "openvino-bf16")
# Fastest exact runtime first.
AUTO_ORDER = ("openvino", "onnxruntime", "keras")
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# A converted encoder must match Keras this closely (relative to the feature scale) to be used.
EXACT_RTOL = 1e-4
BF16_SUFFIX = "-bf16"


class EncoderError(ImcapError, RuntimeError):
    """The encoder could not be built or a runtime could not be used."""


def default_cache_dir() -> Path:
    """Where converted encoders live: ``$IMCAP_CACHE`` or ``~/.cache/imcap``."""
    root = os.environ.get("IMCAP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imcap"
    )
    return Path(root) / "encoders"


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# The packages each runtime needs (ONNX Runtime needs tf2onnx to convert the Keras model).
_RUNTIME_PACKAGES = {
    "keras": ("keras",),
    "openvino": ("openvino",),
    "openvino-bf16": ("openvino",),
    "onnxruntime": ("onnxruntime", "tf2onnx"),
}


def runtime_available(runtime: str) -> bool:
    """Whether ``runtime`` is a runtime name whose packages are installed."""
    packages = _RUNTIME_PACKAGES.get(runtime)
    return packages is not None and all(importlib.util.find_spec(p) for p in packages)


# --- the Keras models -------------------------------------------------------------------------


def _tiny_resnet(config: EncoderConfig, seed: int | None = None):
    """A small ResNet-style network (stem, residual stages, global pooling)."""
    keras = import_keras()
    layers = keras.layers

    seeds = iter(range(10**6))

    def init():  # one seeded initialiser per conv: the same seed builds the same network
        if seed is None:  # Keras' default, drawn from the global seed (training sets it)
            return "glorot_uniform"
        return keras.initializers.GlorotUniform(seed=seed + next(seeds))

    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = layers.Conv2D(
        config.widths[0],
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=init(),
        name="stem_conv",
    )(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage, width in enumerate(config.widths):
        for block in range(config.blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage}_block{block}"
            shortcut = x
            if stride != 1 or x.shape[-1] != width:
                shortcut = layers.Conv2D(
                    width,
                    1,
                    strides=stride,
                    use_bias=False,
                    kernel_initializer=init(),
                    name=f"{name}_proj",
                )(x)
                shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
            y = layers.Conv2D(
                width,
                3,
                strides=stride,
                padding="same",
                use_bias=False,
                kernel_initializer=init(),
                name=f"{name}_conv1",
            )(x)
            y = layers.BatchNormalization(name=f"{name}_bn1")(y)
            y = layers.Activation("relu", name=f"{name}_relu1")(y)
            y = layers.Conv2D(
                width,
                3,
                padding="same",
                use_bias=False,
                kernel_initializer=init(),
                name=f"{name}_conv2",
            )(y)
            y = layers.BatchNormalization(name=f"{name}_bn2")(y)
            x = layers.Activation("relu", name=f"{name}_out")(
                layers.Add(name=f"{name}_add")([shortcut, y])
            )
    if config.features == "pooled":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name="tiny_resnet")


def build_keras_encoder(
    config: EncoderConfig, weights_file: str | os.PathLike | None = None, seed: int | None = None
):
    """Build the Keras encoder from ``config``.

    ``seed`` makes a freshly initialised tiny_resnet reproducible (ResNet50 random init is not).

    ``weights_file``: for ResNet50, a local Keras weights file (``.h5``) used instead of the
    ImageNet download; for ``weights="repo"``, the ``encoder.safetensors`` to load.
    """
    config.validate()
    keras = import_keras()
    detail = f"{config.architecture}, {_weights_detail(config, weights_file)}"
    with step(logger, "building the Keras encoder", detail):
        if config.architecture == "resnet50":
            if config.weights == "imagenet":
                weights = os.fspath(weights_file) if weights_file else "imagenet"
            else:
                weights = None
            try:
                model = keras.applications.ResNet50(
                    include_top=False,
                    weights=weights,
                    input_shape=(config.image_size, config.image_size, 3),
                    pooling="avg" if config.features == "pooled" else None,
                )
            except Exception as e:  # Keras raises bare Exceptions for download failures
                raise EncoderError(
                    f"could not load ResNet50 ImageNet weights ({e}). They are downloaded by Keras "
                    "on first use; without network access pass a local weights file "
                    "(resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5) as encoder_weights=."
                ) from None
        else:
            model = _tiny_resnet(config, seed)
        if config.weights == "repo":
            if weights_file is None:
                raise EncoderError(
                    "encoder weights source is 'repo' but no encoder.safetensors was given"
                )
            load_safetensors_into(model, weights_file)
    return model


def _weights_detail(config: EncoderConfig, weights_file: str | os.PathLike | None) -> str:
    """Where the encoder's weights come from, for the log line before building it."""
    if config.weights == "imagenet" and weights_file is None:
        return "ImageNet weights; Keras downloads them on first use, about 90 MB"
    if weights_file is not None:
        return f"weights from {Path(weights_file).name}"
    return f"{config.weights} weights"


def keras_weights(model) -> dict[str, np.ndarray]:
    """A model's variables by path, as numpy arrays (what encoder.safetensors stores)."""
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def read_weights_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of an ``encoder.safetensors``, checked readable and finite (an EncoderError
    names the file and the cause, or the tensor)."""
    from safetensors import SafetensorError

    name = Path(path).name
    try:
        tensors = load_tensors(path)
    except (SafetensorError, OSError) as e:
        raise EncoderError(f"cannot read {name}: {e}") from None
    for key, array in tensors.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise EncoderError(f"{name}: tensor {key} holds NaN or infinite values")
    return tensors


def load_safetensors_into(model, path: str | os.PathLike) -> None:
    """Assign every variable of ``model`` from a safetensors file, checking names and shapes."""
    tensors = read_weights_file(path)
    expected = {v.path: v for v in model.weights}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise EncoderError(
            f"{Path(path).name} does not match the encoder config: "
            f"{len(missing)} missing tensors (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for name, var in expected.items():
        if tuple(tensors[name].shape) != tuple(var.shape):
            raise EncoderError(
                f"{Path(path).name}: tensor {name} has shape {tensors[name].shape}, "
                f"the config needs {tuple(var.shape)}"
            )
        var.assign(tensors[name])


def preprocess(images: Sequence[np.ndarray], config: EncoderConfig) -> np.ndarray:
    """RGB uint8 images -> the float32 batch the encoder expects (resized, normalised)."""
    batch = np.stack([resize(img, config.image_size) for img in images]).astype(np.float32)
    if config.preprocessing == "caffe":
        # keras.applications.resnet50.preprocess_input: RGB->BGR, ImageNet mean, no scaling.
        return batch[..., ::-1] - CAFFE_MEAN_BGR
    return batch / np.float32(255.0)


def probe_batch(config: EncoderConfig, n: int = 2) -> np.ndarray:
    """A fixed, image-like batch used to check a converted encoder against Keras."""
    rng = np.random.default_rng(1234)
    imgs = [
        rng.integers(0, 256, (config.image_size, config.image_size, 3), dtype=np.uint8)
        for _ in range(n)
    ]
    return preprocess(imgs, config)


# --- runtimes ---------------------------------------------------------------------------------

# The runtimes' names in log lines.
_RUNTIME_LABELS = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}


@dataclass
class RuntimeInfo:
    """Which runtime runs the encoder, and how far it is from Keras on the probe batch."""

    name: str
    max_abs_diff: float | None = None
    cached: bool = False
    build_seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _keras_callable(model) -> Callable[[np.ndarray], np.ndarray]:
    tf = import_tensorflow()

    size = model.input_shape[1]
    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
        reduce_retracing=True,
    )
    return lambda batch: fn(tf.constant(batch)).numpy()


def _openvino_callable(xml: Path, bf16: bool) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    precision = "bf16" if bf16 else "f32"
    compiled = ov.Core().compile_model(
        os.fspath(xml),
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()
    output = compiled.output(0)
    lock = threading.Lock()  # an InferRequest is not thread-safe; app handlers run in threads

    def run(batch: np.ndarray) -> np.ndarray:
        with lock:
            return np.array(request.infer({0: np.ascontiguousarray(batch)})[output])

    return run


def _onnx_callable(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Idle worker threads would otherwise spin after each run, taking the CPU from whatever runs
    # next (the decoder, another request, another runtime) on a 2-vCPU machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: np.ascontiguousarray(batch)})[0]


def _convert(runtime: str, model, out_dir: Path) -> Path:
    """Write the converted model into ``out_dir``; returns the file the runtime loads."""
    size = model.input_shape[1]
    model(
        np.zeros((1, size, size, 3), np.float32), training=False
    )  # the ONNX exporter needs a call
    with warnings.catch_warnings():
        # Both converters call the functional model with a tuple; Keras warns about the structure.
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        warnings.filterwarnings("ignore", category=FutureWarning)
        if runtime == "onnxruntime":
            path = out_dir / "encoder.onnx"
            model.export(os.fspath(path), format="onnx", verbose=False)
            return path
        import openvino as ov

        path = out_dir / "encoder.xml"
        ov_model = ov.convert_model(model, input=[(-1, size, size, 3)])
        ov.save_model(ov_model, os.fspath(path), compress_to_fp16=False)
        return path


class Encoder:
    """Turns RGB uint8 images into feature vectors through the chosen runtime.

    The Keras model is built lazily: a runtime loaded from the on-disk cache never needs it.
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        weights_file: str | os.PathLike | None = None,
        keras_model=None,
        runtime: str = "auto",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        config.validate()
        if runtime not in RUNTIMES:
            raise EncoderError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        self.config = config
        self.weights_file = weights_file
        self.requested_runtime = runtime
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._keras_model = keras_model
        self._run: Callable[[np.ndarray], np.ndarray] | None = None
        self.runtime: RuntimeInfo | None = None
        self._fingerprint: str | None = None
        self._prepare_lock = threading.Lock()

    @property
    def keras_model(self):
        """The reference Keras model (built on first use)."""
        if self._keras_model is None:
            self._keras_model = build_keras_encoder(self.config, self.weights_file)
        return self._keras_model

    def weights_fingerprint(self) -> str:
        """A hash of what determines the weights, for cache keys (computed once)."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        if self._keras_model is None and self.weights_file is not None:
            with open(self.weights_file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        elif self._keras_model is None and self.config.weights == "imagenet":
            h.update(f"keras-imagenet-{_package_version('keras')}".encode())
        else:
            for name, arr in sorted(keras_weights(self.keras_model).items()):
                h.update(name.encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def cache_key(self, runtime: str) -> str:
        package = "onnxruntime" if runtime == "onnxruntime" else "openvino"
        payload = {
            "config": self.config.cache_key(),
            "weights": self.weights_fingerprint(),
            "runtime": runtime.removesuffix(BF16_SUFFIX),
            "runtime_version": _package_version(package),
            "format": 1,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    def _cache_folder(self, runtime: str) -> Path:
        """Where ``runtime``'s converted encoder of these weights is (or will be) cached."""
        return self.cache_dir / f"{runtime.removesuffix(BF16_SUFFIX)}-{self.cache_key(runtime)}"

    def check_weights_file(self) -> None:
        """Check ``encoder.safetensors`` now, when the model loads, not at the first caption:
        readable, finite, and holding exactly the tensors the config needs. The last is checked
        by building the Keras model (needed anyway to convert it), unless a converted encoder of
        these very bytes is cached: it was checked when converted. Raises EncoderError."""
        if self.config.weights != "repo" or self.weights_file is None:
            return
        read_weights_file(self.weights_file)
        converted = ("openvino", "onnxruntime")
        if not any(
            runtime_available(r) and (self._cache_folder(r) / "meta.json").is_file()
            for r in converted
        ):
            _ = self.keras_model

    def _prepare(self, runtime: str) -> tuple[Callable[[np.ndarray], np.ndarray], RuntimeInfo]:
        start = time.perf_counter()
        if runtime == "keras":
            return _keras_callable(self.keras_model), RuntimeInfo("keras", 0.0)
        if not runtime_available(runtime.removesuffix(BF16_SUFFIX)):
            raise EncoderError(f"runtime {runtime!r} is not installed")
        base = runtime.removesuffix(BF16_SUFFIX)
        folder = self._cache_folder(runtime)
        meta_path = folder / "meta.json"
        cached = meta_path.exists()
        label = _RUNTIME_LABELS[base]
        if not cached:
            keras_model = self.keras_model  # built (and announced) before the conversion
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=self.cache_dir))
            try:
                where = f"once; cached in {folder}"
                with step(logger, f"converting the encoder to {label}", where):
                    model_file = _convert(base, keras_model, tmp)
                meta = {"file": model_file.name, "config": self.config.cache_key(), "runtime": base}
                atomic_write_json(tmp / "meta.json", meta, indent=1)
                try:
                    tmp.rename(folder)  # atomic: a half-written cache entry is never seen
                except OSError:  # another process finished first; use theirs
                    shutil.rmtree(tmp, ignore_errors=True)
            except Exception:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        meta = json.loads(meta_path.read_text())
        path = folder / meta["file"]
        with step(
            logger, f"loading the {label} encoder", f"cached in {folder}" if cached else None
        ):
            run = (
                _onnx_callable(path)
                if base == "onnxruntime"
                else _openvino_callable(path, runtime.endswith(BF16_SUFFIX))
            )
        info = RuntimeInfo(runtime, cached=cached, build_seconds=time.perf_counter() - start)
        if not cached or runtime.endswith(BF16_SUFFIX):
            # Check against Keras whenever we had Keras in hand anyway (fresh conversions).
            keras_model = self.keras_model
            with step(logger, f"checking the {label} encoder against Keras on a probe batch"):
                probe = probe_batch(self.config)
                reference = _keras_callable(keras_model)(probe)
                diff = float(np.max(np.abs(run(probe) - reference)))
            info.max_abs_diff = diff
            scale = max(1.0, float(np.max(np.abs(reference))))
            exact = diff <= EXACT_RTOL * scale
            meta.update(max_abs_diff=diff, exact=exact)
            if not runtime.endswith(BF16_SUFFIX):
                atomic_write_json(meta_path, meta, indent=1)
            if not exact and not runtime.endswith(BF16_SUFFIX):
                shutil.rmtree(folder, ignore_errors=True)
                raise EncoderError(f"{runtime} differs from Keras by {diff:.3g} on the probe batch")
        else:
            info.max_abs_diff = meta.get("max_abs_diff")
        return run, info

    def prepare(self) -> RuntimeInfo:
        """Choose and load the runtime now (otherwise done on the first ``encode``)."""
        with self._prepare_lock:  # two first requests at once must not convert twice
            if self.runtime is None:
                self._choose_runtime()
        assert self.runtime is not None
        return self.runtime

    def _choose_runtime(self) -> None:
        if self.requested_runtime != "auto":
            self._run, self.runtime = self._prepare(self.requested_runtime)
            return
        failures = []
        for runtime in AUTO_ORDER:
            if runtime != "keras" and not runtime_available(runtime):
                failures.append(f"{runtime}: not installed")
                continue
            try:
                self._run, self.runtime = self._prepare(runtime)
            except Exception as e:  # any converter failure: log it loudly, fall back
                logger.warning("encoder runtime %s unavailable, falling back: %s", runtime, e)
                failures.append(f"{runtime}: {e}")
                continue
            self.runtime.note = "; ".join(failures)
            return
        raise EncoderError("no encoder runtime works: " + "; ".join(failures))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 batch -> features."""
        if self._run is None:
            self.prepare()
        assert self._run is not None
        return np.asarray(self._run(batch), dtype=np.float32)

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images -> features, shape ``(len(images), *config.feature_shape)``."""
        return self.run(preprocess(images, self.config))
