"""Sharded caching (training/shards.py): shards named by --shard or TF_CONFIG, parts merged by
the last shard into one cache equal to a one-process cache, resumable, in two real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_features import ENCODER
from test_training_cli import tiny_run

from imcap_hub.encoder import Encoder
from training.features import CachedArrays, CacheError, RowCache, extract_features
from training.shards import PARTS, Shard, ShardError, ShardOutcome

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "shard"), [("0/2", Shard(0, 2)), ("3/4", Shard(3, 4)), ("0/1", Shard(0, 1))]
)
def test_shard_parses_i_of_n(text, shard):
    assert Shard.parse(text) == shard and str(shard) == text


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0", "1/2/3", ""])
def test_a_bad_shard_is_refused_naming_it(text):
    with pytest.raises(ShardError, match="shard"):
        Shard.parse(text)


def _tf_config(task_type: str, index: int, chief: int = 0, workers: int = 2) -> str:
    cluster = {"worker": [f"w{i}:1" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["c:1"]
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


@pytest.mark.parametrize(
    ("tf_config", "shard"),
    [
        (_tf_config("worker", 0), Shard(0, 2)),
        (_tf_config("worker", 1), Shard(1, 2)),
        (_tf_config("chief", 0, chief=1), Shard(0, 3)),
        (_tf_config("worker", 0, chief=1), Shard(1, 3)),
        (_tf_config("worker", 1, chief=1), Shard(2, 3)),
    ],
)
def test_the_shard_of_a_tf_config_task_counts_the_chief_first(tf_config, shard):
    assert Shard.from_tf_config(tf_config) == shard


@pytest.mark.parametrize(
    "tf_config",
    ["not json", "[]", '{"cluster": {}}', _tf_config("evaluator", 0), _tf_config("worker", 5)],
)
def test_a_tf_config_without_this_task_is_refused(tf_config):
    with pytest.raises(ShardError, match="TF_CONFIG"):
        Shard.from_tf_config(tf_config)


def test_shards_take_every_nth_image_and_cover_all_once():
    keys = [f"img{i}" for i in range(11)]
    parts = [Shard(i, 3).take(keys) for i in range(3)]
    assert parts[1] == ["img1", "img4", "img7", "img10"]
    assert sorted(k for part in parts for k in part) == sorted(keys)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    from test_features import _save_encoder

    return _save_encoder(tmp_path_factory.mktemp("shard-encoder") / "e.safetensors", 1)


@pytest.fixture(scope="module")
def images(shapes):
    return [*shapes[0][:21], shapes[1]]  # 21 good images and a broken one


def _extract(images, encoder_file, root, shard=None, **kw):
    enc = Encoder(ENCODER, weights_file=encoder_file, runtime="keras")
    return extract_features(
        images, enc, root, batch_size=4, progress=False, shard=shard, log=lambda _: None, **kw
    )


def _same_cache(a: CachedArrays, b: CachedArrays) -> None:
    assert a.images == b.images and a.ok.tolist() == b.ok.tolist()
    np.testing.assert_allclose(a.array[a.rows][a.ok], b.array[b.rows][b.ok], atol=1e-6)
    assert (
        json.loads((a.folder / "index.json").read_text())["keys"]
        == json.loads((b.folder / "index.json").read_text())["keys"]
    )


def test_two_shards_in_turn_make_the_cache_one_process_makes(images, encoder_file, tmp_path):
    whole = _extract(images, encoder_file, tmp_path / "one")
    first = _extract(images, encoder_file, tmp_path / "two", Shard(0, 2))
    assert isinstance(first, ShardOutcome) and not first.complete
    assert (first.n_images, first.n_computed, first.n_failed) == (11, 11, 0)
    assert "shard 1/2" in first.pending
    second = _extract(images, encoder_file, tmp_path / "two", Shard(1, 2))
    assert isinstance(second, CachedArrays)
    assert not (second.folder / PARTS).exists()  # the parts are gone once merged
    _same_cache(second, whole)
    assert (second.report.n_cached, second.report.n_computed) == (0, 21)
    assert list(second.report.failed) == [images[-1]]
    assert [p["shard"] for p in second.report.shards] == ["0/2", "1/2"]
    # Once complete, a shard has nothing to do and reads the cache as a whole.
    again = _extract(images, encoder_file, tmp_path / "two", Shard(0, 2))
    assert isinstance(again, CachedArrays) and not (again.folder / PARTS).exists()


def test_shards_compute_only_what_the_cache_lacks(images, encoder_file, tmp_path):
    _extract(images[:10], encoder_file, tmp_path)
    first = _extract(images, encoder_file, tmp_path, Shard(0, 2))
    assert (first.n_images, first.n_computed) == (6, 6)  # 0, 2, .. 20 less 0, 2, .. 8
    second = _extract(images, encoder_file, tmp_path, Shard(1, 2))
    assert (second.report.n_cached, second.report.n_computed) == (10, 11)
    _same_cache(second, _extract(images, encoder_file, tmp_path / "one"))


def test_a_sharded_report_names_only_the_failures_of_the_images_asked_for(
    images, encoder_file, tmp_path
):
    _extract([images[-1], *images[:4]], encoder_file, tmp_path)  # the broken image failed here
    good = images[:12]
    _extract(good, encoder_file, tmp_path, Shard(0, 2))
    done = _extract(good, encoder_file, tmp_path, Shard(1, 2))
    assert isinstance(done, CachedArrays) and done.ok.all()
    assert done.report.failed == {}


def test_a_killed_shard_resumes_its_part(images, encoder_file, tmp_path):
    enc = Encoder(ENCODER, weights_file=encoder_file, runtime="keras")
    run, calls = enc.run, []

    def run_then_die(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run(batch)

    enc.run = run_then_die
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            images, enc, tmp_path, batch_size=4, progress=False, flush_seconds=0, shard=Shard(1, 2)
        )
    resumed = _extract(images, encoder_file, tmp_path, Shard(1, 2))
    # 11 images: the first batch of 4 was kept, 6 computed now, the broken one failed.
    assert (resumed.n_images, resumed.n_computed, resumed.n_failed) == (11, 6, 1)
    merged = _extract(images, encoder_file, tmp_path, Shard(0, 2))
    _same_cache(merged, _extract(images, encoder_file, tmp_path / "one"))


def test_a_merge_killed_half_way_resumes_with_the_parts_left(
    images, encoder_file, tmp_path, monkeypatch
):
    import training.shards

    copy, copied = training.shards._copy_rows, []

    def copy_then_die(part, cache, failed):
        if copied:
            raise KeyboardInterrupt
        copied.append(part.name)
        copy(part, cache, failed)

    _extract(images, encoder_file, tmp_path, Shard(0, 2))
    monkeypatch.setattr(training.shards, "_copy_rows", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        _extract(images, encoder_file, tmp_path, Shard(1, 2))
    monkeypatch.undo()
    (folder,) = tmp_path.glob("features-*")
    part0 = folder / PARTS / "0-of-2"
    assert copied == ["0-of-2"] and (part0 / "merged.json").exists()
    assert not (part0 / "data.npy").exists()  # its rows are in the cache: disk freed
    merged = _extract(images, encoder_file, tmp_path, Shard(0, 2))  # nothing left but to merge
    assert isinstance(merged, CachedArrays)
    _same_cache(merged, _extract(images, encoder_file, tmp_path / "one"))


def test_a_cache_the_disk_cannot_hold_is_refused_before_it_is_made(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(CacheError, match=r"GiB free.*features.cache_dir"):
        RowCache.open(tmp_path, ["a", "b"], (int(free // 4),), "float32")
    assert not (tmp_path / "data.npy").exists()


def _prepare_env(shard_how: str, index: int, ports: list[int]) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if shard_how == "--shard":
        return ["--shard", f"{index}/2"], env
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    return ["--set", "training.strategy=multiworker"], env


@pytest.mark.parametrize(("shard_how", "train_encoder"), [("--shard", False), ("TF_CONFIG", True)])
def test_two_prepare_processes_make_the_cache_one_process_makes(shard_how, train_encoder, tmp_path):
    from training.__main__ import main
    from training.run_config import RunConfig

    configs = {}
    for name in ("one", "two"):
        run = tiny_run(tmp_path / name, "flickr8k", train_encoder)
        configs[name] = tmp_path / f"{name}.json"
        configs[name].write_text(json.dumps(run))
    assert main(["prepare", str(configs["one"]), "--no-progress"]) == 0

    procs = []
    for index in range(2):
        args, env = _prepare_env(shard_how, index, [12345, 12346])
        cmd = [sys.executable, "-m", "training", "prepare", str(configs["two"]), "--no-progress"]
        procs.append(
            subprocess.Popen(
                [*cmd, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    logs = [out.decode() for out, _ in outputs]
    assert all(f"shard {i}/2 (from {shard_how})" in logs[i] for i in range(2))
    if shard_how == "TF_CONFIG":  # both waited for the whole cache
        assert all("shards" in log and "cached" in log for log in logs), logs

    paths = {name: RunConfig.load(configs[name]).paths for name in configs}

    def read(name: str, path: Path) -> str:  # image paths are absolute: under each run folder
        return path.read_text().replace(str(paths[name].root), "RUN")

    for file in ("captions", "vocab"):
        assert read("one", getattr(paths["one"], file)) == read("two", getattr(paths["two"], file))
    info = json.loads(paths["two"].prepare_info.read_text())
    assert [s["shard"] for s in info["cache"]["shards"]] == ["0/2", "1/2"]
    assert info["cache"]["n_computed"] == info["cache"]["n_images"] == 36  # train + val
    (one,) = paths["one"].features.glob("*-*")
    (two,) = paths["two"].features.glob("*-*")
    assert one.name == two.name and not (two / PARTS).exists()
    assert read("one", one / "index.json") == read("two", two / "index.json")
    np.testing.assert_array_equal(np.load(one / "done.npy"), np.load(two / "done.npy"))
    np.testing.assert_allclose(np.load(one / "data.npy"), np.load(two / "data.npy"), atol=1e-6)


def test_a_bad_shard_on_the_command_line_is_one_error_line(tmp_path, capsys):
    from training.__main__ import main

    config = tmp_path / "run.json"
    config.write_text(json.dumps(tiny_run(tmp_path, "flickr8k", False)))
    assert main(["prepare", str(config), "--shard", "2/2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shard 2/2") and err.count("\n") == 1
