"""Load and soak tests of app.py over gradio_client, on 127.0.0.1.

    python bench/bench_app_load.py [load] [--model demo|tiny|resnet50|DIR] [--callers 1,4,8,16]
    python bench/bench_app_load.py soak [--model ...] [--callers 16] [--seconds 60] [--upload-ttl 10]

``load`` (the default): starts two app servers (``--max-batch-size 8`` and ``--max-batch-size 1``,
both with the queue's concurrency limit of 1 on the model), then for each N runs N closed-loop
callers (each its own ``gradio_client.Client``, one request after another) against each server in
turn, ``--repeats`` times, interleaved so that background load hits both alike. It prints the
median over the repeats of requests/s, p50 and p95 latency, and the batched/unbatched ratio.

``soak``: starts one batched server with ``GRADIO_TEMP_DIR`` in a fresh folder and the given
``--upload-ttl``, then N callers send a mix of good images (a pool of distinct images whose
captions were computed in-process first; every request's file gets a unique name and a nonce in
its metadata, so every upload is distinct) and bad ones (text named .jpg, truncated JPEG, empty
file, PNG header and garbage) to ``/caption`` and ``/caption_details`` for ``--seconds``. It
counts lost answers (transport error, timeout), wrong answers (a good image answered with another
caption or refused, a bad one answered, or refused without naming the problem), samples the
server's RSS and the upload folder every second, prints a markdown table, and exits 1 when an
answer was lost or wrong or the server died.

Models: ``demo`` (the bundled demo model), ``tiny`` (a random tiny captioner, the tests' size),
``resnet50`` (a random-weight ResNet50 + 512-unit LSTM: the real model's compute, no download),
or a model folder. Default: ``demo`` when present, else ``tiny``. Traffic stays on 127.0.0.1 and
every loop is bounded in count or time.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import io
import math
import os
import platform
import random
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
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

    def __init__(
        self,
        model: Path,
        max_batch_size: int,
        log: Path,
        *,
        upload_ttl: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop())
        command = [
            sys.executable,
            str(ROOT / "app.py"),
            "--model",
            str(model),
            "--port",
            str(self.port),
            "--max-batch-size",
            str(max_batch_size),
            "--no-mcp",
        ]
        if upload_ttl is not None:
            command += ["--upload-ttl", str(upload_ttl)]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=None if env is None else os.environ | env,
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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        self.log.close()

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


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


def load_main(argv: list[str]) -> int:
    from imcap_hub.demo import demo_model_available

    p = argparse.ArgumentParser(
        prog="bench_app_load.py [load]", description="batched vs unbatched /caption load test"
    )
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


# --- soak: one server, good and bad images, answers checked, RSS and upload folder sampled ---

BAD_KINDS = ("text.jpg", "truncated.jpg", "empty.png", "garbage.png")
LOST, OK_GOOD, OK_BAD = "lost", "good answered right", "bad refused, naming the problem"
WRONG = (
    "good answered with another caption",
    "good answered with an empty caption",
    "good refused",
    "bad answered",
    "bad refused without naming the problem",
)


def _png_with_nonce(data: bytes, nonce: bytes) -> bytes:
    """The PNG ``data`` with a tEXt chunk before IEND: different bytes, the same pixels."""
    if data[-8:-4] != b"IEND":
        raise ValueError("not a PNG ending in IEND")
    body = b"tEXt" + b"nonce\x00" + nonce
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return data[:-12] + chunk + data[-12:]


def _jpeg_with_nonce(data: bytes, nonce: bytes) -> bytes:
    """The JPEG ``data`` with a COM segment after SOI: different bytes, the same pixels."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(nonce) + 2) + nonce + data[2:]


def with_nonce(data: bytes, ext: str, nonce: bytes) -> bytes:
    return _png_with_nonce(data, nonce) if ext == "png" else _jpeg_with_nonce(data, nonce)


@dataclass
class GoodImage:
    data: bytes
    ext: str  # png or jpg
    caption: str  # the expected answer, computed in-process


