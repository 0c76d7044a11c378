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

Determinism: ``keras.utils.set_random_seed``, TF op determinism, and a data order that is a
function of ``(seed, epoch)`` only. A checkpoint holds every model variable (the dropout seed
generators' state included) and the optimizer's, so a run killed after epoch k and resumed
ends with the same weights as one that was never interrupted.

Checkpoints (``<run>/checkpoints``): one folder per kept epoch, ``epoch-NNNN/`` with

- ``decoder.safetensors``: the decoder weights in the published ``model.safetensors`` format;
- ``encoder.safetensors``: the encoder weights (``train_encoder`` only);
- ``state.safetensors``: every model and optimizer variable, in order (for resuming);

and ``state.json`` (written atomically last): the completed epoch, the history, the best
epoch and the early-stopping counter. Only the last and the best epoch folders are kept.
No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imcap_hub.config import CaptionerConfig
from imcap_hub.encoder import CAFFE_MEAN_BGR
from imcap_hub.errors import ImcapError
from imcap_hub.files import atomic_write_json, load_tensors, save_tensors
from imcap_hub.vocab import Vocabulary, normalize_caption

STATE_FILE = "state.json"
STATE_FORMAT = 1


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

    def n_images(self) -> int:
        return len(np.unique(self.image_rows))


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
    decoder_weights: dict[str, np.ndarray]
    encoder_weights_file: Path | None  # the best epoch's encoder.safetensors (train_encoder)
    best_epoch: int
    epochs_run: int
    history: dict[str, list[float]]
    stopped_early: bool
    seconds: float  # this call
    total_seconds: float  # every call, resumed ones included
    epoch_seconds: list[float]
    resumed_from: int
    strategy: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "history": self.history,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 2),
            "total_seconds": round(self.total_seconds, 2),
            "epoch_seconds": [round(s, 3) for s in self.epoch_seconds],
            "resumed_from_epoch": self.resumed_from,
            "strategy": self.strategy,
        }


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


def describe_strategy(strategy) -> dict[str, Any]:
    try:
        devices = strategy.extended.worker_devices
    except (AttributeError, RuntimeError):  # the default strategy has none
        devices = None
    name = type(strategy).__name__
    return {
        "name": "default (one device)" if name.startswith("_Default") else name,
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": [str(d) for d in devices] if devices else [],
    }


