"""Fitting the captioner: a tf.data pipeline, a masked teacher-forced loss, checkpoints that
resume after a kill, early stopping on validation loss, and tf.distribute strategies.

Two modes:

- frozen encoder (default): the pipeline feeds cached encoder features (``training.features``)
  and only the LSTM decoder (``imcap_hub.decoder.build_training_model``) is trained; an epoch
  visits every training caption;
- ``train_encoder``: the pipeline feeds preprocessed images to the Keras encoder, whose output
  goes into the decoder graph, and both are trained end to end; an epoch visits every
  training image once, with one of its captions drawn at random.

Each batch is ``((x, input ids), target ids, sample weights)`` where the input ids are
``<start> w1 .. wn`` and the targets ``w1 .. wn <end>`` (position t predicts token t+1), padded
with id 0, and the sample weight is ``target != pad``. The loss is
``SparseCategoricalCrossentropy(from_logits=True)`` averaged over the real target tokens.

With more than one replica (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``), every
global batch is split into one piece per replica (``np.array_split``), and each worker's input
pipeline reads only its own replicas' pieces from the cache; the loss, the clipping and the
reported loss are those of the global batch, so a step is the one-device step.

Determinism: ``keras.utils.set_random_seed``, TF op determinism (switched on for the call and
then left as it was found), and a data order that is a function of ``(seed, epoch)`` only. A
checkpoint (``training.checkpoints``) holds every model variable (the dropout seed generators'
state included) and the optimizer's, so a run killed after epoch k and resumed ends with the
same weights as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from imcap_hub.config import CaptionerConfig
from imcap_hub.encoder import CAFFE_MEAN_BGR
from imcap_hub.errors import ImcapError
from imcap_hub.vocab import Vocabulary, normalize_caption
from training.checkpoints import (
    RunState,
    epoch_dir,
    make_checkpointer,
    open_run,
    peek_run,
    restore,
)
from training.record import StrategyInfo


class TrainingError(ImcapError, RuntimeError):
    """Training cannot start or continue; the message says why."""


# --- captions -> token arrays -----------------------------------------------------------------


def encode_captions(
    captions: Sequence[str], vocab: Vocabulary, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> ``(tokens, keep)``: ``tokens`` (N, max_length + 2) int32 holding
    ``<start> w1 .. wn <end>`` padded with 0, and ``keep`` False for captions that are empty
    after ``normalize_caption`` or longer than ``max_length`` words (their rows are zeros)."""
    tokens = np.zeros((len(captions), max_length + 2), dtype=np.int32)
    keep = np.zeros(len(captions), dtype=bool)
    for i, caption in enumerate(captions):
        words = normalize_caption(caption)
        if not words or len(words) > max_length:
            continue
        ids = vocab.encode(words)
        tokens[i, : len(ids)] = ids
        keep[i] = True
    return tokens, keep


@dataclass
class Split:
    """The caption rows of one split: ``image_rows[i]`` indexes the input array (features or
    images) and ``tokens[i]`` is its caption."""

    image_rows: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.image_rows)


@dataclass
class TrainData:
    """What the pipeline reads: ``inputs`` (N, F) float32 features or (N, S, S, 3) uint8
    images (a memmap is fine), and the caption rows of the train and validation splits."""

    inputs: np.ndarray
    train: Split
    val: Split | None
    images: bool  # inputs are images (end-to-end training)

    def fingerprint(self) -> str:
        """A hash of the caption rows (not the pixels): resuming needs the same data."""
        h = hashlib.sha256()
        for split in (self.train, self.val):
            if split is not None:
                h.update(np.ascontiguousarray(split.image_rows, dtype=np.int64).tobytes())
                h.update(np.ascontiguousarray(split.tokens).tobytes())
        h.update(str(self.inputs.shape).encode())
        return h.hexdigest()[:16]


# --- results ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`fit` returns: the best epoch's weights and how the run went."""

    decoder_weights: dict[str, np.ndarray]
    encoder_weights_file: Path | None  # the best epoch's encoder.safetensors (train_encoder)
    best_epoch: int
    epochs_run: int
    history: dict[str, list[float]]
    stopped_early: bool
    seconds: float  # this call
    total_seconds: float  # the fitting time of every epoch, resumed calls included
    epoch_seconds: list[float]
    resumed_from: int
    strategy: StrategyInfo
    weights_digest: str  # of the best epoch's weights: every worker of a run has the same


