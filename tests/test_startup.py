"""Feedback at start-up (issue 10, point 6): TensorFlow's start-up noise filtered for the CLI and
the app while real errors still show (imcap_hub.startup); the first start of ``python app.py``
saying what it does before every step that takes more than a second; and ``python -m training
train --progress`` keeping each epoch's line on a line of its own under Keras' progress bar.
The CLI's own lines are checked in test_cli.py."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from imcap_hub import startup

ROOT = Path(__file__).resolve().parents[1]
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795663974.256159   14460 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "I0000 00:00:1795663974.409047   14460 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with "
    "the appropriate compiler flags.",
    "E0000 00:00:1795663979.760249   14460 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1795663974.409047   14460 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors.",
    "E0000 00:00:1795663974.409047   14460 cuda_dnn.cc:8579] Unable to register cuDNN factory: "
    "Attempting to register factory for plugin cuDNN when one has already been registered",
]
REAL = [
    "E0000 00:00:1795663979.760249   14460 op_kernel.cc:1857] OP_REQUIRES failed: out of memory",
    "E1126 03:37:01.123456   14460 cuda_platform.cc:99] some other CUDA failure",
    "Traceback (most recent call last):",
    "UserWarning: a Python warning written while TensorFlow imports",
]


def test_the_noise_list_knows_tensorflows_start_up_lines_and_nothing_else():
    assert all(startup.is_noise(line) for line in NOISE)
    assert not any(startup.is_noise(line) for line in REAL)


# A stand-in for TensorFlow: its import writes noise and real lines to file descriptor 2 as the
# real one does (from C++, around Python's sys.stderr), and so does its device set-up (cuInit).
FAKE_TENSORFLOW = textwrap.dedent(
    """
    import os, sys

    def _write(lines):
        os.write(2, "".join(line + "\\n" for line in lines).encode())

    _write({noise!r})
    _write([{real0!r}])
    print({real3!r}, file=sys.stderr)

    class config:
        @staticmethod
        def list_physical_devices():
            _write([{cuinit!r}])
            return []

    if os.environ.get("FAKE_TF_FAILS"):
        raise ImportError("fake TensorFlow fails to import")
    """
).format(noise=NOISE[:3], real0=REAL[0], real3=REAL[3], cuinit=NOISE[4])

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from imcap_hub import startup
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("before", file=sys.stderr, flush=True)
    if sys.argv[1] == "quiet":
        startup.quiet_tensorflow()
    try:
        tf = startup.import_tensorflow()
        print("fake" if not hasattr(tf, "constant") else "real", file=sys.stderr)
    except ImportError as e:
        print(f"ImportError: {e}", file=sys.stderr)
    print("after", file=sys.stderr)
    """
)


