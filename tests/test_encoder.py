"""The encoder's spatial output (the grid the attention decoder reads), through every runtime."""

import dataclasses

import numpy as np
import pytest
from helpers import random_image, tiny_config

from imcap_hub.config import ConfigError, EncoderConfig
from imcap_hub.encoder import Encoder, build_keras_encoder, keras_weights, runtime_available
from imcap_hub.files import save_tensors


@pytest.fixture(scope="module")
def spatial_encoder_file(tmp_path_factory):
    config = dataclasses.replace(tiny_config().encoder, features="spatial", widths=[8, 16, 12])
    path = tmp_path_factory.mktemp("spatial") / "encoder.safetensors"
    save_tensors(
        keras_weights(build_keras_encoder(dataclasses.replace(config, weights="random"), seed=3)),
        path,
        "test",
    )
    return config, path


@pytest.mark.parametrize("runtime", ["keras", "openvino", "onnxruntime"])
def test_spatial_features_have_the_config_grid_and_agree_across_runtimes(
    spatial_encoder_file, runtime
):
    if not runtime_available(runtime):
        pytest.skip(f"{runtime} not installed")
    config, path = spatial_encoder_file
    assert config.feature_shape == (4, 4, 12)
    images = [random_image(i, (40, 30)) for i in range(3)]
    features = Encoder(config, weights_file=path, runtime=runtime).encode(images)
    assert features.shape == (3, 4, 4, 12)
    reference = Encoder(config, weights_file=path, runtime="keras").encode(images)
    np.testing.assert_allclose(features, reference, atol=1e-5)


@pytest.mark.parametrize(
    ("config", "grid"),
    [
        (EncoderConfig(features="spatial", image_size=96), "3x3"),
        (
            EncoderConfig(
                architecture="tiny_resnet",
                weights="repo",
                preprocessing="unit",
                image_size=16,
                widths=[8, 16, 32],
                features="spatial",
            ),
            "2x2",
        ),
    ],
)
def test_a_spatial_grid_under_4x4_is_refused(config, grid):
    with pytest.raises(ConfigError, match=f"at least 4x4; .* gives {grid}"):
        config.validate()


@pytest.mark.parametrize("name", ["nonsense", "", "auto", "tensorrt"])
def test_runtime_available_is_false_for_names_that_are_not_runtimes(name):
    assert runtime_available(name) is False


def test_runtime_available_for_keras():
    assert runtime_available("keras") is True


def test_encoder_weights_that_are_not_finite_are_refused_naming_file_and_tensor(
    spatial_encoder_file, tmp_path
):
    from imcap_hub.encoder import EncoderError
    from imcap_hub.files import load_tensors

    config, path = spatial_encoder_file
    tensors = load_tensors(path)
    name = next(n for n in sorted(tensors) if "kernel" in n)
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    bad = tmp_path / "encoder.safetensors"
    save_tensors(tensors, bad, "test")
    with pytest.raises(EncoderError, match=f"encoder.safetensors: tensor {name} holds NaN"):
        Encoder(config, weights_file=bad, runtime="keras").encode([random_image(0)])


def test_caffe_preprocessing_is_keras_resnet50_preprocess_input():
    """RGB -> BGR and the ImageNet mean, as keras.applications.resnet50.preprocess_input does,
    in both places that preprocess: the encoder (inference) and the training pipeline."""
    import keras
    import tensorflow as tf

    from imcap_hub.encoder import preprocess
    from training.train import _preprocess_tf

    config = EncoderConfig(image_size=4)
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5  # fixed, all distinct
    want = keras.applications.resnet50.preprocess_input(pixels[None].astype("float32").copy())
    np.testing.assert_allclose(preprocess([pixels], config), want, atol=1e-4)
    got = _preprocess_tf(tf.constant(pixels[None]), "caffe").numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.fixture(scope="module")
def caffe_encoder():
    """A tiny spatial encoder with ResNet50's caffe preprocessing, seeded random weights."""
    config = dataclasses.replace(
        tiny_config().encoder,
        weights="random",
        preprocessing="caffe",
        features="spatial",
        widths=[8, 16, 12],
    )
    return config, build_keras_encoder(config, seed=5)


@pytest.mark.parametrize("runtime", ["keras", "openvino", "onnxruntime"])
def test_caffe_encoder_features_match_keras_on_resnet50_preprocess_input(
    caffe_encoder, runtime, tmp_path
):
    """Through every runtime, encode() with caffe preprocessing gives the Keras model's output on
    keras.applications.resnet50.preprocess_input (RGB -> BGR, ImageNet mean): a missing flip or
    a mean in RGB order shows, since each channel of the image has its own level."""
    import keras

    if not runtime_available(runtime):
        pytest.skip(f"{runtime} not installed")
    config, model = caffe_encoder
    pixels = random_image(7, (config.image_size, config.image_size))  # no resize needed
    pixels = (pixels // 4 + np.array([0, 96, 192], dtype=np.uint8)).astype(np.uint8)  # R<G<B
    want = model(
        keras.applications.resnet50.preprocess_input(pixels[None].astype(np.float32)),
        training=False,
    ).numpy()
    encoder = Encoder(config, keras_model=model, runtime=runtime, cache_dir=tmp_path)
    got = encoder.encode([pixels])
    assert encoder.runtime is not None and encoder.runtime.name == runtime
    assert got.shape == (1, *config.feature_shape) == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    if runtime != "keras":  # the converted model went to tmp_path, not ~/.cache
        assert any(tmp_path.glob(f"{runtime}-*/meta.json"))
