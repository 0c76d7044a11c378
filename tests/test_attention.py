"""The soft-attention decoder: Keras graph == numpy steps, masking, the regulariser, search."""

import numpy as np
import pytest
from helpers import tiny_config

from imcap_hub.attention import (
    ATTENTION_WEIGHT_NAMES,
    AttentionStepDecoder,
    attention_model,
    attention_weights_from_keras,
    attention_weights_into_keras,
    build_attention_training_model,
    expected_attention_shapes,
)
from imcap_hub.config import ConfigError
from imcap_hub.decoder import (
    DecoderWeightsError,
    check_weights,
    load_weights,
    random_weights,
    save_weights,
)
from imcap_hub.search import beam_search, greedy, sample

START, END = 1, 2
SEARCH = {"start_id": START, "end_id": END, "max_length": 6, "banned": (0, 1, 3)}
TOKENS = np.array(
    [[1, 5, 6, 7, 2, 0, 0], [1, 4, 2, 0, 0, 0, 0], [1, 8, 9, 10, 11, 3, 2]], dtype="int32"
)


def attention_config(channels=16, units=16, embedding_dim=8, attention_dim=8):
    config = tiny_config(
        kind="attention", units=units, embedding_dim=embedding_dim, attention_dim=attention_dim
    )
    config.encoder.features = "spatial"
    config.encoder.widths = [8, channels]
    config.validate()
    return config


def numpy_weights(config, seed: int, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random weights of a realistic scale, without building a Keras model."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.normal(0, scale, shape).astype("float32")
        for name, shape in expected_attention_shapes(config).items()
    }


def run_steps(decoder: AttentionStepDecoder, features, tokens):
    """Teacher-forced through the step function: logits (N, T, V) and alpha (N, T, L)."""
    state = decoder.init_state(features)
    logits, alphas = [], []
    for t in range(tokens.shape[1]):
        step_logits, state = decoder.step_logits(tokens[:, t], state)
        logits.append(step_logits)
        alphas.append(state[-1])
    return np.stack(logits, axis=1), np.stack(alphas, axis=1)


