"""The soft-attention LSTM decoder (Show, Attend and Tell), in two forms that agree.

- ``build_attention_training_model``: a Keras graph, teacher-forced over whole sequences.
- ``AttentionStepDecoder``: numpy, one token at a time (inference), with the same interface as
  ``decoder.StepDecoder``, so search, the API and the app need not know which decoder runs.

Per step t, over the L = H*W annotation vectors a_i of the encoder's spatial grid (C channels):

    e_ti = w . tanh(W_a a_i + W_h h_{t-1} + b)        alpha_t = softmax_i(e_ti)
    beta_t = sigmoid(W_beta h_{t-1} + b_beta)          (one scalar per step, as in the paper)
    z_t = beta_t * sum_i alpha_ti a_i
    h_t, c_t = LSTM([E y_{t-1}, z_t], h_{t-1}, c_{t-1}) (Keras gate order i, f, c, o)
    logits_t = L_o dropout(E y_{t-1} + L_h h_t + b_deep + L_z z_t) + b_o

with h_0 = tanh(init_h(mean_i a_i)) and c_0 = tanh(init_c(mean_i a_i)) (the paper's MLPs; tanh on
c_0 too keeps the first cell state in the range later ones live in). Dropout acts on the deep
output only, where the paper puts it. The training graph adds the doubly stochastic penalty
alpha_reg * sum_i (1 - sum_t alpha_ti)^2, averaged over the batch. No weight depends on the
grid size, so one model accepts any H x W.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from .config import CaptionerConfig, ConfigError
from .decoder import check_weights, log_softmax, lstm_update, sigmoid
from .matmul import ConstantMatmul
from .startup import import_keras
from .vocab import Vocabulary

# (a @ [K_z | L_z] (N, L, 4U + E), W_a a + b (N, L, A), h (N, U), c (N, U),
#  h @ [W_h | W_beta | recurrent_kernel] (N, A + 1 + 4U), alpha of the step just taken (N, L)).
# Both projections of the annotations are computed once per image; the fused product of h is
# carried so that a step needs one matmul on h (see AttentionStepDecoder).
AttentionState = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# Weight names in model.safetensors; stable across Keras versions (we never store Keras paths).
ATTENTION_WEIGHT_NAMES = (
    "init_h/kernel",
    "init_h/bias",
    "init_c/kernel",
    "init_c/bias",
    "embedding/embeddings",
    "att/W_a",
    "att/W_h",
    "att/b",
    "att/w",
    "gate/W_beta",
    "gate/b_beta",
    "lstm/kernel",
    "lstm/recurrent_kernel",
    "lstm/bias",
    "deep/L_h",
    "deep/b",
    "deep/L_z",
    "logits/kernel",
    "logits/bias",
)

# The names the recurrent Keras layer owns (the rest belong to the Embedding and logits layers).
_CELL_NAMES = tuple(
    n for n in ATTENTION_WEIGHT_NAMES if not n.startswith(("embedding/", "logits/"))
)


def _dims(config: CaptionerConfig) -> tuple[int, int, int, int, int]:
    """(C, E, U, A, V): channels, embedding size, LSTM units, attention size, vocabulary size."""
    shape = tuple(config.encoder.feature_shape)
    if len(shape) != 3:
        raise ConfigError(
            "the attention decoder needs encoder.features='spatial' (an H x W x C grid), "
            f"got {config.encoder.features!r}"
        )
    a = getattr(config.decoder, "attention_dim", None)
    if not isinstance(a, int) or isinstance(a, bool) or a <= 0:
        raise ConfigError(f"decoder.attention_dim must be a positive integer, got {a!r}")
    d = config.decoder
    return shape[-1], d.embedding_dim, d.units, a, config.vocab_size


def _shapes(c: int, e: int, u: int, a: int, v: int) -> dict[str, tuple[int, ...]]:
    return {
        "init_h/kernel": (c, u),
        "init_h/bias": (u,),
        "init_c/kernel": (c, u),
        "init_c/bias": (u,),
        "embedding/embeddings": (v, e),
        "att/W_a": (c, a),
        "att/W_h": (u, a),
        "att/b": (a,),
        "att/w": (a,),
        "gate/W_beta": (u, 1),
        "gate/b_beta": (1,),
        "lstm/kernel": (e + c, 4 * u),  # rows: the word embedding, then the context z
        "lstm/recurrent_kernel": (u, 4 * u),
        "lstm/bias": (4 * u,),
        "deep/L_h": (u, e),
        "deep/b": (e,),
        "deep/L_z": (c, e),
        "logits/kernel": (e, v),
        "logits/bias": (v,),
    }


def expected_attention_shapes(config: CaptionerConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of an attention decoder's model.safetensors."""
    return _shapes(*_dims(config))


