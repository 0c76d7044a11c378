"""Per-word attention maps through the Python API: ``caption(image, return_attention=True)``."""

import json

import numpy as np
import pytest
from helpers import random_image, tiny_attention_config

from imcap_hub import ImageCaptioner
from imcap_hub.inference import END_LABEL, OptionsError

IMAGE = random_image(5)


@pytest.fixture(scope="module")
def attention_captioner(tiny_vocab):
    model = ImageCaptioner.from_config(tiny_attention_config(), tiny_vocab, seed=1, runtime="keras")
    # Sharpen the output layer so that captions have words (an untrained model may end at once).
    weights = dict(model.decoder_weights)
    weights["logits/bias"] = weights["logits/bias"].copy()
    weights["logits/bias"][tiny_vocab.end_id] = -3.0
    model.set_decoder_weights(weights)
    return model


@pytest.mark.parametrize(
    "options",
    [
        {"decoding": "greedy"},
        {"beam_size": 3, "num_captions": 3},
        {"decoding": "sample", "num_captions": 2, "seed": 4},
    ],
)
def test_each_caption_gets_one_map_per_word_and_one_for_end(attention_captioner, options):
    captions = attention_captioner.caption(IMAGE, return_attention=True, **options)
    assert captions
    grid = attention_captioner.config.encoder.feature_shape[:2]
    for caption in captions:
        assert caption.tokens, "the sharpened model should say something"
        assert caption.attention.shape == (len(caption.tokens) + 1, *grid)
        assert caption.attention_labels == [*caption.tokens, END_LABEL]
        np.testing.assert_allclose(caption.attention.sum(axis=(1, 2)), 1.0, atol=1e-5)
    plain = attention_captioner.caption(IMAGE, **options)
    assert [c.text for c in plain] == [c.text for c in captions]
    assert all(c.attention is None for c in plain)


def test_attention_in_the_json_form_names_each_word(attention_captioner):
    caption = attention_captioner.caption(IMAGE, decoding="greedy", return_attention=True)[0]
    data = json.loads(json.dumps(caption.to_dict()))
    assert [entry["word"] for entry in data["attention"]] == [*caption.tokens, "<end>"]
    for entry in data["attention"]:
        assert np.asarray(entry["grid"]).shape == caption.attention.shape[1:]
        assert sum(map(sum, entry["grid"])) == pytest.approx(1.0, abs=1e-4)
    assert "attention" not in attention_captioner.caption(IMAGE)[0].to_dict()


def test_a_pooled_model_says_it_has_no_attention(tiny_captioner):
    with pytest.raises(
        OptionsError, match="return_attention: this model's decoder has no attention"
    ):
        tiny_captioner.caption(IMAGE, return_attention=True)


def test_return_attention_must_be_a_bool(attention_captioner):
    with pytest.raises(OptionsError, match="return_attention must be true or false, got 'yes'"):
        attention_captioner.caption(IMAGE, return_attention="yes")


def test_an_attention_model_round_trips_through_a_folder(attention_captioner, tmp_path):
    attention_captioner.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["decoder"]["kind"] == "attention" and config["encoder"]["features"] == "spatial"
    loaded = ImageCaptioner.from_pretrained(tmp_path, runtime="keras")
    want = attention_captioner.caption(IMAGE, beam_size=3, num_captions=2, return_attention=True)
    got = loaded.caption(IMAGE, beam_size=3, num_captions=2, return_attention=True)
    assert [c.to_dict() for c in got] == [c.to_dict() for c in want]
