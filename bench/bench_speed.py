"""Every speed number of the README in one run: the benches below, one after another on the same
machine, their tables printed under one header with the date and the machine.

    python bench/bench_speed.py [--quick] > speed.md

1. ``bench_inference.py``: encoder runtimes, greedy and beam-3 end to end at 34 words (their
   ratio), the attention decoder against the pooled one;
2. ``profile_beam.py``: where greedy's and beam-3's decoding time goes, and beam-3 against
   greedy end to end with each backend for the beams' rows (against an older revision too);
3. ``bench_round_trip.py``: one caller's ``/caption`` round trip, split;
4. ``bench_folder.py``: folder throughput, exact (``auto``) and ``fast``;
5. ``bench_fast_mode.py``: the fast mode's encoder time, caption agreement and BLEU-4 against
   fp32 on a trained model (trained on the first run, about 10 to 25 minutes here, and kept in
   ``--fast-mode-work-dir``).

Each bench takes its medians and side-by-side ratios within its own table; see each script.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_app_load import cpu_model  # noqa: E402

BENCHES = [
    (
        "Encoder, greedy and beam, attention against pooled",
        "bench_inference.py",
        [],
        ["--repeats", "5"],
    ),
    (
        "Beam-3 against greedy by the beams' row backend (ONNX Runtime; OpenVINO, as on the Space)",
        "profile_beam.py",
        [],
        ["--repeats", "3", "--check-images", "1"],
    ),
    ("The app's round trip, one caller", "bench_round_trip.py", [], ["--requests", "5"]),
    (
        "Folder throughput",
        "bench_folder.py",
        ["--runtimes", "auto,fast"],
        ["--images", "32", "--repeats", "1"],
    ),
    ("Fast mode on a trained model", "bench_fast_mode.py", [], ["--quick"]),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not numbers")
    p.add_argument(
        "--fast-mode-work-dir",
        default="runs/bench-fast-mode",
        help="where bench_fast_mode.py keeps its trained model between runs",
    )
    args = p.parse_args(argv)
    start = time.time()
    print(
        f"# imcap speed, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; no GPU used.\n"
    )
    failed = []
    for title, script, always, quick in BENCHES:
        if script == "bench_fast_mode.py":
            always = [*always, "--work-dir", args.fast_mode_work_dir]
        print(f"## {title}\n\n`python bench/{script} {' '.join(always + (quick if args.quick else []))}`\n")  # fmt: skip
        sys.stdout.flush()
        t = time.time()
        run = subprocess.run(
            [sys.executable, str(HERE / script), *always, *(quick if args.quick else [])],
            stdout=subprocess.PIPE,
            text=True,
        )
        print(run.stdout.strip() + "\n")
        print(f"({script}: {time.time() - t:.0f} s)\n")
        if run.returncode != 0:
            failed.append(f"{script} exited {run.returncode}")
    print(f"Whole run: {(time.time() - start) / 60:.1f} min.")
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
