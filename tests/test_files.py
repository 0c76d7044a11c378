import json
import os

import numpy as np
import pytest

from imcap_hub import files


def _plain_file_mode(folder) -> int:
    """The mode a file created the ordinary way gets here (0o666 less the umask)."""
    path = folder / "plain"
    with open(path, "x"):
        pass
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize(
    "write",
    [
        lambda p: files.atomic_write(p, "text\n"),
        lambda p: files.atomic_write(p, b"\x00bytes"),
        lambda p: files.atomic_write_json(p, {"a": 1}),
        lambda p: files.save_tensors({"w": np.ones((2, 3), np.float32)}, p, "test"),
    ],
    ids=["text", "bytes", "json", "safetensors"],
)
def test_every_writer_gives_the_umask_mode_and_leaves_no_temporary_file(tmp_path, write):
    target = tmp_path / "out" / "file"
    write(target)
    assert os.stat(target).st_mode & 0o777 == _plain_file_mode(tmp_path)
    assert sorted(p.name for p in target.parent.iterdir()) == ["file"]


def test_atomic_write_replaces_and_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    files.atomic_write_json(target, {"v": 1})
    files.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_json(target, {"v": 3})
    assert json.loads(target.read_text()) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_write_fsyncs_before_the_rename(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: calls.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(
        files.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))
    )
    files.atomic_write(tmp_path / "x", "data")
    assert calls == ["fsync", "replace"]


def test_safetensors_round_trip_keeps_shapes_and_bytes_are_deterministic(tmp_path):
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array(7, np.int64)}
    files.save_tensors(tensors, tmp_path / "one.safetensors", "test")
    files.save_tensors(dict(reversed(tensors.items())), tmp_path / "two.safetensors", "test")
    assert (tmp_path / "one.safetensors").read_bytes() == (
        tmp_path / "two.safetensors"
    ).read_bytes()
    loaded = files.load_tensors(tmp_path / "one.safetensors")
    assert loaded["a"].shape == ()
    np.testing.assert_array_equal(loaded["b"], tensors["b"])