def make_pool(model: Path, folder: Path, count: int, seed: int) -> list[GoodImage]:
    """``count`` distinct good images (the example PNGs, then synthetic shapes on a background,
    PNG and JPEG, 48 to 400 px) with their captions computed in-process: beam search width 3,
    the app's /caption."""
    import numpy as np
    from PIL import Image, ImageDraw

    from imcap_hub import ImageCaptioner

    captioner = ImageCaptioner.from_pretrained(model)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [(p.read_bytes(), "png") for p in sorted((ROOT / "examples").glob("*.png"))]
    sources = sources[:count]
    while len(sources) < count:
        w, h = (int(x) for x in rng.integers(48, 401, size=2))
        img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.integers(8, max(9, min(w, h) // 2)))
            x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = int(rng.integers(3))
            if shape == 0:
                draw.rectangle([x, y, x + side, y + side], fill=color)
            elif shape == 1:
                draw.ellipse([x, y, x + side, y + side], fill=color)
            else:
                draw.polygon([(x, y + side), (x + side // 2, y), (x + side, y + side)], fill=color)
        ext = "png" if len(sources) % 2 else "jpg"
        buf = io.BytesIO()
        img.save(buf, format="PNG" if ext == "png" else "JPEG", quality=90)
        sources.append((buf.getvalue(), ext))
    pool = []
    for i, (data, ext) in enumerate(sources):
        path = folder / f"pool{i:03d}.{ext}"
        path.write_bytes(with_nonce(data, ext, b"check"))  # as the callers will send it
        caption = captioner.caption(path)[0].text
        if not caption.strip():
            raise SystemExit(f"pool image {i} has an empty caption: an answer could not be checked")
        pool.append(GoodImage(data, ext, caption))
    return pool


def make_bad(kind: str, rng: random.Random, pool: list[GoodImage], nonce: bytes) -> bytes:
    """A bad upload of ``kind`` (BAD_KINDS), distinct per ``nonce`` (except the empty file)."""
    if kind == "text.jpg":
        return b"this is a text file, not an image: " + nonce + b"\n"
    if kind == "truncated.jpg":
        jpeg = rng.choice([g for g in pool if g.ext == "jpg"] or pool)
        data = with_nonce(jpeg.data, "jpg", nonce) if jpeg.ext == "jpg" else b""
        return data[: max(200, len(data) * 3 // 5)] if data else b"\xff\xd8\xff\xe0" + nonce
    if kind == "empty.png":
        return b""
    if kind == "garbage.png":
        return b"\x89PNG\r\n\x1a\n" + nonce + rng.randbytes(rng.randint(16, 2048))
    raise ValueError(kind)


def refusal_message(path: Path) -> str | None:
    """imcap's message for the upload ``path`` as the app shows it (the path replaced by the
    file's name); None when the file is a usable image."""
    from imcap_hub.errors import ImcapError
    from imcap_hub.images import load_image

    try:
        load_image(path)
    except ImcapError as e:
        return str(e).replace(f"'{path}'", f"'{path.name}'").replace(str(path), path.name)
    return None


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    done: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    endpoints: collections.Counter = field(default_factory=collections.Counter)
    kinds: collections.Counter = field(default_factory=collections.Counter)  # good, bad
    server_died: threading.Event = field(default_factory=threading.Event)  # callers stop
    latencies: list[float] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def record(self, outcome: str, latency: float, detail: str) -> None:
        with self.lock:
            self.done += 1
            self.outcomes[outcome] += 1
            self.latencies.append(latency)
            if outcome not in (OK_GOOD, OK_BAD):
                self.examples.setdefault(outcome, [])
                if len(self.examples[outcome]) < 3:
                    self.examples[outcome].append(detail)


@dataclass
class SoakCaller:
    """One closed-loop caller: its own Client, its own folder, its own random stream."""

    index: int
    url: str
    folder: Path
    pool: list[GoodImage]
    tally: Tally
    args: argparse.Namespace
    seq: int = 0

    def __post_init__(self) -> None:
        from gradio_client import Client

        self.rng = random.Random(self.args.seed * 1009 + self.index)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.client = Client(self.url, verbose=False)

    def one(self, bad_fraction: float) -> None:
        """Send one request and judge its answer."""
        from gradio_client import handle_file
        from gradio_client.exceptions import AppError, ValidationError

        self.seq += 1
        rng, nonce = self.rng, f"{self.index}-{self.seq}-{self.rng.random()}".encode()
        bad = rng.random() < bad_fraction
        if bad:
            kind = rng.choice(BAD_KINDS)
            data, stem_ext = make_bad(kind, rng, self.pool, nonce), kind
        else:
            good = rng.choice(self.pool)
            data, stem_ext = with_nonce(good.data, good.ext, nonce), f"good.{good.ext}"
        path = self.folder / f"c{self.index:02d}_{self.seq:06d}_{stem_ext}"
        path.write_bytes(data)
        expected = refusal_message(path) if bad else good.caption
        if bad and expected is None:
            raise SystemExit(f"{path.name} decodes: the bench's bad image is not bad")
        details = rng.random() < self.args.details_fraction
        api = "/caption_details" if details else "/caption"
        with self.tally.lock:
            self.tally.sent += 1
            self.tally.endpoints[api] += 1
            self.tally.kinds["bad" if bad else "good"] += 1
        start = time.perf_counter()
        try:
            job = self.client.submit(handle_file(str(path)), api_name=api)
            answer = job.result(timeout=self.args.request_timeout)
        except (AppError, ValidationError) as e:
            message = getattr(e, "message", None) or str(e)
            if not bad:
                outcome = "good refused"
            elif expected in message:
                outcome = OK_BAD
            else:
                outcome = "bad refused without naming the problem"
            detail = f"{api} {path.name}: refused: {message!r} (expected {expected!r})"
        except Exception as e:  # transport, timeout, connection: the answer is lost
            outcome, detail = LOST, f"{api} {path.name}: {type(e).__name__}: {e}"
        else:
            text = answer.get("caption") if isinstance(answer, dict) else answer
            if bad:
                outcome = "bad answered"
            elif not isinstance(text, str) or not text.strip():
                outcome = "good answered with an empty caption"
            elif text != expected:
                outcome = "good answered with another caption"
            else:
                outcome = OK_GOOD
            detail = f"{api} {path.name}: answered {text!r} (expected {expected!r})"
        finally:
            path.unlink(missing_ok=True)
        self.tally.record(outcome, time.perf_counter() - start, detail)

    def run(self, requests: int | None, until: float | None, bad_fraction: float) -> None:
        try:
            while (
                (requests is None or self.seq < requests)
                and (until is None or time.monotonic() < until)
                and not self.tally.server_died.is_set()
            ):
                self.one(bad_fraction)
        except BaseException as e:  # a bench bug: never hide it
            with self.tally.lock:
                self.tally.outcomes["caller crashed"] += 1
                self.tally.examples.setdefault("caller crashed", []).append(repr(e))


def vm_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def folder_usage(folder: Path) -> tuple[int, int, int]:
    """Bytes, files and directories under ``folder`` (recursively, not counting itself)."""
    size = files = dirs = 0
    for _root, dirnames, filenames in os.walk(folder):
        dirs += len(dirnames)
        for name in filenames:
            try:
                size += os.lstat(os.path.join(_root, name)).st_size
                files += 1
            except OSError:
                pass
    return size, files, dirs


class Sampler(threading.Thread):
    """Every ``period`` seconds: (time, answers so far, server VmRSS KiB, upload folder)."""

    def __init__(
        self, proc: subprocess.Popen, folder: Path, tally: Tally, period: float = 1.0
    ) -> None:
        super().__init__(daemon=True)
        self.proc, self.folder, self.tally, self.period = proc, folder, tally, period
        self.samples: list[tuple[float, int, int | None, tuple[int, int, int]]] = []
        self.halt = threading.Event()

    def sample(self) -> tuple[float, int, int | None, tuple[int, int, int]]:
        with self.tally.lock:
            done = self.tally.done
        s = (time.monotonic(), done, vm_rss_kib(self.proc.pid), folder_usage(self.folder))
        self.samples.append(s)
        if self.proc.poll() is not None:
            self.tally.server_died.set()
        return s

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.sample()


def least_squares_slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def server_answers(server: Server) -> bool:
    """The process is running and /model_info answers."""
    from gradio_client import Client

    if server.proc.poll() is not None:
        return False
    try:
        client = Client(server.url, verbose=False)
        try:
            info = client.predict(api_name="/model_info")
        finally:
            client.close()
    except Exception as e:
        print(f"  /model_info failed: {type(e).__name__}: {e}", file=sys.stderr)
        return False
    return isinstance(info, dict) and "model_id" in info


def _usage(u: tuple[int, int, int]) -> str:
    return f"{u[0] / 2**20:.2f} MiB ({u[0]:,} bytes) in {u[1]:,} files, {u[2]:,} dirs"


def soak_main(argv: list[str]) -> int:
    from imcap_hub.demo import demo_model_available
    from imcap_hub.serving import DEFAULT_MAX_BATCH

    p = argparse.ArgumentParser(
        prog="bench_app_load.py soak",
        description="soak test: one batched server, good and bad images, answers checked",
    )
    p.add_argument("--model", default="demo" if demo_model_available() else "tiny")
    p.add_argument("--callers", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--upload-ttl", type=int, default=10, metavar="SECONDS")
    p.add_argument("--bad-fraction", type=float, default=0.2)
    p.add_argument("--details-fraction", type=float, default=0.2, help="on /caption_details")
    p.add_argument("--pool", type=int, default=40, help="distinct good images")
    p.add_argument("--warmup-requests", type=int, default=4, help="per caller, before timing")
    p.add_argument("--request-timeout", type=float, default=120)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    command = shlex.join(["python", "bench/bench_app_load.py", "soak", *argv])
    started = datetime.datetime.now().astimezone()

    with tempfile.TemporaryDirectory(prefix="imcap-soak-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        uploads = tmp / "gradio-temp"
        uploads.mkdir()
        model = make_model(args.model, tmp)
        server = Server(
            model,
            DEFAULT_MAX_BATCH,
            tmp / "server.log",
            upload_ttl=args.upload_ttl,
            env={"GRADIO_TEMP_DIR": str(uploads)},
        )
        tally = Tally()
        sampler = Sampler(server.proc, uploads, tally)
        try:
            print("computing the pool's captions in-process...", file=sys.stderr)
            pool = make_pool(model, tmp / "pool", args.pool, args.seed)
            server.wait()
            at_start = sampler.sample()
            callers = [
                SoakCaller(i, server.url, tmp / f"caller{i:02d}", pool, tally, args)
                for i in range(args.callers)
            ]

            def phase(requests: int | None, until: float | None) -> None:
                threads = [
                    threading.Thread(target=c.run, args=(requests, until, args.bad_fraction))
                    for c in callers
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            print(f"warm-up: {args.warmup_requests} requests per caller...", file=sys.stderr)
            phase(args.warmup_requests, None)
            warm = sampler.sample()
            print(f"soak: {args.callers} callers for {args.seconds:g} s...", file=sys.stderr)
            sampler.start()
            phase(None, time.monotonic() + args.seconds)
            sampler.halt.set()
            sampler.join()
            end = sampler.sample()
            for c in callers:
                c.client.close()
            drained = None
            drain_wait = args.upload_ttl + max(1, args.upload_ttl // 2) + 2
            if drain_wait <= 120:  # every upload now older than the ttl, and swept
                print(f"waiting {drain_wait} s for the upload sweep...", file=sys.stderr)
                time.sleep(drain_wait)
                drained = sampler.sample()
            alive = server_answers(server)
        finally:
            log_tail = server.log_tail() if server.proc.poll() is not None else ""
            server.stop()
            shutil.rmtree(uploads, ignore_errors=True)

    # --- the numbers --------------------------------------------------------------------------
    wall = end[0] - warm[0]
    timed = end[1] - warm[1]
    soak_samples = [s for s in sampler.samples if warm[0] <= s[0] <= end[0] and s[2]]
    second_half = [s for s in soak_samples if s[0] >= warm[0] + wall / 2]
    slope = least_squares_slope([s[1] for s in second_half], [s[2] for s in second_half])
    rss_start, rss_end = warm[2], end[2]
    per_request_growth = (rss_end - rss_start) / timed if timed and rss_start and rss_end else None
    peak_bytes = max(s[3][0] for s in sampler.samples)
    peak_files = max(s[3][1] for s in sampler.samples)
    peak_dirs = max(s[3][2] for s in sampler.samples)
    o = tally.outcomes
    lost = o[LOST]
    wrong = sum(o[k] for k in WRONG) + o["caller crashed"]
    lat = sorted(tally.latencies)

    def mib(x: int | None) -> str:
        return "n/a" if x is None else f"{x / 1024:,.1f}"

    def kib(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+,.0f} KiB"

    print(
        f"\n`{command}`  \n"
        f"{started:%Y-%m-%d %H:%M %Z}; {cpu_model()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, Gradio {_gradio_version()}  \n"
        f"model: {args.model}; one server, max batch size {DEFAULT_MAX_BATCH}, "
        "concurrency limit 1; "
        f"N = {args.callers} callers for T = {args.seconds:g} s after "
        f"{args.warmup_requests} warm-up requests each; upload ttl {args.upload_ttl} s "
        f"(swept every {max(1, args.upload_ttl // 2)} s); "
        f"{args.bad_fraction:.0%} bad images, {args.details_fraction:.0%} on /caption_details; "
        f"{len(pool)} distinct good images, every upload distinct\n"
    )
    rows = [
        ("requests sent (incl. warm-up)", f"{tally.sent:,}"),
        (
            "of which /caption, /caption_details",
            f"{tally.endpoints['/caption']:,}, {tally.endpoints['/caption_details']:,}",
        ),
        ("answers received (captions or refusals)", f"{tally.done - lost:,}"),
        ("**lost answers**", f"**{lost}**"),
        ("**wrong answers**", f"**{wrong}**"),
        ("good images answered right", f"{o[OK_GOOD]:,} of {tally.kinds['good']:,}"),
        ("errors for good images (counted as wrong)", f"{o['good refused']}"),
        ("bad images refused naming the problem", f"{o[OK_BAD]:,} of {tally.kinds['bad']:,}"),
        ("throughput (timed part)", f"{timed / wall:.1f} req/s" if wall > 0 else "n/a"),
        (
            "latency p50 / p95 (all)",
            f"{1e3 * statistics.median(lat):.0f} / "
            f"{1e3 * lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)]:.0f} ms"
            if lat
            else "n/a",
        ),
        ("server alive at end (process runs, /model_info answers)", "yes" if alive else "**NO**"),
        (
            "server RSS after warm-up → end",
            f"{mib(rss_start)} → {mib(rss_end)} MiB ({timed:,} requests between)",
        ),
        (
            "RSS growth per 1,000 requests, least-squares, 2nd half",
            kib(None if slope is None else slope * 1000),
        ),
        (
            "RSS growth per 1,000 requests, (end − start) / requests",
            kib(None if per_request_growth is None else per_request_growth * 1000),
        ),
        ("upload folder at start", _usage(at_start[3])),
        ("upload folder peak (each count's maximum)", _usage((peak_bytes, peak_files, peak_dirs))),
        ("upload folder at end", _usage(end[3])),
    ]
    if drained is not None:
        rows.append(
            (f"upload folder {drained[0] - end[0]:.0f} s after the end", _usage(drained[3]))
        )
    print("| soak | result |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")

    failures = []
    if lost:
        failures.append(f"{lost} answers lost")
    if wrong:
        failures.append(f"{wrong} answers wrong")
    if not alive:
        failures.append("the server died or stopped answering /model_info")
    if not tally.sent:
        failures.append("no request was sent")
    if failures:
        print(f"\nFAILED: {'; '.join(failures)}", file=sys.stderr)
        for outcome, examples in tally.examples.items():
            print(f"  {outcome}: {tally.outcomes[outcome]}", file=sys.stderr)
            for e in examples:
                print(f"    e.g. {e}", file=sys.stderr)
        if log_tail:
            print(f"  the server's log ended with:\n{log_tail}", file=sys.stderr)
        return 1
    return 0


def _gradio_version() -> str:
    try:
        from importlib.metadata import version

        return version("gradio")
    except Exception:
        return "?"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["soak"]:
        return soak_main(argv[1:])
    if argv[:1] == ["load"]:
        argv = argv[1:]
    return load_main(argv)


if __name__ == "__main__":
    sys.exit(main())
