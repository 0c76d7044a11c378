"""``python -m training prepare``: read the dataset, clean the captions, build the vocabulary
and cache what training reads (encoder features, or resized images for ``train_encoder``).

Writes, under ``<run>/prepared/``:

- ``captions.csv``: every kept caption row (image, caption, split), the raw text: the
  references evaluation scores against;
- ``vocab.json``: words of the training captions (``normalize_caption``, the same cleaning as
  inference) seen at least ``vocab.min_count`` times, at most ``vocab.max_size`` tokens;
- ``prepare.json``: the reader's report, split sizes, vocabulary statistics, the cache report
  and the time each step took;
- ``encoder.safetensors``: the frozen encoder's weights when they are random (so training,
  the features and the published model all use the same encoder).

The feature (or image) cache lives in ``<run>/features/`` and resumes after a kill.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imcap_hub.errors import ImcapError
from imcap_hub.files import atomic_write, atomic_write_json, save_tensors
from imcap_hub.vocab import Vocabulary, normalize_caption
from training.datasets import SPLITS
from training.features import CachedArrays
from training.run_config import RunConfig
from training.shards import Shard, ShardOutcome, locked


class PrepareError(ImcapError, RuntimeError):
    """The dataset cannot be prepared; the message says why."""


def dataset_root(config: RunConfig, log: Callable[[str], None] = print) -> tuple[Path, str]:
    """The dataset folder and layout; draws the synthetic dataset first when configured."""
    ds = config.dataset
    if ds.synthetic is not None:
        from training.synthetic import SYNTHETIC_CONFIG_FILE, SyntheticConfig, write_dataset

        syn = SyntheticConfig.from_dict(ds.synthetic)
        root = config.paths.data / f"synthetic-{ds.synthetic_layout}"
        marker = root / SYNTHETIC_CONFIG_FILE
        current = None
        if marker.exists():
            try:
                current = json.loads(marker.read_text(encoding="utf-8")).get("config")
            except json.JSONDecodeError:
                current = None
        if current != syn.to_dict():
            start = time.perf_counter()
            if marker.exists():
                marker.unlink()  # the marker is written last: no marker, no finished dataset
            write_dataset(root, syn, ds.synthetic_layout)
            log(
                f"drew {syn.n_images} synthetic images into {root} ({ds.synthetic_layout} "
                f"layout) in {time.perf_counter() - start:.1f} s"
            )
        return root, ds.synthetic_layout
    root = Path(ds.path or "")
    if not root.exists():
        raise PrepareError(f"dataset.path {root} does not exist")
    return root, ds.layout


def read_table(config: RunConfig, log: Callable[[str], None] = print):
    """(table, report, root, layout) for the configured dataset."""
    from training.datasets import detect_layout, read_dataset

    root, layout = dataset_root(config, log)
    try:
        if layout == "auto":
            layout = detect_layout(root)
        table, report = read_dataset(layout, root, **config.dataset.reader_options)
    except TypeError as e:
        raise PrepareError(f"dataset.reader_options: {e}") from None
    except (OSError, ValueError) as e:
        raise PrepareError(f"cannot read the dataset at {root}: {e}") from None
    if len(table) == 0:
        raise PrepareError(f"no usable captions in {root} ({report.summary()})")
    if not (table["split"] == "train").any():
        raise PrepareError(f"the dataset at {root} has no training images")
    return table, report, root, layout


def build_vocab(table: pd.DataFrame, config: RunConfig) -> tuple[Vocabulary, dict[str, Any]]:
    """The vocabulary of the training captions that fit ``vocab.max_length``, and statistics."""
    v = config.vocab
    train = table[table["split"] == "train"]["caption"]
    words = [normalize_caption(c) for c in train]
    lengths = np.array([len(w) for w in words])
    kept = [w for w in words if 0 < len(w) <= v.max_length]
    vocab = Vocabulary.build(kept, min_count=v.min_count, max_size=v.max_size)
    n_tokens = sum(len(w) for w in kept)
    n_unk = sum(1 for w in kept for t in w if vocab.id(t) == vocab.unk_id)
    distinct = len({t for w in kept for t in w})
    stats = {
        "size": len(vocab),
        "min_count": v.min_count,
        "max_size": v.max_size,
        "max_length": v.max_length,
        "distinct_train_words": distinct,
        "train_captions": len(words),
        "train_captions_kept": len(kept),
        "dropped_too_long": int((lengths > v.max_length).sum()),
        "dropped_empty": int((lengths == 0).sum()),
        "caption_length_mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        "caption_length_p95": float(np.percentile(lengths, 95)) if len(lengths) else 0.0,
        "unknown_token_rate": round(n_unk / n_tokens, 5) if n_tokens else 0.0,
    }
    return vocab, stats


def frozen_encoder(config: RunConfig, runtime: str | None = None):
    """The encoder whose features the decoder trains on (frozen-encoder runs).

    ImageNet ResNet50 and ``repo`` weights come from ``model.encoder_weights`` (or Keras'
    download); a ``random`` encoder is drawn once (seeded) and kept in
    ``prepared/encoder.safetensors``, so its features, training and the published model
    agree. Returns ``(Encoder, published EncoderConfig)``.
    """
    from imcap_hub.encoder import Encoder, build_keras_encoder, keras_weights

    enc = config.model.encoder
    runtime = runtime or config.features.runtime
    if enc.weights == "random":
        path = config.paths.frozen_encoder
        if not path.exists():
            import keras

            keras.utils.set_random_seed(config.seed)
            weights = keras_weights(build_keras_encoder(enc))
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors(weights, path, "imcap-encoder/1")
        published = replace(enc, weights="repo")
        return Encoder(published, weights_file=path, runtime=runtime), published
    weights_file = config.model.encoder_weights
    if weights_file is not None and not Path(weights_file).is_file():
        raise PrepareError(f"model.encoder_weights {weights_file} does not exist")
    return Encoder(enc, weights_file=weights_file, runtime=runtime), enc


def training_images(table: pd.DataFrame) -> list[str]:
    """The images training reads (train and val splits), each once, in table order."""
    rows = table[table["split"].isin(("train", "val"))]
    return list(dict.fromkeys(rows["image"].tolist()))


def cache_inputs(
    config: RunConfig,
    table: pd.DataFrame,
    *,
    progress: bool = True,
    shard: Shard | None = None,
    wait: bool = False,
    log: Callable[[str], None] = print,
) -> CachedArrays | ShardOutcome:
    """Features (frozen encoder) or resized images (``train_encoder``) for the train and val
    images; computed once, resumable. ``shard``: only that shard's part (see
    ``training.shards``); a ``ShardOutcome`` until every shard has run."""
    from training.features import cache_images, extract_features

    images = training_images(table)
    root = config.paths.features
    options = {
        "flush_seconds": config.features.flush_seconds,
        "progress": progress,
        "shard": shard,
        "wait": wait,
        "log": log,
    }
    if config.training.train_encoder:
        batch_size = max(config.features.batch_size, 64)
        return cache_images(
            images, config.model.encoder.image_size, root, batch_size=batch_size, **options
        )
    if shard is None:
        encoder, _ = frozen_encoder(config)
    else:
        with locked(config.paths.prepared):  # one shard draws a random encoder, once
            encoder, _ = frozen_encoder(config)
    return extract_features(images, encoder, root, batch_size=config.features.batch_size, **options)


def load_prepared(config: RunConfig) -> tuple[pd.DataFrame, Vocabulary, dict[str, Any]]:
    """What ``prepare`` wrote; a clear error when it has not run."""
    paths = config.paths
    for path in (paths.captions, paths.vocab, paths.prepare_info):
        if not path.exists():
            raise PrepareError(
                f"{path} is missing: run `python -m training prepare` with this config first"
            )
    table = pd.read_csv(paths.captions, dtype=str, keep_default_na=False)
    vocab = Vocabulary.load(paths.vocab)
    info = json.loads(paths.prepare_info.read_text(encoding="utf-8"))
    return table, vocab, info


def prepare(
    config: RunConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    shard: Shard | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Run the prepare stage; returns (and writes) ``prepare.json``.

    ``shard``: cache only that shard's images (``training.shards``). The shard that completes
    the cache merges it and writes ``prepare.json``; the others return ``{"shard": ...,
    "complete": False}`` unless ``wait``, which waits for the cache to be complete.
    """
    paths = config.paths
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if shard is not None and config.dataset.synthetic is not None:
        with locked(paths.prepared):  # one shard draws the synthetic dataset, once
            dataset_root(config, log)
    table, report, root, layout = read_table(config, log)
    timings["read_dataset_s"] = time.perf_counter() - start
    log(report.summary())

    paths.prepared.mkdir(parents=True, exist_ok=True)
    table = table[["image", "caption", "split"]].reset_index(drop=True)
    atomic_write(paths.captions, table.to_csv(index=False))

    t = time.perf_counter()
    vocab, vocab_stats = build_vocab(table, config)
    vocab.save(paths.vocab)
    timings["vocab_s"] = time.perf_counter() - t
    log(
        f"vocabulary: {len(vocab)} tokens (min count {config.vocab.min_count}); "
        f"{vocab_stats['train_captions_kept']}/{vocab_stats['train_captions']} training captions "
        f"within {config.vocab.max_length} words; unknown-word rate "
        f"{vocab_stats['unknown_token_rate']:.2%}"
    )

    t = time.perf_counter()
    kind = "images" if config.training.train_encoder else "features"
    cached = cache_inputs(config, table, progress=progress, shard=shard, wait=wait, log=log)
    timings[f"{kind}_s"] = time.perf_counter() - t
    if isinstance(cached, ShardOutcome):
        log(
            f"{kind}: shard {shard}: {cached.n_computed} of its {cached.n_images} uncached "
            f"images computed in {cached.seconds:.1f} s ({cached.n_failed} unreadable); the "
            f"cache is complete when every shard has run (waiting for {cached.pending}): the "
            "last one merges it and writes prepare.json"
        )
        return {
            "shard": str(shard),
            "complete": False,
            "n_images": cached.n_images,
            "n_computed": cached.n_computed,
            "n_failed": cached.n_failed,
            "seconds": round(cached.seconds, 3),
        }
    log(f"{kind}: " + cached.report.summary())

    splits = {}
    for split in SPLITS:
        rows = table[table["split"] == split]
        splits[split] = {"images": int(rows["image"].nunique()), "captions": len(rows)}
    info = {
        "dataset": {
            "name": config.dataset.display_name,
            "layout": layout,
            "path": str(Path(root).resolve()),
            "synthetic": config.dataset.synthetic,
            "report": report.to_dict(),
        },
        "splits": splits,
        "vocab": vocab_stats,
        "cache": {"kind": kind, **cached.report.to_dict()},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    atomic_write_json(paths.prepare_info, info, sort_keys=True)
    return info
