"""Checkpoints of a training run: write an epoch, read the run state, restore a model, resume,
keep only the last and the best epoch.

``<run>/checkpoints`` holds one folder per kept epoch, ``epoch-NNNN/``, with

- ``decoder.safetensors``: the decoder weights in the published ``model.safetensors`` format;
- ``encoder.safetensors``: the encoder weights (``train_encoder`` only);
- ``state.safetensors``: every model and optimizer variable, in order (for resuming);

and ``state.json`` (a :class:`RunState`, written atomically after the epoch folder): the
completed epoch, the history, the best epoch and the early-stopping counter. An epoch folder is
written under a temporary name and renamed into place, so a kill at any moment leaves the last
complete epoch and a ``state.json`` that names it. Only the last and the best epoch folders are
kept. No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imcap_hub.errors import ImcapError
from imcap_hub.files import atomic_write_json, load_tensors, save_tensors
from imcap_hub.typed_json import from_json_object

STATE_FILE = "state.json"
STATE_FORMAT = 1
# state.json's keys, in the order they are written (the order of the first imcap that wrote it).
STATE_KEYS = (
    "format",
    "run_key",
    "epoch",
    "best_epoch",
    "best_value",
    "monitor",
    "wait",
    "history",
    "epoch_seconds",
    "elapsed_seconds",
    "stopped_early",
    "seed",
)


class CheckpointError(ImcapError, RuntimeError):
    """The checkpoints cannot be used to resume; the message says why (and how to start afresh)."""


@dataclass
class RunState:
    """Where a run stands after its last completed epoch: what ``state.json`` holds.

    ``run_key``: what must be equal to resume (the model, the optimisation settings, the data);
    ``monitor``: the early-stopping metric (``val_loss``, or ``loss`` without a val split);
    ``history``: Keras' per-epoch logs, metric -> values; ``wait``: epochs since the best one;
    ``elapsed_seconds``: the fitting time of every epoch so far, resumed calls included.
    """

    run_key: str
    monitor: str
    seed: int
    epoch: int = 0
    best_epoch: int = 0
    best_value: float | None = None
    wait: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    stopped_early: bool = False
    format: int = STATE_FORMAT

    def end_epoch(
        self,
        epoch: int,
        logs: Mapping[str, float],
        seconds: float,
        *,
        min_delta: float,
        patience: int,
        total_epochs: int,
    ) -> bool:
        """Record completed epoch ``epoch`` (1-based): its logs and time, the best epoch and the
        early-stopping counter. Returns whether the monitored value improved."""
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.epoch_seconds.append(seconds)
        value = float(logs.get(self.monitor, math.inf))
        improved = self.best_value is None or value < self.best_value - min_delta
        if improved:
            self.best_value = value
            self.best_epoch = epoch
            self.wait = 0
        else:
            self.wait += 1
        self.epoch = epoch
        self.elapsed_seconds += seconds
        self.stopped_early = bool(patience) and self.wait >= patience and epoch < total_epochs
        return improved

    def should_stop(self, patience: int) -> bool:
        """Whether early stopping ends training after the epoch just recorded."""
        return bool(patience) and self.wait >= patience

    # --- state.json ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "run_key": self.run_key,
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "monitor": self.monitor,
            "wait": self.wait,
            "history": {k: list(v) for k, v in self.history.items()},
            "epoch_seconds": list(self.epoch_seconds),
            "elapsed_seconds": self.elapsed_seconds,
            "stopped_early": self.stopped_early,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = STATE_FILE) -> RunState:
        """A state read back; raises :class:`CheckpointError` for one this imcap cannot use."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} is not a JSON object; start afresh with --fresh")
        if data.get("format") != STATE_FORMAT:
            raise CheckpointError(
                f"{where} has format {data.get('format')!r}, this imcap reads format "
                f"{STATE_FORMAT}; start afresh with --fresh"
            )
        missing = [k for k in STATE_KEYS if k not in data]
        if missing:
            raise CheckpointError(f"{where} has no {', '.join(missing)}; start afresh with --fresh")
        try:
            return from_json_object(cls, data, where, CheckpointError)
        except CheckpointError as e:
            raise CheckpointError(f"{where} is damaged ({e}); start afresh with --fresh") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = STATE_FILE) -> RunState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(
                f"{where} is not valid JSON ({e}); start afresh with --fresh"
            ) from None
        return cls.from_dict(data, where)


# --- the checkpoints folder -------------------------------------------------------------------


def epoch_dir(checkpoints: Path | str, epoch: int) -> Path:
    """The folder of epoch ``epoch`` (1-based)."""
    return Path(checkpoints) / f"epoch-{epoch:04d}"


def read_state(checkpoints: Path | str) -> RunState | None:
    """The run state in ``checkpoints``, or None when there is none."""
    path = Path(checkpoints) / STATE_FILE
    if not path.exists():
        return None
    return RunState.from_json(path.read_text(encoding="utf-8"), where=str(path))


def write_state(checkpoints: Path | str, state: RunState) -> Path:
    """Write ``state.json`` atomically (after the epoch folder it names)."""
    return atomic_write_json(Path(checkpoints) / STATE_FILE, state.to_dict(), indent=1)


