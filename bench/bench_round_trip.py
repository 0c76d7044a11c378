"""Where one caller's /caption round trip goes: client, upload, join (the validator), queue,
the model, the answer's event.

    python bench/bench_round_trip.py [--model resnet50|demo|tiny|DIR] [--requests 40] [--image F]

Starts ``python app.py`` (``--no-mcp``, Gradio's own request traces on: ``GRADIO_PROFILING=1``)
and times, one request at a time, round-robin so background load hits all alike:

- ``gradio_client``: ``Client.predict(handle_file(image), api_name="/caption")``, as users call it,
  and the same with ``Client(url, ssl_verify=ssl.create_default_context())``: gradio_client 2.7
  makes three httpx clients per call, and each loads the CA bundle unless given a context;
- the same protocol by hand over one kept-alive ``httpx.Client``, each phase timed on the client:
  ``POST /upload``, ``POST /queue/join`` (Gradio runs the validator inside it), and the SSE
  stream from opening to ``process_completed``;
- the model alone, in this process: ``ImageCaptioner.caption(path)`` (beam 3, as ``/caption``).

Server side, Gradio's traces give each event's queue wait and the function call. Medians; the
ratios come from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from bench_app_load import Server, cpu_model, make_model  # noqa: E402

API = "gradio_api"


class RawCaller:
    """``/caption`` over one kept-alive HTTP connection, the queue protocol by hand."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url
        self.http = httpx.Client(timeout=60)
        info = self.http.get(f"{url}/config").json()
        self.fn_index = next(
            d["id"] for d in info["dependencies"] if d.get("api_name") == "caption"
        )

    def caption(self, image: Path) -> tuple[str, dict[str, float]]:
        """(the caption, ms per phase: upload, join, events)."""
        phases: dict[str, float] = {}
        start = time.perf_counter()
        with open(image, "rb") as f:
            uploaded = self.http.post(f"{self.url}/{API}/upload", files={"files": f}).json()[0]
        phases["upload"] = time.perf_counter() - start
        session = uuid.uuid4().hex
        file_data = {
            "path": uploaded,
            "orig_name": image.name,
            "meta": {"_type": "gradio.FileData"},
        }
        body = {"data": [file_data], "fn_index": self.fn_index, "session_hash": session,
                "event_data": None, "trigger_id": None}  # fmt: skip
        t = time.perf_counter()
        self.http.post(f"{self.url}/{API}/queue/join", json=body).raise_for_status()
        phases["join"] = time.perf_counter() - t
        t = time.perf_counter()
        caption, last = None, None
        with self.http.stream(
            "GET", f"{self.url}/{API}/queue/data", params={"session_hash": session}
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    caption = (message.get("output") or {}).get("data", [None])[0]
                    last = message
                    break
        phases["events"] = time.perf_counter() - t
        if not caption:
            raise SystemExit(f"no caption in the answer of {image}: {last}")
        return caption, {k: 1e3 * v for k, v in phases.items()}

    def close(self) -> None:
        self.http.close()


def server_traces(url: str) -> list[dict]:
    import httpx

    return httpx.get(f"{url}/{API}/profiling/traces", timeout=30).json()


def round_robin(fns: dict[str, Callable[[], dict[str, float]]], repeats: int) -> dict:
    """Each function ``repeats`` times, in turn; its per-call dicts of ms, collected."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    from gradio_client import Client, handle_file

    from imcap_hub import ImageCaptioner
    from imcap_hub.images import load_image, resize

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--image", type=Path, help="default: a 500x375 photo-like JPEG")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="imcap-rt-") as tmp:
        image = args.image or photo_jpeg(Path(tmp) / "photo.jpg")
        image_kib = image.stat().st_size // 1024
        model_dir = make_model(args.model, Path(tmp))
        model = ImageCaptioner.from_pretrained(model_dir)
        server = Server(model_dir, 8, Path(tmp) / "server.log", env={"GRADIO_PROFILING": "1"})
        try:
            server.wait()
            client = Client(server.url, verbose=False)
            # gradio_client makes three httpx clients per call, each loading the CA bundle
            # (certifi) unless handed a ready SSL context: the README's advice for API callers.
            client_ctx = Client(server.url, verbose=False, ssl_verify=ssl.create_default_context())
            raw = RawCaller(server.url)
            expected = model.caption(image)[0].text

            def timed(fn: Callable[[], str]) -> dict[str, float]:
                start = time.perf_counter()
                text = fn()
                if text != expected:
                    raise SystemExit(f"wrong caption {text!r}, expected {expected!r}")
                return {"total": 1e3 * (time.perf_counter() - start)}

            def by_hand() -> dict[str, float]:
                start = time.perf_counter()
                text, phases = raw.caption(image)
                if text != expected:
                    raise SystemExit(f"wrong caption {text!r}, expected {expected!r}")
                return {**phases, "total": 1e3 * (time.perf_counter() - start)}

            def decode() -> dict[str, float]:
                start = time.perf_counter()
                resize(load_image(image), model.config.encoder.image_size)
                return {"total": 1e3 * (time.perf_counter() - start)}

            fns = {
                "gradio_client": lambda: timed(
                    lambda: client.predict(handle_file(str(image)), api_name="/caption")
                ),
                "gradio_client, one SSL context": lambda: timed(
                    lambda: client_ctx.predict(handle_file(str(image)), api_name="/caption")
                ),
                "by hand": by_hand,
                "model alone": lambda: timed(lambda: model.caption(image)[0].text),
                "decode": decode,
            }
            round_robin(fns, 3)  # warm-up: first requests, first conversions
            httpx_clear(server.url)
            results = round_robin(fns, args.requests)
            traces = [t for t in server_traces(server.url) if t.get("fn_name")]
            client.close()
            client_ctx.close()
            raw.close()
        finally:
            server.stop()

    caption_traces = [t for t in traces if "caption" in (t["fn_name"] or "")]
    print(
        f"\nmodel: {args.model}; image: {image.name} ({image_kib} KiB); "
        f"/caption (beam 3), one caller, {args.requests} requests per way, medians, round-robin; "
        f"{os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    model_ms = med(results["model alone"], "total")
    hand = results["by hand"]
    print("| what | ms |")
    print("|---|---:|")
    print(f"| the model alone, in process | {model_ms:.1f} |")
    print(
        f"| - of which reading the image (decode + resize; the validator's copy is now reused, "
        f"so /caption does this once, not twice) | {med(results['decode'], 'total'):.1f} |"
    )
    print(f"| round trip, gradio_client | {med(results['gradio_client'], 'total'):.1f} |")
    ctx_ms = med(results["gradio_client, one SSL context"], "total")
    print(
        f"| round trip, gradio_client with `ssl_verify=ssl.create_default_context()` | {ctx_ms:.1f} |"
    )
    print(f"| round trip, by hand over one connection | {med(hand, 'total'):.1f} |")
    print(f"| - upload (POST /upload) | {med(hand, 'upload'):.1f} |")
    print(f"| - join (POST /queue/join, with the validator) | {med(hand, 'join'):.1f} |")
    print(f"| - events (SSE until process_completed) | {med(hand, 'events'):.1f} |")
    if caption_traces:
        # (Gradio 6.31 traces no fn_call time for batched functions: left out.)
        for key in ("queue_wait_ms", "total_ms"):
            values = [t[key] for t in caption_traces if t.get(key) is not None]
            if values:
                print(
                    f"| server trace: {key[:-3].replace('_', ' ')} | {statistics.median(values):.1f} |"
                )
    print()
    gc = med(results["gradio_client"], "total")
    print("| ratio | value | target |")
    print("|---|---:|---|")
    print(f"| gradio_client round trip - model alone | {gc - model_ms:+.1f} ms | <= +40 ms |")
    print(
        f"| gradio_client, one SSL context - model alone | {ctx_ms - model_ms:+.1f} ms | <= +40 ms |"
    )
    print(f"| by-hand round trip - model alone | {med(hand, 'total') - model_ms:+.1f} ms | |")
    return 0


def httpx_clear(url: str) -> None:
    import httpx

    httpx.post(f"{url}/{API}/profiling/clear", timeout=30)


def photo_jpeg(path: Path) -> Path:
    """A 500x375 photo-like JPEG (Flickr8k's usual size)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    img = np.stack([x % 256, (y * 0.7) % 256, ((x + y) * 0.3) % 256], -1)
    img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)
    return path


if __name__ == "__main__":
    sys.exit(main())
