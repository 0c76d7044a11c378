"""The image encoder: ResNet50 (or the tiny ResNet of tests and the demo) and its runtimes.

The Keras model is the reference. Where OpenVINO or ONNX Runtime is installed, the encoder is
converted once, checked against Keras on a probe batch, and cached on disk under a key made of
the encoder config, a fingerprint of its weights and the runtime's version. A cached converted
encoder loads without building (or importing) Keras at all.

Two runtimes trade exactness for speed, and are only used when asked for: ``openvino-bf16``
(where the CPU has bf16) and ``openvino-int8`` (quantised once with NNCF on the model's own
training images, ``calibration.safetensors``, and cached like the others). ``fast`` takes the
first of them that works here and says which; ``auto`` and feature caches stay exact.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import CALIBRATION_FILE, CalibrationSet
from .config import EncoderConfig
from .errors import ImcapError
from .files import atomic_write_json, load_tensors
from .images import resize
from .quantize import QuantizationSettings, default_settings
from .startup import import_keras, import_tensorflow, step

logger = logging.getLogger(__name__)

EXACT_RUNTIMES = ("auto", "keras", "openvino", "onnxruntime")
# Not exact: "auto" never picks these, and feature caches never use them. Fastest first: where a
# CPU has bf16 (AVX512-BF16, AMX) it also has int8 dot products (VNNI, AMX-INT8) of twice the
# throughput, and int8 is the one whose caption agreement bench/bench_fast_mode.py measures.
FAST_RUNTIMES = ("openvino-int8", "openvino-bf16")
RUNTIMES = (*EXACT_RUNTIMES, *FAST_RUNTIMES, "fast")
# Fastest exact runtime first.
AUTO_ORDER = ("openvino", "onnxruntime", "keras")
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# A converted encoder must match Keras this closely (relative to the feature scale) to be used.
EXACT_RTOL = 1e-4
BF16_SUFFIX = "-bf16"
INT8 = "openvino-int8"
# Calibration images the int8 encoder is compared with fp32 on, once, when it is quantised.
AGREEMENT_IMAGES = 32


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


# The packages each runtime needs (ONNX Runtime needs tf2onnx to convert the Keras model, the
# int8 runtime NNCF to quantise it), and how to install those that are not in requirements.txt.
_RUNTIME_PACKAGES = {
    "keras": ("keras",),
    "openvino": ("openvino",),
    "openvino-bf16": ("openvino",),
    INT8: ("openvino", "nncf"),
    "onnxruntime": ("onnxruntime", "tf2onnx"),
}
_INSTALL_HINTS = {
    "nncf": 'pip install nncf==3.4.0, or pip install "imcap[fast]"',
    "onnxruntime": "pip install onnxruntime tf2onnx",
    "tf2onnx": "pip install onnxruntime tf2onnx",
}


def package_installed(name: str) -> bool:
    """Whether the Python package ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


def runtime_available(runtime: str) -> bool:
    """Whether ``runtime`` is a runtime name whose packages are installed."""
    packages = _RUNTIME_PACKAGES.get(runtime)
    return packages is not None and all(package_installed(p) for p in packages)


def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's CPU plugin's ``OPTIMIZATION_CAPABILITIES`` here (``FP32``, ``INT8``, ``BF16``
    where the CPU has it, ...)."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def runtime_problem(runtime: str) -> str | None:
    """Why ``runtime`` cannot run on this machine (a package that is not installed, a CPU without
    bf16), or None. Whether a model can use it (int8 needs calibration images) is the model's."""
    if runtime in ("auto", "fast"):
        return None
    packages = _RUNTIME_PACKAGES.get(runtime)
    if packages is None:
        return f"unknown runtime {runtime!r}"
    missing = [p for p in packages if not package_installed(p)]
    if missing:
        hints = dict.fromkeys(_INSTALL_HINTS.get(p, f"pip install {p}") for p in missing)
        return f"it needs the {', '.join(missing)} package ({'; '.join(hints)})"
    if runtime == "openvino-bf16":
        capabilities = cpu_capabilities()
        if "BF16" not in capabilities:
            # OpenVINO would quietly run such a request in fp32.
            return f"this CPU has no bf16 (OpenVINO's CPU capabilities: {', '.join(capabilities)})"
    return None


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


def _openvino_callable(xml: Path, precision: str = "f32") -> Callable[[np.ndarray], np.ndarray]:
    """The OpenVINO model ``xml`` on the CPU; ``precision``: ``f32`` or ``bf16`` for the float
    operations (an int8 model's quantised operations run in int8 either way)."""
    import openvino as ov

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