@pytest.mark.parametrize(("mode", "fails"), [("quiet", False), ("quiet", True), ("default", False)])
def test_a_quiet_import_drops_the_noise_and_replays_everything_else(tmp_path, mode, fails):
    """Real errors still show, in order; a failing import still shows its lines and gives
    stderr back; without quiet_tensorflow (a library user) nothing is filtered or added."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    env.pop("FAKE_TF_FAILS", None)
    if fails:
        env["FAKE_TF_FAILS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[:2] == ["before", "importing TensorFlow..."], result.stderr
    if mode == "quiet":
        assert lines[2:4] == [REAL[0], REAL[3]], result.stderr
    else:  # TensorFlow's own behaviour, noise included, and no device set-up
        assert lines[2:7] == [*NOISE[:3], REAL[0], REAL[3]], result.stderr
    tail = lines[4:] if mode == "quiet" else lines[7:]
    if fails:
        assert tail == ["ImportError: fake TensorFlow fails to import", "after"], result.stderr
    else:
        assert re.fullmatch(r"importing TensorFlow: done in \d+\.\d s", tail[0]), result.stderr
        assert tail[1:] == ["fake", "after"], result.stderr


# --- the app's first start -----------------------------------------------------------------------

GAP_SECONDS = 1.0  # a step longer than this must be announced
NOISE_WORDS = ("absl", "cuInit", "cudart", "cuda_", "cpu_feature_guard", "oneDNN", "I0000", "E0000")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed_lines(command: list[str], env: dict, until: str, timeout: float) -> list[tuple]:
    """(seconds since the start, line) for each line of the process's stdout and stderr, until
    a line holds ``until``; then the process is killed."""
    start = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in process.stdout:
            lines.append((time.monotonic() - start, line.rstrip("\n")))
            if until in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    process.kill()
    process.wait(30)
    return lines


def test_the_first_start_of_the_app_says_what_it_does_before_every_slow_step(
    app_model_dir, tmp_path
):
    """``python app.py`` with empty caches (no converted encoder, no Hub cache): every pause of
    more than a second between two lines (or before the first) follows a line announcing a
    step ("..."); no TensorFlow/absl noise; and the server does start."""
    env = {
        **os.environ,
        "IMCAP_CACHE": str(tmp_path / "imcap-cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "PYTHONUNBUFFERED": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    command = [sys.executable, "app.py", "--model", str(app_model_dir), "--port", str(_free_port())]
    lines = _timed_lines(command, env, until="Running on", timeout=300)
    shown = "\n".join(f"{t:7.2f}  {line}" for t, line in lines)
    assert lines and "Running on" in lines[-1][1], shown
    assert not [line for _, line in lines if any(w in line for w in NOISE_WORDS)], shown
    events = [(0.0, "(process started)"), *lines]
    silent = [
        f"{gap:.1f} s after {line!r}"
        for (t0, line), (t1, _) in itertools.pairwise(events)
        if (gap := t1 - t0) > GAP_SECONDS and not line.rstrip().endswith("...")
    ]
    assert not silent, "unannounced pauses: " + "; ".join(silent) + "\n" + shown
    announced = [line for _, line in lines if line.endswith("...")]
    for step in ("importing TensorFlow", "warming up"):
        assert any(step in line for line in announced), shown


def test_a_training_run_prints_no_tensorflow_noise(tmp_path):
    """``python -m training run`` on a tiny synthetic dataset: its stderr holds none of
    TensorFlow's or absl's start-up lines (the filter that the app and the CLI use)."""
    from training.__main__ import EXAMPLES

    config = json.loads(json.dumps(EXAMPLES["synthetic"]))
    config["work_dir"] = str(tmp_path / "runs")
    config["dataset"]["synthetic"].update(n_images=60, image_size=32)
    config["training"]["epochs"] = 1
    config["evaluation"] = {"enabled": False}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "IMCAP_CACHE": str(tmp_path / "imcap-cache")}
    command = [sys.executable, "-m", "training", "run", str(path), "--no-progress"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stdout, result.stdout
    noise = [line for line in result.stderr.splitlines() if any(w in line for w in NOISE_WORDS)]
    assert not noise, result.stderr


# --- training's progress bar ---------------------------------------------------------------------


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: colours dropped, ``\\r`` back to the start of the
    line, ``\\b`` one column left (never onto the line above), later characters over earlier."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for ch in re.sub(r"\x1b\[[0-9;]*m", "", text):
        if ch == "\n":
            row, col = row + 1, 0
            if row == len(rows):
                rows.append([])
        elif ch == "\r":
            col = 0
        elif ch == "\b":
            col = max(0, col - 1)
        else:
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
    return ["".join(line) for line in rows]


def test_keras_progress_bar_leaves_each_epoch_line_on_its_own_line(tmp_path, capsys):
    """``train --progress``: Keras' bar (``verbose=1``, which redraws its line with ``\\b`` and
    ``\\r``) and the epoch lines share stdout; the bar must end its line before the epoch line."""
    from test_train import random_data, settings, tiny_train_config

    from training.train import fit

    fit(
        tiny_train_config(),
        random_data(images=False),
        tmp_path / "checkpoints",
        settings(epochs=2),
        verbose=1,
        log=print,
    )
    screen = _screen(capsys.readouterr().out)
    for epoch in (1, 2):
        epoch_lines = [line for line in screen if f"epoch {epoch}/2: " in line]
        assert len(epoch_lines) == 1, screen
        assert epoch_lines[0].startswith(f"epoch {epoch}/2: loss "), screen
