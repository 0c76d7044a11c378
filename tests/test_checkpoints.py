"""training.checkpoints: the run state (state.json, in the format the first imcap wrote), the
early-stopping bookkeeping, the epoch folders (last and best kept), and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train import quiet, random_data, settings, tiny_train_config

from training.checkpoints import (
    STATE_FILE,
    CheckpointError,
    RunState,
    epoch_dir,
    keep_only,
    open_run,
    read_state,
    restore,
    write_state,
)
from training.train import build_models, fit

# state.json as imcap wrote it before RunState existed (a 2-epoch frozen-encoder run), byte for
# byte; RUN_KEY is replaced by the run key of the checkpoints it goes with.
OLD_STATE_JSON = """{
 "format": 1,
 "run_key": "RUN_KEY",
 "epoch": 2,
 "best_epoch": 2,
 "best_value": 2.968900203704834,
 "monitor": "val_loss",
 "wait": 0,
 "history": {
  "loss": [
   2.9930756092071533,
   2.9789559841156006
  ],
  "token_accuracy": [
   0.109333336353302,
   0.17592933773994446
  ],
  "val_loss": [
   2.9832446575164795,
   2.968900203704834
  ],
  "val_token_accuracy": [
   0.16326530277729034,
   0.16326530277729034
  ]
 },
 "epoch_seconds": [
  4.200533931999985,
  0.05666871199991874
 ],
 "elapsed_seconds": 4.257202643999904,
 "stopped_early": false,
 "seed": 0
}
"""


def test_an_old_state_json_reads_and_writes_back_unchanged(tmp_path):
    (tmp_path / STATE_FILE).write_text(OLD_STATE_JSON)
    state = read_state(tmp_path)
    assert isinstance(state, RunState)
    assert (state.epoch, state.best_epoch, state.monitor, state.wait) == (2, 2, "val_loss", 0)
    assert state.history["val_loss"][-1] == state.best_value == 2.968900203704834
    assert state.epoch_seconds == [4.200533931999985, 0.05666871199991874]
    write_state(tmp_path, state)
    assert (tmp_path / STATE_FILE).read_text() == OLD_STATE_JSON  # same keys, same order


def test_resuming_from_an_old_state_json_gives_the_same_weights(tmp_path):
    """Checkpoints whose state.json is in the old layout resume like any others: the resumed
    run ends with the weights of a run that was never interrupted."""
    data, config = random_data(images=False), tiny_train_config()
    first = fit(config, data, tmp_path / "old", settings(epochs=2), seed=3, log=quiet)
    state = read_state(tmp_path / "old")
    old = json.loads(OLD_STATE_JSON.replace("RUN_KEY", state.run_key))
    old.update(history=state.history, best_value=state.best_value, best_epoch=first.best_epoch)
    old.update(epoch_seconds=state.epoch_seconds, elapsed_seconds=state.elapsed_seconds, seed=3)
    (tmp_path / "old" / STATE_FILE).write_text(json.dumps(old, indent=1) + "\n")

    resumed = fit(config, data, tmp_path / "old", settings(epochs=3), seed=3, log=quiet)
    straight = fit(config, data, tmp_path / "straight", settings(epochs=3), seed=3, log=quiet)
    assert (resumed.resumed_from, resumed.epochs_run) == (2, 3)
    assert resumed.history == straight.history
    for name, value in straight.decoder_weights.items():
        np.testing.assert_array_equal(resumed.decoder_weights[name], value, err_msg=name)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": 7}', "format 7"),
        ('{"format": 1, "run_key": "x"}', "has no epoch"),
        (OLD_STATE_JSON.replace('"epoch": 2', '"epoch": "two"'), "damaged"),
    ],
)
def test_a_damaged_state_json_is_a_one_line_error_that_says_fresh(tmp_path, text, message):
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=message) as info:
        read_state(tmp_path)
    assert "--fresh" in str(info.value) and "\n" not in str(info.value)


def test_end_epoch_tracks_the_best_epoch_and_early_stopping():
    state = RunState(run_key="k", monitor="val_loss", seed=0)
    rules = {"min_delta": 0.1, "patience": 2, "total_epochs": 10}
    losses = [3.0, 2.95, 2.5, 2.45, 2.44]  # improves at 1 and 3 only (min_delta 0.1)
    improved = [
        state.end_epoch(i + 1, {"loss": 9.0, "val_loss": v}, 1.5, **rules)
        for i, v in enumerate(losses)
    ]
    assert improved == [True, False, True, False, False]
    assert (state.epoch, state.best_epoch, state.best_value, state.wait) == (5, 3, 2.5, 2)
    assert state.should_stop(2) and state.stopped_early
    assert state.history["val_loss"] == losses and state.elapsed_seconds == 7.5
    # Stopping at the last epoch anyway is not "stopped early"; patience 0 never stops.
    last = RunState(run_key="k", monitor="loss", seed=0, best_value=1.0, wait=1)
    last.end_epoch(10, {"loss": 2.0}, 1.0, **rules)
    assert last.should_stop(2) and not last.stopped_early
    never = RunState(run_key="k", monitor="loss", seed=0, best_value=1.0, wait=5)
    never.end_epoch(3, {"loss": 2.0}, 1.0, min_delta=0.0, patience=0, total_epochs=10)
    assert not never.should_stop(0) and not never.stopped_early


def test_open_run_resumes_refuses_another_run_or_starts_afresh(tmp_path):
    assert open_run(tmp_path / "c", "key", resume=True) is None  # nothing to resume
    state = RunState(run_key="key", monitor="loss", seed=0, epoch=1, best_epoch=1)
    write_state(tmp_path / "c", state)
    epoch_dir(tmp_path / "c", 1).mkdir()
    assert open_run(tmp_path / "c", "key", resume=True) == state
    with pytest.raises(CheckpointError, match="different model, data or settings.*--fresh"):
        open_run(tmp_path / "c", "other", resume=True)
    assert open_run(tmp_path / "c", "other", resume=False) is None
    assert list((tmp_path / "c").iterdir()) == []  # old checkpoints deleted


def test_keep_only_keeps_the_named_epochs(tmp_path):
    for epoch in (1, 2, 3, 4):
        epoch_dir(tmp_path, epoch).mkdir()
    (tmp_path / STATE_FILE).write_text("{}")
    keep_only(tmp_path, (4, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "epoch-0004", STATE_FILE]


def test_restore_refuses_a_checkpoint_of_another_model(tmp_path):
    from training.train import _compile

    data = random_data(images=False)
    fit(tiny_train_config(), data, tmp_path, settings(epochs=1), log=quiet)
    other = build_models(tiny_train_config(units=8), 0, False)
    _compile(other.train, settings())
    with pytest.raises(CheckpointError, match="--fresh"):
        restore(other.train, tmp_path, 1)
    with pytest.raises(CheckpointError, match="cannot read"):
        restore(other.train, tmp_path, 7)