def hardware() -> dict[str, Any]:
    """What this machine is, for the model card."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
    }


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


def _fetch_fn(data: TrainData, split: Split):
    """Batch of row ids -> (x, input ids, target ids, weights), trimmed to the longest caption."""
    lengths = (split.tokens != 0).sum(axis=1)

    def fetch(rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        x = np.asarray(data.inputs[split.image_rows[rows]])
        n = max(int(lengths[rows].max()), 2)
        tokens = split.tokens[rows, :n]
        targets = tokens[:, 1:]
        return x, tokens[:, :-1], targets, (targets != 0).astype(np.float32)

    return fetch


def make_dataset(
    data: TrainData,
    split: Split,
    batch_size: int,
    orders: np.ndarray | None,
    preprocessing: str,
):
    """A ``tf.data.Dataset`` of ``((x, input ids), target ids, sample weights)`` batches.

    ``orders``: (epochs, n) row orders, one epoch after another, each epoch batched on its
    own; ``None``: every row of ``split`` once, in order (validation).
    """
    import tensorflow as tf

    if orders is None:
        ds = tf.data.Dataset.range(len(split)).batch(batch_size)
    else:
        table = tf.constant(orders, dtype=tf.int64)
        ds = tf.data.Dataset.range(orders.shape[0]).flat_map(
            lambda e: tf.data.Dataset.from_tensor_slices(tf.gather(table, e)).batch(batch_size)
        )
    fetch = _fetch_fn(data, split)
    x_dtype = tf.uint8 if data.images else tf.float32
    x_shape = [None, *data.inputs.shape[1:]]

    def load(rows):
        x, inputs, targets, weights = tf.numpy_function(
            fetch, [rows], [x_dtype, tf.int32, tf.int32, tf.float32], stateful=False
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
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.map(load).prefetch(tf.data.AUTOTUNE).with_options(options)


# --- the model --------------------------------------------------------------------------------


def build_models(config: CaptionerConfig, seed: int, train_encoder: bool, encoder_init=None):
    """(trainable Keras model, decoder graph, encoder model or None).

    ``encoder_init``: a callable returning the Keras encoder to start from (train_encoder).
    """
    import keras

    from imcap_hub.decoder import build_training_model

    decoder = build_training_model(config, seed=seed)
    if not train_encoder:
        return decoder, decoder, None
    encoder = encoder_init()
    size = config.encoder.image_size
    images = keras.Input((size, size, 3), name="images")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    logits = decoder([encoder(images), tokens])
    return keras.Model([images, tokens], logits, name="imcap_end_to_end"), decoder, encoder


def _compile(model, settings, total_steps: int = 1) -> None:
    import keras

    learning_rate = settings.learning_rate
    if settings.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            settings.learning_rate, decay_steps=max(1, total_steps), alpha=0.01
        )
    kwargs = {"learning_rate": learning_rate}
    if settings.clipnorm is not None:
        kwargs["clipnorm"] = settings.clipnorm
    model.compile(
        optimizer=keras.optimizers.Adam(**kwargs),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="token_accuracy")],
    )


# --- checkpoints ------------------------------------------------------------------------------


def _state_tensors(model) -> dict[str, np.ndarray]:
    tensors = {}
    for i, v in enumerate(model.variables):
        tensors[f"model/{i:05d}"] = np.asarray(v.numpy())
    for i, v in enumerate(model.optimizer.variables):
        tensors[f"optimizer/{i:05d}"] = np.asarray(v.numpy())
    return tensors


def _restore_state(model, path: Path) -> None:
    tensors = load_tensors(path)
    model.optimizer.build(model.trainable_variables)
    for prefix, variables in (
        ("model", model.variables),
        ("optimizer", model.optimizer.variables),
    ):
        names = sorted(k for k in tensors if k.startswith(prefix + "/"))
        if len(names) != len(variables):
            raise TrainingError(
                f"{path} holds {len(names)} {prefix} variables, the model has {len(variables)}; "
                "the checkpoint is from another model (start afresh with --fresh)"
            )
        for name, var in zip(names, variables):
            value = tensors[name]
            if tuple(value.shape) != tuple(var.shape):
                raise TrainingError(
                    f"{path}: {name} has shape {value.shape}, the model needs {tuple(var.shape)} "
                    "(start afresh with --fresh)"
                )
            var.assign(value)


def read_state(checkpoints: Path) -> dict[str, Any] | None:
    path = Path(checkpoints) / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _make_checkpointer(
    *,
    checkpoints: Path,
    model,
    decoder,
    encoder,
    state: dict[str, Any],
    settings,
    monitor: str,
    total_epochs: int,
    log: Callable[[str], None],
):
    import keras

    from imcap_hub.decoder import WEIGHT_NAMES, weights_from_keras
    from imcap_hub.encoder import keras_weights

    class Checkpointer(keras.callbacks.Callback):
        """Writes ``epoch-NNNN/`` then ``state.json`` after every epoch; early stopping."""

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            seconds = time.perf_counter() - self._start
            done = epoch + 1
            for key, value in logs.items():
                state["history"].setdefault(key, []).append(float(value))
            state["epoch_seconds"].append(seconds)
            value = float(logs.get(monitor, math.inf))
            best_value = state["best_value"]
            improved = best_value is None or value < best_value - settings.min_delta
            folder = checkpoints / f"epoch-{done:04d}"
            tmp = checkpoints / f".epoch-{done:04d}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            dec = weights_from_keras(decoder)
            save_tensors(
                {n: dec[n] for n in WEIGHT_NAMES}, tmp / "decoder.safetensors", "imcap-decoder"
            )
            if encoder is not None:
                save_tensors(keras_weights(encoder), tmp / "encoder.safetensors", "imcap-encoder")
            save_tensors(_state_tensors(model), tmp / "state.safetensors", "imcap-train-state")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
            if improved:
                state["best_value"] = value
                state["best_epoch"] = done
                state["wait"] = 0
            else:
                state["wait"] += 1
            state["epoch"] = done
            state["elapsed_seconds"] += seconds
            stop = bool(settings.patience) and state["wait"] >= settings.patience
            state["stopped_early"] = stop and done < total_epochs
            atomic_write_json(checkpoints / STATE_FILE, state, indent=1)
            keep = {f"epoch-{done:04d}", f"epoch-{state['best_epoch']:04d}"}
            for old in checkpoints.glob("epoch-*"):
                if old.name not in keep:
                    shutil.rmtree(old, ignore_errors=True)
            metrics = ", ".join(
                f"{k} {float(v):.4f}" for k, v in logs.items() if k not in ("learning_rate",)
            )
            mark = " *" if improved else ""
            log(f"epoch {done}/{total_epochs}: {metrics} ({seconds:.1f} s){mark}")
            if stop:
                log(
                    f"early stop: no {monitor} improvement for {state['wait']} epochs; "
                    f"best epoch {state['best_epoch']}"
                )
                self.model.stop_training = True

    return Checkpointer()


# --- training ---------------------------------------------------------------------------------


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
    :func:`make_strategy` from the settings).
    """
    import keras
    import tensorflow as tf

    start = time.perf_counter()
    checkpoints = Path(checkpoints)
    if len(data.train) == 0:
        raise TrainingError("no training captions (is the train split empty?)")
    if settings.train_encoder and encoder_init is None:
        raise TrainingError("train_encoder needs an encoder to start from")
    if strategy is None:  # first: MultiWorkerMirroredStrategy wants to come before other TF work
        strategy = make_strategy(settings.strategy, settings.devices)
    chief, worker = is_chief(strategy)
    if not chief:  # every worker keeps its own (identical) checkpoints; the chief owns the run
        checkpoints = checkpoints.with_name(f"{checkpoints.name}.{worker}")
    run_key = _run_key(config, settings, seed, data)
    state = read_state(checkpoints) if resume else None
    if state is not None and state.get("run_key") != run_key:
        raise TrainingError(
            f"the checkpoints in {checkpoints} are from a different model, data or settings; "
            "start afresh with --fresh (or use another run name)"
        )
    if state is None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    monitor = "val_loss" if data.val is not None and len(data.val) else "loss"

    keras.utils.set_random_seed(seed)
    restore_determinism = settings.deterministic and not _op_determinism()
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        return _fit(
            config=config,
            data=data,
            checkpoints=checkpoints,
            settings=settings,
            seed=seed,
            encoder_init=encoder_init,
            callbacks=callbacks,
            verbose=verbose,
            log=log,
            strategy=strategy,
            state=state,
            run_key=run_key,
            monitor=monitor,
            start=start,
        )
    finally:
        if restore_determinism:  # leave the process as we found it (tests, notebooks)
            _set_op_determinism(False)


