"""The encoder feature cache: features computed once per image, memory-mapped, resumable.

A cache is a folder named by a hash of what determines its rows. For encoder features that is
the encoder config and a fingerprint of the encoder weights, so a different encoder never
reads another's features; for the resized images of end-to-end training it is the image size.
The folder holds

- ``key.json``: what the hash was made of (written once, atomically);
- ``index.json``: the image paths in row order (path -> row), the row shape and dtype
  (written atomically: temp file + ``os.replace``);
- ``data.npy``: the rows, an ``.npy`` file opened with ``np.lib.format.open_memmap``;
- ``done.npy``: one byte per row, 0 = to do, 1 = done, 2 = the image could not be read;
- ``failed.json``: why each failed image failed.

A row is marked done only after its data is written, and both arrays are flushed every
``flush_seconds``, so a killed extraction resumes with every finished row intact and redoes
only the rest. Images that cannot be read are reported and skipped (retried on the next call),
never fatal. Asking for images the cache does not have yet grows it, keeping what is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imcap_hub.errors import ImcapError
from imcap_hub.files import atomic_write_json
from training.shards import Shard, ShardOutcome, fill_shard, merge_report

FORMAT_VERSION = 1
TODO, DONE, FAILED = 0, 1, 2


class CacheError(ImcapError, RuntimeError):
    """A cache folder that does not match what it should hold."""


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=1, sort_keys=True)


def cache_key(payload: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able payload."""
    text = json.dumps({**payload, "cache_format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CacheReport:
    """What one ``fill`` did."""

    folder: str
    n_images: int
    n_cached: int  # already done before this call
    n_computed: int  # done by this call
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    seconds: float = 0.0
    runtime: str | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)  # each shard's part, if sharded

    @property
    def images_per_second(self) -> float:
        return self.n_computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "n_images": self.n_images,
            "n_cached": self.n_cached,
            "n_computed": self.n_computed,
            "n_failed": len(self.failed),
            "failed": dict(list(self.failed.items())[:20]),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "runtime": self.runtime,
            **({"shards": self.shards} if self.shards else {}),
        }

    def summary(self) -> str:
        text = (
            f"{self.n_images} images: {self.n_cached} cached, {self.n_computed} computed "
            f"in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        )
        if self.runtime:
            text += f" with the {self.runtime} runtime"
        if self.shards:
            text += f" by {len(self.shards)} shards"
        if self.failed:
            first = next(iter(self.failed.items()))
            text += f"; {len(self.failed)} unreadable, skipped (e.g. {first[0]}: {first[1]})"
        return text


class RowCache:
    """Rows of a fixed shape, one per image path, in a memory-mapped ``.npy`` (see module)."""

    def __init__(self, folder: Path, keys: list[str], data: np.memmap, done: np.memmap) -> None:
        self.folder = folder
        self.keys = keys
        self.row_of = {k: i for i, k in enumerate(keys)}
        self.data = data
        self.done = done

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        folder: Path | str,
        keys: Sequence[str],
        row_shape: Sequence[int],
        dtype: str,
        key_payload: dict[str, Any] | None = None,
        reclaimable: int = 0,
    ) -> RowCache:
        """Open (creating or growing as needed) the cache in ``folder`` for ``keys``.

        ``reclaimable``: bytes on the same disk that filling the cache frees (shard parts)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        row_shape = tuple(int(s) for s in row_shape)
        key_file = folder / "key.json"
        if key_payload is not None and not key_file.exists():
            _atomic_write_json(key_file, key_payload)
        index_file = folder / "index.json"
        existing: list[str] = []
        if index_file.exists():
            index = json.loads(index_file.read_text(encoding="utf-8"))
            if tuple(index["row_shape"]) != row_shape or index["dtype"] != dtype:
                raise CacheError(
                    f"{folder} holds rows of shape {tuple(index['row_shape'])} {index['dtype']}, "
                    f"expected {row_shape} {dtype}; delete the folder to rebuild it"
                )
            existing = list(index["keys"])
        have = set(existing)
        missing = [k for k in dict.fromkeys(keys) if k not in have]
        if missing or not index_file.exists():
            cls._check_disk(
                folder, len(existing), len(existing) + len(missing), row_shape, dtype, reclaimable
            )
            cls._grow(folder, existing, existing + missing, row_shape, dtype)
            existing = existing + missing
        data = np.lib.format.open_memmap(folder / "data.npy", mode="r+")
        done = np.lib.format.open_memmap(folder / "done.npy", mode="r+")
        n = len(existing)
        if data.shape[0] < n or done.shape[0] < n or tuple(data.shape[1:]) != row_shape:
            raise CacheError(f"{folder} is damaged (array sizes); delete the folder to rebuild it")
        return cls(folder, existing, data, done)

    @staticmethod
    def _check_disk(
        folder: Path,
        n_old: int,
        n_new: int,
        row_shape: tuple[int, ...],
        dtype: str,
        reclaimable: int,
    ) -> None:
        """Refuse a cache the disk cannot hold: filling a memory map on a full disk kills the
        process with SIGBUS, no message. Growing copies the old rows into a new file, then
        fills the new ones: the disk must hold the larger of the two."""
        row = int(np.prod(row_shape)) * np.dtype(dtype).itemsize + 1  # + its done byte
        needed = max(n_old, n_new - n_old) * row - reclaimable
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise CacheError(
                f"the cache in {folder} needs {needed / 2**30:.2f} GiB more for "
                f"{n_new - n_old} images ({row:,} bytes each), but the disk has "
                f"{free / 2**30:.2f} GiB free; free some space or point features.cache_dir elsewhere"
            )

    @staticmethod
    def _grow(
        folder: Path, old: list[str], new: list[str], row_shape: tuple[int, ...], dtype: str
    ) -> None:
        """Make arrays for ``new`` keys, keeping the rows of ``old`` (a prefix of ``new``).

        Order: data, then done, then index, each replaced atomically. Whatever the order of
        a crash, the index never names a row whose array is missing, and the arrays may
        only be longer than the index.
        """
        n_old, n_new = len(old), len(new)
        tmp_data = folder / f".data.{os.getpid()}.npy"
        tmp_done = folder / f".done.{os.getpid()}.npy"
        data = np.lib.format.open_memmap(
            tmp_data, mode="w+", dtype=np.dtype(dtype), shape=(n_new, *row_shape)
        )
        done = np.lib.format.open_memmap(tmp_done, mode="w+", dtype=np.uint8, shape=(n_new,))
        if n_old:
            old_data = np.lib.format.open_memmap(folder / "data.npy", mode="r")
            old_done = np.lib.format.open_memmap(folder / "done.npy", mode="r")
            data[:n_old] = old_data[:n_old]
            done[:n_old] = old_done[:n_old]
            del old_data, old_done
        data.flush()
        done.flush()
        del data, done
        os.replace(tmp_data, folder / "data.npy")
        os.replace(tmp_done, folder / "done.npy")
        _atomic_write_json(
            folder / "index.json",
            {
                "format": FORMAT_VERSION,
                "keys": new,
                "row_shape": list(row_shape),
                "dtype": dtype,
            },
        )

    # --- reading ------------------------------------------------------------------------------

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        return np.array([self.row_of[k] for k in keys], dtype=np.int64)

    def status(self, keys: Sequence[str]) -> np.ndarray:
        return np.asarray(self.done[self.rows(keys)])

    def failures(self) -> dict[str, str]:
        path = self.folder / "failed.json"
        if not path.exists():
            return {}
        return json.loads(path.read_text(encoding="utf-8"))

    def flush(self, failed: dict[str, str] | None = None) -> None:
        """Make the progress durable: data first, then the done marks."""
        self.data.flush()
        self.done.flush()
        if failed is not None:
            _atomic_write_json(self.folder / "failed.json", failed)

    # --- filling ------------------------------------------------------------------------------

    def fill(
        self,
        keys: Sequence[str],
        load: Callable[[str], np.ndarray],
        compute: Callable[[list[np.ndarray]], np.ndarray],
        *,
        batch_size: int = 32,
        flush_seconds: float = 5.0,
        progress: bool = True,
        desc: str = "images",
        runtime: str | None = None,
    ) -> CacheReport:
        """Compute the rows of ``keys`` that are not done: ``load(path)`` per image (in a
        thread, one batch ahead), then ``compute(arrays)`` per batch. ``load`` raising
        ``ImcapError`` or ``OSError`` marks the image failed (reported, skipped)."""
        rows = self.rows(list(dict.fromkeys(keys)))
        status = np.asarray(self.done[rows])
        todo = rows[status != DONE]
        failed = self.failures()  # every key's, so the file keeps what this call does not ask
        for r in todo:
            failed.pop(self.keys[r], None)  # retried now
        requested = [self.keys[r] for r in rows]
        report = CacheReport(
            folder=str(self.folder),
            n_images=len(rows),
            n_cached=int((status == DONE).sum()),
            n_computed=0,
            runtime=runtime,
        )
        if len(todo) == 0:
            return report

        def load_batch(batch_rows: np.ndarray) -> tuple[list[int], list[np.ndarray], dict]:
            good, arrays, bad = [], [], {}
            for r in batch_rows:
                path = self.keys[int(r)]
                try:
                    arrays.append(load(path))
                    good.append(int(r))
                except (ImcapError, OSError, ValueError) as e:
                    bad[path] = str(e).splitlines()[0] if str(e) else type(e).__name__
            return good, arrays, bad

        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        bar = _progress_bar(len(todo), desc, progress)
        start = last_flush = time.perf_counter()
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(load_batch, batches[0])
                for i in range(len(batches)):
                    good, arrays, bad = pending.result()
                    if i + 1 < len(batches):
                        pending = pool.submit(load_batch, batches[i + 1])
                    if arrays:
                        out = compute(arrays)
                        idx = np.array(good)
                        self.data[idx] = out
                        self.done[idx] = DONE  # after the data: a done row is always complete
                    for path in bad:
                        self.done[self.row_of[path]] = FAILED
                    failed.update(bad)
                    report.n_computed += len(good)
                    bar.update(len(good) + len(bad))
                    elapsed = time.perf_counter() - start
                    bar.set_postfix_str(f"{report.n_computed / max(elapsed, 1e-9):.1f} images/s")
                    if time.perf_counter() - last_flush >= flush_seconds:
                        self.flush(failed)
                        last_flush = time.perf_counter()
        finally:
            self.flush(failed)
            bar.close()
        report.seconds = time.perf_counter() - start
        report.failed = {k: failed[k] for k in requested if k in failed}
        return report


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )


# --- the two caches training uses -------------------------------------------------------------


@dataclass
class CachedArrays:
    """Rows for a list of images: ``array[rows[i]]`` belongs to ``images[i]``; ``ok[i]`` says
    whether it could be computed."""

    folder: Path
    images: list[str]
    rows: np.ndarray
    ok: np.ndarray
    array: np.ndarray  # read-only memmap over every row of the cache
    report: CacheReport


def _result(cache: RowCache, images: list[str], report: CacheReport) -> CachedArrays:
    rows = cache.rows(images)
    ok = np.asarray(cache.done[rows]) == DONE
    array = np.lib.format.open_memmap(cache.folder / "data.npy", mode="r")
    return CachedArrays(cache.folder, list(images), rows, ok, array, report)


def feature_cache_folder(root: Path | str, encoder) -> tuple[Path, dict[str, Any]]:
    """The folder for ``encoder``'s features under ``root``, and what its name hashes."""
    payload = {
        "kind": "features",
        "encoder": encoder.config.cache_key(),
        "weights": encoder.weights_fingerprint(),
    }
    return Path(root) / f"features-{cache_key(payload)}", payload