def feature_agreement(reference: np.ndarray, features: np.ndarray) -> dict[str, float]:
    """How close ``features`` are to ``reference`` (one row per image): the largest absolute
    difference, that relative to the largest reference value, and the cosine similarity of the
    two feature vectors of each image (the lowest and the mean)."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    got = features.reshape(len(features), -1).astype(np.float64)
    diff = float(np.max(np.abs(got - ref)))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = np.sum(ref * got, axis=1) / np.maximum(norms, 1e-12)
    return {
        "max_abs_diff": diff,
        "max_rel_diff": diff / max(float(np.max(np.abs(ref))), 1e-12),
        "cosine_min": float(np.min(cosine)),
        "cosine_mean": float(np.mean(cosine)),
    }


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
    ``calibration``: the model's calibration images (``openvino-int8`` needs them);
    ``quantization``: how NNCF quantises (default: ``quantize.default_settings()`` for this CPU).
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        weights_file: str | os.PathLike | None = None,
        keras_model=None,
        runtime: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        calibration: CalibrationSet | None = None,
        quantization: QuantizationSettings | None = None,
    ) -> None:
        config.validate()
        if runtime not in RUNTIMES:
            raise EncoderError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        self.config = config
        self.weights_file = weights_file
        self.requested_runtime = runtime
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.calibration = calibration  # checked by the setter below
        self.quantization = quantization or default_settings()
        self._keras_model = keras_model
        self._run: Callable[[np.ndarray], np.ndarray] | None = None
        self.runtime: RuntimeInfo | None = None
        self._fingerprint: str | None = None
        self._prepare_lock = threading.Lock()

    @property
    def calibration(self) -> CalibrationSet | None:
        """The calibration images ``openvino-int8`` quantises with (None: the model has none)."""
        return self._calibration

    @calibration.setter
    def calibration(self, calibration: CalibrationSet | None) -> None:
        if calibration is not None and calibration.image_size != self.config.image_size:
            raise EncoderError(
                f"the calibration images are {calibration.image_size} px; the encoder reads "
                f"{self.config.image_size} px"
            )
        self._calibration = calibration

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
        payload: dict[str, Any] = {
            "config": self.config.cache_key(),
            "weights": self.weights_fingerprint(),
            "runtime": runtime.removesuffix(BF16_SUFFIX),
            "runtime_version": _package_version(package),
            "format": 1,
        }
        if runtime == INT8:  # what else the quantised model depends on
            payload["calibration"] = self.calibration.fingerprint() if self.calibration else None
            payload["nncf_version"] = _package_version("nncf")
            payload["quantization"] = self.quantization.to_dict()
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
        converted = ("openvino", "onnxruntime", INT8)
        if not any(
            runtime_available(r) and (self._cache_folder(r) / "meta.json").is_file()
            for r in converted
        ):
            _ = self.keras_model

    def calibration_problem(self) -> str | None:
        """Why this encoder cannot be quantised to int8 (no calibration images), or None."""
        if self.calibration is not None:
            return None
        return (
            f"it needs calibration images from the model's training data ({CALIBRATION_FILE} "
            "in the model folder, which `python -m training push` writes) and this model has none"
        )

    def _problem(self, runtime: str) -> str | None:
        """Why ``runtime`` cannot encode for this model here, or None."""
        problem = runtime_problem(runtime)
        if runtime == INT8:
            problem = problem or self.calibration_problem()
        return problem

    def check_runtime(self) -> None:
        """Refuse now, in one line, a runtime asked for by name that cannot be used here or with
        this model (a package not installed, a CPU without bf16, no calibration images), rather
        than at the first caption; ``auto`` and ``fast`` choose among those that can."""
        runtime = self.requested_runtime
        problem = None if runtime in ("auto", "fast") else self._problem(runtime)
        if problem:
            raise EncoderError(f"runtime {runtime!r} cannot be used: {problem}")

    def _prepare(self, runtime: str) -> tuple[Callable[[np.ndarray], np.ndarray], RuntimeInfo]:
        start = time.perf_counter()
        if runtime == "keras":
            return _keras_callable(self.keras_model), RuntimeInfo("keras", 0.0)
        problem = self._problem(runtime)
        if problem:
            raise EncoderError(f"runtime {runtime!r} cannot be used: {problem}")
        if runtime == INT8:
            return self._prepare_int8(start)
        base = runtime.removesuffix(BF16_SUFFIX)
        folder = self._cache_folder(runtime)
        meta_path = folder / "meta.json"
        cached = meta_path.exists()
        label = _RUNTIME_LABELS[base]
        if not cached:
            keras_model = self.keras_model  # built (and announced) before the conversion
            with self._new_cache_entry(folder, ".convert-") as tmp:
                where = f"once; cached in {folder}"
                with step(logger, f"converting the encoder to {label}", where):
                    model_file = _convert(base, keras_model, tmp)
                meta = {"file": model_file.name, "config": self.config.cache_key(), "runtime": base}
                atomic_write_json(tmp / "meta.json", meta, indent=1)
        meta = json.loads(meta_path.read_text())
        path = folder / meta["file"]
        bf16 = runtime.endswith(BF16_SUFFIX)
        with step(
            logger, f"loading the {label} encoder", f"cached in {folder}" if cached else None
        ):
            run = (
                _onnx_callable(path)
                if base == "onnxruntime"
                else _openvino_callable(path, "bf16" if bf16 else "f32")
            )
        info = RuntimeInfo(runtime, cached=cached, build_seconds=time.perf_counter() - start)
        if not cached or bf16:
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
            if not bf16:
                atomic_write_json(meta_path, meta, indent=1)
            if not exact and not bf16:
                shutil.rmtree(folder, ignore_errors=True)
                raise EncoderError(f"{runtime} differs from Keras by {diff:.3g} on the probe batch")
        else:
            info.max_abs_diff = meta.get("max_abs_diff")
        return run, info

    def _prepare_int8(self, start: float) -> tuple[Callable[[np.ndarray], np.ndarray], RuntimeInfo]:
        """The int8 encoder: quantised once from the (exact, checked) fp32 OpenVINO encoder on
        the calibration images, and cached; a cached one needs neither Keras nor NNCF's work."""
        folder = self._cache_folder(INT8)
        meta_path = folder / "meta.json"
        cached = meta_path.is_file()
        if not cached:
            self._quantize(folder)
        meta = json.loads(meta_path.read_text())
        with step(
            logger, "loading the OpenVINO int8 encoder", f"cached in {folder}" if cached else None
        ):
            run = _openvino_callable(folder / meta["file"])
        note = (
            f"int8, calibrated on {meta['calibration_images']} training images; against fp32 "
            f"on them: cosine >= {meta['cosine_min']:.4f}, max diff "
            f"{meta['max_rel_diff']:.2%} of the largest feature"
        )
        info = RuntimeInfo(
            INT8,
            max_abs_diff=meta["max_abs_diff"],
            cached=cached,
            build_seconds=time.perf_counter() - start,
            note=note,
        )
        return run, info

    def _quantize(self, folder: Path) -> None:
        """Quantise into ``folder`` (atomically, as conversions are cached)."""
        from .quantize import quantize_openvino

        assert self.calibration is not None
        fp32_run, _ = self._prepare("openvino")  # converted and checked against Keras, once
        fp32_folder = self._cache_folder("openvino")
        fp32_xml = fp32_folder / json.loads((fp32_folder / "meta.json").read_text())["file"]
        batches = [preprocess([image], self.config) for image in self.calibration.images()]
        with self._new_cache_entry(folder, ".quantize-") as tmp:
            where = (
                f"once, on {len(batches)} training images, overflow fix "
                f"{self.quantization.overflow_fix}; cached in {folder}"
            )
            with step(logger, "quantising the encoder to int8 with NNCF", where):
                xml = quantize_openvino(fp32_xml, batches, tmp / "encoder.xml", self.quantization)
            probe = np.concatenate(batches[:AGREEMENT_IMAGES])
            features = _openvino_callable(xml)(probe)
            if not np.isfinite(features).all():
                raise EncoderError("the int8 encoder gives NaN or infinite features")
            meta = {
                "file": xml.name,
                "config": self.config.cache_key(),
                "runtime": INT8,
                "calibration": self.calibration.fingerprint(),
                "calibration_images": len(batches),
                "quantization": self.quantization.to_dict(),
                "nncf_version": _package_version("nncf"),
                **feature_agreement(fp32_run(probe), features),
            }
            atomic_write_json(tmp / "meta.json", meta, indent=1)

    @contextlib.contextmanager
    def _new_cache_entry(self, folder: Path, prefix: str) -> Iterator[Path]:
        """A temporary folder to write the cache entry ``folder`` into: renamed to ``folder``
        when the block ends (atomic: a half-written entry is never seen), removed if it fails."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self.cache_dir))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first; use theirs
            shutil.rmtree(tmp, ignore_errors=True)

    def prepare(self) -> RuntimeInfo:
        """Choose and load the runtime now (otherwise done on the first ``encode``)."""
        with self._prepare_lock:  # two first requests at once must not convert twice
            if self.runtime is None:
                self._choose_runtime()
        assert self.runtime is not None
        return self.runtime

    def _choose_runtime(self) -> None:
        requested = self.requested_runtime
        if requested not in ("auto", "fast"):
            self._run, self.runtime = self._prepare(requested)
            return
        failures: list[str] = []
        if requested == "fast":
            for runtime in FAST_RUNTIMES:
                problem = self._problem(runtime)
                if problem:
                    failures.append(f"{runtime}: {problem}")
                    continue
                try:
                    self._run, self.runtime = self._prepare(runtime)
                except Exception as e:  # a failed quantisation: say so, try the next one
                    logger.warning("encoder runtime %s failed, trying the next: %s", runtime, e)
                    failures.append(f"{runtime}: {e}")
                    continue
                skipped = f" ({'; '.join(failures)})" if failures else ""
                choice = f"fast: {runtime}{skipped}"
                logger.info("encoder runtime %s", choice)
                self.runtime.note = "; ".join(n for n in (choice, self.runtime.note) if n)
                return
            logger.warning(
                "encoder runtime fast: no fast runtime works here (%s); using an exact one",
                "; ".join(failures),
            )
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
            note = "; ".join(failures)
            if requested == "fast":
                note = f"fast: no fast runtime works here, so the exact {runtime} ({note})"
            self.runtime.note = note
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
