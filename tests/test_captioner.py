import numpy as np
import pytest
from helpers import random_image, tiny_config

from imcap_hub import DecodeOptions, ImageCaptioner, ModelLoadError, predict, predict_many
from imcap_hub.encoder import Encoder, EncoderError, preprocess, runtime_available
from imcap_hub.inference import OptionsError

IMAGES = [random_image(seed, (40 + seed, 50)) for seed in range(4)]


def _captions(model, **options):
    return [[c.to_dict() for c in model.caption(img, **options)] for img in IMAGES]


def test_save_pretrained_writes_the_hub_repo_files(tiny_model_dir):
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == [
        "README.md",
        "config.json",
        "encoder.safetensors",
        "model.safetensors",
        "vocab.json",
    ]
    card = (tiny_model_dir / "README.md").read_text()
    assert "pipeline_tag: image-to-text" in card and "library_name: imcap" in card
    assert not any(p.suffix in (".pkl", ".pickle", ".bin", ".h5") for p in tiny_model_dir.iterdir())


@pytest.mark.parametrize(
    "options",
    [
        {"decoding": "greedy"},
        {"beam_size": 4, "num_captions": 3},
        {"decoding": "sample", "num_captions": 2, "seed": 3},
    ],
)
def test_saved_and_loaded_model_gives_bit_identical_captions(
    tiny_captioner, tiny_model_dir, options
):
    loaded = ImageCaptioner.from_pretrained(tiny_model_dir, runtime="keras")
    assert _captions(loaded, **options) == _captions(tiny_captioner, **options)
    assert loaded.source["kind"] == "local"


@pytest.fixture(scope="module")
def confident_model(tiny_captioner, tmp_path_factory):
    """The tiny model with sharpened output weights, so 1e-7 feature noise cannot flip a ranking.

    An untrained model's near-flat distributions leave beams tied to 1e-4, where any two
    exact-to-float-rounding runtimes may legitimately order them differently.
    """
    weights = dict(tiny_captioner.decoder_weights)
    weights["logits/kernel"] = weights["logits/kernel"] * 20
    weights["init_h/kernel"] = weights["init_h/kernel"] * 5
    model = ImageCaptioner(
        tiny_captioner.config, tiny_captioner.vocab, weights, tiny_captioner.encoder
    )
    path = tmp_path_factory.mktemp("confident")
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_converted_runtimes_match_keras_and_are_cached(confident_model, runtime):
    if not runtime_available(runtime):
        pytest.skip(f"{runtime} not installed")
    reference, folder = confident_model
    fresh = ImageCaptioner.from_pretrained(folder, runtime=runtime)
    got, want = (
        _captions(fresh, beam_size=3, num_captions=3),
        _captions(reference, beam_size=3, num_captions=3),
    )
    # Same words; scores equal up to float rounding (the runtimes differ by ~1e-7 in features).
    assert [[c["text"] for c in caps] for caps in got] == [
        [c["text"] for c in caps] for caps in want
    ]
    for caps_got, caps_want in zip(got, want, strict=True):
        assert [c["score"] for c in caps_got] == pytest.approx(
            [c["score"] for c in caps_want], abs=1e-4
        )
    batch = preprocess(IMAGES, fresh.config.encoder)
    np.testing.assert_allclose(fresh.encoder.run(batch), reference.encoder.run(batch), atol=1e-5)
    assert fresh.encoder.runtime.name == runtime and fresh.encoder.runtime.max_abs_diff < 1e-5

    again = ImageCaptioner.from_pretrained(folder, runtime=runtime)
    again.encoder.prepare()
    assert again.encoder.runtime.cached
    assert again.encoder._keras_model is None  # a cache hit never builds the Keras model


def test_auto_runtime_picks_a_fast_exact_runtime(tiny_model_dir):
    model = ImageCaptioner.from_pretrained(tiny_model_dir, runtime="auto")
    info = model.encoder.prepare()
    expected = next(
        r for r in ("openvino", "onnxruntime", "keras") if r == "keras" or runtime_available(r)
    )
    assert info.name == expected


def test_unknown_runtime_is_refused():
    with pytest.raises(EncoderError, match="unknown runtime 'tensorrt'"):
        Encoder(tiny_config().encoder, runtime="tensorrt")


def test_predict_many_keeps_good_images_when_one_is_bad(tiny_captioner, image_files):
    paths = [image_files["good"][0], image_files["bad"]["text_named_jpg"], image_files["good"][1]]
    results = predict_many(tiny_captioner, paths, DecodeOptions(decoding="greedy"))
    assert results[1].error and "not an image" in results[1].error and not results[1].captions
    for i in (0, 2):
        assert results[i].error is None
        assert (
            results[i].text
            == predict(tiny_captioner, paths[i], DecodeOptions(decoding="greedy")).text
        )
        assert set(results[i].timings_ms) >= {"load", "encode", "decode", "total"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decoding": "nucleus"}, "decoding must be one of"),
        ({"beam_size": 0}, "beam_size must be an integer from 1 to 20"),
        ({"beam_size": 2, "num_captions": 3}, "num_captions must be an integer from 1 to 2"),
        ({"decoding": "greedy", "num_captions": 2}, "num_captions must be an integer from 1 to 1"),
        ({"max_length": 99}, "max_length must be an integer from 1 to 8"),
        ({"decoding": "sample", "temperature": 0}, "temperature must be a number > 0"),
        ({"decoding": "sample", "top_p": 0}, "top_p must be a number in"),
    ],
)
def test_bad_options_are_refused_clearly(tiny_captioner, options, message):
    with pytest.raises(OptionsError, match=message):
        tiny_captioner.caption(IMAGES[0], **options)