# --- strategy ---------------------------------------------------------------------------------


def make_strategy(name: str = "auto", devices: Sequence[str] | None = None):
    """The ``tf.distribute`` strategy for ``training.strategy``."""
    import tensorflow as tf

    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        if devices:
            return tf.distribute.MirroredStrategy(devices=list(devices))
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy(devices=[g.name for g in gpus] or ["/cpu:0"])
    if name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    if name not in ("auto", "default"):
        raise TrainingError(f"unknown strategy {name!r}")
    return tf.distribute.get_strategy()


def describe_strategy(strategy) -> StrategyInfo:
    """The strategy's name, replicas and devices, and whether this process is the chief."""
    try:
        devices = strategy.extended.worker_devices
    except (AttributeError, RuntimeError):  # the default strategy has none
        devices = None
    name = type(strategy).__name__
    if _is_multiworker(strategy):  # its class is CollectiveAllReduceStrategy
        name = "MultiWorkerMirroredStrategy"
    return StrategyInfo(
        name="default (one device)" if name.startswith("_Default") else name,
        replicas=int(strategy.num_replicas_in_sync),
        devices=[str(d) for d in devices] if devices else [],
        chief=is_chief(strategy)[0],
    )


# --- the pipeline -----------------------------------------------------------------------------


def epoch_order(data: TrainData, seed: int, epoch: int) -> np.ndarray:
    """The training rows of ``epoch``, in order: a function of (seed, epoch) only.

    Frozen encoder: every caption row, shuffled. ``train_encoder``: every image once, with
    one of its captions drawn at random, shuffled.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, epoch]))
    n = len(data.train)
    if not data.images:
        return rng.permutation(n)
    image_rows = data.train.image_rows
    order = np.argsort(image_rows, kind="stable")
    sorted_images = image_rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_images[1:] != sorted_images[:-1]])
    counts = np.diff(np.r_[starts, n])
    picks = order[starts + (rng.random(len(starts)) * counts).astype(np.int64)]
    return picks[rng.permutation(len(picks))]


def _preprocess_tf(x, preprocessing: str):
    """uint8 images -> the encoder's float input; the same numbers as
    ``imcap_hub.encoder.preprocess`` on already resized images."""
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    if preprocessing == "caffe":
        return tf.reverse(x, axis=[-1]) - tf.constant(CAFFE_MEAN_BGR)
    return x / tf.constant(255.0, tf.float32)


class RowReads:
    """How many rows of the input cache this process's pipelines read: per training epoch,
    and for validation since it was last taken. Counted in the fetch, which tf.data calls from
    its own threads (hence the lock); prefetching counts a row under its own epoch."""

    VAL = -1  # the epoch tag of validation batches

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: Counter[int] = Counter()

    def add(self, epoch: int, rows: int) -> None:
        with self._lock:
            self._rows[epoch] += rows

    def take(self, epoch: int) -> tuple[int, int]:
        """(training rows read for ``epoch``, validation rows read since the last take);
        both are then forgotten."""
        with self._lock:
            return self._rows.pop(epoch, 0), self._rows.pop(self.VAL, 0)


def _fetch_fn(data: TrainData, split: Split, reads: RowReads | None):
    """(row ids, caption length, epoch) -> (x, input ids, target ids, weights): the rows read
    from ``data.inputs`` (counted in ``reads`` under ``epoch``), their captions trimmed to
    ``length`` tokens."""

    def fetch(rows: np.ndarray, length: np.int32, epoch: np.int64):
        rows = np.asarray(rows, dtype=np.int64)
        x = np.asarray(data.inputs[split.image_rows[rows]])
        if reads is not None:  # a count on the side: the outputs depend on the inputs only
            reads.add(int(epoch), len(rows))
        tokens = split.tokens[rows, : int(length)]
        targets = tokens[:, 1:]
        return x, tokens[:, :-1], targets, (targets != 0).astype(np.float32)

    return fetch


def _row_batches(split: Split, batch_size: int, orders: np.ndarray | None, first_epoch: int):
    """A ``tf.data.Dataset`` of ``(row ids, caption length, epoch)``, one per global batch.

    ``orders``: (epochs, n) row orders, one epoch after another, each batched on its own
    (epoch: ``first_epoch`` + its index); ``None``: every row of ``split`` once, in order
    (validation, epoch :attr:`RowReads.VAL`). The length (at least 2) is the batch's longest
    caption: every piece of a batch split between replicas is trimmed to it, as the batch is.
    """
    import tensorflow as tf

    if orders is None:
        ds = tf.data.Dataset.range(len(split)).batch(batch_size)
        ds = ds.map(lambda rows: (rows, tf.constant(RowReads.VAL, tf.int64)))
    else:
        table = tf.constant(orders, dtype=tf.int64)

        def epoch_batches(e):
            batches = tf.data.Dataset.from_tensor_slices(tf.gather(table, e)).batch(batch_size)
            return batches.map(lambda rows: (rows, e + first_epoch))

        ds = tf.data.Dataset.range(orders.shape[0]).flat_map(epoch_batches)
    lengths = tf.constant((split.tokens != 0).sum(axis=1), dtype=tf.int32)

    def with_length(rows, epoch):
        return rows, tf.maximum(tf.reduce_max(tf.gather(lengths, rows)), 2), epoch

    return ds.map(with_length)


def _replica_pieces(batches, replicas: int, first: int, count: int):
    """Each global batch of :func:`_row_batches` -> ``count`` elements: the pieces of
    replicas ``first`` .. ``first + count - 1`` of ``np.array_split(rows, replicas)``.

    The first ``len(rows) % replicas`` pieces are one row longer; a batch with fewer rows than
    replicas leaves the last pieces empty. Every input pipeline yields ``count`` elements per
    batch, so all take the same number of steps (a worker short of steps would hang the
    others' all-reduce), and the pieces of all pipelines are the batch, in order.
    """
    import tensorflow as tf

    def pieces(rows, length, epoch):
        size = tf.size(rows, out_type=tf.int64)
        base, extra = size // replicas, size % replicas
        ids = tf.range(first, first + count, dtype=tf.int64)
        starts = ids * base + tf.minimum(ids, extra)
        ends = starts + base + tf.cast(ids < extra, tf.int64)
        return tf.data.Dataset.from_tensor_slices((starts, ends)).map(
            lambda start, end: (rows[start:end], length, epoch)
        )

    return batches.flat_map(pieces)


def make_dataset(
    data: TrainData,
    split: Split,
    batch_size: int,
    orders: np.ndarray | None,
    preprocessing: str,
    *,
    input_context=None,
    first_epoch: int = 0,
    reads: RowReads | None = None,
):
    """A ``tf.data.Dataset`` of ``((x, input ids), target ids, sample weights)`` batches.

    ``orders``: (epochs, n) row orders, one epoch after another, each epoch batched on its
    own (the first is epoch ``first_epoch``); ``None``: every row of ``split`` once, in order
    (validation). ``batch_size`` is the global batch. ``input_context``: a
    ``tf.distribute.InputContext`` (``strategy.distribute_datasets_from_function``): the
    dataset of that input pipeline, which reads only its replicas' pieces of every batch
    (:func:`_replica_pieces`), one element per replica. ``reads`` counts the rows read.
    """
    import tensorflow as tf

    ds = _row_batches(split, batch_size, orders, first_epoch)
    if input_context is not None:
        replicas = input_context.num_replicas_in_sync
        local, uneven = divmod(replicas, input_context.num_input_pipelines)
        if uneven:
            raise TrainingError(f"{replicas} replicas do not split between the input pipelines")
        ds = _replica_pieces(ds, replicas, input_context.input_pipeline_id * local, local)
    fetch = _fetch_fn(data, split, reads)
    x_dtype = tf.uint8 if data.images else tf.float32
    x_shape = [None, *data.inputs.shape[1:]]

    def load(rows, length, epoch):
        x, inputs, targets, weights = tf.numpy_function(
            fetch, [rows, length, epoch], [x_dtype, tf.int32, tf.int32, tf.float32], stateful=False
        )
        x.set_shape(x_shape)
        inputs.set_shape([None, None])
        targets.set_shape([None, None])
        weights.set_shape([None, None])
        if data.images:
            x = _preprocess_tf(x, preprocessing)
        return (x, inputs), targets, weights

    options = tf.data.Options()
    options.deterministic = True
    return ds.map(load).prefetch(tf.data.AUTOTUNE).with_options(options)


# --- the model --------------------------------------------------------------------------------


class Models(NamedTuple):
    """The Keras models of a run: ``train`` is the one fitted (the decoder itself, or the
    encoder and the decoder end to end); ``encoder`` is None for a frozen encoder."""

    train: Any
    decoder: Any
    encoder: Any | None


def build_models(
    config: CaptionerConfig,
    seed: int,
    train_encoder: bool,
    encoder_init=None,
    attention_penalty: float = 0.0,
    replicas: int = 1,
) -> Models:
    """The models to fit. ``encoder_init``: a callable returning the Keras encoder to start
    from (``train_encoder``); ``attention_penalty``: the attention decoder's lambda;
    ``replicas``: the strategy's replicas in sync (more than one: batch norm statistics are
    all-reduced, so they are the global batch's as on one device)."""
    import keras

    from imcap_hub.decoder import build_training_model

    decoder = build_training_model(config, seed=seed, alpha_reg=attention_penalty)
    if not train_encoder:
        return Models(decoder, decoder, None)
    encoder = encoder_init()
    if replicas > 1:
        _synchronize_batch_norm(encoder)
    size = config.encoder.image_size
    images = keras.Input((size, size, 3), name="images")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    logits = decoder([encoder(images), tokens])
    return Models(keras.Model([images, tokens], logits, name="imcap_end_to_end"), decoder, encoder)


def _synchronize_batch_norm(model) -> None:
    """Every BatchNormalization layer of ``model`` computes its batch statistics over all
    replicas (Keras' ``synchronized``; read at call time). One device keeps the plain
    moments: the synchronised ones round differently, and one-device runs retrain bit for bit."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
        elif hasattr(layer, "layers"):  # a nested model
            _synchronize_batch_norm(layer)


def _global_token_mean_loss():
    """The masked cross-entropy averaged over the real target tokens of the *global* batch,
    for more than one replica. Keras' ``mean_with_sample_weight`` divides each replica's sum
    by that replica's own token count and averages the replicas: a mean of means, which is
    not the one-device loss when replicas hold different numbers of tokens. Here each replica
    divides by the token count all-reduced over the replicas, with ``sum`` reduction (which
    Keras does not rescale), so the all-reduced gradients are the one-device ones."""
    import keras
    import tensorflow as tf

    class GlobalTokenMeanCrossentropy(keras.losses.Loss):
        def __init__(self):
            super().__init__(reduction="sum", name="global_token_mean_crossentropy")

        def call(self, y_true, y_pred):
            y_true = tf.cast(y_true, tf.int32)
            loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
            tokens = tf.reduce_sum(tf.cast(tf.not_equal(y_true, 0), loss.dtype))
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                tokens = context.all_reduce("SUM", tokens)
            # The sample weights (target != pad) are applied by Keras after this.
            return tf.math.divide_no_nan(loss, tokens)

    return GlobalTokenMeanCrossentropy()


def _clip_after_all_reduce_adam():
    """Adam that clips the all-reduced gradients, for more than one replica. Keras clips
    each replica's gradients (``clipnorm``: every tensor to that norm) before they are summed
    over the replicas, which is not what one device does with the whole batch's gradient."""
    import keras

    if not hasattr(keras.optimizers.Adam, "_all_reduce_sum_gradients"):
        raise TrainingError(
            f"training on several replicas does not know this Keras ({keras.__version__}): "
            "it needs the TensorFlow optimizer's _all_reduce_sum_gradients"
        )

    class ClipAfterAllReduceAdam(keras.optimizers.Adam):
        def _clip_gradients(self, grads):
            return grads  # clipped after the all-reduce, below

        def _all_reduce_sum_gradients(self, grads_and_vars):
            pairs = list(super()._all_reduce_sum_gradients(grads_and_vars))
            grads = keras.optimizers.Adam._clip_gradients(self, [g for g, _ in pairs])
            return list(zip(grads, [v for _, v in pairs]))

    return ClipAfterAllReduceAdam


def _use_global_batch_loss_tracker(model) -> None:
    """Keras' ``loss`` metric, for more than one replica: each replica's loss weighted by the
    rows of the *global* batch. Keras weights it by the replica's own rows, which gives the
    one-device epoch loss only when every batch splits evenly between the replicas; a last
    batch that does not (or that leaves a replica an empty piece) skewed ``loss`` and
    ``val_loss``, so early stopping and the best epoch. Each replica's loss is its share of the
    global batch's loss times the replicas (Keras' unscaling), so this weighting averages to the
    one-device loss exactly."""
    import keras
    import tensorflow as tf
    from keras.src.utils import tracking

    class GlobalBatchMean(keras.metrics.Mean):
        def update_state(self, values, sample_weight=None):
            context = tf.distribute.get_replica_context()
            if sample_weight is not None and context is not None:
                sample_weight = context.all_reduce("SUM", tf.cast(sample_weight, tf.float32))
            return super().update_state(values, sample_weight=sample_weight)

    if not hasattr(model, "_loss_tracker"):
        raise TrainingError(
            f"training on several replicas does not know this Keras ({keras.__version__}): "
            "it needs the trainer's _loss_tracker"
        )
    with tracking.DotNotTrackScope():  # as compile sets it: not one more metric of the model
        model._loss_tracker = GlobalBatchMean(name="loss")


def _compile(model, settings, total_steps: int = 1, replicas: int = 1) -> None:
    """Compile ``model`` with Adam, the masked cross-entropy and token accuracy. With more
    than one replica, :func:`_global_token_mean_loss` and :func:`_clip_after_all_reduce_adam`
    make each step the one-device step, and :func:`_use_global_batch_loss_tracker` its
    reported loss; one device keeps Keras' own loss reduction, clipping and loss metric, so
    one-device runs retrain bit for bit as before."""
    import keras

    learning_rate = settings.learning_rate
    if settings.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            settings.learning_rate, decay_steps=max(1, total_steps), alpha=0.01
        )
    kwargs = {"learning_rate": learning_rate}
    if settings.clipnorm is not None:
        kwargs["clipnorm"] = settings.clipnorm
    if replicas > 1:
        loss = _global_token_mean_loss()
        optimizer = _clip_after_all_reduce_adam()(**kwargs)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )
        optimizer = keras.optimizers.Adam(**kwargs)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="token_accuracy")],
    )
    if replicas > 1:
        _use_global_batch_loss_tracker(model)