# --- Keras training graph ---------------------------------------------------------------------


@functools.cache
def _attention_lstm_class():
    """The recurrent Keras layer, defined on first use: importing this module needs no Keras."""
    keras = import_keras()
    ops = keras.ops

    class AttentionCell:
        """One step, for ``keras.layers.RNN``; a plain object that owns no weights.

        Keras 3's RNN has no ``constants`` argument, so ``AttentionLSTM.call`` hands the
        annotations and their projection (fixed over a sequence) to the cell just before the
        loop; carrying them as RNN states instead would copy them through every step.
        """

        def __init__(self, weights: dict, units: int, compute_dtype: str) -> None:
            self.weights = weights
            self.units = units
            self.compute_dtype = compute_dtype  # RNN casts the initial state to it
            self.state_size = [units, units]
            self.constants = None

        def __call__(self, x, states):
            return self.call(x, states)

        def call(self, x, states):
            w, u = self.weights, self.units
            a, projected = self.constants
            h, c = states
            e = ops.tanh(projected + ops.expand_dims(ops.matmul(h, w["att/W_h"]), 1))
            # A sum, not a (B, L, A) x (A, 1) matmul: that becomes a tensordot whose gradient
            # inside the loop needs shapes XLA cannot fix at compile time.
            scores = ops.sum(e * w["att/w"], axis=-1)
            alpha = ops.softmax(scores, axis=-1)  # (B, L)
            beta = ops.sigmoid(ops.matmul(h, w["gate/W_beta"]) + w["gate/b_beta"])  # (B, 1)
            z = beta * ops.squeeze(ops.matmul(ops.expand_dims(alpha, 1), a), 1)  # (B, C)
            gates = (
                ops.matmul(ops.concatenate([x, z], axis=-1), w["lstm/kernel"])
                + ops.matmul(h, w["lstm/recurrent_kernel"])
                + w["lstm/bias"]
            )
            i = ops.sigmoid(gates[:, :u])
            f = ops.sigmoid(gates[:, u : 2 * u])
            g = ops.tanh(gates[:, 2 * u : 3 * u])
            o = ops.sigmoid(gates[:, 3 * u :])
            c = f * c + i * g
            h = o * ops.tanh(c)
            deep = x + ops.matmul(h, w["deep/L_h"]) + w["deep/b"] + ops.matmul(z, w["deep/L_z"])
            return ops.concatenate([deep, alpha], axis=-1), [h, c]

    class AttentionLSTM(keras.layers.Layer):
        """Attention, LSTM and the deep-output sum over a whole teacher-forced sequence.

        ``call(embedded (B, T, E), features (B, H, W, C), mask (B, T), counted (B, T))``
        -> (deep output before dropout (B, T, E), alpha (B, T, L)). A masked step carries the
        state, its output and its alpha unchanged (Keras' RNN masking), so a padded position
        repeats the last real one. ``counted`` marks the steps the doubly stochastic penalty
        sums over.
        """

        def __init__(
            self,
            channels: int,
            embedding_dim: int,
            units: int,
            attention_dim: int,
            alpha_reg: float = 1.0,
            seed: int | None = None,
            **kwargs,
        ) -> None:
            super().__init__(**kwargs)
            c, e, u, a = channels, embedding_dim, units, attention_dim
            self.channels, self.embedding_dim, self.units = c, e, u
            self.attention_dim, self.alpha_reg, self.seed = a, float(alpha_reg), seed

            def seeded(cls, k, **kw):
                # One seed per tensor: a seeded Keras initialiser repeats its values.
                return cls(seed=None if seed is None else seed + k, **kw)

            glorot, zeros = keras.initializers.GlorotUniform, keras.initializers.Zeros()

            def forget_bias_one(shape, dtype=None):
                # As Keras' LSTM(unit_forget_bias=True): start out remembering.
                parts = [ops.zeros((u,), dtype), ops.ones((u,), dtype), ops.zeros((2 * u,), dtype)]
                return ops.concatenate(parts)

            inits = {
                "init_h/kernel": seeded(glorot, 10),
                "init_h/bias": zeros,
                "init_c/kernel": seeded(glorot, 11),
                "init_c/bias": zeros,
                "att/W_a": seeded(glorot, 12),
                "att/W_h": seeded(glorot, 13),
                "att/b": zeros,
                "att/w": seeded(keras.initializers.RandomUniform, 14, minval=-0.1, maxval=0.1),
                "gate/W_beta": seeded(glorot, 15),
                "gate/b_beta": zeros,
                "lstm/kernel": seeded(glorot, 16),
                "lstm/recurrent_kernel": seeded(keras.initializers.Orthogonal, 17),
                "lstm/bias": forget_bias_one,
                "deep/L_h": seeded(glorot, 18),
                "deep/b": zeros,
                "deep/L_z": seeded(glorot, 19),
            }
            shapes = _shapes(c, e, u, a, 1)
            self.named_weights = {
                name: self.add_weight(
                    shape=shapes[name], initializer=inits[name], name=name.replace("/", "_")
                )
                for name in _CELL_NAMES
            }
            self.cell = AttentionCell(self.named_weights, u, self.compute_dtype)
            self.rnn = keras.layers.RNN(self.cell, return_sequences=True, name="rnn")

        def compute_mask(self, inputs, previous_mask):
            return [previous_mask, None]

        def compute_output_spec(self, embedded, features, mask=None, counted=None):
            b, t = embedded.shape[:2]
            h, w = features.shape[1:3]
            grid = h * w if h is not None and w is not None else None
            return (
                keras.KerasTensor((b, t, self.embedding_dim), dtype=self.compute_dtype),
                keras.KerasTensor((b, t, grid), dtype=self.compute_dtype),
            )

        def call(self, embedded, features, mask=None, counted=None):
            w = self.named_weights
            a = ops.reshape(features, (ops.shape(features)[0], -1, self.channels))  # (B, L, C)
            pooled = ops.mean(a, axis=1)
            h0 = ops.tanh(ops.matmul(pooled, w["init_h/kernel"]) + w["init_h/bias"])
            c0 = ops.tanh(ops.matmul(pooled, w["init_c/kernel"]) + w["init_c/bias"])
            # W_a a once per sequence, outside the loop (the step decoder does the same).
            self.cell.constants = (a, ops.matmul(a, w["att/W_a"]) + w["att/b"])
            try:
                out = self.rnn(embedded, initial_state=[h0, c0], mask=mask)
            finally:
                self.cell.constants = None
            deep, alpha = out[..., : self.embedding_dim], out[..., self.embedding_dim :]
            if self.alpha_reg:
                steps = mask if counted is None else counted
                if steps is None:
                    coverage = ops.sum(alpha, axis=1)
                else:
                    weight = ops.expand_dims(ops.cast(steps, alpha.dtype), -1)
                    coverage = ops.sum(alpha * weight, axis=1)  # (B, L)
                # In float32 whatever the layer computes in: Keras adds it to a float32 loss.
                coverage = ops.cast(coverage, "float32")
                penalty = ops.sum((1.0 - coverage) ** 2, axis=-1)  # (B,)
                # A replica's piece of a batch can be empty (fewer rows than replicas): no
                # penalty there, not the NaN mean of nothing (which made the loss NaN).
                penalty = ops.where(ops.size(penalty) > 0, ops.mean(penalty), 0.0)
                self.add_loss(self.alpha_reg * penalty)
            return deep, alpha

        def get_config(self):
            return {
                **super().get_config(),
                "channels": self.channels,
                "embedding_dim": self.embedding_dim,
                "units": self.units,
                "attention_dim": self.attention_dim,
                "alpha_reg": self.alpha_reg,
                "seed": self.seed,
            }

    return AttentionLSTM


def build_attention_training_model(
    config: CaptionerConfig,
    seed: int | None = None,
    alpha_reg: float = 1.0,
    end_id: int = Vocabulary.end_id,
):
    """Keras model: (features (B, H, W, C), input ids (B, T)) -> logits (B, T, V).

    Position t predicts token t+1 of ``<start> w1 .. wn <end>``; padding id 0 is masked (a padded
    step carries the state unchanged). The penalty ``alpha_reg * sum_i (1 - sum_t alpha_ti)^2``,
    averaged over the batch, is added with ``add_loss``, so ``fit`` minimises it too; its sum
    over t runs over the steps that predict a word or ``<end>``: neither padding nor an
    ``<end>`` input (the steps whose alpha search records). ``attention_model(model)`` gives
    the alphas.
    """
    keras = import_keras()
    layers, ops = keras.layers, keras.ops

    c, e, u, a, v = _dims(config)
    features = keras.Input((None, None, c), name="features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    emb_init = keras.initializers.RandomUniform(
        -0.05, 0.05, seed=None if seed is None else seed + 2
    )
    embedding = layers.Embedding(
        v, e, mask_zero=True, embeddings_initializer=emb_init, name="embedding"
    )
    x = embedding(tokens)
    # Keras 3: a layer called with several tensors does not pick up the Embedding's mask
    # reliably; pass it explicitly (the tests check the graph against the step function).
    mask = embedding.compute_mask(tokens)
    counted = ops.logical_and(mask, ops.not_equal(tokens, end_id))
    recurrent = _attention_lstm_class()(c, e, u, a, alpha_reg=alpha_reg, seed=seed, name="att_lstm")
    deep, _ = recurrent(x, features, mask=mask, counted=counted)
    deep = layers.Dropout(config.decoder.dropout, name="deep_output_dropout")(deep)
    init = keras.initializers.GlorotUniform(seed=seed)
    # float32 logits under a mixed-precision policy: a stable softmax and loss (training).
    logits = layers.Dense(v, kernel_initializer=init, dtype="float32", name="logits")(deep)
    return keras.Model([features, tokens], logits, name="imcap_attention_decoder")