def test_max_length_limits_caption_length(tiny_captioner):
    for caption in tiny_captioner.caption(IMAGES[0], beam_size=3, num_captions=3, max_length=2):
        assert len(caption.tokens) <= 2


def test_not_a_folder_nor_a_repo_id():
    with pytest.raises(ModelLoadError, match="neither a model folder nor a valid Hub repo id"):
        ImageCaptioner.from_pretrained("./no/such/../folder")


def test_resnet50_encoder_builds_from_config_with_random_weights():
    from imcap_hub import EncoderConfig

    config = EncoderConfig(weights="random", image_size=64)
    encoder = Encoder(config, runtime="keras")
    features = encoder.encode([random_image(0)])
    assert features.shape == (1, 2048)
    assert encoder.keras_model.name == "resnet50"


def test_stock_resnet50_loads_weights_from_a_local_keras_file(tmp_path, tiny_vocab):
    """The ImageNet path without network: a legacy Keras .h5 (the format Keras downloads)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from imcap_hub import CaptionerConfig, EncoderConfig

    source = keras.applications.ResNet50(
        include_top=False, weights=None, pooling="avg", input_shape=(64, 64, 3)
    )
    weights_file = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(weights_file, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    config = tiny_config()
    config = CaptionerConfig(
        encoder=EncoderConfig(image_size=64), decoder=config.decoder, vocab_size=config.vocab_size
    )
    model = ImageCaptioner.from_config(
        config, tiny_vocab, encoder_weights=weights_file, runtime="keras"
    )
    batch = preprocess(IMAGES[:2], config.encoder)
    np.testing.assert_allclose(
        model.encoder.run(batch), source(batch, training=False).numpy(), atol=1e-5
    )

    model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "encoder.safetensors").exists()  # stock encoder: not shipped
    loaded = ImageCaptioner.from_pretrained(
        tmp_path / "saved", encoder_weights=weights_file, runtime="keras"
    )
    assert _captions(loaded) == _captions(model)


def test_from_config_is_reproducible_with_a_seed(tiny_vocab):
    first, again, other = (
        ImageCaptioner.from_config(tiny_config(), tiny_vocab, seed=s, runtime="keras")
        for s in (5, 5, 6)
    )
    batch = preprocess(IMAGES, first.config.encoder)
    np.testing.assert_array_equal(first.encoder.run(batch), again.encoder.run(batch))
    assert not np.array_equal(first.encoder.run(batch), other.encoder.run(batch))


def test_predict_decodings_encodes_once_and_matches_predict_many(tiny_captioner, monkeypatch):
    from imcap_hub.inference import predict_decodings

    options = [DecodeOptions(decoding="greedy"), DecodeOptions(beam_size=3, num_captions=2)]
    expected = [predict_many(tiny_captioner, IMAGES, o) for o in options]
    calls = []
    encode = tiny_captioner.encoder.encode
    monkeypatch.setattr(
        tiny_captioner.encoder, "encode", lambda imgs: calls.append(1) or encode(imgs)
    )
    got = predict_decodings(tiny_captioner, IMAGES, options)
    assert len(calls) == 1
    for got_one, want in zip(got, expected, strict=True):
        assert [p.captions for p in got_one] == [p.captions for p in want]


@pytest.mark.parametrize("n_images", [2, 9])  # 9: past matmul.GEMM_ROWS, numpy's gemm
@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("pooled", {}),
        ("pooled", {"max_length": 3}),
        ("attention", {}),
        ("attention", {"max_length": 3}),
        ("attention", {"return_attention": True}),
    ],
)
def test_greedy_over_a_batch_gives_each_image_s_own_greedy_caption(
    tiny_captioner, attention_model_dir, kind, n_images, options
):
    from imcap_hub.inference import search_batch, search_features

    model = (
        tiny_captioner if kind == "pooled" else ImageCaptioner.from_pretrained(attention_model_dir)
    )
    opts = DecodeOptions(decoding="greedy", **options)
    shape = model.encoder.encode(IMAGES[:1]).shape[1:]
    features = np.random.default_rng(n_images).normal(size=(n_images, *shape)).astype(np.float32)
    batched = search_batch(model, features, opts)
    assert len(batched) == n_images
    for row, (got,) in zip(features, batched, strict=True):
        (want,) = search_features(model, row, opts)
        assert got.token_ids == want.token_ids
        assert got.logprob == pytest.approx(want.logprob, rel=1e-5, abs=1e-5)
        if opts.return_attention:
            np.testing.assert_allclose(got.attention, want.attention, atol=1e-5)
    assert any(h.token_ids for (h,) in batched)  # captions with words, not all at <end> at once