def _op_determinism() -> bool:
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):
        return True  # cannot tell: do not try to undo it


def _set_op_determinism(enabled: bool) -> None:
    try:
        from tensorflow.python.framework import config as tf_config

        if not enabled:
            tf_config.disable_op_determinism()
    except (ImportError, AttributeError):
        pass


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


def _fit(
    *,
    config,
    data,
    checkpoints,
    settings,
    seed,
    encoder_init,
    callbacks,
    verbose,
    log,
    strategy,
    state,
    run_key,
    monitor,
    start,
) -> TrainResult:
    from imcap_hub.decoder import load_weights

    steps = math.ceil(len(epoch_order(data, seed, 0)) / settings.batch_size)
    with strategy.scope():
        model, decoder, encoder = build_models(config, seed, settings.train_encoder, encoder_init)
        _compile(model, settings, total_steps=steps * settings.epochs)
        initial_epoch = 0
        if state is not None:
            initial_epoch = int(state["epoch"])
            _restore_state(model, checkpoints / f"epoch-{initial_epoch:04d}" / "state.safetensors")
            log(f"resuming after epoch {initial_epoch} from {checkpoints}")
    if state is None:
        state = {
            "format": STATE_FORMAT,
            "run_key": run_key,
            "epoch": 0,
            "best_epoch": 0,
            "best_value": None,
            "monitor": monitor,
            "wait": 0,
            "history": {},
            "epoch_seconds": [],
            "elapsed_seconds": 0.0,
            "stopped_early": False,
            "seed": seed,
        }
    resumed_from = initial_epoch
    epochs = settings.epochs
    if initial_epoch < epochs and not state["stopped_early"]:
        orders = [epoch_order(data, seed, e) for e in range(initial_epoch, epochs)]
        train_ds = make_dataset(
            data,
            data.train,
            settings.batch_size,
            np.stack(orders),
            config.encoder.preprocessing,
        )
        val_ds = None
        if monitor == "val_loss":
            val_ds = make_dataset(
                data, data.val, settings.batch_size, None, config.encoder.preprocessing
            )
        checkpointer = _make_checkpointer(
            checkpoints=checkpoints,
            model=model,
            decoder=decoder,
            encoder=encoder,
            state=state,
            settings=settings,
            monitor=monitor,
            total_epochs=epochs,
            log=log,
        )
        model.fit(
            train_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=val_ds,
            callbacks=[checkpointer, *callbacks],
            verbose=verbose,
            shuffle=False,  # the order is epoch_order's
        )
    best = int(state["best_epoch"])
    if best == 0:
        raise TrainingError("no epoch finished")
    best_dir = checkpoints / f"epoch-{best:04d}"
    decoder_weights = load_weights(best_dir / "decoder.safetensors", config)
    encoder_file = best_dir / "encoder.safetensors" if settings.train_encoder else None
    seconds = time.perf_counter() - start
    return TrainResult(
        decoder_weights=decoder_weights,
        encoder_weights_file=encoder_file,
        best_epoch=best,
        epochs_run=int(state["epoch"]),
        history={k: list(v) for k, v in state["history"].items()},
        stopped_early=bool(state["stopped_early"]),
        seconds=seconds,
        total_seconds=float(state["elapsed_seconds"]),
        epoch_seconds=list(state["epoch_seconds"]),
        resumed_from=resumed_from,
        strategy={**describe_strategy(strategy), "chief": is_chief(strategy)[0]},
    )