@dataclass
class CacheSpec:
    """A cache folder, what its rows are, and how one is made."""

    folder: Path
    payload: dict[str, Any]
    row_shape: tuple[int, ...]
    dtype: str
    load: Callable[[str], np.ndarray]  # image path -> array (in a thread)
    compute: Callable[[list[np.ndarray]], np.ndarray]  # a batch of arrays -> rows
    desc: str
    runtime: Callable[[], str | None] = lambda: None  # called once, when there is work

    def open(self, folder: Path, keys: Sequence[str], reclaimable: int = 0) -> RowCache:
        return RowCache.open(folder, keys, self.row_shape, self.dtype, self.payload, reclaimable)


def _fill(
    spec: CacheSpec,
    images: list[str],
    *,
    batch_size: int,
    flush_seconds: float,
    progress: bool,
    shard: Shard | None,
    wait: bool,
    log: Callable[[str], None],
) -> CachedArrays | ShardOutcome:
    """Fill ``spec``'s cache for ``images``: whole, or one shard's part (see training.shards)."""

    def fill(cache: RowCache, keys: Sequence[str]) -> CacheReport:
        runtime = spec.runtime() if np.any(cache.status(keys) != DONE) else None
        return cache.fill(
            keys,
            spec.load,
            spec.compute,
            batch_size=batch_size,
            flush_seconds=flush_seconds,
            progress=progress,
            desc=spec.desc,
            runtime=runtime,
        )

    if shard is None:
        cache = spec.open(spec.folder, images)
        return _result(cache, images, fill(cache, images))
    outcome = fill_shard(spec.folder, images, shard, spec.open, fill, wait=wait, log=log)
    if not outcome.complete:
        return outcome
    cache = spec.open(spec.folder, images)
    parts = merge_report(spec.folder)  # this shard's or another's merge: the same report
    requested = set(images)
    computed = sum(p["n_computed"] for p in parts)
    report = CacheReport(
        folder=str(spec.folder),
        n_images=len(images),
        n_cached=len(images) - sum(p["n_images"] for p in parts),
        n_computed=computed,
        # the cache may hold other runs' images too: report only the failures of these
        failed={k: v for k, v in cache.failures().items() if k in requested},
        seconds=max((p["seconds"] for p in parts), default=0.0),
        runtime=next((p["runtime"] for p in parts if p.get("runtime")), None),
        shards=parts,
    )
    return _result(cache, images, report)


