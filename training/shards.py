"""Sharded caching: several processes fill one feature (or image) cache, each its share.

Shard ``I/N`` (``prepare --shard I/N``, or a task of ``TF_CONFIG`` under the multiworker
strategy) takes every N-th image from position I of the image list. It fills a part of its own,
``<cache>/shards/I-of-N/``: a :class:`training.features.RowCache` that only it writes, so a
killed shard resumes like a whole cache does, and marks it complete (``complete.json``). When
every part of the N is complete, whichever shard sees it first merges the parts into the cache,
under an exclusive lock, and removes them. Images the cache already has are not computed again.

Why parts rather than every process writing its rows of the one memory-mapped file: writes from
several machines to pages of one file are not coherent on network filesystems. The lock is
``fcntl.flock``: the kernel releases it when its process dies, and Linux honours it over NFS.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imcap_hub.errors import ImcapError
from imcap_hub.files import atomic_write_json

LOCK_FILE = ".lock"
PARTS = "shards"
COMPLETE = "complete.json"
MERGED = "merged.json"
MERGE_REPORT = "shards.json"  # in the cache folder: the parts of its last merge
TODO, DONE, FAILED = 0, 1, 2  # as training.features


class ShardError(ImcapError, ValueError):
    """A shard that cannot be: a bad ``--shard``, ``TF_CONFIG`` or system."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the images at positions ``index``, ``index + count``, ..."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ShardError(f"shard {self.index}/{self.count}: need 0 <= I < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` -> Shard(I, N)."""
        index, sep, count = text.partition("/")
        try:
            numbers = int(index), int(count)
        except ValueError:
            numbers = None
        if not sep or numbers is None:
            raise ShardError(f"--shard {text!r}: expected I/N, e.g. 0/2")
        return cls(*numbers)

    @classmethod
    def from_tf_config(cls, text: str) -> Shard:
        """This task's shard in a ``TF_CONFIG``: the chief (if any) first, then the workers
        in order, as ``tf.distribute`` numbers them."""
        try:
            spec = json.loads(text)
            cluster, task = spec["cluster"], spec["task"]
            tasks = [("chief", i) for i in range(len(cluster.get("chief", [])))]
            tasks += [("worker", i) for i in range(len(cluster.get("worker", [])))]
            me = (task["type"], int(task["index"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ShardError(f"TF_CONFIG is not a cluster spec with a task: {e}") from None
        if me not in tasks:
            raise ShardError(f"TF_CONFIG: task {me[0]} {me[1]} is not a chief or worker of it")
        return cls(tasks.index(me), len(tasks))

    def take(self, keys: Sequence[str]) -> list[str]:
        return list(keys[self.index :: self.count])

    @property
    def folder_name(self) -> str:
        return f"{self.index}-of-{self.count}"


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (blocking)."""
    try:
        import fcntl
    except ImportError:  # Windows
        raise ShardError("sharded caching needs fcntl locks (Linux or macOS)") from None
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def cached_status(folder: Path) -> dict[str, int]:
    """Key -> TODO / DONE / FAILED of the cache in ``folder``, read only ({} if none)."""
    index_file = folder / "index.json"
    if not index_file.exists():
        return {}
    keys = json.loads(index_file.read_text(encoding="utf-8"))["keys"]
    done = np.lib.format.open_memmap(folder / "done.npy", mode="r")
    return dict(zip(keys, np.asarray(done[: len(keys)]).tolist(), strict=True))


def todo_keys(folder: Path, keys: Sequence[str]) -> list[str]:
    """The keys the cache in ``folder`` has never tried (failed ones are not retried here)."""
    status = cached_status(folder)
    return [k for k in dict.fromkeys(keys) if status.get(k, TODO) == TODO]


@dataclass
class ShardOutcome:
    """What a shard did, and whether the cache is now complete (every part merged)."""

    shard: Shard
    n_images: int  # this shard's images the cache did not have
    n_computed: int
    n_failed: int
    seconds: float
    complete: bool
    parts: list[dict[str, Any]]  # every part's complete.json, when this shard merged them
    pending: str = ""  # the shards not complete yet, when the cache is not


def fill_shard(
    folder: Path,
    keys: Sequence[str],
    shard: Shard,
    open_part: Callable[..., Any],
    fill_part: Callable[[Any, list[str]], Any],
    *,
    wait: bool = False,
    poll_seconds: float = 2.0,
    log: Callable[[str], None] = print,
) -> ShardOutcome:
    """Fill ``shard``'s part of the cache in ``folder``, then merge every part if all are
    complete. ``open_part(path, keys[, reclaimable])`` opens a RowCache for a part; ``fill_part(cache, keys)``
    fills it and returns its CacheReport. ``wait``: poll until the cache is complete."""
    keys = list(dict.fromkeys(keys))
    part_dir = folder / PARTS / shard.folder_name
    with locked(folder):
        # A part merged by a merge that died is in the cache already: only the merge is left.
        todo = set() if (part_dir / MERGED).exists() else set(todo_keys(folder, keys))
        if todo:  # under the lock: no merge may take this part before it is redone
            (part_dir / COMPLETE).unlink(missing_ok=True)
    mine = [k for k in shard.take(keys) if k in todo]
    start = time.perf_counter()
    n_computed = n_failed = 0
    runtime = None
    if todo:
        if mine:
            report = fill_part(open_part(part_dir, mine), mine)
            n_computed, n_failed, runtime = report.n_computed, len(report.failed), report.runtime
        part_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            part_dir / COMPLETE,
            {
                "shard": str(shard),
                "n_images": len(mine),
                "n_computed": n_computed,
                "n_failed": n_failed,
                "seconds": round(time.perf_counter() - start, 3),
                "runtime": runtime,
            },
        )
    outcome = ShardOutcome(
        shard, len(mine), n_computed, n_failed, time.perf_counter() - start, False, []
    )
    last_report = time.monotonic()
    while True:
        complete, parts = merge_parts(folder, keys, shard.count, open_part)
        if complete or not wait:
            outcome.complete, outcome.parts = complete, parts
            if not complete:
                outcome.pending = waiting_for(folder, shard.count)
            return outcome
        if time.monotonic() - last_report >= 60:
            log(f"shard {shard}: waiting for {waiting_for(folder, shard.count)}")
            last_report = time.monotonic()
        time.sleep(poll_seconds)


def waiting_for(folder: Path, count: int) -> str:
    """Which parts are not complete yet, and how far each is."""
    pending = []
    for index in range(count):
        part = folder / PARTS / Shard(index, count).folder_name
        if (part / COMPLETE).exists():
            continue
        status = cached_status(part) if part.exists() else {}
        done = sum(1 for s in status.values() if s != TODO)
        pending.append(f"shard {index}/{count} ({done}/{len(status) or '?'} images)")
    return ", ".join(pending) or "the merge"


def merge_parts(
    folder: Path, keys: list[str], count: int, open_part: Callable[..., Any]
) -> tuple[bool, list[dict[str, Any]]]:
    """Merge the ``count`` parts into the cache when all are complete.

    Returns (whether the cache is complete, the parts' reports if this call merged them).
    Each part's data is deleted as soon as its rows are in the cache (flushed), so the disk
    holds about one cache, not two; a merge killed half way resumes with the parts left.
    """
    parts = [folder / PARTS / Shard(i, count).folder_name for i in range(count)]
    with locked(folder):
        if not any(p.exists() for p in parts):
            return not todo_keys(folder, keys), []
        if not all((p / COMPLETE).exists() for p in parts):
            return False, []
        reclaimable = sum(
            (p / "data.npy").stat().st_size for p in parts if (p / "data.npy").exists()
        )
        cache = open_part(folder, keys, reclaimable)
        failed = cache.failures()
        reports = []
        for part in parts:
            reports.append(json.loads((part / COMPLETE).read_text(encoding="utf-8")))
            if not (part / MERGED).exists():
                _copy_rows(part, cache, failed)
                cache.flush(failed)
                atomic_write_json(part / MERGED, {"merged": True})
                for name in ("data.npy", "done.npy"):
                    (part / name).unlink(missing_ok=True)
        atomic_write_json(folder / MERGE_REPORT, reports)
        for part in parts:
            shutil.rmtree(part)
        _remove_if_empty(folder / PARTS)
        return not todo_keys(folder, keys), reports


def merge_report(folder: Path) -> list[dict[str, Any]]:
    """The parts of the cache's last merge (each shard's complete.json), [] if none."""
    path = folder / MERGE_REPORT
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def _copy_rows(part: Path, cache: Any, failed: dict[str, str]) -> None:
    """The done and failed rows of ``part`` into ``cache``, a chunk at a time."""
    status = cached_status(part)
    if not status:
        return
    part_keys = list(status)
    unknown = [k for k in part_keys if k not in cache.row_of]
    if unknown:
        raise ShardError(
            f"{part} holds images this cache does not ({unknown[0]}, ...): the shards read "
            "different datasets; delete the part and run that shard again"
        )
    done = np.array([status[k] for k in part_keys])
    data = np.lib.format.open_memmap(part / "data.npy", mode="r")
    rows = np.flatnonzero(done == DONE)
    for start in range(0, len(rows), 1024):
        chunk = rows[start : start + 1024]
        target = cache.rows([part_keys[r] for r in chunk])
        cache.data[target] = data[chunk]
        cache.done[target] = DONE
    part_failed = _read_failures(part)
    for r in np.flatnonzero(done == FAILED):
        key = part_keys[r]
        cache.done[cache.row_of[key]] = FAILED
        failed[key] = part_failed.get(key, "unreadable")
    for r in rows:
        failed.pop(part_keys[r], None)


def _read_failures(part: Path) -> dict[str, str]:
    path = part / "failed.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):  # not empty: parts of another shard count are left
        os.rmdir(folder)
