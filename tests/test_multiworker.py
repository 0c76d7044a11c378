"""Multi-worker training for real: two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy,
TF_CONFIG, the training CLI) train a tiny synthetic run (cached features, or end to end); both
finish with the same weights, each read only its share of the cache, only the chief keeps
checkpoints, and the weights and losses are those of one process with the same global batch
(float rounding apart), a last batch that leaves a worker nothing included."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_training_cli import tiny_run

from training.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
# Float rounding of the all-reduce and of the split batch: measured up to 2e-6 here.
ATOL = 1e-5
TRAIN = [sys.executable, "-m", "training", "train"]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_workers(config_file: Path, tmp_dirs: list[Path]) -> list[subprocess.Popen]:
    """``python -m training train CONFIG`` in two processes, one per worker of TF_CONFIG."""
    cluster = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index, tmp in enumerate(tmp_dirs):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TF_CONFIG": json.dumps(tf_config),
            "TMPDIR": str(tmp),  # where a worker that is not the chief writes its checkpoints
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        procs.append(
            subprocess.Popen(
                [
                    *TRAIN,
                    str(config_file),
                    "--no-progress",
                    "--set",
                    "training.strategy=multiworker",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Every worker's output; a worker that hangs (its peer died) is killed."""
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, _ = proc.communicate()
            out += "\n[killed: timeout]"
        outputs.append(out)
    return outputs


def weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {
        f"{name}:{key}": value
        for name in ("model.safetensors", "encoder.safetensors")
        for key, value in load_file(folder / name).items()
    }


def digest(output: str) -> str:
    found = re.findall(r"weights digest ([0-9a-f]{16})", output)
    assert len(found) == 1, output[-3000:]
    return found[0]


@pytest.mark.parametrize(
    ("kind", "train_encoder", "batch_size", "rows_read"),
    [
        # Cached features: 64 caption rows in batches of 63 and 1, so pieces of 32 and 31
        # rows, then 1 and 0 (an empty batch on worker 1, through the model and all-reduce).
        ("pooled", False, 63, [33, 31]),
        # Images through the encoder (synchronised batch norm): 32 rows, batches of 16.
        ("attention", True, 16, [16, 16]),
    ],
)
def test_two_workers_train_like_one_process_with_the_same_global_batch(
    tmp_path, kind, train_encoder, batch_size, rows_read
):
    config = tiny_run(tmp_path, "flickr8k", train_encoder=train_encoder, kind=kind)
    config["name"] = "multi"
    config["training"]["batch_size"] = batch_size
    if kind == "attention":
        # With the doubly stochastic penalty on, two workers end 1e-3 away from one process
        # (encoder weights; 1e-5 decoder): of the order of the learning rate, see the README.
        config["training"]["attention_penalty"] = 0.0
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(config))
    assert main(["prepare", str(config_file), "--no-progress"]) == 0
    run = tmp_path / "runs" / "multi"
    # The one-process run: the same prepared data (and images) under another name.
    shutil.copytree(run, tmp_path / "runs" / "single")

    tmp_dirs = [tmp_path / "tmp-0", tmp_path / "tmp-1"]
    for d in tmp_dirs:
        d.mkdir()
    outputs = wait_all(start_workers(config_file, tmp_dirs), timeout=240)
    for index, out in enumerate(outputs):
        assert "weights digest" in out and "[killed" not in out, f"worker {index}:\n{out[-4000:]}"
    chief, other = outputs
    assert "not the chief worker" in other and "model in" in chief
    assert digest(chief) == digest(other)  # both workers end with the same weights
    # Each worker read its own rows of the cache, not all of them (validation: 8 rows, 4 + 4).
    for index, (out, rows) in enumerate(zip(outputs, rows_read, strict=True)):
        total = sum(rows_read)
        line = f"worker-{index} read {rows} of {total} training rows and 4 of 8 validation rows"
        assert out.count(line) == 2, out[-3000:]  # one line per epoch

    # Only the chief keeps checkpoints, and the other worker's are deleted.
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoints")) == [
        "checkpoints"
    ]
    assert (run / "checkpoints" / "state.json").is_file()
    assert [list(d.iterdir()) for d in tmp_dirs] == [[], []]
    record = json.loads((run / "train.json").read_text())
    assert record["strategy"]["name"] == "MultiWorkerMirroredStrategy"
    assert record["strategy"]["replicas"] == 2 and record["epochs_run"] == 2

    assert main(["train", str(config_file), "--no-progress", "--set", "name=single"]) == 0
    single_run = tmp_path / "runs" / "single"
    single = weights(single_run / "trained")
    multi = weights(run / "trained")
    assert multi.keys() == single.keys()
    for name, value in single.items():
        np.testing.assert_allclose(multi[name], value, rtol=0, atol=ATOL, err_msg=name)
    single_record = json.loads((single_run / "train.json").read_text())
    assert single_record["strategy"]["replicas"] == 1
    losses = [e["loss"] for e in single_record["history"]]
    assert losses[-1] < losses[0]  # it trained: equal weights are not two untouched models
    for a, b in zip(record["history"], single_record["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