def extract_features(
    images: Sequence[str],
    encoder,
    root: Path | str,
    *,
    batch_size: int = 32,
    flush_seconds: float = 5.0,
    progress: bool = True,
    shard: Shard | None = None,
    wait: bool = False,
    log: Callable[[str], None] = print,
) -> CachedArrays | ShardOutcome:
    """Encoder features for ``images`` (paths), computed once and cached under ``root``.

    ``encoder`` is an ``imcap_hub.encoder.Encoder`` (``runtime="auto"`` picks OpenVINO or
    ONNX Runtime where installed). Unreadable images are reported in ``report.failed`` and
    have ``ok`` False. With ``shard``, only that shard's images are computed; the result is
    a ``ShardOutcome`` until every shard has run (``wait``: wait for them).
    """
    from imcap_hub.encoder import preprocess
    from imcap_hub.images import load_image, resize

    folder, payload = feature_cache_folder(root, encoder)
    size = encoder.config.image_size
    spec = CacheSpec(
        folder,
        payload,
        tuple(encoder.config.feature_shape),
        "float32",
        lambda p: resize(load_image(p), size),
        lambda arrays: encoder.run(preprocess(arrays, encoder.config)),
        "features",
        lambda: encoder.prepare().name,
    )
    return _fill(
        spec,
        list(images),
        batch_size=batch_size,
        flush_seconds=flush_seconds,
        progress=progress,
        shard=shard,
        wait=wait,
        log=log,
    )


def cache_images(
    images: Sequence[str],
    image_size: int,
    root: Path | str,
    *,
    batch_size: int = 64,
    flush_seconds: float = 5.0,
    progress: bool = True,
    shard: Shard | None = None,
    wait: bool = False,
    log: Callable[[str], None] = print,
) -> CachedArrays | ShardOutcome:
    """Decoded images resized to ``image_size`` (uint8), cached like features: what end-to-end
    training (``train_encoder``) feeds the encoder, decoded and resized exactly as at
    inference (``imcap_hub.images.load_image`` + ``resize``). ``shard``: as
    :func:`extract_features`."""
    from imcap_hub.images import load_image, resize

    payload = {"kind": "images", "image_size": int(image_size), "resize": "pil-bilinear"}
    spec = CacheSpec(
        Path(root) / f"images-{cache_key(payload)}",
        payload,
        (image_size, image_size, 3),
        "uint8",
        lambda p: resize(load_image(p), image_size),
        np.stack,
        "images",
    )
    return _fill(
        spec,
        list(images),
        batch_size=batch_size,
        flush_seconds=flush_seconds,
        progress=progress,
        shard=shard,
        wait=wait,
        log=log,
    )
