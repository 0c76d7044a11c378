"""The stages of a training run: ``prepare``, ``train``, ``evaluate``, ``push``, and ``run`` (the
four in turn), each working in the run folder of a :class:`training.run_config.RunConfig`.

Every stage records how long it took in ``<run>/stages.json``. ``train`` writes the best model
to ``<run>/trained`` and the run's :class:`training.record.TrainRecord` to ``<run>/train.json``;
``push`` renders the model card from that record and the metrics. The command line
(``python -m training``) calls these functions; they print what they do through ``log``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from imcap_hub.files import atomic_write_json
from imcap_hub.vocab import Vocabulary
from training.record import (
    DatasetInfo,
    Hardware,
    SplitSize,
    SplitUse,
    TrainRecord,
    VocabStats,
    epoch_records,
)
from training.run_config import RunConfig, RunConfigError
from training.shards import Shard, ShardOutcome
from training.train import Split, TrainData, encode_captions, fit

STAGE_NAMES = ("prepare", "train", "evaluate", "push")
DEFAULT_DECODINGS = ["greedy", "beam-3"]


def log(message: str) -> None:
    """A line on stdout, flushed (the stages' default ``log``)."""
    print(message, flush=True)


# --- stages.json ------------------------------------------------------------------------------


def read_stages(config: RunConfig) -> dict[str, Any]:
    """``stages.json``: stage -> {seconds, finished_at, ...}; empty before the first stage."""
    path = config.paths.stages
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def record_stage(config: RunConfig, stage: str, seconds: float, **extra: Any) -> None:
    """Add (or replace) ``stage`` in ``stages.json``."""
    stages = read_stages(config)
    stages[stage] = {
        "seconds": round(seconds, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    atomic_write_json(config.paths.stages, stages, sort_keys=True)


def stage_seconds(config: RunConfig, stages: Sequence[str] = STAGE_NAMES) -> dict[str, float]:
    """How long each of ``stages`` took, for those in ``stages.json``."""
    recorded = read_stages(config)
    return {
        name: float(recorded[name]["seconds"])
        for name in stages
        if isinstance(recorded.get(name), dict) and recorded[name].get("seconds") is not None
    }


# --- prepare ----------------------------------------------------------------------------------


def prepare_shard(config: RunConfig, shard: str | None) -> tuple[Shard | None, bool]:
    """(the shard this process prepares, whether it waits for the others): ``--shard I/N``
    (no waiting), else the task of ``TF_CONFIG`` when training is multi-worker (waiting, so
    that ``prepare`` then ``train`` on every worker reads the whole cache), else none."""
    if shard is not None:
        return Shard.parse(shard), False
    tf_config = os.environ.get("TF_CONFIG")
    if config.training.strategy == "multiworker" and tf_config:
        return Shard.from_tf_config(tf_config), True
    return None, False


def stage_prepare(config: RunConfig, *, progress: bool, shard: str | None = None) -> None:
    from training.prepare import prepare

    start = time.perf_counter()
    this_shard, wait = prepare_shard(config, shard)
    if this_shard is not None:
        how = "--shard" if shard is not None else "TF_CONFIG"
        log(f"prepare: shard {this_shard} (from {how}) of the feature cache")
    info = prepare(config, progress=progress, log=log, shard=this_shard, wait=wait)
    if info.get("complete", True):  # the shard that merged the cache records the stage
        record_stage(config, "prepare", time.perf_counter() - start)


# --- train ------------------------------------------------------------------------------------


def build_train_data(
    table, vocab: Vocabulary, max_length: int, cached
) -> tuple[TrainData, dict[str, SplitUse]]:
    """Caption rows of the train and val splits over the cached inputs; images that could
    not be read (``cached.ok`` False) and captions that are empty or too long are left out."""
    pos = {img: i for i, img in enumerate(cached.images)}
    used: dict[str, SplitUse] = {}
    splits: dict[str, Split] = {}
    for split in ("train", "val"):
        rows = table[table["split"] == split]
        tokens, keep = encode_captions(rows["caption"].tolist(), vocab, max_length)
        index = np.array([pos.get(img, -1) for img in rows["image"]], dtype=np.int64)
        readable = np.zeros(len(index), dtype=bool)
        readable[index >= 0] = cached.ok[index[index >= 0]]
        ok = keep & readable
        image_rows = cached.rows[index[ok]]
        splits[split] = Split(image_rows=image_rows, tokens=tokens[ok])
        used[split] = SplitUse(
            captions=int(ok.sum()),
            images=len(np.unique(image_rows)),
            dropped_unreadable=int((~readable).sum()),
            dropped_length=int((readable & ~keep).sum()),
        )
    val = splits["val"] if len(splits["val"]) else None
    data = TrainData(
        inputs=cached.array, train=splits["train"], val=val, images=cached.array.dtype == np.uint8
    )
    return data, used


def _encoder_init(config: RunConfig):
    """The Keras encoder an end-to-end run starts from."""
    from imcap_hub.encoder import build_keras_encoder

    enc = config.model.encoder
    if enc.weights == "random" or (enc.weights == "repo" and not config.model.encoder_weights):
        return build_keras_encoder(replace(enc, weights="random"))
    return build_keras_encoder(enc, config.model.encoder_weights)


def _dataset_info(config: RunConfig, prepared: dict[str, Any]) -> DatasetInfo:
    ds = config.dataset
    return DatasetInfo(
        name=ds.display_name,
        layout=prepared["dataset"]["layout"],
        synthetic=ds.synthetic is not None,
        url=ds.url,
        license=ds.license,
        synthetic_config=ds.synthetic,
    )


def train_stage(
    config: RunConfig,
    *,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = log,
    callbacks: Sequence[Any] = (),
    strategy=None,
) -> TrainRecord:
    """The ``train`` stage of a run: fit, then write the best model to ``<run>/trained``
    (save_pretrained layout, no card) and its record to ``<run>/train.json``. A worker that
    is not the chief writes nothing and returns its own record."""
    from imcap_hub.encoder import Encoder
    from imcap_hub.model import ImageCaptioner
    from training.prepare import cache_inputs, frozen_encoder, load_prepared

    start = time.perf_counter()
    paths = config.paths
    table, vocab, prepared = load_prepared(config)
    # Resumes an interrupted prepare; multi-worker, each worker its shard (one writer a part).
    shard, wait = prepare_shard(config, None)
    cached = cache_inputs(config, table, progress=progress, shard=shard, wait=wait, log=log)
    assert not isinstance(cached, ShardOutcome)  # waited for every shard
    data, used = build_train_data(table, vocab, config.vocab.max_length, cached)
    model_config = config.captioner_config(len(vocab))
    settings = config.training
    if settings.train_encoder:
        published_encoder = replace(config.model.encoder, weights="repo")
    else:
        _, published_encoder = frozen_encoder(config)
    log(
        f"training on {used['train'].captions} captions of {used['train'].images} images"
        + (f", validating on {used['val'].captions}" if data.val is not None else "")
        + (" (encoder trained end to end)" if settings.train_encoder else "")
    )
    result = fit(
        model_config,
        data,
        paths.checkpoints,
        settings,
        seed=config.seed,
        encoder_init=(lambda: _encoder_init(config)) if settings.train_encoder else None,
        resume=not fresh,
        callbacks=callbacks,
        verbose=1 if progress else 0,
        log=log,
        strategy=strategy,
    )
    final_config = replace(model_config, encoder=published_encoder)
    record = TrainRecord(
        name=config.name,
        model=final_config,
        settings=settings,
        strategy=result.strategy,
        dataset=_dataset_info(config, prepared),
        splits={k: SplitSize(**v) for k, v in prepared["splits"].items()},
        used=used,
        vocabulary=VocabStats(**prepared["vocab"]),
        history=epoch_records(result.history, result.epoch_seconds),
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        resumed_from_epoch=result.resumed_from,
        seed=config.seed,
        hardware=Hardware.detect(),
    )
    # Every worker of a multi-worker run prints the same digest (the weights are all-reduced).
    log(f"weights digest {result.weights_digest} (best epoch {result.best_epoch})")
    if not result.strategy.chief:
        log("not the chief worker: the chief writes the trained model")
        return record
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
    record = record.with_stage_seconds(
        {**stage_seconds(config, ("prepare",)), "train": round(time.perf_counter() - start, 2)}
    )
    record.write(paths.train_info)
    val_losses = [e.val_loss for e in record.history if e.val_loss is not None]
    log(
        f"best epoch {record.best_epoch} of {record.epochs_run}"
        + (f" (val_loss {min(val_losses):.4f})" if val_losses else "")
        + f"; model in {paths.trained}"
    )
    return record


def stage_train(config: RunConfig, *, fresh: bool = False, progress: bool) -> None:
    start = time.perf_counter()
    record = train_stage(config, fresh=fresh, progress=progress, log=log)
    record_stage(
        config,
        "train",
        time.perf_counter() - start,
        epochs_run=record.epochs_run,
        best_epoch=record.best_epoch,
    )


# --- evaluate ---------------------------------------------------------------------------------


def _evaluate(model, table, split, decodings, max_images, progress) -> dict[str, Any]:
    from training.evaluate import evaluate

    return evaluate(
        model,
        table,
        split=split,
        decodings=tuple(decodings),
        max_images=max_images,
        progress=progress,
    )


def _print_scores(metrics: dict[str, Any]) -> None:
    for label, scores in (metrics.get("decodings") or {}).items():
        text = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, (int, float)))
        log(f"{label}: {text}")


def stage_evaluate(
    config: RunConfig,
    *,
    progress: bool,
    model_dir: str | os.PathLike | None = None,
    split: str | None = None,
    decodings: Sequence[str] | None = None,
    max_images: int | None = None,
) -> None:
    """Score the run's trained model (or ``model_dir``) into ``<run>/metrics.json``; ``split``,
    ``decodings`` and ``max_images`` default to the config's ``evaluation`` section."""
    from imcap_hub.model import ImageCaptioner
    from training.evaluate import write_metrics
    from training.prepare import load_prepared

    start = time.perf_counter()
    table, _, _ = load_prepared(config)
    model_dir = Path(model_dir) if model_dir else config.paths.trained
    if not (model_dir / "config.json").exists():
        raise RunConfigError(
            f"no trained model in {model_dir}: run `python -m training train` with this config first"
        )
    model = ImageCaptioner.from_pretrained(model_dir, runtime=config.features.runtime)
    ev = config.evaluation
    split = split or ev.split
    decodings = decodings or ev.decodings
    max_images = max_images or ev.max_images
    log(f"evaluating {model_dir} on the {split} split ({', '.join(decodings)})")
    metrics = _evaluate(model, table, split, decodings, max_images, progress)
    write_metrics(metrics, config.paths.metrics)
    _print_scores(metrics)
    log(f"metrics in {config.paths.metrics}")
    record_stage(config, "evaluate", time.perf_counter() - start, split=split)


def evaluate_folder(
    model_dir: str | os.PathLike,
    dataset: str | os.PathLike,
    *,
    layout: str = "auto",
    split: str | None = None,
    decodings: Sequence[str] | None = None,
    max_images: int | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> None:
    """``evaluate --model DIR --dataset ROOT``: score any model folder, no run needed; the
    metrics go to ``out``, else to stdout as JSON."""
    from imcap_hub.model import ImageCaptioner
    from training.datasets import read_dataset
    from training.evaluate import write_metrics

    root = Path(dataset)
    if not root.exists():
        raise RunConfigError(f"dataset {root} does not exist")
    try:
        table, report = read_dataset(layout, root)
    except (OSError, ValueError) as e:
        raise RunConfigError(f"cannot read the dataset at {root}: {e}") from None
    log(report.summary())
    model = ImageCaptioner.from_pretrained(model_dir)
    metrics = _evaluate(
        model, table, split or "test", decodings or DEFAULT_DECODINGS, max_images, progress
    )
    _print_scores(metrics)
    if out:
        write_metrics(metrics, out)
        log(f"metrics in {out}")
    else:
        print(json.dumps(metrics, indent=2))


# --- push -------------------------------------------------------------------------------------


def stage_push(
    config: RunConfig,
    *,
    repo_id: str | None = None,
    token: str | None = None,
    private: bool = False,
) -> None:
    """Write the model folder with its card (and metrics); push it when there is a repo id
    (``repo_id``, else ``publish.repo_id``). ``private``: create a new repo private (else
    ``publish.private``)."""
    from imcap_hub.model import ImageCaptioner
    from training.evaluate import read_metrics
    from training.prepare import load_prepared
    from training.publish import calibration_set, publish

    start = time.perf_counter()
    paths = config.paths
    if not (paths.trained / "config.json").exists():
        raise RunConfigError(
            f"no trained model in {paths.trained}: run `python -m training train` with this config first"
        )
    model = ImageCaptioner.from_pretrained(paths.trained, runtime=config.features.runtime)
    metrics = read_metrics(paths.metrics) if paths.metrics.exists() else None
    if metrics is None:
        log("note: no metrics.json (run `evaluate` first); the card will say 'not evaluated'")
    # The card is written before the push it describes: a push time would be the last one's.
    stages = [s for s in STAGE_NAMES if s != "push"]
    record = TrainRecord.read(paths.train_info).with_stage_seconds(stage_seconds(config, stages))
    table, _, _ = load_prepared(config)
    model.encoder.calibration = calibration_set(
        table, model.config.encoder.image_size, config.publish.calibration_images, config.seed
    )
    if model.encoder.calibration is not None:
        log(
            f"calibration.safetensors: {len(model.encoder.calibration)} training images for "
            f"the int8 encoder ({model.encoder.calibration.nbytes() / 1e6:.2f} MB of JPEG)"
        )
    result = publish(
        model,
        paths.model,
        metrics=metrics,
        record=record,
        model_name=config.publish.model_name,
        notes=config.publish.notes,
        repo_id=repo_id or config.publish.repo_id,
        token=token,
        private=True if private else config.publish.private,
    )
    record_stage(config, "push", time.perf_counter() - start, repo_id=result.repo_id)
    log(f"model folder: {result.out_dir} ({', '.join(result.files)})")
    if result.repo_id:
        log(f"pushed to {result.repo_url} (commit {result.commit_hash})")


# --- run --------------------------------------------------------------------------------------


def stage_run(
    config: RunConfig,
    *,
    fresh: bool = False,
    progress: bool,
    repo_id: str | None = None,
    token: str | None = None,
    private: bool = False,
) -> None:
    """prepare, train, evaluate (when ``evaluation.enabled``) and push."""
    start = time.perf_counter()
    stage_prepare(config, progress=progress)
    stage_train(config, fresh=fresh, progress=progress)
    if config.evaluation.enabled:
        stage_evaluate(config, progress=progress)
    stage_push(config, repo_id=repo_id, token=token, private=private)
    log(f"run {config.name} done in {time.perf_counter() - start:.1f} s: {config.paths.model}")