def randomise(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for var in model.weights:
        var.assign(rng.normal(0, 0.5, var.shape).astype("float32"))


@pytest.mark.parametrize(
    ("grid", "channels", "units", "embedding_dim", "attention_dim", "seed"),
    [((4, 4), 16, 16, 8, 8, 0), ((3, 5), 6, 7, 5, 3, 1), ((2, 3), 12, 32, 24, 16, 2)],
)
def test_training_graph_and_step_function_agree(
    grid, channels, units, embedding_dim, attention_dim, seed
):
    config = attention_config(channels, units, embedding_dim, attention_dim)
    model = build_attention_training_model(config, seed=seed)
    randomise(model, seed)
    features = np.random.default_rng(seed).normal(size=(3, *grid, channels)).astype("float32")
    graph_logits, graph_alpha = (
        x.numpy() for x in attention_model(model)([features, TOKENS], training=False)
    )
    decoder = AttentionStepDecoder(attention_weights_from_keras(model), config)
    logits, alpha = run_steps(decoder, features, TOKENS)
    real = TOKENS != 0
    assert alpha.shape == graph_alpha.shape == (3, TOKENS.shape[1], grid[0] * grid[1])
    np.testing.assert_allclose(logits[real], graph_logits[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(alpha[real], graph_alpha[real], atol=1e-5, rtol=0)
    assert np.abs(graph_logits[real]).max() > 1  # a realistic scale, not near-zero logits


def test_attention_weights_sum_to_one_over_the_grid():
    config = attention_config()
    decoder = AttentionStepDecoder(numpy_weights(config, seed=5, scale=1.0), config)
    features = np.random.default_rng(5).normal(size=(3, 3, 5, 16)).astype("float32")
    _, alpha = run_steps(decoder, features, TOKENS)
    assert (alpha >= 0).all()
    np.testing.assert_allclose(alpha.sum(axis=-1), 1.0, atol=1e-6)
    assert alpha.max() > 2 / 15  # peaked somewhere: not a uniform average in disguise


def test_padding_mask_reaches_the_recurrence():
    """A padded step carries the state unchanged: its logits and alpha repeat the last real ones.

    Without the mask the recurrence would step on the pad embedding and give other numbers.
    """
    config = attention_config()
    model = build_attention_training_model(config, seed=0)
    randomise(model, 0)
    features = np.random.default_rng(0).normal(size=(1, 4, 4, 16)).astype("float32")
    tokens = np.array([[1, 5, 6, 0, 0]], dtype="int32")
    logits, alpha = (x.numpy() for x in attention_model(model)([features, tokens]))
    for t in (3, 4):
        np.testing.assert_allclose(logits[0, t], logits[0, 2], atol=1e-6)
        np.testing.assert_allclose(alpha[0, t], alpha[0, 2], atol=1e-6)
    unmasked, _ = run_steps(
        AttentionStepDecoder(attention_weights_from_keras(model), config), features, tokens
    )
    assert not np.allclose(unmasked[0, 3], logits[0, 2], atol=1e-3)


def _penalty(alpha: np.ndarray, tokens: np.ndarray, alpha_reg: float) -> float:
    """alpha_reg * sum_i (1 - sum_t alpha_ti)^2 over the steps that predict a word or <end>."""
    counted = (tokens != 0) & (tokens != END)
    coverage = (alpha * counted[..., None]).sum(axis=1)
    return alpha_reg * float(((1.0 - coverage) ** 2).sum(axis=-1).mean())


def test_the_doubly_stochastic_penalty_is_in_the_model_losses():
    config = attention_config()
    model = build_attention_training_model(config, seed=1, alpha_reg=0.7)
    randomise(model, 1)
    features = np.random.default_rng(1).normal(size=(3, 4, 4, 16)).astype("float32")
    model([features, TOKENS])
    assert len(model.losses) == 1
    decoder = AttentionStepDecoder(attention_weights_from_keras(model), config)
    _, alpha = run_steps(decoder, features, TOKENS)
    assert float(model.losses[0]) == pytest.approx(_penalty(alpha, TOKENS, 0.7), rel=1e-5)
    no_penalty = build_attention_training_model(config, seed=1, alpha_reg=0.0)
    no_penalty([features, TOKENS])
    assert not no_penalty.losses


def test_the_penalty_of_an_empty_batch_is_zero_not_nan():
    """Training on several replicas, a batch with fewer rows than replicas leaves a replica an
    empty piece: its penalty is 0 (the mean of nothing was NaN, and so was the epoch's loss)."""
    model = build_attention_training_model(attention_config(), seed=1, alpha_reg=0.7)
    model([np.zeros((0, 4, 4, 16), "float32"), TOKENS[:0]])
    assert [float(loss) for loss in model.losses] == [0.0]


def test_fit_minimises_the_penalty_too():
    """fit's reported loss is the cross-entropy plus the penalty (lr 0: the weights stay put)."""
    import keras

    config = attention_config()
    features = np.random.default_rng(2).normal(size=(3, 4, 4, 16)).astype("float32")
    inputs, targets = TOKENS[:, :-1], TOKENS[:, 1:]
    losses = {}
    for alpha_reg in (0.0, 1.0):
        model = build_attention_training_model(config, seed=2, alpha_reg=alpha_reg)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        history = model.fit([features, inputs], targets, batch_size=3, epochs=1, verbose=0)
        losses[alpha_reg] = history.history["loss"][0]
    decoder = AttentionStepDecoder(attention_weights_from_keras(model), config)
    _, alpha = run_steps(decoder, features, inputs)
    penalty = _penalty(alpha, inputs, 1.0)
    assert penalty > 0.1
    assert losses[1.0] - losses[0.0] == pytest.approx(penalty, rel=1e-4)


def test_the_projections_of_the_annotations_are_computed_once_per_image():
    config = attention_config()
    weights = numpy_weights(config, seed=3)
    features = np.random.default_rng(3).normal(size=(2, 3, 5, 16)).astype("float32")
    decoder = AttentionStepDecoder(weights, config)
    fresh = AttentionStepDecoder({n: w.copy() for n, w in weights.items()}, config)
    state = decoder.init_state(features)
    context, projected, h, c, recurrent, alpha = state
    a = features.reshape(2, 15, 16)
    assert context.shape == (2, 15, 4 * 16 + 8) and projected.shape == (2, 15, 8)
    assert h.shape == c.shape == (2, 16) and alpha.shape == (2, 15)
    assert recurrent.shape == (2, 8 + 1 + 4 * 16)
    np.testing.assert_allclose(
        projected, a @ weights["att/W_a"] + weights["att/b"], rtol=1e-5, atol=1e-5
    )
    kernel = np.concatenate([weights["lstm/kernel"][8:], weights["deep/L_z"]], axis=1)
    np.testing.assert_allclose(context, a @ kernel, rtol=1e-5, atol=1e-5)
    # Steps must not touch W_a nor the context kernel: poison them after init_state, the steps
    # still give the same numbers.
    for array in (decoder.features_kernel, decoder.features_bias, decoder.context_kernel):
        array[:] = np.nan
    fresh_state = fresh.init_state(features)
    for token in (START, 5, 6):
        tokens = np.full(2, token)
        logits, state = decoder.step_logits(tokens, state)
        expected, fresh_state = fresh.step_logits(tokens, fresh_state)
        assert state[0] is context and state[1] is projected  # carried, never recomputed
        np.testing.assert_array_equal(logits, expected)


def _attention_along(decoder, features, token_ids) -> np.ndarray:
    """The alphas of re-running the step decoder along one caption (words, then <end>)."""
    state = decoder.init_state(features)
    rows = []
    for token in (START, *token_ids):
        _, state = decoder.step(np.array([token]), state)
        rows.append(state[-1][0])
    return np.stack(rows)


def test_searches_run_through_the_attention_step_decoder_and_record_attention():
    config = attention_config()
    decoder = AttentionStepDecoder(numpy_weights(config, seed=4, scale=0.4), config)
    images = np.random.default_rng(4).normal(size=(3, 4, 4, 16)).astype("float32")
    record = {"attention": lambda state: state[-1]}

    plain = greedy(decoder.step, decoder.init_state(images), **SEARCH)
    recorded = greedy(decoder.step, decoder.init_state(images), **SEARCH, **record)
    assert plain == recorded  # recording changes no result (and attention is not compared)
    assert all(h.attention is None for h in plain)
    for i, hyp in enumerate(recorded):
        one = decoder.init_state(images[i : i + 1])
        beam1 = beam_search(decoder.step, one, beam_size=1, **SEARCH, **record)[0]
        assert beam1.token_ids == hyp.token_ids
        assert beam1.logprob == pytest.approx(hyp.logprob)
        np.testing.assert_allclose(beam1.attention, hyp.attention, atol=1e-6)
        np.testing.assert_allclose(
            hyp.attention, _attention_along(decoder, images[i : i + 1], hyp.token_ids), atol=1e-6
        )

    for i in range(len(images)):
        image = images[i : i + 1]
        beams = beam_search(
            decoder.step, decoder.init_state(image), beam_size=3, num_results=3, **SEARCH, **record
        )
        samples = sample(
            decoder.step, decoder.init_state(image), num_samples=4, seed=i, **SEARCH, **record
        )
        assert len(beams) == 3 and len(samples) == 4
        for hyp in beams + samples:
            assert hyp.attention.shape == (len(hyp.token_ids) + 1, 16)
            np.testing.assert_allclose(hyp.attention.sum(axis=1), 1.0, atol=1e-6)
            # Each hypothesis kept its own history through pruning and reordering.
            np.testing.assert_allclose(
                hyp.attention, _attention_along(decoder, image, hyp.token_ids), atol=1e-6
            )
        assert len({h.token_ids for h in beams}) == 3
        plain_beams = beam_search(
            decoder.step, decoder.init_state(image), beam_size=3, num_results=3, **SEARCH
        )
        assert plain_beams == beams


def test_weights_round_trip_through_keras_and_safetensors(tmp_path):
    config = attention_config()
    weights = random_weights(config, seed=3)
    assert tuple(weights) == ATTENTION_WEIGHT_NAMES
    assert {n: w.shape for n, w in weights.items()} == expected_attention_shapes(config)
    save_weights(weights, tmp_path / "model.safetensors", config)
    loaded = load_weights(tmp_path / "model.safetensors", config)
    assert loaded.keys() == weights.keys()
    for name in weights:
        np.testing.assert_array_equal(loaded[name], weights[name])
    other = numpy_weights(config, seed=8)
    model = build_attention_training_model(config)
    attention_weights_into_keras(model, other)
    back = attention_weights_from_keras(model)
    for name in other:
        np.testing.assert_array_equal(back[name], other[name])


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    config = attention_config()
    weights = numpy_weights(config, seed=0)
    save_weights(weights, tmp_path / "model.safetensors", config)
    bigger_vocab = attention_config()
    bigger_vocab.vocab_size += 5
    with pytest.raises(DecoderWeightsError, match="vocab_size=22, the weights have 17"):
        load_weights(tmp_path / "model.safetensors", bigger_vocab)
    with pytest.raises(
        DecoderWeightsError,
        match=r"att/W_a has shape \(16, 8\), config.json implies \(16, 9\)",
    ):
        load_weights(tmp_path / "model.safetensors", attention_config(attention_dim=9))
    with pytest.raises(DecoderWeightsError, match="init_h/kernel .*the encoder gives 12 channels"):
        check_weights(weights, attention_config(channels=12))
    with pytest.raises(DecoderWeightsError, match="lacks tensor.* gate/W_beta"):
        check_weights({n: w for n, w in weights.items() if n != "gate/W_beta"}, config)
    with pytest.raises(DecoderWeightsError, match="unexpected tensor.* lstm/extra"):
        check_weights({**weights, "lstm/extra": weights["lstm/bias"]}, config)
    with pytest.raises(DecoderWeightsError, match="lacks"):
        AttentionStepDecoder({}, config)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DecoderWeightsError, match="cannot read model.safetensors"):
        load_weights(tmp_path / "bad.safetensors", config)


def test_configs_an_attention_decoder_cannot_use_are_refused():
    pooled = tiny_config(kind="attention", attention_dim=8)  # features stay "pooled"
    with pytest.raises(ConfigError, match="spatial"):
        expected_attention_shapes(pooled)
    no_dim = attention_config()
    no_dim.decoder.attention_dim = None
    with pytest.raises(ConfigError, match="attention_dim"):
        build_attention_training_model(no_dim)
    decoder = AttentionStepDecoder(numpy_weights(attention_config(), seed=0), attention_config())
    with pytest.raises(ValueError, match=r"\(N, H, W, 16\)"):
        decoder.init_state(np.zeros((2, 16), "float32"))


def where_grids(grid: int = 3, channels: int = 12):
    """Every image with two objects in distinct cells; the caption names the two cells in order.

    An object's cell holds a one-hot code of its position plus its kind (object 1 or 2) on a
    channel of its own; every other cell is zero. Swapping the objects gives the same mean over
    the grid and the reversed caption: pooled features cannot tell which cell comes first,
    attention can.
    """
    cells = grid * grid
    features, tokens = [], []
    for first in range(cells):
        for second in range(cells):
            if first != second:
                f = np.zeros((cells, channels), "float32")
                f[first, first] = f[second, second] = 1.0
                f[first, cells] = f[second, cells + 1] = 3.0
                features.append(f.reshape(grid, grid, channels))
                tokens.append([START, 4 + first, 4 + second, END])
    return np.stack(features), np.array(tokens, "int32")


def test_a_tiny_training_run_learns_where_to_look():
    import keras

    features, tokens = where_grids()
    pooled = features.reshape(len(features), -1, 12).mean(axis=1)
    swapped = [list(map(tuple, tokens[:, 1:3])).index((b, a)) for a, b in tokens[:, 1:3]]
    np.testing.assert_array_equal(pooled, pooled[swapped])
    config = attention_config(channels=12, units=32, embedding_dim=16, attention_dim=16)
    config.vocab_size = 4 + 9
    keras.utils.set_random_seed(0)
    model = build_attention_training_model(config, seed=0, alpha_reg=0.1)
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs, targets = [features, tokens[:, :-1]], tokens[:, 1:]
    before = model.evaluate(inputs, targets, batch_size=len(features), verbose=0)
    repeats = 40  # full-batch steps per epoch (each epoch costs Keras a fixed overhead)
    history = model.fit(
        [np.tile(features, (repeats, 1, 1, 1)), np.tile(tokens[:, :-1], (repeats, 1))],
        np.tile(targets, (repeats, 1)),
        batch_size=len(features),
        epochs=3,
        shuffle=False,
        verbose=0,
    )
    assert history.history["loss"][-1] < 0.25 * before
    decoder = AttentionStepDecoder(attention_weights_from_keras(model), config)
    hyps = greedy(
        decoder.step,
        decoder.init_state(features),
        **{**SEARCH, "max_length": 3},
        attention=lambda state: state[-1],
    )
    right = [h.token_ids == tuple(t[1:3]) for h, t in zip(hyps, tokens)]
    assert np.mean(right) >= 0.9
    # Each word was read off the cell it names: attention looks at object 1, then object 2.
    looked = [
        tuple(h.attention[:2].argmax(axis=1)) == tuple(t[1:3] - 4)
        for h, t, ok in zip(hyps, tokens, right)
        if ok
    ]
    assert np.mean(looked) >= 0.9