def open_run(checkpoints: Path | str, run_key: str, *, resume: bool) -> RunState | None:
    """The state to resume from, or None to start afresh (old checkpoints are then deleted).

    ``resume``: continue from ``state.json`` when it is there; its ``run_key`` must be
    ``run_key``, else :class:`CheckpointError` (the checkpoints are from another run).
    """
    checkpoints = Path(checkpoints)
    state = peek_run(checkpoints, run_key) if resume else None
    if state is None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    return state


def peek_run(checkpoints: Path | str, run_key: str) -> RunState | None:
    """The state to resume from, for a worker that only reads ``checkpoints`` (another
    worker owns them): like :func:`open_run` with ``resume``, but it never deletes or creates
    anything."""
    state = read_state(checkpoints)
    if state is not None and state.run_key != run_key:
        raise CheckpointError(
            f"the checkpoints in {checkpoints} are from a different model, data or settings; "
            "start afresh with --fresh (or use another run name)"
        )
    return state


def state_tensors(model) -> dict[str, np.ndarray]:
    """Every variable of a compiled Keras ``model`` and of its optimizer, in order."""
    tensors = {}
    for i, v in enumerate(model.variables):
        tensors[f"model/{i:05d}"] = np.asarray(v.numpy())
    for i, v in enumerate(model.optimizer.variables):
        tensors[f"optimizer/{i:05d}"] = np.asarray(v.numpy())
    return tensors


def restore(model, checkpoints: Path | str, epoch: int) -> None:
    """Load epoch ``epoch``'s ``state.safetensors`` into a compiled Keras ``model`` (the
    optimizer is built first); refuses a checkpoint of another model."""
    path = epoch_dir(checkpoints, epoch) / "state.safetensors"
    try:
        tensors = load_tensors(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); start afresh with --fresh") from None
    model.optimizer.build(model.trainable_variables)
    for prefix, variables in (
        ("model", model.variables),
        ("optimizer", model.optimizer.variables),
    ):
        names = sorted(k for k in tensors if k.startswith(prefix + "/"))
        if len(names) != len(variables):
            raise CheckpointError(
                f"{path} holds {len(names)} {prefix} variables, the model has {len(variables)}; "
                "the checkpoint is from another model (start afresh with --fresh)"
            )
        for name, var in zip(names, variables):
            value = tensors[name]
            if tuple(value.shape) != tuple(var.shape):
                raise CheckpointError(
                    f"{path}: {name} has shape {value.shape}, the model needs {tuple(var.shape)} "
                    "(start afresh with --fresh)"
                )
            var.assign(value)


def write_epoch(checkpoints: Path | str, epoch: int, model, decoder, encoder=None) -> Path:
    """Write ``epoch-NNNN/`` (decoder, encoder when trained, every variable) atomically: built
    under a temporary name, then renamed into place."""
    from imcap_hub.decoder import weights_from_keras
    from imcap_hub.encoder import keras_weights

    checkpoints = Path(checkpoints)
    folder = epoch_dir(checkpoints, epoch)
    tmp = checkpoints / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors(weights_from_keras(decoder), tmp / "decoder.safetensors", "imcap-decoder")
    if encoder is not None:
        save_tensors(keras_weights(encoder), tmp / "encoder.safetensors", "imcap-encoder")
    save_tensors(state_tensors(model), tmp / "state.safetensors", "imcap-train-state")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def keep_only(checkpoints: Path | str, epochs: Iterable[int]) -> None:
    """Delete every epoch folder but those of ``epochs``."""
    keep = {epoch_dir(checkpoints, e).name for e in epochs}
    for old in Path(checkpoints).glob("epoch-*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def make_checkpointer(
    checkpoints: Path | str,
    state: RunState,
    models,
    settings,
    log: Callable[[str], None] = print,
):
    """The Keras callback that ends every epoch: the epoch folder, then ``state.json``, then
    the old folders removed (last and best kept), a log line, and early stopping.

    ``models``: :class:`training.train.Models` (the trained graph, the decoder, the encoder or
    None); ``settings``: a :class:`training.run_config.TrainingSection` (``epochs``,
    ``patience``, ``min_delta``). ``state`` is updated in place.
    """
    import keras

    checkpoints = Path(checkpoints)
    total_epochs = settings.epochs

    class Checkpointer(keras.callbacks.Callback):
        """Writes ``epoch-NNNN/`` then ``state.json`` after every epoch; early stopping."""

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            seconds = time.perf_counter() - self._start
            done = epoch + 1
            improved = state.end_epoch(
                done,
                logs,
                seconds,
                min_delta=settings.min_delta,
                patience=settings.patience,
                total_epochs=total_epochs,
            )
            write_epoch(checkpoints, done, models.train, models.decoder, models.encoder)
            write_state(checkpoints, state)
            keep_only(checkpoints, (done, state.best_epoch))
            metrics = ", ".join(
                f"{k} {float(v):.4f}" for k, v in logs.items() if k not in ("learning_rate",)
            )
            mark = " *" if improved else ""
            log(f"epoch {done}/{total_epochs}: {metrics} ({seconds:.1f} s){mark}")
            if state.should_stop(settings.patience):
                log(
                    f"early stop: no {state.monitor} improvement for {state.wait} epochs; "
                    f"best epoch {state.best_epoch}"
                )
                self.model.stop_training = True

    return Checkpointer()
