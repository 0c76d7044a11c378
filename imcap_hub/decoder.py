"""The decoders' weights and forms, for both kinds; the pooled LSTM decoder itself.

Two kinds (``config.decoder.kind``): ``init_state_lstm`` (pooled features; this module) and
``attention`` (soft attention over the spatial grid; ``imcap_hub/attention.py``). Each comes in
two forms that compute the same numbers, chosen here by kind:

- ``build_training_model``: a Keras graph, teacher-forced over whole sequences (training).
- ``make_step_decoder``: numpy, one token at a time (inference): ``StepDecoder`` carries (h, c).

Conditioning: the image features set the LSTM's initial state, h0 = tanh(W_h f + b_h) and
c0 = W_c f + b_c, rather than entering as a first input word as in Show and Tell. The image then
costs no time step, beam hypotheses share one projected state, and the step function starts
directly from (h0, c0); on Flickr8k-sized data both variants score within noise of each other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .config import CaptionerConfig
from .errors import ImcapError
from .files import load_tensors, save_tensors
from .matmul import ConstantMatmul
from .startup import import_keras

# (h, c, h @ recurrent_kernel): the last is carried so each step needs one matmul; its gate
# columns are in StepDecoder's (i, f, o, c) order.
State = tuple[np.ndarray, np.ndarray, np.ndarray]

# Weight names in model.safetensors; stable across Keras versions (we never store Keras paths).
WEIGHT_NAMES = (
    "init_h/kernel",
    "init_h/bias",
    "init_c/kernel",
    "init_c/bias",
    "embedding/embeddings",
    "lstm/kernel",
    "lstm/recurrent_kernel",
    "lstm/bias",
    "logits/kernel",
    "logits/bias",
)


class DecoderWeightsError(ImcapError, ValueError):
    """model.safetensors does not fit the config."""


def expected_shapes(config: CaptionerConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of model.safetensors, for either decoder kind."""
    if config.decoder.kind == "attention":
        from .attention import expected_attention_shapes

        return expected_attention_shapes(config)
    f, e = config.encoder.feature_dim, config.decoder.embedding_dim
    u, v = config.decoder.units, config.vocab_size
    return {
        "init_h/kernel": (f, u),
        "init_h/bias": (u,),
        "init_c/kernel": (f, u),
        "init_c/bias": (u,),
        "embedding/embeddings": (v, e),
        "lstm/kernel": (e, 4 * u),
        "lstm/recurrent_kernel": (u, 4 * u),
        "lstm/bias": (4 * u,),
        "logits/kernel": (u, v),
        "logits/bias": (v,),
    }


# Tensors whose rows are the encoder's channels (both kinds name them alike).
_CHANNEL_ROWS = ("init_h/kernel", "init_c/kernel", "att/W_a", "deep/L_z")


def check_weights(weights: Mapping[str, np.ndarray], config: CaptionerConfig) -> None:
    """Raise DecoderWeightsError naming the first tensor that does not fit ``config``."""
    shapes = expected_shapes(config)
    missing = [n for n in shapes if n not in weights]
    if missing:
        raise DecoderWeightsError(f"model.safetensors lacks tensor(s) {', '.join(missing)}")
    extra = sorted(set(weights) - set(shapes))
    if extra:
        raise DecoderWeightsError(f"model.safetensors has unexpected tensor(s) {', '.join(extra)}")
    for name, shape in shapes.items():
        got = tuple(np.shape(weights[name]))
        if got != shape:
            hint = ""
            if name == "embedding/embeddings" and got[:1] != shape[:1]:
                hint = f" (config.json says vocab_size={shape[0]}, the weights have {got[0]})"
            elif name in _CHANNEL_ROWS and got[:1] != shape[:1]:
                hint = f" (the encoder gives {shape[0]} channels, the weights expect {got[0]})"
            raise DecoderWeightsError(
                f"model.safetensors tensor {name} has shape {got}, config.json implies {shape}{hint}"
            )
        if not np.isfinite(weights[name]).all():
            # NaN weights would caption everything "" with no error anywhere.
            raise DecoderWeightsError(
                f"model.safetensors tensor {name} holds NaN or infinite values"
            )


def save_weights(
    weights: Mapping[str, np.ndarray], path: str | os.PathLike, config: CaptionerConfig
) -> None:
    """Write the decoder weights of ``config``'s kind as model.safetensors."""
    kind = "imcap-attention-decoder/1" if config.decoder.kind == "attention" else "imcap-decoder/1"
    save_tensors(
        {n: np.asarray(weights[n], dtype=np.float32) for n in expected_shapes(config)}, path, kind
    )