# --- training ---------------------------------------------------------------------------------


def _attention_penalty(config: CaptionerConfig, settings) -> float:
    return settings.attention_penalty if config.decoder.kind == "attention" else 0.0


@contextmanager
def precision_policy(mixed: bool) -> Iterator[str]:
    """Keras' global dtype policy for building and fitting the models: ``mixed_float16`` (Keras
    scales the loss) where TensorFlow sees a GPU, ``mixed_bfloat16`` on CPUs, or ``float32``;
    put back as it was found. Yields the policy's name."""
    import keras
    import tensorflow as tf

    before = keras.mixed_precision.global_policy()
    name = "float32"
    if mixed:
        name = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(before)


def _run_key(config: CaptionerConfig, settings, seed: int, data: TrainData) -> str:
    """What must be equal to resume: the model, the optimisation settings, the data."""
    payload = {
        "config": config.to_dict(),
        "seed": seed,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "clipnorm": settings.clipnorm,
        "lr_schedule": settings.lr_schedule,
        # A cosine schedule spans every epoch: more epochs is another schedule.
        "epochs": settings.epochs if settings.lr_schedule != "constant" else None,
        "train_encoder": settings.train_encoder,
        "data": data.fingerprint(),
    }
    if config.decoder.kind == "attention":  # pooled runs keep the keys they had
        payload["attention_penalty"] = settings.attention_penalty
    if settings.mixed_precision:  # float32 runs keep the keys they had
        payload["mixed_precision"] = True
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fit(
    config: CaptionerConfig,
    data: TrainData,
    checkpoints: Path | str,
    settings,
    *,
    seed: int = 0,
    encoder_init: Callable[[], Any] | None = None,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    verbose: int = 0,
    log: Callable[[str], None] = print,
    strategy=None,
) -> TrainResult:
    """Train (or resume training) and return the best epoch's weights.

    ``settings``: a :class:`training.run_config.TrainingSection` (epochs, batch_size,
    learning_rate, clipnorm, patience, min_delta, train_encoder, strategy, devices,
    deterministic). ``encoder_init`` builds the starting Keras encoder (``train_encoder``).
    ``resume``: continue from ``checkpoints/state.json`` when it is there (else start afresh,
    deleting old checkpoints). ``strategy``: a ``tf.distribute`` strategy (default:
    :func:`make_strategy` from the settings). TF op determinism is on during the call when
    ``settings.deterministic``, and left as it was found.
    """
    import keras

    start = time.perf_counter()
    checkpoints = Path(checkpoints)
    if len(data.train) == 0:
        raise TrainingError("no training captions (is the train split empty?)")
    if settings.train_encoder and encoder_init is None:
        raise TrainingError("train_encoder needs an encoder to start from")
    if strategy is None:  # first: MultiWorkerMirroredStrategy wants to come before other TF work
        strategy = make_strategy(settings.strategy, settings.devices)
    chief, worker = is_chief(strategy)
    replicas = int(strategy.num_replicas_in_sync)
    run_key = _run_key(config, settings, seed, data)
    monitor = "val_loss" if data.val is not None and len(data.val) else "loss"
    # The usual multi-worker pattern: every worker reads the chief's checkpoints (the same run
    # folder), every worker writes its own (saving reads the variables in step with the
    # others), and only the chief's are kept; another worker writes into a temporary folder
    # that is deleted at the end.
    if chief:
        state = open_run(checkpoints, run_key, resume=resume)
        own = checkpoints
    else:
        state = peek_run(checkpoints, run_key) if resume else None
        own = Path(tempfile.mkdtemp(prefix=f"imcap-checkpoints-{worker}-"))
    if state is None:
        state = RunState(run_key=run_key, monitor=monitor, seed=seed)
    resumed_from = state.epoch
    try:
        multiworker = _is_multiworker(strategy)
        if multiworker:
            _check_workers_agree(strategy, resumed_from, checkpoints)
        keras.utils.set_random_seed(seed)
        with (
            op_determinism(settings.deterministic),
            precision_policy(settings.mixed_precision) as policy,
        ):
            if policy != "float32":
                log(f"mixed precision: Keras policy {policy}")
            steps = _steps(data, settings, seed)
            with strategy.scope():  # the optimizer's variables too: restore builds them
                models = build_models(
                    config,
                    seed,
                    settings.train_encoder,
                    encoder_init,
                    _attention_penalty(config, settings),
                    replicas=replicas,
                )
                _compile(
                    models.train, settings, total_steps=steps * settings.epochs, replicas=replicas
                )
                if resumed_from:
                    restore(models.train, checkpoints, resumed_from)
                    log(f"resuming after epoch {resumed_from} from {checkpoints}")
            fixes = keras_distributed_fixes if multiworker or replicas > 1 else _no_fixes
            if state.epoch < settings.epochs and not state.stopped_early:
                reads = RowReads() if multiworker and replicas > 1 else None
                train_ds, val_ds = _datasets(config, data, settings, seed, state, strategy, reads)
                with fixes(models.train, strategy):
                    models.train.fit(
                        train_ds,
                        epochs=settings.epochs,
                        initial_epoch=state.epoch,
                        steps_per_epoch=steps,
                        validation_data=val_ds,
                        validation_steps=_validation_steps(data, settings, replicas, val_ds),
                        callbacks=[
                            # Keras would append its progress bar last: it would finish each epoch's
                            # bar after the checkpointer's epoch line, which then ended up mid-bar.
                            # First in the list, the bar ends its line before the epoch line.
                            *([keras.callbacks.ProgbarLogger()] if verbose else []),
                            make_checkpointer(
                                own, state, models, settings, log if chief else _quiet
                            ),
                            *([_reads_logger(reads, worker, data, seed, log)] if reads else []),
                            *callbacks,
                        ],
                        verbose=verbose if chief else 0,
                        shuffle=False,  # the order is epoch_order's
                    )
        # A best epoch from before a restart is only in the chief's checkpoints: read it there.
        result_dir = own if state.best_epoch > resumed_from else checkpoints
        return _result(config, settings, result_dir, state, resumed_from, strategy, start, chief)
    finally:
        if not chief:
            shutil.rmtree(own, ignore_errors=True)