# --- the train stage of a run -----------------------------------------------------------------


def build_train_data(table, vocab: Vocabulary, max_length: int, cached) -> tuple[TrainData, dict]:
    """Caption rows of the train and val splits over the cached inputs; images that could
    not be read (``cached.ok`` False) and captions that are empty or too long are left out."""
    pos = {img: i for i, img in enumerate(cached.images)}
    stats: dict[str, Any] = {}
    splits: dict[str, Split] = {}
    for split in ("train", "val"):
        rows = table[table["split"] == split]
        tokens, keep = encode_captions(rows["caption"].tolist(), vocab, max_length)
        index = np.array([pos.get(img, -1) for img in rows["image"]], dtype=np.int64)
        readable = np.zeros(len(index), dtype=bool)
        readable[index >= 0] = cached.ok[index[index >= 0]]
        use = keep & readable
        image_rows = cached.rows[index[use]]
        splits[split] = Split(image_rows=image_rows, tokens=tokens[use])
        stats[split] = {
            "captions": int(use.sum()),
            "images": len(np.unique(image_rows)),
            "dropped_unreadable": int((~readable).sum()),
            "dropped_length": int((readable & ~keep).sum()),
        }
    val = splits["val"] if len(splits["val"]) else None
    data = TrainData(
        inputs=cached.array, train=splits["train"], val=val, images=cached.array.dtype == np.uint8
    )
    return data, stats


def train_stage(
    config,
    *,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
    strategy=None,
) -> dict[str, Any]:
    """The ``train`` stage of a run (``config``: a RunConfig): fit, then write the best model
    to ``<run>/trained`` (save_pretrained layout) and ``<run>/train.json``."""
    from dataclasses import replace

    from imcap_hub.encoder import Encoder, build_keras_encoder
    from imcap_hub.model import ImageCaptioner
    from training.prepare import cache_inputs, frozen_encoder, load_prepared

    paths = config.paths
    table, vocab, _ = load_prepared(config)
    cached = cache_inputs(config, table, progress=progress)  # resumes an interrupted prepare
    data, data_stats = build_train_data(table, vocab, config.vocab.max_length, cached)
    model_config = config.captioner_config(len(vocab))
    settings = config.training
    enc = config.model.encoder

    encoder_init = None
    if settings.train_encoder:
        published_encoder = replace(enc, weights="repo")

        def encoder_init():
            if enc.weights == "random" or (
                enc.weights == "repo" and not config.model.encoder_weights
            ):
                return build_keras_encoder(replace(enc, weights="random"))
            return build_keras_encoder(enc, config.model.encoder_weights)

    else:
        _, published_encoder = frozen_encoder(config)
    log(
        f"training on {data_stats['train']['captions']} captions of "
        f"{data_stats['train']['images']} images"
        + (f", validating on {data_stats['val']['captions']}" if data.val is not None else "")
        + (" (encoder trained end to end)" if settings.train_encoder else "")
    )
    result = fit(
        model_config,
        data,
        paths.checkpoints,
        settings,
        seed=config.seed,
        encoder_init=encoder_init,
        resume=not fresh,
        callbacks=callbacks,
        verbose=1 if progress else 0,
        log=log,
        strategy=strategy,
    )
    if not result.strategy.get("chief", True):
        log("not the chief worker: the chief writes the trained model")
        return {**result.info(), "data": data_stats, "seed": config.seed}
    final_config = replace(model_config, encoder=published_encoder)
    if settings.train_encoder:
        encoder = Encoder(
            published_encoder, weights_file=result.encoder_weights_file, runtime="keras"
        )
    else:
        encoder, _ = frozen_encoder(config, runtime="keras")
    model = ImageCaptioner(final_config, vocab, result.decoder_weights, encoder)
    tmp = paths.trained.with_name(f".{paths.trained.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "README.md").unlink(missing_ok=True)  # the card comes with `push`
    shutil.rmtree(paths.trained, ignore_errors=True)
    os.replace(tmp, paths.trained)
    info = {
        **result.info(),
        "data": data_stats,
        "hardware": hardware(),
        "seed": config.seed,
        "model_dir": str(paths.trained),
    }
    atomic_write_json(paths.train_info, info, sort_keys=True)
    log(
        f"best epoch {result.best_epoch} of {result.epochs_run}"
        + (
            f" (val_loss {min(result.history['val_loss']):.4f})"
            if "val_loss" in result.history
            else ""
        )
        + f"; model in {paths.trained}"
    )
    return info