def load_weights(path: str | os.PathLike, config: CaptionerConfig) -> dict[str, np.ndarray]:
    """Read model.safetensors and check it against ``config``."""
    from safetensors import SafetensorError

    try:
        weights = load_tensors(path)
    except (SafetensorError, OSError) as e:
        raise DecoderWeightsError(f"cannot read model.safetensors: {e}") from None
    check_weights(weights, config)
    return weights


def make_step_decoder(weights: Mapping[str, np.ndarray], config: CaptionerConfig):
    """The numpy step decoder of ``config``'s kind (StepDecoder or AttentionStepDecoder)."""
    if config.decoder.kind == "attention":
        from .attention import AttentionStepDecoder

        return AttentionStepDecoder(weights, config)
    return StepDecoder(weights, config)


# --- Keras training graph ---------------------------------------------------------------------


def build_training_model(config: CaptionerConfig, seed: int | None = None, alpha_reg: float = 0.0):
    """The Keras training graph of ``config``'s kind: (features, input ids (B, T)) -> logits.

    Position t predicts token t+1 of ``<start> w1 .. wn <end>``; padding id 0 is masked.
    ``alpha_reg``: the attention kind's doubly stochastic penalty (the pooled kind has none).
    """
    if config.decoder.kind == "attention":
        from .attention import build_attention_training_model

        return build_attention_training_model(config, seed=seed, alpha_reg=alpha_reg)
    return _build_pooled_training_model(config, seed)