def weights_digest(decoder_weights: dict[str, np.ndarray], encoder_file: Path | None) -> str:
    """A short hash of the decoder weights and the encoder's (``train_encoder``) values."""
    from imcap_hub.files import load_tensors

    h = hashlib.sha256()
    tensors = [decoder_weights]
    if encoder_file is not None:
        tensors.append(load_tensors(encoder_file))
    for group in tensors:
        for name in sorted(group):
            value = np.ascontiguousarray(group[name])
            h.update(f"{name}:{value.dtype}:{value.shape}".encode())
            h.update(value.tobytes())
    return h.hexdigest()[:16]


@contextmanager
def _no_fixes(model, strategy) -> Iterator[None]:
    yield


def _quiet(_message: str) -> None:
    """A worker that is not the chief does not print epoch lines: the chief's say it all."""


def _is_multiworker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _check_workers_agree(strategy, resumed_from: int, checkpoints: Path) -> None:
    """Every worker must resume from the same epoch (else they would run different steps and
    hang in the all-reduce); they do when they see the same run folder."""
    import tensorflow as tf

    epochs = strategy.gather(
        strategy.experimental_distribute_values_from_function(
            lambda _: tf.constant([resumed_from], tf.int64)
        ),
        axis=0,
    )
    epochs = sorted({int(e) for e in np.asarray(epochs)})
    if len(epochs) > 1:
        raise TrainingError(
            f"the workers would resume from different epochs {epochs}: every worker needs "
            f"the chief's checkpoints at {checkpoints} (a shared run folder), or start all "
            "with --fresh"
        )