def attention_model(model):
    """A Keras model sharing ``model``'s layers: (features, ids) -> [logits, alpha (B, T, L)]."""
    keras = import_keras()

    alpha = model.get_layer("att_lstm").output[1]
    return keras.Model(model.inputs, [model.outputs[0], alpha], name="imcap_attention_maps")


def _keras_variables(model) -> dict[str, object]:
    variables = dict(model.get_layer("att_lstm").named_weights)
    variables["embedding/embeddings"] = model.get_layer("embedding").embeddings
    logits = model.get_layer("logits")
    variables["logits/kernel"], variables["logits/bias"] = logits.kernel, logits.bias
    return variables


def attention_weights_from_keras(model) -> dict[str, np.ndarray]:
    """The training graph's weights under the names model.safetensors uses."""
    variables = _keras_variables(model)
    return {n: np.asarray(variables[n].numpy(), dtype=np.float32) for n in ATTENTION_WEIGHT_NAMES}


def attention_weights_into_keras(model, weights: Mapping[str, np.ndarray]) -> None:
    variables = _keras_variables(model)
    for name in ATTENTION_WEIGHT_NAMES:
        variables[name].assign(np.asarray(weights[name], dtype=np.float32))


# --- numpy step function ----------------------------------------------------------------------


class AttentionStepDecoder:
    """One attention-LSTM step at a time in numpy; no Keras, no per-word graph calls.

    A step costs one row lookup, the attention over L positions and two matmuls (on h_t and
    the output layer): everything else is folded into tables once, here or per image. The
    context's contribution ``z_t @ [K_z | L_z]`` is ``beta_t * alpha_t @ (a @ [K_z | L_z])``,
    and ``a @ [K_z | L_z]`` is computed once per image: a step then reads an (L, 4U + E) table
    instead of the (C, 4U + E) matrix (for ResNet50, 49 rows instead of 2048).
    The state's last element is the step's alpha (N, L); search records it when asked.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], config: CaptionerConfig) -> None:
        check_weights(weights, config)
        w = {n: np.ascontiguousarray(weights[n], dtype=np.float32) for n in ATTENTION_WEIGHT_NAMES}
        # The weights as published (model.safetensors); everything below is derived from them.
        self.weights = w
        self.config = config
        c, e, u, a, v = _dims(config)
        self.channels, self.embedding_dim, self.units, self.attention_dim = c, e, u, a
        self.vocab_size = v
        self.init_h = (w["init_h/kernel"], w["init_h/bias"])
        self.init_c = (w["init_c/kernel"], w["init_c/bias"])
        self.features_kernel, self.features_bias = w["att/W_a"], w["att/b"]
        self.score = w["att/w"]
        self.beta_bias = w["gate/b_beta"][0]
        kernel = w["lstm/kernel"]
        # A token's whole contribution in one row: its LSTM input projection (with the LSTM
        # bias) and its deep-output term E y (with the deep-output bias).
        self.token_table = np.ascontiguousarray(
            np.concatenate(
                [
                    w["embedding/embeddings"] @ kernel[:e] + w["lstm/bias"],
                    w["embedding/embeddings"] + w["deep/b"],
                ],
                axis=1,
            )
        )  # (V, 4U + E)
        # z feeds the LSTM and the deep output: one matmul for both.
        self.context_kernel = np.ascontiguousarray(
            np.concatenate([kernel[e:], w["deep/L_z"]], axis=1)
        )  # (C, 4U + E)
        # h_t feeds the deep output now and, at the next step, the attention, the gate and the
        # recurrence: one matmul for all four.
        self.hidden_kernel = np.ascontiguousarray(
            np.concatenate(
                [w["deep/L_h"], w["att/W_h"], w["gate/W_beta"], w["lstm/recurrent_kernel"]],
                axis=1,
            )
        )  # (U, E + A + 1 + 4U)
        self.out_kernel, self.out_bias = w["logits/kernel"], w["logits/bias"]
        # Beams multiply several rows at once: see matmul.py for why not numpy's gemm.
        self.hidden_matmul = ConstantMatmul(self.hidden_kernel)
        self.out_matmul = ConstantMatmul(self.out_kernel)

    def init_state(self, features: np.ndarray) -> AttentionState:
        """Features (N, H, W, C) -> the state, each array with N rows; W_a a is computed here."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 4 or features.shape[-1] != self.channels:
            raise ValueError(
                f"expected spatial features (N, H, W, {self.channels}), got {features.shape}"
            )
        n = features.shape[0]
        a = np.ascontiguousarray(features.reshape(n, -1, self.channels))
        pooled = a.mean(axis=1)
        h = np.tanh(pooled @ self.init_h[0] + self.init_h[1])
        c = np.tanh(pooled @ self.init_c[0] + self.init_c[1])
        projected = a @ self.features_kernel + self.features_bias
        context = a @ self.context_kernel
        recurrent = (h @ self.hidden_kernel)[:, self.embedding_dim :]
        alpha = np.zeros(a.shape[:2], dtype=np.float32)  # no step taken yet
        if n == 1:
            # One image (as predict searches): the per-image tables as a row repeated (stride
            # 0), which search's state gathers keep as views; beams then share one copy instead
            # of copying 1.6 MB per step.
            context = np.broadcast_to(context[0], context.shape)
            projected = np.broadcast_to(projected[0], projected.shape)
        return context, projected, h, c, recurrent, alpha

    def step_logits(
        self, tokens: np.ndarray, state: AttentionState
    ) -> tuple[np.ndarray, AttentionState]:
        """Tokens (N,) and state -> logits (N, V) for the next token, and the new state."""
        context, projected, _, c, recurrent, _ = state
        e, u, att = self.embedding_dim, self.units, self.attention_dim
        scores = projected + recurrent[:, None, :att]  # (N, L, A)
        # In place: a fresh (N, L, A) output (300 kB for 3 beams) is allocated page by page
        # on every step; tanh into it took twice as long as tanh in place (measured).
        scores = np.tanh(scores, out=scores) @ self.score  # (N, L)
        alpha = np.exp(scores - scores.max(axis=1, keepdims=True))
        alpha /= alpha.sum(axis=1, keepdims=True)
        beta = sigmoid(recurrent[:, att : att + 1] + self.beta_bias)  # (N, 1)
        from_z = beta * (alpha[:, None, :] @ context)[:, 0]  # z @ [K_z | L_z], (N, 4U + E)
        from_token = self.token_table[tokens]
        gates = from_token[:, : 4 * u] + from_z[:, : 4 * u] + recurrent[:, att + 1 :]
        h, c = lstm_update(gates, c, u)
        from_h = self.hidden_matmul(h)
        deep = from_token[:, 4 * u :] + from_z[:, 4 * u :] + from_h[:, :e]
        logits = self.out_matmul(deep) + self.out_bias
        return logits, (context, projected, h, c, from_h[:, e:], alpha)

    @staticmethod
    def attention(state: AttentionState) -> np.ndarray:
        """The attention weights (N, L) of the step that produced ``state``."""
        return state[-1]

    def step(self, tokens: np.ndarray, state: AttentionState) -> tuple[np.ndarray, AttentionState]:
        """Like ``step_logits`` but returns log-probabilities."""
        logits, state = self.step_logits(tokens, state)
        return log_softmax(logits), state