def _build_pooled_training_model(config: CaptionerConfig, seed: int | None):
    """(features (B, F), input ids (B, T)) -> logits (B, T, V)."""
    keras = import_keras()
    layers = keras.layers

    d = config.decoder
    features = keras.Input((config.encoder.feature_dim,), name="features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    init = keras.initializers.GlorotUniform(seed=seed)
    orth = keras.initializers.Orthogonal(seed=None if seed is None else seed + 1)
    emb_init = keras.initializers.RandomUniform(
        -0.05, 0.05, seed=None if seed is None else seed + 2
    )

    f = layers.Dropout(d.dropout, name="features_dropout")(features)
    h0 = layers.Dense(d.units, activation="tanh", kernel_initializer=init, name="init_h")(f)
    c0 = layers.Dense(d.units, kernel_initializer=init, name="init_c")(f)
    embedding = layers.Embedding(
        config.vocab_size,
        d.embedding_dim,
        mask_zero=True,
        embeddings_initializer=emb_init,
        name="embedding",
    )
    x = embedding(tokens)
    x = layers.Dropout(d.dropout, name="embedding_dropout")(x)
    # Keras 3: with initial_state= the functional call does not pick up the Embedding's mask,
    # so pass it explicitly (test_decoder checks the graph against the step function).
    mask = embedding.compute_mask(tokens)
    lstm = layers.LSTM(
        d.units,
        return_sequences=True,
        kernel_initializer=init,
        recurrent_initializer=orth,
        name="lstm",
    )
    x = lstm(x, mask=mask, initial_state=[h0, c0])
    x = layers.Dropout(d.dropout, name="lstm_dropout")(x)
    # float32 logits under a mixed-precision policy: a stable softmax and loss (training).
    logits = layers.Dense(
        config.vocab_size, kernel_initializer=init, dtype="float32", name="logits"
    )(x)
    return keras.Model([features, tokens], logits, name="imcap_decoder")


def _keras_variables(model) -> dict[str, object]:
    by_layer = {}
    for layer_name in ("init_h", "init_c", "embedding", "lstm", "logits"):
        layer = model.get_layer(layer_name)
        for var in layer.weights:
            leaf = var.path.rsplit("/", 1)[-1]
            by_layer[f"{layer_name}/{leaf}"] = var
    return by_layer


def _is_attention(model) -> bool:
    return any(layer.name == "att_lstm" for layer in model.layers)


def weights_from_keras(model) -> dict[str, np.ndarray]:
    """The training graph's weights (either kind) under the names model.safetensors uses."""
    if _is_attention(model):
        from .attention import attention_weights_from_keras

        return attention_weights_from_keras(model)
    variables = _keras_variables(model)
    return {name: np.asarray(variables[name].numpy(), dtype=np.float32) for name in WEIGHT_NAMES}


def weights_into_keras(model, weights: Mapping[str, np.ndarray]) -> None:
    if _is_attention(model):
        from .attention import attention_weights_into_keras

        return attention_weights_into_keras(model, weights)
    variables = _keras_variables(model)
    for name in WEIGHT_NAMES:
        variables[name].assign(weights[name])


def random_weights(config: CaptionerConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Freshly initialised decoder weights (the same initialisers as training)."""
    return weights_from_keras(build_training_model(config, seed=seed))


# --- numpy step function ----------------------------------------------------------------------


def lstm_update(gates: np.ndarray, c: np.ndarray, units: int) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM cell update from its pre-activations (Keras gate order i, f, c, o): (h, c)."""
    i_f = sigmoid(gates[:, : 2 * units])  # i and f side by side: one call for both
    g = np.tanh(gates[:, 2 * units : 3 * units])
    o = sigmoid(gates[:, 3 * units :])
    c = i_f[:, units:] * c + i_f[:, :units] * g
    return o * np.tanh(c), c


def sigmoid_gates_first(units: int) -> np.ndarray:
    """The column order that turns Keras' LSTM gates (i, f, c, o) into (i, f, o, c)."""
    u = units
    return np.r_[0 : 2 * u, 3 * u : 4 * u, 2 * u : 3 * u]


def lstm_update_sigmoids_first(
    gates: np.ndarray, c: np.ndarray, units: int
) -> tuple[np.ndarray, np.ndarray]:
    """``lstm_update`` for gates in (i, f, o, c) order: the same numbers, with one sigmoid
    call over the three sigmoid gates instead of three (34 -> 23 us per step at one row)."""
    s = sigmoid(gates[:, : 3 * units])
    c = s[:, units : 2 * units] * c + s[:, :units] * np.tanh(gates[:, 3 * units :])
    return s[:, 2 * units :] * np.tanh(c), c


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Same value as 1/(1+exp(-x)) without overflow warnings for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class StepDecoder:
    """One LSTM step at a time in numpy; no Keras, no per-word graph calls.

    ``weights`` holds the published weights; the step's arrays are derived from them once, so
    to change weights build a new StepDecoder (``ImageCaptioner.set_decoder_weights``).
    """

    def __init__(self, weights: Mapping[str, np.ndarray], config: CaptionerConfig) -> None:
        check_weights(weights, config)
        w = {n: np.ascontiguousarray(weights[n], dtype=np.float32) for n in WEIGHT_NAMES}
        # The weights as published (model.safetensors); everything below is derived from them.
        self.weights = w
        self.config = config
        self.units = config.decoder.units
        self.init_h = (w["init_h/kernel"], w["init_h/bias"])
        self.init_c = (w["init_c/kernel"], w["init_c/bias"])
        self.embeddings = w["embedding/embeddings"]
        # Input projection folded into the embedding table: one row lookup instead of a matmul.
        # Gate columns in (i, f, o, c) order, for lstm_update_sigmoids_first.
        gates = sigmoid_gates_first(self.units)
        self.input_table = (self.embeddings @ w["lstm/kernel"] + w["lstm/bias"])[:, gates]
        self.recurrent = np.ascontiguousarray(w["lstm/recurrent_kernel"][:, gates])
        self.out_kernel, self.out_bias = w["logits/kernel"], w["logits/bias"]
        # h feeds both the output layer and the next step's recurrence: one matmul for both.
        self.fused = np.ascontiguousarray(np.concatenate([self.out_kernel, self.recurrent], axis=1))
        # Beams multiply several rows of h at once: see matmul.py for why not numpy's gemm.
        self.fused_matmul = ConstantMatmul(self.fused)
        self.vocab_size = self.out_kernel.shape[1]

    def init_state(self, features: np.ndarray) -> State:
        """Features (N, F) -> (h0, c0, h0 @ recurrent_kernel), each with N rows."""
        features = np.asarray(features, dtype=np.float32)
        h = np.tanh(features @ self.init_h[0] + self.init_h[1]).astype(np.float32)
        c = (features @ self.init_c[0] + self.init_c[1]).astype(np.float32)
        return h, c, h @ self.recurrent

    def step_logits(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Tokens (N,) and state -> logits (N, V) for the next token, and the new state."""
        _, c, h_recurrent = state
        h, c = lstm_update_sigmoids_first(self.input_table[tokens] + h_recurrent, c, self.units)
        out = self.fused_matmul(h)
        return out[:, : self.vocab_size] + self.out_bias, (h, c, out[:, self.vocab_size :])

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Like ``step_logits`` but returns log-probabilities."""
        logits, state = self.step_logits(tokens, state)
        return log_softmax(logits), state


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    # In place: the same numbers as ``shifted - log(...)``, one (N, V) array fewer per step.
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted
