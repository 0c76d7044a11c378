"""Training at COCO size, stage by stage, timed on this machine and scaled to COCO.

Each stage is timed at COCO-like sizes and scaled to Karpathy's COCO split, with the disk and
memory each cache needs.

    python bench/bench_scale.py            # the measurement: about 5 minutes on 2 quiet cores
    python bench/bench_scale.py --quick    # a smoke run of every step in seconds: tiny sizes and
                                           # a tiny encoder; its numbers say nothing about COCO

What runs, each through the project's own code:

- a synthetic ``dataset_coco.json`` at Karpathy's size (123,287 images, 616,767 captions,
  the four split labels in COCO's proportions, empty image files in ``train2014/`` and
  ``val2014/``), read by ``training.datasets.read_coco`` with ``check_images=False`` (the
  files exist but are not opened; ``PIL`` verify is timed apart on real JPEGs);
- the vocabulary, ``training.prepare.build_vocab``, over its training captions: made-up words
  drawn from a Zipf law tuned so that ``min_count`` 5 keeps about 10,000 of them;
- decoding and resizing synthetic 640x480 JPEGs (quality 90) with ``imcap_hub.images``;
- ResNet50 at 224 px, batch 32, random weights (ImageNet's cannot be downloaded here; the
  same arithmetic), pooled and spatial, runtime ``auto`` and ``keras``
  (``imcap_hub.encoder.Encoder``), and the feature cache end to end
  (``training.features.extract_features`` over the JPEGs);
- ``training.train.fit`` for one short epoch of random stand-in features and synthetic
  captions over a made-up vocabulary of ``--vocab`` tokens, at the coco example configs'
  sizes, for the pooled and the attention decoder: steps/s;
- greedy and beam-3 decoding of one image's features (``imcap_hub.inference.search_features``)
  with every caption run to ``--eval-words`` words;
- a streaming check: the input pipeline (``training.train.make_dataset``) through one epoch of
  a spatial feature cache on disk, watching the process's anonymous memory (``RssAnon``).

Times are medians of ``--repeats`` runs after a warm-up, except the whole-file steps (reading
the captions, the vocabulary, the feature cache end to end), which run once. No GPU was used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, not ours

import numpy as np
from PIL import Image

from imcap_hub.config import EncoderConfig
from training.__main__ import EXAMPLES
from training.run_config import RunConfig

# Karpathy's split of COCO 2014 (dataset_coco.json); "restval" is training data.
COCO_SPLIT_IMAGES = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}
COCO_IMAGES = sum(COCO_SPLIT_IMAGES.values())  # 123,287
COCO_CAPTIONS = 616_767  # 5 per image, a few images have 6 or 7
COCO_TRAIN_IMAGES = COCO_SPLIT_IMAGES["train"] + COCO_SPLIT_IMAGES["restval"]  # 113,287
COCO_CACHED_IMAGES = COCO_TRAIN_IMAGES + COCO_SPLIT_IMAGES["val"]  # what prepare caches
COCO_TEST_IMAGES = COCO_SPLIT_IMAGES["test"]
COCO_TRAIN_CAPTIONS = round(COCO_CAPTIONS * COCO_TRAIN_IMAGES / COCO_IMAGES)  # about 566,700
COCO_VAL_CAPTIONS = round(COCO_CAPTIONS * COCO_SPLIT_IMAGES["val"] / COCO_IMAGES)
IMAGE_FOLDERS = {"train": "train2014", "restval": "val2014", "val": "val2014", "test": "val2014"}

# The synthetic captions: lengths about COCO's (around 10 words), words from a Zipf law whose
# exponent and size make min_count 5 keep about 10,000 words of the ~6M training tokens.
MEAN_WORDS, SD_WORDS, MIN_WORDS = 10.5, 2.5, 4
ZIPF_EXPONENT, WORD_TYPES = 1.42, 30_000
JPEG_SIZE = (640, 480)  # COCO's most common size


@dataclass
class Row:
    """One line of the stage table."""

    stage: str
    measured: str  # what was timed here, in words and numbers
    rate: float  # items per second
    unit: str
    coco_count: int  # items in COCO
    note: str = ""
    key: str = ""  # for the whole-stage table

    @property
    def projected_seconds(self) -> float:
        return self.coco_count / self.rate if self.rate > 0 else math.inf


# --- timing -----------------------------------------------------------------------------------


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_STARTED = time.perf_counter()


def progress(message: str) -> None:
    """What the bench is doing now (stderr: stdout holds only the tables)."""
    elapsed = time.perf_counter() - _STARTED
    print(f"[bench_scale {elapsed:5.0f} s] {message}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def size(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


# --- the configs ------------------------------------------------------------------------------


def coco_config(kind: str, dataset_path: str, work_dir: str, quick: bool) -> RunConfig:
    """The ``coco`` (pooled) or ``coco-attention`` example config, pointed at ``dataset_path``;
    ``quick`` swaps in a tiny encoder and decoder (same code paths, seconds instead of minutes)."""
    config = RunConfig.from_dict(EXAMPLES["coco" if kind == "pooled" else "coco-attention"])
    overrides = [f"dataset.path={dataset_path}", f"work_dir={work_dir}"]
    if quick:
        overrides += [
            "model.encoder.architecture=tiny_resnet",
            "model.encoder.weights=random",
            "model.encoder.image_size=64",
            "model.decoder.embedding_dim=32",
            "model.decoder.units=32",
        ]
        if kind == "attention":
            overrides.append("model.decoder.attention_dim=32")
    return config.with_overrides(overrides)


def random_encoder_config(config: RunConfig) -> EncoderConfig:
    """The run's encoder with random weights: ImageNet's cannot be downloaded here, and the
    arithmetic is the same."""
    return replace(config.model.encoder, weights="random")


# --- synthetic COCO ---------------------------------------------------------------------------


def split_counts(n_images: int) -> dict[str, int]:
    """Karpathy's four split labels scaled to ``n_images`` (exact at 123,287)."""
    counts = {s: max(1, round(c * n_images / COCO_IMAGES)) for s, c in COCO_SPLIT_IMAGES.items()}
    counts["train"] += n_images - sum(counts.values())
    return counts


def made_up_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct lower-case words of 2 to 9 letters."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: dict[str, None] = {}
    while len(words) < n:
        words.setdefault("".join(rng.choice(letters, int(rng.integers(2, 10)))), None)
    return list(words)


def synthetic_captions(n: int, rng: np.random.Generator) -> list[list[str]]:
    """``n`` captions as word lists (see the module's constants)."""
    lengths = np.maximum(np.rint(rng.normal(MEAN_WORDS, SD_WORDS, n)), MIN_WORDS).astype(np.int64)
    p = np.arange(1, WORD_TYPES + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    ids = rng.choice(WORD_TYPES, size=int(lengths.sum()), p=p / p.sum())
    words = np.array(made_up_words(WORD_TYPES, rng), dtype=object)[ids]
    return [list(w) for w in np.split(words, np.cumsum(lengths)[:-1])]


def write_karpathy_dataset(root: Path, n_images: int, seed: int = 0, image: bytes = b"") -> Path:
    """A ``dataset_coco.json`` in Karpathy's format for ``n_images`` images (COCO's caption
    count scaled), and a file holding ``image`` (default: nothing) for each image, where the
    real ones would be."""
    rng = np.random.default_rng(seed)
    n_captions = round(n_images * COCO_CAPTIONS / COCO_IMAGES)
    per_image = np.full(n_images, 5)
    per_image[rng.choice(n_images, max(0, n_captions - 5 * n_images), replace=False)] += 1
    captions = synthetic_captions(int(per_image.sum()), rng)
    labels = [s for s, c in split_counts(n_images).items() for _ in range(c)]
    for folder in set(IMAGE_FOLDERS.values()):
        (root / folder).mkdir(parents=True, exist_ok=True)
    images, sent = [], 0
    for i, (label, count) in enumerate(zip(labels, per_image)):
        folder = IMAGE_FOLDERS[label]
        name = f"COCO_{folder}_{i:012d}.jpg"
        (root / folder / name).write_bytes(image)
        sentences = []
        for sentid in range(sent, sent + int(count)):
            words = captions[sentid]
            raw = " ".join(words).capitalize() + "."
            sentences.append({"tokens": words, "raw": raw, "imgid": i, "sentid": sentid})
        images.append(
            {
                "filepath": folder,
                "sentids": list(range(sent, sent + int(count))),
                "filename": name,
                "imgid": i,
                "split": label,
                "sentences": sentences,
                "cocoid": i,
            }
        )
        sent += int(count)
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path


def photo_like_jpeg(path: Path, seed: int) -> None:
    """A smooth image with noise (a photo compresses like this, noise alone does not)."""
    rng = np.random.default_rng(seed)
    w, h = JPEG_SIZE
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x + 40 * seed) % 256, (y * 0.7) % 256, ((x + y) * 0.3) % 256], -1)
    img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, format="JPEG", quality=90)


