"""Training (training/train.py, and the train stage of training/stages.py): the batches and
the masked loss, learning on held-out images, checkpoints that resume after a SIGKILL with
identical weights, early stopping, TF op determinism left as found, and MirroredStrategy on two
logical CPU devices."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imcap_hub import CaptionerConfig, DecoderConfig, EncoderConfig, Vocabulary
from training.checkpoints import read_state
from training.run_config import TrainingSection
from training.train import (
    Split,
    TrainData,
    encode_captions,
    epoch_order,
    fit,
    make_dataset,
)

ROOT = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 12


def tiny_train_config(**decoder) -> CaptionerConfig:
    return CaptionerConfig(
        encoder=EncoderConfig(
            architecture="tiny_resnet",
            weights="repo",
            image_size=16,
            preprocessing="unit",
            widths=[4, 8],
        ),
        decoder=DecoderConfig(
            **{"embedding_dim": 8, "units": 16, "max_length": 6, "dropout": 0.2, **decoder}
        ),
        vocab_size=VOCAB_SIZE,
    )


def random_data(images: bool, seed: int = 0, n_images: int = 24) -> TrainData:
    """Random images (or features) with 2 captions each; a validation split of 6 images."""
    rng = np.random.default_rng(seed)
    if images:
        inputs = rng.integers(0, 256, (n_images, 16, 16, 3), dtype=np.uint8)
    else:
        inputs = rng.normal(size=(n_images, 8)).astype(np.float32)

    def split(image_ids: np.ndarray) -> Split:
        rows = np.repeat(image_ids, 2)
        tokens = np.zeros((len(rows), 8), np.int32)
        for i, img in enumerate(rows):
            n = 1 + (img + i) % 5
            tokens[i, 0] = 1
            tokens[i, 1 : n + 1] = 4 + (img * 3 + np.arange(n)) % (VOCAB_SIZE - 4)
            tokens[i, n + 1] = 2
        return Split(image_rows=rows, tokens=tokens)

    return TrainData(
        inputs=inputs,
        train=split(np.arange(n_images - 6)),
        val=split(np.arange(n_images - 6, n_images)),
        images=images,
    )


def encoder_init():
    from imcap_hub.encoder import build_keras_encoder

    cfg = tiny_train_config().encoder
    return build_keras_encoder(EncoderConfig(**{**cfg.__dict__, "weights": "random"}))


def settings(**kw) -> TrainingSection:
    base = {"epochs": 4, "batch_size": 8, "learning_rate": 0.01, "patience": 0}
    return TrainingSection(**{**base, **kw})


def quiet(_message: str) -> None:
    pass


# --- batches and loss -------------------------------------------------------------------------


def test_encode_captions_uses_the_shared_cleaning_and_drops_what_does_not_fit():
    vocab = Vocabulary.build(["a red circle", "a blue square"])
    tokens, keep = encode_captions(
        ["A Red, circle!", "", "a red circle a blue square", "a cat"], vocab, max_length=4
    )
    assert keep.tolist() == [True, False, False, True]
    assert tokens.shape == (4, 6)
    assert tokens[0].tolist() == [1, vocab.id("a"), vocab.id("red"), vocab.id("circle"), 2, 0]
    assert tokens[3].tolist()[:4] == [1, vocab.id("a"), vocab.unk_id, 2]
    assert not tokens[1].any() and not tokens[2].any()


def test_batches_shift_the_caption_and_weight_only_real_target_tokens():
    data = random_data(images=False)
    ds = make_dataset(data, data.train, 4, None, "unit")
    (x, inputs), targets, weights = next(iter(ds))
    tokens = data.train.tokens[:4]
    n = int((tokens != 0).sum(axis=1).max())  # trimmed to the longest caption of the batch
    np.testing.assert_array_equal(x.numpy(), data.inputs[data.train.image_rows[:4]])
    np.testing.assert_array_equal(inputs.numpy(), tokens[:, : n - 1])
    np.testing.assert_array_equal(targets.numpy(), tokens[:, 1:n])
    np.testing.assert_array_equal(weights.numpy(), (tokens[:, 1:n] != 0).astype(np.float32))


def test_the_loss_is_the_mean_cross_entropy_over_real_target_tokens():
    from imcap_hub.decoder import log_softmax
    from training.train import _compile, build_models

    config = tiny_train_config(dropout=0.0)
    data = random_data(images=False)
    model, _, _ = build_models(config, 0, False)
    _compile(model, settings())
    (x, inputs), targets, weights = next(iter(make_dataset(data, data.train, 8, None, "unit")))
    loss = model.evaluate(x=(x, inputs), y=targets, sample_weight=weights, verbose=0)[0]
    logp = log_softmax(np.asarray(model((x, inputs), training=False)))
    nll = -np.take_along_axis(logp, targets.numpy()[..., None], -1)[..., 0]
    w = weights.numpy()
    assert 0 < w.sum() < w.size  # there is padding to ignore
    assert loss == pytest.approx(float((nll * w).sum() / w.sum()), rel=1e-5)


def test_epoch_order_depends_only_on_seed_and_epoch():
    data = random_data(images=False)
    a, b = epoch_order(data, 3, 1), epoch_order(data, 3, 1)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(len(data.train)))
    assert not np.array_equal(a, epoch_order(data, 3, 2))
    # End to end: one caption per image per epoch.
    per_image = epoch_order(random_data(images=True), 3, 1)
    images = random_data(images=True).train.image_rows[per_image]
    assert sorted(images.tolist()) == list(range(18))


# --- kill and resume --------------------------------------------------------------------------

KILLED_TRAINING = textwrap.dedent(
    """
    import os, signal, sys
    import keras
    sys.path.insert(0, {tests!r})
    from test_train import encoder_init, quiet, random_data, settings, tiny_train_config
    from training.train import fit

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 2 and batch == 1:  # in the middle of the third epoch
                os.kill(os.getpid(), signal.SIGKILL)

    fit(tiny_train_config(), random_data(images=True), {checkpoints!r}, settings(train_encoder=True),
        seed=5, encoder_init=encoder_init, callbacks=[Kill()], log=quiet)
    print("not killed")
    """
)


def test_training_killed_mid_epoch_resumes_to_the_same_weights_as_an_uninterrupted_run(
    tmp_path,
):
    from safetensors.numpy import load_file

    killed = tmp_path / "killed"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_TRAINING.format(tests=str(ROOT / "tests"), checkpoints=str(killed)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-1000:] + proc.stderr[-2000:]
    state = read_state(killed)
    assert state.epoch == 2 and sorted(p.name for p in killed.glob("epoch-*"))[-1] == "epoch-0002"

    data, config = random_data(images=True), tiny_train_config()
    train = settings(train_encoder=True)
    resumed = fit(config, data, killed, train, seed=5, encoder_init=encoder_init, log=quiet)
    straight = fit(
        config, data, tmp_path / "straight", train, seed=5, encoder_init=encoder_init, log=quiet
    )

    assert resumed.resumed_from == 2 and straight.resumed_from == 0
    assert resumed.epochs_run == straight.epochs_run == 4
    assert resumed.history == straight.history  # the saved epochs and the resumed ones
    for name, value in straight.decoder_weights.items():
        np.testing.assert_array_equal(resumed.decoder_weights[name], value, err_msg=name)
    a, b = load_file(resumed.encoder_weights_file), load_file(straight.encoder_weights_file)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resuming_with_other_settings_is_refused(tmp_path):
    from training.checkpoints import CheckpointError

    data, config = random_data(images=False), tiny_train_config()
    fit(config, data, tmp_path, settings(epochs=1), log=quiet)
    with pytest.raises(CheckpointError, match="--fresh"):
        fit(config, data, tmp_path, settings(epochs=2, learning_rate=0.5), log=quiet)
    again = fit(
        config, data, tmp_path, settings(epochs=2, learning_rate=0.5), resume=False, log=quiet
    )
    assert again.resumed_from == 0 and again.epochs_run == 2


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    data, config = random_data(images=False), tiny_train_config()
    # A learning rate too small to move the validation loss by min_delta: no epoch after the
    # first improves, so patience 2 stops after epoch 3 and keeps epoch 1.
    result = fit(
        config,
        data,
        tmp_path,
        settings(epochs=10, learning_rate=1e-9, patience=2, min_delta=0.01),
        log=quiet,
    )
    assert (result.best_epoch, result.epochs_run, result.stopped_early) == (1, 3, True)
    assert len(result.history["val_loss"]) == 3
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-0001", "epoch-0003"]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["best_epoch"] == 1 and state["stopped_early"] is True
    # Asking again does not train further: the run is over.
    again = fit(
        config,
        data,
        tmp_path,
        settings(epochs=10, learning_rate=1e-9, patience=2, min_delta=0.01),
        log=quiet,
    )
    assert (again.resumed_from, again.epochs_run, again.best_epoch) == (3, 3, 1)


# --- TF op determinism -----------------------------------------------------------------------


@pytest.fixture
def determinism():
    """Sets TF op determinism for a test and puts it back afterwards."""
    from training.train import _op_determinism, _set_op_determinism

    before = _op_determinism()
    assert before is not None
    yield _set_op_determinism
    _set_op_determinism(before)


@pytest.mark.parametrize("asked", [True, False], ids=["deterministic", "not-deterministic"])
@pytest.mark.parametrize("found", [False, True], ids=["found-off", "found-on"])
def test_fit_leaves_op_determinism_as_it_found_it(tmp_path, determinism, found, asked):
    import keras

    from training.train import _op_determinism

    determinism(found)
    assert _op_determinism() is found  # _set_op_determinism really sets what it is asked

    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(_op_determinism())

    data, config = random_data(images=False), tiny_train_config()
    fit(
        config,
        data,
        tmp_path,
        settings(epochs=1, deterministic=asked),
        callbacks=[Probe()],
        log=quiet,
    )
    assert seen == [found or asked]  # on while fitting when asked; else left alone
    assert _op_determinism() is found


# --- tf.distribute ----------------------------------------------------------------------------

MIRRORED = textwrap.dedent(
    """
    import dataclasses, json, sys
    import imcap_hub
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    sys.path.insert(0, {tests!r})
    from test_train import quiet, random_data, settings, tiny_train_config
    from training.train import fit, make_strategy

    config, data = tiny_train_config(dropout=0.0), random_data(images=False)
    out = {{}}
    for name, devices in (("mirrored", ["/cpu:0", "/cpu:1"]), ("default", None)):
        strategy = make_strategy(name, devices)
        result = fit(config, data, {root!r} + "/" + name,
                     settings(epochs=3, batch_size=7, strategy=name),
                     seed=1, log=quiet, strategy=strategy)
        out[name] = {{
            "strategy": dataclasses.asdict(result.strategy),
            "history": result.history,
            "weights": {{k: v.tolist() for k, v in result.decoder_weights.items()}},
        }}
    print("RESULT " + json.dumps(out))
    """
)


def test_mirrored_strategy_on_two_logical_cpu_devices(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED.format(tests=str(ROOT / "tests"), root=str(tmp_path))],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    mirrored, single = out["mirrored"], out["default"]
    assert mirrored["strategy"]["name"] == "MirroredStrategy"
    assert mirrored["strategy"]["replicas"] == 2 and len(mirrored["strategy"]["devices"]) == 2
    assert single["strategy"]["replicas"] == 1
    loss = mirrored["history"]["loss"]
    assert loss[-1] < loss[0]
    # Two replicas each take their piece of every batch of 7 (4 and 3 rows, the last batch of
    # an epoch 1 and 0; validation 4 + 3 and 3 + 2) and the gradients are summed: the same
    # training as one device, up to float rounding (measured: 5e-7).
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(mirrored["history"][key], single["history"][key], rtol=1e-5)
    for name, value in single["weights"].items():
        np.testing.assert_allclose(mirrored["weights"][name], value, atol=1e-5, err_msg=name)


class RecordedReads:
    """An array over ``inputs`` that records the rows indexed (as the memory-mapped cache)."""

    def __init__(self, inputs: np.ndarray):
        self.inputs, self.shape, self.rows = inputs, inputs.shape, []

    def __getitem__(self, rows):
        self.rows.extend(np.asarray(rows).tolist())
        return self.inputs[rows]


def batches_of(dataset) -> list[list[np.ndarray]]:
    return [
        [x, inputs, targets, weights]
        for (x, inputs), targets, weights in dataset.as_numpy_iterator()
    ]


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize(("pipelines", "replicas"), [(2, 2), (1, 2), (2, 4)])
def test_each_input_pipeline_reads_only_its_replicas_pieces_of_every_global_batch(
    pipelines, replicas, split
):
    """What ``distribute_datasets_from_function`` builds on each worker: per global batch one
    element per local replica, read from the cache alone; the pieces of all pipelines, in
    replica order, are the one-process batch. Batches of 7 rows: uneven pieces, and the last
    training batch (36 captions) of one row leaves replicas an empty piece."""
    import tensorflow as tf

    from training.train import RowReads

    data = random_data(images=False)
    rows_of = getattr(data, split)
    # Training: epochs 3 and 4 of a resumed run; validation: every row once, in order.
    orders = np.stack([epoch_order(data, 1, e) for e in (3, 4)]) if split == "train" else None
    one_process = batches_of(make_dataset(data, rows_of, 7, orders, "unit", first_epoch=3))
    local = replicas // pipelines
    pieces, read, counted = [], [], []
    for pipeline in range(pipelines):
        recorded = RecordedReads(data.inputs)
        reads = RowReads()
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        ds = make_dataset(
            dataclasses.replace(data, inputs=recorded),
            rows_of,
            7,
            orders,
            "unit",
            input_context=context,
            first_epoch=3,
            reads=reads,
        )
        elements = batches_of(ds)
        assert len(elements) == len(one_process) * local  # the same steps on every worker
        pieces.append([elements[i : i + local] for i in range(0, len(elements), local)])
        read.append(recorded.rows)
        counted.append([*reads.take(3), reads.take(4)[0]])  # epoch 3 and val, epoch 4

    for step, batch in enumerate(one_process):
        step_pieces = [piece for worker in pieces for piece in worker[step]]
        sizes = [len(piece[0]) for piece in step_pieces]
        assert sizes == [len(p) for p in np.array_split(np.arange(len(batch[0])), replicas)]
        for i, array in enumerate(batch):
            np.testing.assert_array_equal(np.concatenate([p[i] for p in step_pieces]), array)
    if split == "train":
        assert min(sizes) == 0  # the last batch (one row) left replicas an empty piece
    # Each pipeline read the rows of its own pieces and nothing else (tf.data may run the
    # fetches out of order), and all of them together read every row once (once an epoch).
    for worker, rows in enumerate(read):
        x = np.concatenate([piece[0] for step in pieces[worker] for piece in step])
        assert sorted(map(tuple, x)) == sorted(map(tuple, data.inputs[rows]))
    expected = rows_of.image_rows if orders is None else rows_of.image_rows[orders.reshape(-1)]
    assert sorted(row for rows in read for row in rows) == sorted(expected.tolist())
    assert [sum(c) for c in counted] == [len(rows) for rows in read]  # the counts are the reads
    epoch_3, val = sum(c[0] for c in counted), sum(c[1] for c in counted)
    assert (epoch_3, val) == ((len(rows_of), 0) if split == "train" else (0, len(rows_of)))


# --- learning ---------------------------------------------------------------------------------


def test_a_short_run_captions_held_out_images_far_better_than_chance(tmp_path):
    """The bar: a 40-epoch end-to-end run (about 15 s here) on 420 single-shape synthetic
    images, scored on the 120 held-out test images it never saw, with greedy decoding:

    - the colour word is right for >= 80% of the images (chance: 1/4 colours);
    - the size word is right for >= 80% (chance: 1/2);
    - the whole caption ("a small red circle") is exactly right for >= 30% (chance: 1/24).

    Luck cannot pass: P(Binomial(120, 1/4) >= 96) < 1e-30, P(Binomial(120, 1/2) >= 96) <
    1e-10 and P(Binomial(120, 1/24) >= 36) < 1e-15. Measured here: 0.98, 1.00 and 0.62.
    """
    from imcap_hub import DecodeOptions, ImageCaptioner, predict_many
    from training.prepare import prepare
    from training.record import TrainRecord
    from training.run_config import RunConfig
    from training.stages import train_stage

    config = RunConfig.from_dict(
        {
            "name": "learn",
            "work_dir": str(tmp_path),
            "seed": 0,
            "dataset": {
                "synthetic": {
                    "n_images": 600,
                    "image_size": 32,
                    "max_shapes": 1,
                    "captions_per_image": 1,
                    "seed": 11,
                    "split_fractions": [0.7, 0.1, 0.2],
                }
            },
            "vocab": {"min_count": 1, "max_length": 6},
            "model": {
                "encoder": {
                    "architecture": "tiny_resnet",
                    "weights": "repo",
                    "image_size": 32,
                    "preprocessing": "unit",
                    "widths": [8, 16],
                },
                "decoder": {"embedding_dim": 16, "units": 32, "dropout": 0.0},
            },
            "training": {
                "epochs": 40,
                "batch_size": 32,
                "learning_rate": 0.005,
                "patience": 0,
                "train_encoder": True,
            },
        }
    )
    prepare(config, progress=False, log=quiet)
    record = train_stage(config, progress=False, log=quiet)
    assert record.used["train"].images == 420 and record.epochs_run == 40
    assert [e.epoch for e in record.history] == list(range(1, 41))
    assert record.best_epoch == min(record.history, key=lambda e: e.val_loss).epoch
    assert record.train_encoder and record.splits["test"].images == 120
    assert TrainRecord.read(config.paths.train_info) == record  # what train.json holds

    data = config.paths.data / "synthetic-flickr8k"
    scenes = json.loads((data / "synthetic.json").read_text())["scenes"]
    test = [s for s in scenes if s["split"] == "test"]
    images = [str(data / "Flicker8k_Dataset" / s["file_name"]) for s in test]
    model = ImageCaptioner.from_pretrained(config.paths.trained, runtime="keras")
    captions = [p.text for p in predict_many(model, images, DecodeOptions(decoding="greedy"))]
    table = pd.read_csv(config.paths.captions)
    seen = {Path(p).name for p in table[table["split"] != "test"]["image"]}
    assert len(test) == 120 and not seen & {s["file_name"] for s in test}  # held out

    def rate(found) -> float:
        return float(np.mean([found(s["shapes"][0], c.split()) for s, c in zip(test, captions)]))

    colour = rate(lambda shape, words: shape["colour"] in words)
    size = rate(lambda shape, words: shape["size"] in words)
    exact = float(np.mean([s["captions"][0] == c for s, c in zip(test, captions)]))
    assert colour >= 0.8, (colour, captions[:10])
    assert size >= 0.8, (size, captions[:10])
    assert exact >= 0.3, (exact, captions[:10])


# --- mixed precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pooled", "attention"])
def test_mixed_precision_trains_with_float32_weights_and_logits_and_puts_the_policy_back(
    tmp_path, kind
):
    """No GPU here: bfloat16 compute on the CPU. The weights (what is published) and the
    logits stay float32; the loss falls; the global policy is float32 again afterwards."""
    import keras

    from training.train import precision_policy

    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(keras.mixed_precision.global_policy().name)
            seen.append(self.model.get_layer("logits").compute_dtype)

    config, data = tiny_train_config(), random_data(images=False)
    if kind == "attention":  # a 4x4 grid of 12 channels
        config = tiny_train_config(kind="attention", attention_dim=8)
        config.encoder.features, config.encoder.image_size = "spatial", 32
        config.encoder.widths = [8, 16, 12]
        grid = np.random.default_rng(1).normal(size=(len(data.inputs), 4, 4, 12))
        data = dataclasses.replace(data, inputs=grid.astype(np.float32))
    mixed = settings(epochs=2, mixed_precision=True)
    result = fit(config, data, tmp_path, mixed, callbacks=[Probe()], log=quiet)
    assert seen == ["mixed_bfloat16", "float32"]
    assert all(np.asarray(w).dtype == np.float32 for w in result.decoder_weights.values())
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert keras.mixed_precision.global_policy().name == "float32"
    with precision_policy(False) as policy:
        assert policy == "float32"