@contextmanager
def keras_distributed_fixes(model, strategy) -> Iterator[None]:
    """Keras 3's ``fit`` on more than one replica, made to work with :func:`_datasets`'
    inputs. Two places of its TensorFlow trainer:

    - before the first step and before every evaluation (``_maybe_symbolic_build``) it pulls
      a distributed batch from the input, only to learn its shapes, and averages it over the
      replicas with ``strategy.reduce``. Under ``MultiWorkerMirroredStrategy`` that fails
      (``ValueError: Attempt to convert a value (PerReplica:{...}) ... to a Tensor``: it
      takes one distributed value, not a nest of them); under ``MirroredStrategy`` with
      ``validation_steps`` it pulls from the last evaluation's spent iterator
      (``StopIteration``); and the batch it pulls is read from the cache for nothing. Here
      the loss and metric state is built from the shapes of one replica's batch in the
      input's element spec, which reads nothing;
    - under ``MultiWorkerMirroredStrategy``, after every step (``reduce_per_replica``) it
      averages the replicas' metric results with ``strategy.reduce("MEAN", v, axis=0)``, and
      the results are scalars: ``Invalid reduction dimension 0``. Here they are averaged with
      ``axis=None``: the mean of the replicas' results, what Keras reports on one worker with
      several devices.

    Inside the block only; the training step itself (gradients all-reduced by the optimizer)
    is Keras' and TensorFlow's own.
    """
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = getattr(tf_trainer, "reduce_per_replica", None)
    if original is None or not hasattr(model, "_symbolic_build"):
        raise TrainingError(
            f"training on several replicas does not know this Keras ({keras.__version__}): "
            "it needs Keras 3's TensorFlow trainer (reduce_per_replica, _symbolic_build)"
        )

    def local_spec(spec):
        return tf.nest.flatten(spec, expand_composites=True)[0]  # a PerReplicaSpec's first

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with strategy.scope():
            model._symbolic_build(data_batch=tf.nest.map_structure(local_spec, data_batch))

    def reduce_per_replica(values, strategy_, reduction="auto"):
        if reduction in ("auto", "mean") and _is_multiworker(strategy_):
            return tf.nest.map_structure(lambda v: strategy_.reduce("MEAN", v, axis=None), values)
        return original(values, strategy_, reduction)

    model._maybe_symbolic_build = symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        del model._maybe_symbolic_build


def _steps(data: TrainData, settings, seed: int) -> int:
    """Batches per epoch (every epoch has as many rows as epoch 0)."""
    return math.ceil(len(epoch_order(data, seed, 0)) / settings.batch_size)


def _datasets(
    config: CaptionerConfig,
    data: TrainData,
    settings,
    seed: int,
    state: RunState,
    strategy,
    reads: RowReads | None = None,
):
    """(train, val or None) inputs for the epochs after ``state.epoch``. With more than one
    replica, ``strategy.distribute_datasets_from_function`` builds each worker's pipeline,
    which reads only its replicas' rows (else every worker would read every row of the cache
    and keep its share); one replica keeps the plain dataset."""
    orders = np.stack([epoch_order(data, seed, e) for e in range(state.epoch, settings.epochs)])

    def inputs(split: Split, split_orders: np.ndarray | None):
        def dataset(input_context=None):
            return make_dataset(
                data,
                split,
                settings.batch_size,
                split_orders,
                config.encoder.preprocessing,
                input_context=input_context,
                first_epoch=state.epoch,
                reads=reads,
            )

        if strategy.num_replicas_in_sync > 1:
            return strategy.distribute_datasets_from_function(dataset)
        return dataset()

    val = inputs(data.val, None) if state.monitor == "val_loss" else None
    return inputs(data.train, orders), val


def _validation_steps(data: TrainData, settings, replicas: int, val) -> int | None:
    """Batches of one validation pass, for the inputs of more than one replica: Keras cannot
    count theirs (it would run each pass until the input ends, and warn that it ran out of
    data). One replica: None, Keras counts the plain dataset's batches as it always has."""
    if replicas == 1 or val is None:
        return None
    return math.ceil(len(data.val) / settings.batch_size)


def _reads_logger(reads: RowReads, worker: str, data: TrainData, seed: int, log):
    """The Keras callback that says after every epoch how many rows of the cache this worker
    read: its share, not all of them."""
    import keras

    train_rows = len(epoch_order(data, seed, 0))
    val_rows = len(data.val) if data.val is not None else 0

    class ReadsLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            train, val = reads.take(epoch)
            line = f"{worker} read {train} of {train_rows} training rows"
            if val:
                line += f" and {val} of {val_rows} validation rows"
            log(line + " this epoch")

    return ReadsLogger()


def _result(
    config, settings, checkpoints: Path, state: RunState, resumed_from, strategy, start, chief
):
    from imcap_hub.decoder import load_weights

    best = state.best_epoch
    if best == 0:
        raise TrainingError("no epoch finished")
    best_dir = epoch_dir(checkpoints, best)
    encoder_file = best_dir / "encoder.safetensors" if settings.train_encoder else None
    decoder_weights = load_weights(best_dir / "decoder.safetensors", config)
    return TrainResult(
        decoder_weights=decoder_weights,
        # Another worker's checkpoints are deleted when fit returns.
        encoder_weights_file=encoder_file if chief else None,
        weights_digest=weights_digest(decoder_weights, encoder_file),
        best_epoch=best,
        epochs_run=state.epoch,
        history={k: list(v) for k, v in state.history.items()},
        stopped_early=state.stopped_early,
        seconds=time.perf_counter() - start,
        total_seconds=state.elapsed_seconds,
        epoch_seconds=list(state.epoch_seconds),
        resumed_from=resumed_from,
        strategy=describe_strategy(strategy),
    )


# --- TF op determinism ------------------------------------------------------------------------


def _op_determinism() -> bool | None:
    """Whether TF op determinism is on (None: this TensorFlow cannot tell)."""
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):
        return None


def _set_op_determinism(enabled: bool) -> None:
    """Switch TF op determinism on or off."""
    import tensorflow as tf

    if enabled:
        tf.config.experimental.enable_op_determinism()
        return
    try:
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
    except (ImportError, AttributeError):  # no way to switch it off in this TensorFlow
        pass


@contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """TF op determinism on inside the block when ``enabled`` (else left alone); afterwards
    as it was found (tests and notebooks run more than one thing in a process)."""
    before = _op_determinism()
    if enabled:
        _set_op_determinism(True)
    try:
        yield
    finally:
        if before is not None and _op_determinism() != before:
            _set_op_determinism(before)


def is_chief(strategy) -> tuple[bool, str]:
    """(whether this process writes the run's files, its task name). Multi-worker training
    follows TensorFlow's convention: the ``chief`` task, else worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    if resolver is None or task_type is None:
        return True, "chief"
    jobs = set(resolver.cluster_spec().jobs)
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in jobs)
    return chief, f"{task_type}-{task_id}"
