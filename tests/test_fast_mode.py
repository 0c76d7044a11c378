"""The fast encoder runtimes: ``openvino-int8`` (NNCF, calibrated on the model's own training
images), ``openvino-bf16`` (only where the CPU has bf16) and ``fast``, which takes the first of
them that works and says which; ``auto`` stays exact."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from helpers import tiny_config

import imcap_hub.encoder as encoder_module
import imcap_hub.quantize as quantize_module
from imcap_hub import ImageCaptioner, ModelLoadError
from imcap_hub.calibration import CALIBRATION_FILE, CalibrationError, CalibrationSet
from imcap_hub.encoder import (
    AUTO_ORDER,
    EXACT_RUNTIMES,
    FAST_RUNTIMES,
    Encoder,
    EncoderError,
    build_keras_encoder,
    feature_agreement,
    runtime_available,
)

pytestmark = pytest.mark.skipif(
    not runtime_available("openvino-int8"), reason="openvino or nncf not installed"
)

# int8 against fp32 on images the calibration did not see: every image's feature vector points
# the same way (cosine >= 0.99) and no feature is off by more than 15 % of the largest one.
# Measured on these encoders: cosine >= 0.997, differences up to 7 % (pooled) and 21 % (spatial:
# a 4x4 grid has no average to smooth the rounding).
MIN_COSINE = 0.99
MAX_POOLED_DIFF = 0.15
MAX_SPATIAL_DIFF = 0.35


def shapes(n: int, seed: int) -> list[np.ndarray]:
    """``n`` drawn shapes images (the training data's kind), 48 px."""
    from training.synthetic import SyntheticConfig, generate

    items = generate(SyntheticConfig(n_images=n, image_size=48, seed=seed))
    return [np.asarray(item.image) for item in items]


@pytest.fixture(scope="module", params=["pooled", "spatial"])
def encoder_parts(request):
    """(config, Keras model, calibration set) of a tiny encoder with seeded weights."""
    widths = [8, 16] if request.param == "pooled" else [8, 16, 12]
    config = dataclasses.replace(
        tiny_config().encoder, weights="random", features=request.param, widths=widths
    )
    model = build_keras_encoder(config, seed=3)
    calibration = CalibrationSet.from_images(shapes(24, seed=1), config.image_size)
    return config, model, calibration


@pytest.fixture
def no_bf16(monkeypatch):
    """A CPU without bf16, whatever this one has."""
    monkeypatch.setattr(encoder_module, "cpu_capabilities", lambda: ("FP32", "INT8"))


def test_int8_features_are_close_to_fp32(encoder_parts, tmp_path):
    config, model, calibration = encoder_parts
    images = shapes(12, seed=2)  # not the calibration images
    int8 = Encoder(
        config,
        keras_model=model,
        runtime="openvino-int8",
        cache_dir=tmp_path,
        calibration=calibration,
    )
    got = int8.encode(images)
    want = Encoder(config, keras_model=model, runtime="openvino", cache_dir=tmp_path).encode(images)
    assert int8.runtime is not None and int8.runtime.name == "openvino-int8"
    assert got.shape == want.shape == (12, *config.feature_shape)
    agreement = feature_agreement(want, got)
    assert agreement["cosine_min"] >= MIN_COSINE, agreement
    limit = MAX_POOLED_DIFF if config.features == "pooled" else MAX_SPATIAL_DIFF
    assert agreement["max_rel_diff"] <= limit, agreement
    assert not np.array_equal(got, want)  # quantised indeed
    assert "calibrated on 24 training images" in int8.runtime.note


def test_int8_is_quantised_once_then_loaded_from_the_cache(encoder_parts, tmp_path, monkeypatch):
    config, model, calibration = encoder_parts
    images = shapes(3, seed=4)

    def encoder(calibration=calibration):
        return Encoder(
            config,
            keras_model=model,
            runtime="openvino-int8",
            cache_dir=tmp_path,
            calibration=calibration,
        )

    first = encoder()
    features = first.encode(images)
    assert first.runtime is not None and first.runtime.cached is False

    def refuse(*args, **kwargs):
        raise AssertionError("quantised again")

    monkeypatch.setattr(quantize_module, "quantize_openvino", refuse)
    again = encoder()
    # Not bit for bit: OpenVINO's int8 kernels, on a loaded machine, have given one image of the
    # spatial encoder another result on a later call of the same compiled model.
    assert feature_agreement(features, again.encode(images))["cosine_min"] >= MIN_COSINE
    assert again.runtime is not None and again.runtime.cached is True
    assert again.runtime.max_abs_diff == first.runtime.max_abs_diff
    assert len(list(tmp_path.glob("openvino-int8-*/meta.json"))) == 1

    # Other calibration images are another int8 model: quantised anew, cached beside the first.
    other = CalibrationSet.from_images(shapes(8, seed=9), config.image_size)
    with pytest.raises(AssertionError, match="quantised again"):
        encoder(other).prepare()


def test_fast_takes_int8_and_says_so(encoder_parts, tmp_path, caplog):
    config, model, calibration = encoder_parts
    fast = Encoder(
        config, keras_model=model, runtime="fast", cache_dir=tmp_path, calibration=calibration
    )
    with caplog.at_level(logging.INFO, logger="imcap_hub.encoder"):
        info = fast.prepare()
    assert info.name == "openvino-int8"
    assert info.note.startswith("fast: openvino-int8")
    assert "encoder runtime fast: openvino-int8" in caplog.text


def test_fast_without_calibration_or_bf16_falls_back_to_exact_saying_why(
    encoder_parts, tmp_path, caplog, no_bf16
):
    config, model, _ = encoder_parts
    fast = Encoder(config, keras_model=model, runtime="fast", cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="imcap_hub.encoder"):
        info = fast.prepare()
    assert info.name == "openvino"
    assert info.note.startswith("fast: no fast runtime works here, so the exact openvino")
    assert "openvino-int8: it needs calibration images from the model's training data" in info.note
    assert "openvino-bf16: this CPU has no bf16" in info.note
    assert "no fast runtime works here" in caplog.text


def test_fast_takes_bf16_where_the_cpu_has_it_and_int8_cannot_run(
    encoder_parts, tmp_path, monkeypatch
):
    config, model, calibration = encoder_parts
    monkeypatch.setattr(encoder_module, "cpu_capabilities", lambda: ("FP32", "INT8", "BF16"))
    real = encoder_module.package_installed
    monkeypatch.setattr(encoder_module, "package_installed", lambda p: p != "nncf" and real(p))
    fast = Encoder(
        config, keras_model=model, runtime="fast", cache_dir=tmp_path, calibration=calibration
    )
    info = fast.prepare()
    assert info.name == "openvino-bf16"
    assert info.note.startswith("fast: openvino-bf16 (openvino-int8: it needs the nncf package")


def test_int8_without_calibration_is_one_clear_error(encoder_parts, tmp_path):
    config, model, _ = encoder_parts
    encoder = Encoder(config, keras_model=model, runtime="openvino-int8", cache_dir=tmp_path)
    for call in (encoder.check_runtime, encoder.prepare):
        with pytest.raises(EncoderError, match="'openvino-int8' cannot be used") as info:
            call()
        message = str(info.value)
        assert "\n" not in message and CALIBRATION_FILE in message and "training data" in message


def test_int8_without_nncf_is_one_clear_error_naming_the_package(
    encoder_parts, tmp_path, monkeypatch
):
    config, model, calibration = encoder_parts
    real = encoder_module.package_installed
    monkeypatch.setattr(encoder_module, "package_installed", lambda p: p != "nncf" and real(p))
    assert not runtime_available("openvino-int8")
    encoder = Encoder(
        config,
        keras_model=model,
        runtime="openvino-int8",
        cache_dir=tmp_path,
        calibration=calibration,
    )
    with pytest.raises(EncoderError) as info:
        encoder.prepare()
    message = str(info.value)
    assert "\n" not in message
    assert "needs the nncf package (pip install nncf==3.4.0" in message
    assert not list(tmp_path.glob("openvino-int8-*"))  # no fallback, nothing quantised


def test_bf16_on_a_cpu_without_bf16_is_refused(encoder_parts, tmp_path, no_bf16):
    config, model, _ = encoder_parts
    encoder = Encoder(config, keras_model=model, runtime="openvino-bf16", cache_dir=tmp_path)
    with pytest.raises(EncoderError, match=r"this CPU has no bf16 \(OpenVINO's CPU capabil"):
        encoder.prepare()


def test_auto_never_takes_int8_or_bf16(encoder_parts, tmp_path, monkeypatch):
    assert not set(FAST_RUNTIMES) & set(AUTO_ORDER) and not set(FAST_RUNTIMES) & set(EXACT_RUNTIMES)
    config, model, calibration = encoder_parts
    monkeypatch.setattr(encoder_module, "cpu_capabilities", lambda: ("FP32", "INT8", "BF16"))
    tried = []
    real = Encoder._prepare

    def prepare(self, runtime):
        tried.append(runtime)
        if runtime != "keras":  # every converted runtime fails: auto goes down its list
            raise EncoderError(f"{runtime} failed")
        return real(self, runtime)

    monkeypatch.setattr(Encoder, "_prepare", prepare)
    encoder = Encoder(
        config, keras_model=model, runtime="auto", cache_dir=tmp_path, calibration=calibration
    )
    assert encoder.prepare().name == "keras"
    assert tried == [r for r in AUTO_ORDER if r == "keras" or runtime_available(r)]


# --- the model folder's calibration.safetensors ---------------------------------------------------


def test_calibration_round_trips_through_save_and_from_pretrained(tiny_captioner, tmp_path):
    calibration = CalibrationSet.from_images(
        shapes(5, seed=3), tiny_captioner.config.encoder.image_size
    )
    model = ImageCaptioner(
        tiny_captioner.config,
        tiny_captioner.vocab,
        tiny_captioner.decoder_weights,
        Encoder(
            tiny_captioner.config.encoder,
            keras_model=tiny_captioner.encoder.keras_model,
            runtime="keras",
            calibration=calibration,
        ),
    )
    model.save_pretrained(tmp_path)
    assert (tmp_path / CALIBRATION_FILE).is_file()
    loaded = ImageCaptioner.from_pretrained(tmp_path, runtime="fast")
    assert loaded.encoder.calibration == calibration
    assert loaded.caption(shapes(1, seed=5)[0])[0].text is not None
    assert loaded.encoder.runtime is not None and loaded.encoder.runtime.name == "openvino-int8"


def test_a_model_without_calibration_refuses_int8_when_it_loads(tiny_model_dir):
    assert not (tiny_model_dir / CALIBRATION_FILE).exists()
    with pytest.raises(EncoderError, match=f"'openvino-int8' cannot be used: .*{CALIBRATION_FILE}"):
        ImageCaptioner.from_pretrained(tiny_model_dir, runtime="openvino-int8")


def test_calibration_images_of_another_size_are_refused(tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    CalibrationSet.from_images(shapes(2, seed=1), 40).save(tmp_path / "model" / CALIBRATION_FILE)
    with pytest.raises(
        ModelLoadError, match="calibration image 0 is 40x40; the encoder reads 32x32"
    ):
        ImageCaptioner.from_pretrained(tmp_path / "model")


def test_a_calibration_set_holds_1_to_1000_images():
    with pytest.raises(CalibrationError, match="1 to 1000 images, not 0"):
        CalibrationSet((), 32)


@pytest.mark.parametrize(("vnni", "fix"), [(False, "enable"), (True, "first_layer_only")])
def test_the_overflow_fix_covers_every_layer_where_the_cpu_has_no_vnni(monkeypatch, vnni, fix):
    """AVX2's int8 multiply sums pairs into int16, which saturates: 7-bit weights everywhere."""
    monkeypatch.setattr(quantize_module, "cpu_has_vnni", lambda: vnni)
    assert quantize_module.default_settings().overflow_fix == fix
    config = tiny_config().encoder
    assert Encoder(config, runtime="openvino-int8").quantization.overflow_fix == fix
    with pytest.raises(ValueError, match="overflow_fix must be one of"):
        quantize_module.QuantizationSettings(overflow_fix="sometimes")


@pytest.mark.parametrize("runtime", ["openvino", "openvino-int8"])
def test_a_conversion_that_fails_leaves_no_cache_entry_behind(
    encoder_parts, tmp_path, monkeypatch, runtime
):
    config, model, calibration = encoder_parts

    def half_written(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    if runtime == "openvino":  # _convert(runtime, keras_model, folder)
        monkeypatch.setattr(encoder_module, "_convert", lambda r, m, d: half_written(d / "e.xml"))
    else:  # quantize_openvino(fp32_xml, batches, out_xml, settings)
        monkeypatch.setattr(
            quantize_module, "quantize_openvino", lambda f, b, o, s: half_written(o)
        )

    def encoder():
        return Encoder(
            config, keras_model=model, runtime=runtime, cache_dir=tmp_path, calibration=calibration
        )

    with pytest.raises(RuntimeError, match="disk full"):
        encoder().prepare()
    left = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    # Nothing half-written; int8 keeps the fp32 encoder it was quantising, whole.
    assert left == ([] if runtime == "openvino" else ["openvino"])
    monkeypatch.undo()
    assert encoder().prepare().name == runtime
