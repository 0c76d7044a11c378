"""training.record: the TrainRecord that the train stage writes to train.json and the model card
renders round-trips through JSON, and a train.json it cannot use is a clear error.

``sample_record`` / ``synthetic_record`` are the records the card and publish tests render."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from helpers import tiny_config

from imcap_hub import CaptionerConfig
from training.record import (
    RECORD_FORMAT,
    DatasetInfo,
    EpochRecord,
    Hardware,
    RecordError,
    SplitSize,
    SplitUse,
    StrategyInfo,
    TrainRecord,
    VocabStats,
    epoch_records,
)
from training.run_config import TrainingSection


def sample_record(**changes) -> TrainRecord:
    """A Flickr8k run of a frozen ResNet50 encoder, as ``train_stage`` records it (plus the
    evaluate time ``push`` adds)."""
    record = TrainRecord(
        name="resnet50-flickr8k",
        model=CaptionerConfig(vocab_size=2984),
        settings=TrainingSection(
            epochs=30, batch_size=64, learning_rate=0.0005, clipnorm=5.0, patience=3
        ),
        strategy=StrategyInfo(name="default (one device)", replicas=1, devices=[], chief=True),
        dataset=DatasetInfo(name="Flickr8k", layout="flickr8k", synthetic=False),
        splits={
            "train": SplitSize(images=6000, captions=30000),
            "val": SplitSize(images=1000, captions=5000),
            "test": SplitSize(images=1000, captions=5000),
        },
        used={
            "train": SplitUse(captions=29950, images=6000, dropped_unreadable=0, dropped_length=50),
            "val": SplitUse(captions=4990, images=1000, dropped_unreadable=0, dropped_length=10),
        },
        vocabulary=VocabStats(
            size=2984,
            min_count=5,
            max_size=None,
            max_length=30,
            distinct_train_words=8412,
            train_captions=30000,
            train_captions_kept=29950,
            dropped_too_long=50,
            dropped_empty=0,
            caption_length_mean=11.79,
            caption_length_p95=21.0,
            unknown_token_rate=0.03125,
        ),
        history=[
            EpochRecord(1, loss=4.12, token_accuracy=0.31, seconds=70.25, val_loss=3.9),
            EpochRecord(2, loss=3.5, token_accuracy=0.36, seconds=68.0, val_loss=3.7),
            EpochRecord(3, loss=3.3, token_accuracy=0.38, seconds=69.14, val_loss=3.75),
        ],
        best_epoch=2,
        epochs_run=3,
        stopped_early=False,
        resumed_from_epoch=0,
        seed=0,
        hardware=Hardware(
            cpu="Xeon",
            cpu_count=16,
            gpus=[],
            platform="Linux-6.1-x86_64",
            python="3.11.7",
            tensorflow="2.21.0",
        ),
        stage_seconds={"prepare": 312.5, "train": 845.1, "evaluate": 60.2},
    )
    for i, epoch in enumerate(record.history):
        epoch.val_token_accuracy = 0.33 + 0.01 * i
    return replace(record, **changes)


def synthetic_record(**changes) -> TrainRecord:
    """The tiny end-to-end run on the synthetic shapes (``tests/helpers.tiny_config``)."""
    return sample_record(
        **{
            "name": "tiny-shapes",
            "model": tiny_config(),
            "settings": TrainingSection(epochs=2, batch_size=16, train_encoder=True),
            "dataset": DatasetInfo(
                name="synthetic-shapes",
                layout="flickr8k",
                synthetic=True,
                synthetic_config={"n_images": 40, "image_size": 32},
            ),
            **changes,
        }
    )


@pytest.mark.parametrize(
    "record",
    [
        sample_record(),
        synthetic_record(),
        # no val split; no clipping; a dataset with its url and licence; a worker
        sample_record(
            used={"train": SplitUse(10, 5, 1, 2)},
            history=[EpochRecord(1, 2.0, 0.5, 1.0), EpochRecord(2, 1.5, 0.6, 1.2)],
            settings=TrainingSection(clipnorm=None, devices=["/gpu:0", "/gpu:1"]),
            dataset=DatasetInfo("custom", "coco", False, url="https://x.org", license="MIT"),
            strategy=StrategyInfo("MirroredStrategy", 2, ["/gpu:0", "/gpu:1"], chief=False),
        ),
    ],
    ids=["flickr8k", "synthetic", "no-val"],
)
def test_the_record_round_trips_through_json(record, tmp_path):
    again = TrainRecord.from_json(record.to_json())
    assert again == record and again.to_dict() == record.to_dict()
    assert json.loads(record.to_json())["format"] == RECORD_FORMAT
    path = record.write(tmp_path / "train.json")
    assert TrainRecord.read(path) == record
    assert isinstance(again.settings, TrainingSection) and isinstance(again.model, CaptionerConfig)
    assert isinstance(again.history[0], EpochRecord) and isinstance(
        again.splits["train"], SplitSize
    )


def test_epoch_records_from_the_keras_history():
    history = {
        "loss": [2.0, 1.5],
        "token_accuracy": [0.5, 0.6],
        "val_loss": [2.1, 1.7],
        "val_token_accuracy": [0.4, 0.55],
        "learning_rate": [0.001, 0.001],  # Keras' extra logs are not part of the record
    }
    records = epoch_records(history, [12.34567, 8.0])
    assert records == [
        EpochRecord(1, 2.0, 0.5, 12.346, val_loss=2.1, val_token_accuracy=0.4),
        EpochRecord(2, 1.5, 0.6, 8.0, val_loss=1.7, val_token_accuracy=0.55),
    ]
    no_val = epoch_records({"loss": [2.0], "token_accuracy": [0.5]}, [1.0])
    assert no_val == [EpochRecord(1, 2.0, 0.5, 1.0)] and no_val[0].val_loss is None


# train.json as imcap wrote it before the record existed (trimmed).
OLD_TRAIN_JSON = {
    "best_epoch": 2,
    "epochs_run": 2,
    "history": {"loss": [2.99, 2.97]},
    "seconds": 4.95,
    "strategy": {"chief": True, "devices": [], "name": "default (one device)", "replicas": 1},
}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (OLD_TRAIN_JSON, "an older imcap wrote it.*run `python -m training train`"),
        ("[]", "not a JSON object"),
        (
            {**sample_record().to_dict(), "epochs_run": "3"},
            r"train\.json\.epochs_run must be an integer",
        ),
        ({**sample_record().to_dict(), "extra": 1}, "unknown key.*extra"),
        (
            {k: v for k, v in sample_record().to_dict().items() if k != "hardware"},
            "hardware",
        ),
    ],
    ids=["old-train-json", "not-an-object", "wrong-type", "unknown-key", "missing-key"],
)
def test_a_train_json_that_is_not_a_record_is_a_clear_error(data, message):
    with pytest.raises(RecordError, match=message) as info:
        TrainRecord.from_json(data if isinstance(data, str) else json.dumps(data))
    assert "\n" not in str(info.value)


def test_a_missing_train_json_says_to_train_first(tmp_path):
    with pytest.raises(RecordError, match="python -m training train"):
        TrainRecord.read(tmp_path / "train.json")
