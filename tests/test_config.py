import json

import pytest

from imcap_hub import CaptionerConfig, ConfigError, DecoderConfig, EncoderConfig
from imcap_hub.config import FORMAT_VERSION


def test_round_trip_through_json(tmp_path):
    config = CaptionerConfig(
        encoder=EncoderConfig(
            architecture="tiny_resnet", weights="repo", image_size=64, widths=[8, 16]
        ),
        decoder=DecoderConfig(embedding_dim=32, units=64, max_length=20, dropout=0.1),
        vocab_size=123,
    )
    config.save(tmp_path / "config.json")
    loaded = CaptionerConfig.load(tmp_path / "config.json")
    assert loaded == config
    assert json.loads((tmp_path / "config.json").read_text())["format_version"] == FORMAT_VERSION


def test_default_encoder_is_imagenet_resnet50_pooled():
    enc = EncoderConfig()
    assert (enc.architecture, enc.weights, enc.preprocessing, enc.features) == (
        "resnet50",
        "imagenet",
        "caffe",
        "pooled",
    )
    assert enc.feature_shape == (2048,)
    assert EncoderConfig(features="spatial").feature_shape == (7, 7, 2048)


def _valid() -> dict:
    return CaptionerConfig(vocab_size=10).to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d.pop("format_version"), "format_version None"),
        (
            lambda d: d["encoder"].update(architecture="vgg16"),
            "unknown encoder architecture 'vgg16'",
        ),
        (lambda d: d["encoder"].update(weights="somewhere"), "unknown encoder weights source"),
        (lambda d: d["encoder"].update(features="spatial"), "needs encoder.features=.pooled."),
        (lambda d: d["decoder"].update(kind="transformer"), "unknown decoder kind"),
        (lambda d: d["decoder"].update(units=0), "decoder.units must be a positive integer"),
        (lambda d: d["decoder"].update(dropout=1.5), "decoder.dropout"),
        (lambda d: d.update(vocab_size=0), "vocab_size must be a positive integer"),
        (lambda d: d["decoder"].update(heads=8), "unknown key 'decoder.heads'"),
        (lambda d: d["encoder"].update(preprocessing="unit"), "expect 'caffe' preprocessing"),
    ],
)
def test_invalid_configs_fail_with_a_clear_message(change, message):
    data = _valid()
    change(data)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CaptionerConfig.from_dict(data)


def test_not_json_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid JSON"):
        CaptionerConfig.from_json("{nope")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["decoder"].update(units="512"), 'decoder.units must be an integer, got "512"'),
        (lambda d: d["encoder"].update(widths=8), "encoder.widths must be a list, got 8"),
        (lambda d: d["decoder"].update(dropout="0.1"), "decoder.dropout must be a number"),
        (
            lambda d: d["decoder"].update(unts=512),
            "unknown key 'decoder.unts' \\(did you mean 'units'\\?\\)",
        ),
    ],
)
def test_wrong_types_and_typos_name_the_key(change, message):
    """config.json is read by the same typed reader as run configs and training records."""
    data = _valid()
    change(data)
    with pytest.raises(ConfigError, match=message):
        CaptionerConfig.from_dict(data)
