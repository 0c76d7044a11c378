import numpy as np
import pytest
from helpers import tiny_config

from imcap_hub.decoder import (
    DecoderWeightsError,
    StepDecoder,
    build_training_model,
    load_weights,
    random_weights,
    save_weights,
    weights_from_keras,
)


def _run_step_decoder(decoder: StepDecoder, features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    state = decoder.init_state(features)
    logits = []
    for t in range(tokens.shape[1]):
        step_logits, state = decoder.step_logits(tokens[:, t], state)
        logits.append(step_logits)
    return np.stack(logits, axis=1)


@pytest.mark.parametrize(("units", "embedding_dim", "seed"), [(16, 8, 0), (32, 24, 1), (7, 5, 2)])
def test_training_graph_and_step_function_agree(units, embedding_dim, seed):
    config = tiny_config(units=units, embedding_dim=embedding_dim)
    model = build_training_model(config, seed=seed)
    rng = np.random.default_rng(seed)
    # Random weights of a realistic scale, not just the initialisers' small ones.
    for var in model.weights:
        var.assign(rng.normal(0, 0.5, var.shape).astype("float32"))
    features = rng.normal(size=(3, config.encoder.feature_dim)).astype("float32")
    tokens = np.array(
        [[1, 5, 6, 7, 2, 0, 0], [1, 4, 2, 0, 0, 0, 0], [1, 8, 9, 10, 11, 3, 2]], dtype="int32"
    )
    graph = model([features, tokens], training=False).numpy()
    steps = _run_step_decoder(StepDecoder(weights_from_keras(model), config), features, tokens)
    real = tokens != 0
    np.testing.assert_allclose(steps[real], graph[real], atol=1e-5, rtol=0)


def test_padding_mask_reaches_the_lstm():
    """Keras 3 drops the Embedding mask when initial_state is given; the graph passes it on.

    With the mask, a padded step carries the state through unchanged, so its logits repeat those
    of the last real token; without it, the LSTM would step on the pad embedding.
    """
    config = tiny_config()
    model = build_training_model(config, seed=0)
    features = np.ones((1, config.encoder.feature_dim), "float32")
    tokens = np.array([[1, 5, 6, 0, 0]], dtype="int32")
    logits = model([features, tokens], training=False).numpy()
    np.testing.assert_allclose(logits[0, 3], logits[0, 2], atol=1e-6)
    np.testing.assert_allclose(logits[0, 4], logits[0, 2], atol=1e-6)


def test_weights_round_trip_through_safetensors(tmp_path):
    config = tiny_config()
    weights = random_weights(config, seed=3)
    save_weights(weights, tmp_path / "model.safetensors", config)
    loaded = load_weights(tmp_path / "model.safetensors", config)
    assert loaded.keys() == weights.keys()
    for name in weights:
        np.testing.assert_array_equal(loaded[name], weights[name])


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    save_weights(
        random_weights(tiny_config(), seed=0), tmp_path / "model.safetensors", tiny_config()
    )
    bigger_vocab = tiny_config()
    bigger_vocab.vocab_size += 5
    with pytest.raises(DecoderWeightsError, match="vocab_size=22, the weights have 17"):
        load_weights(tmp_path / "model.safetensors", bigger_vocab)
    with pytest.raises(
        DecoderWeightsError,
        match="embedding/embeddings has shape \\(17, 8\\), config.json implies \\(17, 9\\)",
    ):
        load_weights(tmp_path / "model.safetensors", tiny_config(embedding_dim=9))


def test_unreadable_weights_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DecoderWeightsError, match="cannot read model.safetensors"):
        load_weights(tmp_path / "model.safetensors", tiny_config())


def test_weights_files_are_deterministic(tmp_path):
    weights = random_weights(tiny_config(), seed=4)
    save_weights(weights, tmp_path / "a.safetensors", tiny_config())
    save_weights(weights, tmp_path / "b.safetensors", tiny_config())
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_weights_that_are_not_finite_are_refused_naming_the_tensor(tmp_path, bad):
    config = tiny_config()
    weights = random_weights(config, seed=0)
    weights["lstm/kernel"] = weights["lstm/kernel"].copy()
    weights["lstm/kernel"][0, 0] = bad
    save_weights(weights, tmp_path / "model.safetensors", config)
    with pytest.raises(DecoderWeightsError, match="lstm/kernel holds NaN or infinite values"):
        load_weights(tmp_path / "model.safetensors", config)