# --- memory -----------------------------------------------------------------------------------


def proc_status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (0 where there is none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@contextmanager
def peak_memory(interval: float = 0.005) -> Iterator[dict[str, int]]:
    """Samples RssAnon and RssFile (kB) in a thread while the block runs; yields a dict that
    holds the peaks afterwards. Anonymous memory is what the process holds; file-backed
    pages of a memory map are page cache the kernel can drop."""
    peaks = {"RssAnon": 0, "RssFile": 0}
    stop = threading.Event()

    def sample() -> None:
        while True:
            for key in peaks:
                peaks[key] = max(peaks[key], proc_status_kb(key))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()
        for key in peaks:
            peaks[key] = max(peaks[key], proc_status_kb(key))


# --- the stages -------------------------------------------------------------------------------


def bench_captions(tmp: Path, n_images: int, quick: bool):
    """Write the synthetic file, read it, build the vocabulary. Returns (rows, notes, the
    table's bytes per caption)."""
    from training.datasets import read_coco
    from training.prepare import build_vocab

    progress(f"writing a synthetic dataset_coco.json for {n_images:,} images")
    start = time.perf_counter()
    path = write_karpathy_dataset(tmp / "coco", n_images)
    written = time.perf_counter() - start
    mb = path.stat().st_size / 1e6

    progress("reading it with read_coco")
    start = time.perf_counter()
    table, report = read_coco(path, check_images=False)
    read_s = time.perf_counter() - start
    if report.n_rows_kept != report.n_rows_read:
        raise RuntimeError(f"read_coco dropped rows of the synthetic file: {report.summary()}")

    config = coco_config("pooled", str(path), str(tmp / "runs"), quick)
    progress("building the vocabulary")
    start = time.perf_counter()
    vocab, stats = build_vocab(table, config)
    vocab_s = time.perf_counter() - start

    n_captions, n_train = len(table), stats["train_captions"]
    table_bytes = int(table.memory_usage(deep=True).sum())
    rows = [
        Row(
            "read dataset_coco.json (`read_coco`, check_images off)",
            f"{n_captions:,} captions, {mb:.0f} MB file: {read_s:.1f} s (one run)",
            n_captions / read_s,
            "captions/s",
            COCO_CAPTIONS,
            key="read",
        ),
        Row(
            "vocabulary (`build_vocab`, min count 5)",
            f"{n_train:,} training captions: {vocab_s:.1f} s (one run)",
            n_train / vocab_s,
            "captions/s",
            COCO_TRAIN_CAPTIONS,
            f"{len(vocab):,} tokens here",
            key="vocab",
        ),
    ]
    notes = [
        f"synthetic dataset_coco.json: {n_images:,} images, {n_captions:,} captions, "
        f"{mb:.0f} MB, written in {written:.0f} s; vocabulary {len(vocab):,} tokens "
        f"(min count {config.vocab.min_count}), {stats['dropped_too_long']} training captions "
        f"over {config.vocab.max_length} words",
    ]
    return rows, notes, table_bytes / max(n_captions, 1)


def bench_images(tmp: Path, n_jpegs: int, repeats: int, image_size: int) -> tuple[list[Row], list]:
    """Decode + resize of 640x480 JPEGs, and PIL's verify (what ``check_images`` costs)."""
    from imcap_hub.images import load_image, resize

    progress(f"writing {n_jpegs} synthetic {JPEG_SIZE[0]}x{JPEG_SIZE[1]} JPEGs")
    folder = tmp / "jpegs"
    folder.mkdir()
    paths = [folder / f"{i:04d}.jpg" for i in range(n_jpegs)]
    for i, p in enumerate(paths):
        photo_like_jpeg(p, i)
    jpeg_kb = statistics.mean(p.stat().st_size for p in paths) / 1e3

    def decode_all() -> None:
        for p in paths:
            resize(load_image(p), image_size)

    def verify_all() -> None:
        for p in paths:
            with Image.open(p) as im:
                im.verify()

    progress("timing JPEG decoding")
    decode = median_seconds(decode_all, repeats) / n_jpegs
    verify = median_seconds(verify_all, repeats) / n_jpegs
    rows = [
        Row(
            f"decode + resize a {JPEG_SIZE[0]}x{JPEG_SIZE[1]} JPEG to {image_size} px",
            f"{decode * 1e3:.1f} ms per image (q90, {jpeg_kb:.0f} kB; {n_jpegs} files)",
            1 / decode,
            "images/s",
            COCO_CACHED_IMAGES,
            "the image cache of `train_encoder` runs: this plus writing 150 kB a row",
            key="jpeg",
        ),
        Row(
            "PIL verify (`check_images` on)",
            f"{verify * 1e3:.2f} ms per image",
            1 / verify,
            "images/s",
            COCO_IMAGES,
            "warm file cache; a cold disk adds a read per file",
        ),
    ]
    return rows, paths


def bench_encoders(config: RunConfig, jpegs: list, repeats: int, tmp: Path):
    """ResNet50 (or the quick run's tiny encoder) at batch ``features.batch_size``, pooled and
    spatial, each runtime; then the feature cache end to end. Returns (rows, encode seconds
    per image by kind for the chosen runtime, runtime name)."""
    from imcap_hub.encoder import Encoder, build_keras_encoder, preprocess
    from training.features import extract_features

    batch = config.features.batch_size
    base = random_encoder_config(config)
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (base.image_size, base.image_size, 3), dtype=np.uint8)
        for _ in range(batch)
    ]
    rows: list[Row] = []
    per_image: dict[str, float] = {}
    chosen = "keras"
    auto: dict[str, object] = {}
    for features in ("pooled", "spatial"):
        enc_config = replace(base, features=features)
        progress(f"building the {features} encoder")
        keras_model = build_keras_encoder(enc_config)
        inputs = preprocess(images, enc_config)
        for runtime in ("auto", "keras"):
            # Converted encoders go to the temporary folder: random weights differ every run,
            # so a cache kept between runs would only grow.
            encoder = Encoder(
                enc_config, keras_model=keras_model, runtime=runtime, cache_dir=tmp / "encoders"
            )
            info = encoder.prepare()
            progress(f"timing the {features} encoder, runtime {info.name}")
            seconds = median_seconds(lambda enc=encoder, x=inputs: enc.run(x), repeats)
            rate = batch / seconds
            note = "" if runtime == "keras" else f"auto picked {info.name}"
            if runtime == "auto" and not info.cached:
                note += f" (converted in {info.build_seconds:.0f} s, once per encoder)"
            rows.append(
                Row(
                    f"{base.architecture} {base.image_size} px, {features}, {info.name}",
                    f"{seconds * 1e3:.0f} ms per batch of {batch}",
                    rate,
                    "images/s",
                    COCO_CACHED_IMAGES,
                    note,
                    key=f"encoder-{features}-{runtime}",
                )
            )
            if runtime == "auto":
                per_image[features] = 1 / rate
                chosen = info.name
                auto[features] = encoder

    for features, encoder in auto.items():
        progress(f"the {features} feature cache end to end over {len(jpegs)} JPEGs")
        report = extract_features(
            [str(p) for p in jpegs], encoder, tmp / "features", batch_size=batch, progress=False
        ).report
        rows.append(
            Row(
                f"feature cache end to end (`extract_features`, {features}, {chosen})",
                f"{report.n_computed} JPEGs in {report.seconds:.1f} s (one run)",
                report.images_per_second,
                "images/s",
                COCO_CACHED_IMAGES,
                "decoding in a thread beside the encoder, rows written to the memory map: "
                "prepare's feature step",
                key=f"cache-{features}",
            )
        )
    return rows, per_image, chosen


