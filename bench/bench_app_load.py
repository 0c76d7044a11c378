"""Load test of app.py: N concurrent gradio_client callers on /caption, batched vs unbatched.

    python bench/bench_app_load.py [--model demo|tiny|resnet50|DIR] [--callers 1,4,8,16]

Starts two app servers on 127.0.0.1 (``--max-batch-size 8`` and ``--max-batch-size 1``, both
with the queue's concurrency limit of 1 on the model), then for each N runs N closed-loop callers
(each its own ``gradio_client.Client``, one request after another) against each server in turn,
``--repeats`` times, interleaved so that background load hits both alike. It prints the median
over the repeats of requests/s, p50 and p95 latency, and the batched/unbatched ratio.

Models: ``demo`` (the bundled demo model), ``tiny`` (a random tiny captioner, the tests' size),
``resnet50`` (a random-weight ResNet50 + 512-unit LSTM: the real model's compute, no download),
or a model folder. Default: ``demo`` when present, else ``tiny``. Traffic stays on 127.0.0.1 and
every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(kind: str, out: Path) -> Path:
    """A model folder for ``kind`` (demo, tiny, resnet50 or an existing folder)."""
    from imcap_hub.demo import DEMO_MODEL_DIR, demo_model_available

    if kind == "demo":
        if not demo_model_available():
            raise SystemExit("the bundled demo model is not present; use --model tiny")
        return DEMO_MODEL_DIR
    if kind not in ("tiny", "resnet50"):
        return Path(kind)
    from imcap_hub import (
        CaptionerConfig,
        DecoderConfig,
        EncoderConfig,
        ImageCaptioner,
        Vocabulary,
    )
    from training.synthetic import vocabulary

    vocab = Vocabulary.build([" ".join(vocabulary())])
    if kind == "tiny":
        encoder = EncoderConfig(
            architecture="tiny_resnet",
            weights="repo",
            image_size=32,
            preprocessing="unit",
            widths=[8, 16],
        )
        decoder = DecoderConfig(embedding_dim=8, units=16, max_length=8, dropout=0.0)
    else:
        encoder = EncoderConfig(architecture="resnet50", weights="repo", image_size=224)
        decoder = DecoderConfig(embedding_dim=256, units=512, max_length=20, dropout=0.0)
    config = CaptionerConfig(encoder=encoder, decoder=decoder, vocab_size=len(vocab))
    path = out / kind
    ImageCaptioner.from_config(config, vocab, seed=0).save_pretrained(path)
    return path


class Server:
    """``python app.py`` in a subprocess; ready when it answers HTTP."""

    def __init__(self, model: Path, max_batch_size: int, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "app.py"),
                "--model",
                str(model),
                "--port",
                str(self.port),
                "--max-batch-size",
                str(max_batch_size),
                "--no-mcp",
            ],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the app exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/config", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the app did not start in {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def measure(url: str, n: int, total: int, image: Path) -> dict[str, float]:
    """N closed-loop callers, ``ceil(total / n)`` requests each; req/s and latency in ms."""
    from gradio_client import Client, handle_file

    per_caller = max(1, math.ceil(total / n))
    clients = [Client(url, verbose=False) for _ in range(n)]
    for c in clients[:1]:
        c.predict(handle_file(image), api_name="/caption")  # one untimed request
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n + 1)

    def caller(client) -> None:
        barrier.wait()
        for _ in range(per_caller):
            start = time.perf_counter()
            try:
                client.predict(handle_file(image), api_name="/caption")
            except Exception as e:
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=caller, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - start
    for c in clients:
        c.close()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50": 1e3 * statistics.median(latencies),
        "p95": 1e3 * latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)],
    }


def main(argv: list[str] | None = None) -> int:
    from imcap_hub.demo import demo_model_available

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo" if demo_model_available() else "tiny")
    p.add_argument("--callers", default="1,4,8,16", help="comma-separated N")
    p.add_argument("--requests", type=int, default=48, help="requests per measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements per (N, mode); medians")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--image", type=Path, help="default: the first example image")
    args = p.parse_args(argv)
    callers = [int(x) for x in args.callers.split(",")]
    image = args.image or sorted((ROOT / "examples").glob("*.png"))[0]

    with tempfile.TemporaryDirectory(prefix="imcap-bench-") as tmp:
        model = make_model(args.model, Path(tmp))
        modes = {"batched": args.max_batch_size, "unbatched": 1}
        servers = {m: Server(model, b, Path(tmp) / f"{m}.log") for m, b in modes.items()}
        try:
            for s in servers.values():
                s.wait()
            results: dict[tuple[str, int], list[dict[str, float]]] = {}
            for n in callers:
                for _ in range(args.repeats):
                    for mode, server in servers.items():
                        r = measure(server.url, n, args.requests, image)
                        results.setdefault((mode, n), []).append(r)
                        print(
                            f"  {mode:9s} N={n:2d}: {r['rps']:6.1f} req/s  "
                            f"p50 {r['p50']:6.0f} ms  p95 {r['p95']:6.0f} ms",
                            file=sys.stderr,
                        )
        finally:
            for s in servers.values():
                s.stop()

    def med(mode: str, n: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(mode, n)])

    print(
        f"\nmodel: {args.model}; image: {image.name}; /caption (beam 3); "
        f"max_batch_size {args.max_batch_size} vs 1; concurrency limit 1; "
        f"{args.requests} requests per measurement, median of {args.repeats}; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}\n"
    )
    print(
        "| callers N | batched req/s | batched p50 ms | batched p95 ms "
        "| unbatched req/s | unbatched p50 ms | unbatched p95 ms | req/s ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in callers:
        b = [med("batched", n, k) for k in ("rps", "p50", "p95")]
        u = [med("unbatched", n, k) for k in ("rps", "p50", "p95")]
        print(
            f"| {n} | {b[0]:.1f} | {b[1]:.0f} | {b[2]:.0f} "
            f"| {u[0]:.1f} | {u[1]:.0f} | {u[2]:.0f} | {b[0] / u[0]:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