class StepTimes:
    """A Keras callback (built on first use) that records when each training step ends."""

    @staticmethod
    def make():
        import keras

        class _StepTimes(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.ends: list[float] = []

            def on_train_batch_end(self, batch, logs=None) -> None:
                self.ends.append(time.perf_counter())

        return _StepTimes()


def made_up_vocabulary(size: int):
    """A ``Vocabulary`` of ``size`` tokens (specials included) of made-up words."""
    from imcap_hub.vocab import SPECIALS, Vocabulary

    words = made_up_words(size - len(SPECIALS), np.random.default_rng(1))
    return Vocabulary.build([" ".join(words)])


def decoder_data(config: RunConfig, vocab_size: int, n_captions: int, seed: int = 0):
    """A ``TrainData`` of ``n_captions`` synthetic captions (five per image) over random
    stand-in features of the config's shape."""
    from training.train import Split, TrainData

    tokens = synthetic_tokens(n_captions, vocab_size, config.vocab.max_length, seed)
    n_images = math.ceil(n_captions / 5)
    shape = random_encoder_config(config).feature_shape
    rng = np.random.default_rng(seed)
    inputs = rng.random((n_images, *shape), dtype=np.float32)
    rows = np.arange(n_captions, dtype=np.int64) // 5
    return TrainData(inputs=inputs, train=Split(rows, tokens), val=None, images=False)


def bench_decoder_training(
    kind: str, tmp: Path, vocab, warmup: int, steps: int, quick: bool
) -> tuple[Row, RunConfig]:
    """One epoch of ``training.train.fit`` with ``warmup + steps`` steps; the median time
    between the ends of consecutive steps after the warm-up (data pipeline included)."""
    from training.train import fit

    config = coco_config(kind, "unused", str(tmp / "runs"), quick)
    settings = replace(config.training, epochs=1)
    model_config = config.captioner_config(len(vocab))
    batch = settings.batch_size
    data = decoder_data(config, len(vocab), (warmup + steps) * batch)
    timer = StepTimes.make()
    progress(f"training the {kind} decoder for {warmup + steps} steps")
    fit(
        model_config,
        data,
        tmp / f"checkpoints-{kind}",
        settings,
        seed=config.seed,
        resume=False,
        callbacks=[timer],
        log=lambda _message: None,
    )
    step = statistics.median(np.diff(timer.ends[warmup - 1 :]))
    dec = model_config.decoder
    lengths = (data.train.tokens != 0).sum(axis=1) - 2
    sizes = f"E={dec.embedding_dim} U={dec.units}" + (
        f" A={dec.attention_dim}" if dec.attention_dim else ""
    )
    steps_per_epoch = math.ceil(COCO_TRAIN_CAPTIONS / batch)
    row = Row(
        f"decoder training, {kind} (`fit`, one epoch)",
        f"{step * 1e3:.0f} ms per step (batch {batch}, V={len(vocab):,}, {sizes}, "
        f"{lengths.mean():.1f} words mean; median of {steps} steps)",
        1 / step,
        "steps/s",
        steps_per_epoch,
        f"one epoch = {steps_per_epoch:,} steps, and a validation pass (forward only, "
        f"{math.ceil(COCO_VAL_CAPTIONS / batch)} batches, not timed); the config allows {config.training.epochs} "
        f"epochs (patience {settings.patience})",
        key=f"train-{kind}",
    )
    return row, config


def bench_decoding(config: RunConfig, vocab, words: int, repeats: int) -> dict[str, float]:
    """Seconds per image of greedy and beam-3 decoding of one image's features, every caption
    run to ``words`` words (the ``<end>`` logit pushed down)."""
    from imcap_hub.inference import DecodeOptions, search_features, single_threaded_blas
    from imcap_hub.model import ImageCaptioner

    model_config = config.captioner_config(len(vocab))
    model_config = replace(model_config, encoder=random_encoder_config(config))
    model = ImageCaptioner.from_config(model_config, vocab, seed=0)  # the encoder is not built
    weights = dict(model.decoder_weights)
    weights["logits/bias"] = weights["logits/bias"].copy()
    weights["logits/bias"][vocab.end_id] = -1e4
    model.set_decoder_weights(weights)
    rng = np.random.default_rng(0)
    features = rng.random(model_config.encoder.feature_shape, dtype=np.float32)
    out = {}
    for name, options in (
        ("greedy", DecodeOptions(decoding="greedy", max_length=words)),
        ("beam-3", DecodeOptions(beam_size=3, max_length=words)),
    ):
        with single_threaded_blas():  # as evaluation runs it (predict_decodings)
            out[name] = median_seconds(
                lambda o=options: search_features(model, features, o), repeats
            )
    return out


def synthetic_tokens(n: int, vocab_size: int, max_length: int, seed: int = 0) -> np.ndarray:
    """``n`` token rows as ``training.train.encode_captions`` makes them (``<start>``, word
    ids, ``<end>``, padding), lengths as the synthetic captions'."""
    from imcap_hub.vocab import SPECIALS, Vocabulary

    rng = np.random.default_rng(seed)
    lengths = np.rint(rng.normal(MEAN_WORDS, SD_WORDS, n)).clip(MIN_WORDS, max_length)
    tokens = np.zeros((n, max_length + 2), dtype=np.int32)
    for i, length in enumerate(lengths.astype(np.int64)):
        tokens[i, 0] = Vocabulary.start_id
        tokens[i, 1 : length + 1] = rng.integers(len(SPECIALS), vocab_size, length)
        tokens[i, length + 1] = Vocabulary.end_id
    return tokens


def bench_streaming(tmp: Path, config: RunConfig, n_images: int) -> list[str]:
    """A spatial feature cache on disk, read through one epoch of ``make_dataset``; the
    process's anonymous memory before and at its peak."""
    from training.train import Split, TrainData, epoch_order, make_dataset

    shape = random_encoder_config(config).feature_shape
    row_bytes = int(np.prod(shape)) * 4
    cache_bytes = n_images * row_bytes
    free = shutil.disk_usage(tmp).free
    if free < 2 * cache_bytes + 1e9:
        return [f"streaming check skipped: {size(cache_bytes)} cache, {size(free)} free in {tmp}"]
    progress(f"writing a {size(cache_bytes)} spatial feature cache ({n_images:,} images)")
    path = tmp / "spatial.npy"
    cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_images, *shape))
    chunk = max(1, (64 << 20) // row_bytes)
    for start in range(0, n_images, chunk):
        stop = min(n_images, start + chunk)
        cache[start:stop] = np.arange(start, stop, dtype=np.float32).reshape(-1, 1, 1, 1)
    cache.flush()
    del cache
    # Out of the page cache, so the epoch reads from disk as a fresh training run would.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)

    n_captions = 5 * n_images
    tokens = synthetic_tokens(n_captions, 10_000, config.vocab.max_length)
    inputs = np.load(path, mmap_mode="r")
    data = TrainData(
        inputs=inputs,
        train=Split(np.arange(n_captions, dtype=np.int64) // 5, tokens),
        val=None,
        images=False,
    )
    batch = config.training.batch_size
    orders = epoch_order(data, config.seed, 0)[None]
    dataset = make_dataset(data, data.train, batch, orders, config.model.encoder.preprocessing)
    anon_before = proc_status_kb("RssAnon")
    file_before = proc_status_kb("RssFile")
    progress(f"one epoch of the input pipeline: {n_captions:,} captions, batch {batch}")
    start = time.perf_counter()
    n_batches, half = 0, max(1, math.ceil(n_captions / batch) // 2)
    expected = float(data.train.image_rows[orders[0, 0]])  # each row holds its own number
    with peak_memory() as peaks:
        for (x, _ids), _targets, _weights in dataset:
            n_batches += 1
            if n_batches == 1 and float(x[0, 0, 0, 0]) != expected:
                raise RuntimeError("the pipeline read another row than the one it was asked for")
            if n_batches == half:
                half_peak = peaks["RssAnon"]  # streaming: the second half adds nothing
    seconds = time.perf_counter() - start
    del dataset, data, inputs
    path.unlink()
    growth_mb = (peaks["RssAnon"] - anon_before) / 1e3
    read_gb = n_captions * row_bytes / 1e9
    return [
        f"spatial cache {size(cache_bytes)} ({n_images:,} images x {shape} float32), "
        f"{n_captions:,} captions read through `make_dataset` in {n_batches} batches of {batch}: "
        f"{seconds:.1f} s, {read_gb:.1f} GB of rows copied out ({read_gb / seconds:.2f} GB/s, "
        f"{n_batches / seconds:.0f} batches/s)",
        f"RssAnon before {anon_before / 1e3:.0f} MB, peak {half_peak / 1e3:.0f} MB in the first "
        f"half of the epoch and {peaks['RssAnon'] / 1e3:.0f} MB over all of it: grew "
        f"{growth_mb:.0f} MB = {growth_mb * 1e6 / cache_bytes:.1%} of the cache "
        f"(RssFile, page cache of the memory map: {file_before / 1e3:.0f} -> "
        f"{peaks['RssFile'] / 1e3:.0f} MB, the kernel's to drop)",
    ]


# --- sizes ------------------------------------------------------------------------------------


def computed_sizes(table_bytes_per_caption: float) -> list[tuple[str, str]]:
    """Disk and memory at COCO size from the coco example configs, quick run or not (rows of
    a two-column table)."""
    config = RunConfig.from_dict(EXAMPLES["coco"])
    pooled = config.model.encoder
    spatial = RunConfig.from_dict(EXAMPLES["coco-attention"]).model.encoder
    image_shape = (pooled.image_size, pooled.image_size, 3)
    caches = (
        ("pooled feature cache", pooled.feature_shape, "float32"),
        ("spatial feature cache", spatial.feature_shape, "float32"),
        ("image cache of `train_encoder`", image_shape, "uint8"),
    )
    rows = []
    for what, shape, dtype in caches:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        rows.append(
            (
                f"{what} {shape} {dtype}: {n:,} B x {COCO_CACHED_IMAGES:,} train + val images",
                size(n * COCO_CACHED_IMAGES),
            )
        )
    captions = COCO_TRAIN_CAPTIONS + COCO_VAL_CAPTIONS
    width = config.vocab.max_length + 2
    epochs = config.training.epochs
    rows += [
        (
            f"in RAM while training: caption tokens, {captions:,} train + val captions x "
            f"{width} int32 + an int64 image row each",
            size(captions * (width * 4 + 8)),
        ),
        (
            f"in RAM while training: the epoch orders, {epochs} epochs x {COCO_TRAIN_CAPTIONS:,} "
            "int64, per copy (made in numpy, kept as the tf.constant of `make_dataset`)",
            size(epochs * COCO_TRAIN_CAPTIONS * 8),
        ),
        (
            f"in RAM while training: the captions table (pandas; {table_bytes_per_caption:.0f} B "
            f"per caption measured here) x {COCO_CAPTIONS:,}",
            size(table_bytes_per_caption * COCO_CAPTIONS),
        ),
        ("in RAM while training: the features", "memory-mapped: read batch by batch"),
    ]
    return rows


# --- main -------------------------------------------------------------------------------------


# option: (full run, --quick run, help)
SIZES: dict[str, tuple[int, int, str]] = {
    "images": (COCO_IMAGES, 400, "images in the synthetic dataset_coco.json"),
    "jpegs": (96, 8, "synthetic JPEGs decoded and encoded"),
    "repeats": (5, 2, "timed runs per median"),
    "encoder_repeats": (3, 2, "timed encoder batches per median"),
    "warmup_steps": (3, 2, "training steps before the timed ones"),
    "steps": (10, 3, "timed training steps per decoder"),
    "vocab": (10_000, 200, "the decoders' vocabulary, specials included"),
    "stream_images": (5_000, 16, "images in the streaming check's spatial cache"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    for name, (full, quick, what) in SIZES.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            help=f"{what} (default {full:,}; --quick {quick:,})",
        )
    parser.add_argument(
        "--eval-words", type=int, default=10, help="words per decoded caption (default 10)"
    )
    parser.add_argument("--tmp", help="where the temporary files go (default: the system's)")
    args = parser.parse_args(argv)
    for name, (full, quick, _) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


@dataclass
class Results:
    """What :func:`run` measured, for :func:`report`."""

    rows: list[Row]
    streaming: list[str]
    notes: list[str]
    table_bytes_per_caption: float
    seconds: float
    load_before: float
    load_after: float

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)


def run(args: argparse.Namespace, tmp: Path) -> Results:
    """Every measurement, in a temporary folder ``tmp``."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    pooled_config = coco_config("pooled", "unused", str(tmp / "runs"), args.quick)
    attention_config = coco_config("attention", "unused", str(tmp / "runs"), args.quick)
    # First, while the process has freed little: memory freed earlier and reused by the
    # pipeline would hide its growth.
    streaming = bench_streaming(tmp, attention_config, args.stream_images)
    rows, notes, table_bytes = bench_captions(tmp, args.images, args.quick)
    image_rows, jpegs = bench_images(
        tmp, args.jpegs, args.repeats, pooled_config.model.encoder.image_size
    )
    rows += image_rows
    encoder_rows, encode_s, runtime = bench_encoders(
        pooled_config, jpegs, args.encoder_repeats, tmp
    )
    rows += encoder_rows
    # A vocabulary of COCO's size (about 10,000 at min count 5), whatever --images made.
    vocab = made_up_vocabulary(args.vocab)
    decode_s = {}
    for kind in ("pooled", "attention"):
        row, config = bench_decoder_training(
            kind, tmp, vocab, args.warmup_steps, args.steps, args.quick
        )
        rows.append(row)
        progress(f"timing {kind} decoding")
        decode_s[kind] = bench_decoding(config, vocab, args.eval_words, args.repeats)
    jpeg_s = 1 / image_rows[0].rate
    for kind, features in (("pooled", "pooled"), ("attention", "spatial")):
        greedy, beam = decode_s[kind]["greedy"], decode_s[kind]["beam-3"]
        per_image = jpeg_s + encode_s[features] + greedy + beam
        rows.append(
            Row(
                f"evaluation, {kind}: decode JPEG, encode ({runtime}), greedy + beam-3",
                f"{per_image * 1e3:.0f} ms per image (greedy {greedy * 1e3:.1f} ms, "
                f"beam-3 {beam * 1e3:.1f} ms, {args.eval_words} words)",
                1 / per_image,
                "images/s",
                COCO_TEST_IMAGES,
                "the coco-caption scorers (Java) not included",
                key=f"eval-{kind}",
            )
        )
    return Results(
        rows,
        streaming,
        notes,
        table_bytes,
        time.perf_counter() - started,
        load_before,
        os.getloadavg()[0],
    )


def report(results: Results, quick: bool) -> None:
    """The markdown tables, on stdout."""
    cpus = os.cpu_count()
    print(
        f"machine: {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}; "
        f"load average {results.load_before:.2f} at the start, {results.load_after:.2f} at "
        f"the end; the bench took {duration(results.seconds)}"
    )
    if quick:
        print("QUICK SMOKE RUN: tiny sizes and a tiny encoder; its numbers say nothing about COCO")
    print(
        f"COCO, Karpathy's split: {COCO_TRAIN_IMAGES:,} train (restval included) / "
        f"{COCO_SPLIT_IMAGES['val']:,} val / {COCO_TEST_IMAGES:,} test images, "
        f"{COCO_CAPTIONS:,} captions (about {COCO_TRAIN_CAPTIONS:,} training)\n"
    )
    print(f"| stage | measured here | rate | COCO count | projected here ({cpus} CPUs) | one GPU |")
    print("|---|---|---:|---:|---:|---|")
    for r in results.rows:
        note = f"; {r.note}" if r.note else ""
        print(
            f"| {r.stage} | {r.measured}{note} | {r.rate:,.1f} {r.unit} | {r.coco_count:,} | "
            f"{duration(r.projected_seconds)} | not measured |"
        )

    def projected(*keys: str) -> str:
        return duration(sum(results.row(k).projected_seconds for k in keys))

    epochs = RunConfig.from_dict(EXAMPLES["coco"]).training.epochs
    print()
    print(
        "| whole stage at COCO size, projected here | pooled (`coco`) | attention (`coco-attention`) |"
    )
    print("|---|---:|---:|")
    print(
        f"| prepare: read, vocabulary, feature cache | {projected('read', 'vocab', 'cache-pooled')} "
        f"| {projected('read', 'vocab', 'cache-spatial')} |"
    )
    print(f"| train, one epoch | {projected('train-pooled')} | {projected('train-attention')} |")
    print(
        f"| train, {epochs} epochs (the configs' limit; patience stops sooner) | "
        f"{duration(epochs * results.row('train-pooled').projected_seconds)} | "
        f"{duration(epochs * results.row('train-attention').projected_seconds)} |"
    )
    print(
        f"| evaluate on test, captioning (not scoring) | {projected('eval-pooled')} | "
        f"{projected('eval-attention')} |"
    )
    print()
    print("| computed at COCO size (from the coco example configs) | bytes |")
    print("|---|---:|")
    for what, value in computed_sizes(results.table_bytes_per_caption):
        print(f"| {what} | {value} |")
    print()
    print("Streaming check (spatial cache, memory-mapped):\n")
    for line in results.streaming:
        print(f"- {line}")
    print()
    for line in results.notes:
        print(f"- {line}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imcap-bench-scale-", dir=args.tmp) as tmp:
        results = run(args, Path(tmp))
    report(results, args.quick)


if __name__ == "__main__":
    main()
