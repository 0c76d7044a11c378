"""Folder throughput: images per second through the folder CLI's batches, one stage after
another against overlapped (imcap_hub.pipeline), greedy and beam-3, for each encoder runtime.

    python bench/bench_folder.py [--images 96] [--batch-size 16] [--repeats 3] [--runtimes auto]

The model: ResNet50 at 224 px with random weights (the ImageNet download is not reachable
here; the compute is the same) and a Flickr8k-sized LSTM (embedding 256, LSTM 512) whose
captions run to ``--max-length`` words (random weights rarely stop early, so this is the
slow case). The images: photo-like 500x375 JPEGs (Flickr8k's usual size), written once.
Each configuration runs ``--repeats`` times, round-robin, with the encoder alone on the
already decoded images (the bound for that runtime); medians of img/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("IMCAP_CACHE", os.path.join(tempfile.gettempdir(), "imcap-bench-cache"))

import numpy as np  # noqa: E402
from bench_inference import interleaved_medians  # noqa: E402
from PIL import Image  # noqa: E402

TARGETS = {"auto": 28.0, "fast": 50.0}  # img/s, issue 12
CALIBRATION_IMAGES = 32


def photo(i: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like 500x375 RGB image: gradients and noise."""
    y, x = np.mgrid[0:375, 0:500]
    img = np.stack([(x + 13 * i) % 256, (y * 0.7 + 7 * i) % 256, ((x + y) * 0.3) % 256], -1)
    return (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)


def photo_jpegs(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(photo(i, rng)).save(path, quality=90)
        paths.append(str(path))
    return paths


def make_model(folder: Path, max_length: int, runtime: str):
    from imcap_hub import (
        CaptionerConfig,
        DecoderConfig,
        EncoderConfig,
        ImageCaptioner,
        Vocabulary,
    )
    from imcap_hub.calibration import CalibrationSet

    path = folder / f"resnet50-{max_length}"
    if not path.exists():
        vocab = Vocabulary.build([" ".join(f"w{i}" for i in range(3000))])
        encoder = EncoderConfig(architecture="resnet50", weights="repo", image_size=224)
        decoder = DecoderConfig(embedding_dim=256, units=512, max_length=max_length, dropout=0)
        config = CaptionerConfig(encoder=encoder, decoder=decoder, vocab_size=len(vocab))
        model = ImageCaptioner.from_config(config, vocab, seed=0)
        # The int8 encoder (`fast`) calibrates on these: other images of the same kind, as a
        # trained model's would be its training images (int8 speed does not depend on the ranges).
        rng = np.random.default_rng(1)
        calibration = [photo(i, rng) for i in range(1000, 1000 + CALIBRATION_IMAGES)]
        model.encoder.calibration = CalibrationSet.from_images(calibration, 224)
        model.save_pretrained(path)
    return ImageCaptioner.from_pretrained(path, runtime=runtime)


def images_per_second(model, paths: list[str], batch_size: int, options, overlap: bool) -> float:
    from imcap_hub.pipeline import caption_batches

    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    start = time.perf_counter()
    done = sum(len(b) for b in caption_batches(model, batches, options, overlap=overlap))
    return done / (time.perf_counter() - start)


def encoder_images_per_second(model, batches) -> float:
    """The encoder alone on already decoded batches (resizing included): the bound on what the
    folder CLI can reach with this runtime."""
    from imcap_hub.inference import encode_images

    start = time.perf_counter()
    done = sum(len(encode_images(model, batch)[0]) for batch in batches)
    return done / (time.perf_counter() - start)


def decode_ms_per_image(model, paths: list[str], repeats: int) -> dict[str, float]:
    """Greedy decoding alone (one BLAS thread, as in the pipeline), ms per image: one image at a
    time against the batch at once (``search_batch``); medians of ``repeats`` round-robin."""
    from imcap_hub import DecodeOptions
    from imcap_hub.inference import (
        encode_images,
        read_images,
        search_batch,
        search_features,
        single_threaded_blas,
    )

    features, _ = encode_images(model, read_images(paths))
    greedy = DecodeOptions(decoding="greedy")
    ways = {
        "one image at a time": lambda: [search_features(model, f, greedy) for f in features],
        "the batch at once": lambda: search_batch(model, features, greedy),
    }
    with single_threaded_blas():
        medians = interleaved_medians(ways, repeats, warmup=1)
    return {name: ms / len(features) for name, ms in medians.items()}


def main(argv: list[str] | None = None) -> int:
    from imcap_hub import DecodeOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--runtimes", default="auto", help="comma-separated encoder runtimes")
    args = p.parse_args(argv)

    decodings = {"greedy": DecodeOptions(decoding="greedy"), "beam-3": DecodeOptions()}
    runs: dict[tuple[str, str, bool], list[float]] = {}
    encoder_alone: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="imcap-folder-") as tmp:
        paths = photo_jpegs(Path(tmp), args.images)
        from imcap_hub.inference import read_images

        decoded = [
            read_images(paths[i : i + args.batch_size])
            for i in range(0, len(paths), args.batch_size)
        ]
        models = {}
        for runtime in args.runtimes.split(","):
            models[runtime] = make_model(Path(tmp), args.max_length, runtime)
            models[runtime].encoder.prepare()
            print(f"runtime {runtime}: {models[runtime].encoder.runtime.name}", file=sys.stderr)
        configs = [
            (runtime, decoding, overlap)
            for runtime in models
            for decoding in decodings
            for overlap in (False, True)
        ]
        for runtime, decoding, overlap in configs:  # warm-up
            images_per_second(models[runtime], paths[: args.batch_size], args.batch_size, decodings[decoding], overlap)  # fmt: skip
        for _ in range(args.repeats):
            for runtime, model in models.items():
                rate = encoder_images_per_second(model, decoded)
                encoder_alone.setdefault(runtime, []).append(rate)
            for key in configs:
                runtime, decoding, overlap = key
                rate = images_per_second(
                    models[runtime], paths, args.batch_size, decodings[decoding], overlap
                )
                runs.setdefault(key, []).append(rate)
                print(f"  {key}: {rate:.1f} img/s", file=sys.stderr)
        decode = decode_ms_per_image(
            next(iter(models.values())), paths[: args.batch_size], 3 * args.repeats
        )

    print(
        f"\n{args.images} JPEGs (500x375), batches of {args.batch_size}, captions of "
        f"{args.max_length} words, medians of {args.repeats} round-robin runs; "
        f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}\n"
    )
    print("| runtime | decoding | encoder alone img/s | one stage after another img/s | overlapped img/s | overlapped / not | overlapped / encoder alone | target |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for runtime in models:
        for decoding in decodings:
            serial = statistics.median(runs[(runtime, decoding, False)])
            overlapped = statistics.median(runs[(runtime, decoding, True)])
            bound = statistics.median(encoder_alone[runtime])
            target = TARGETS.get(runtime)
            print(
                f"| {runtime} ({models[runtime].encoder.runtime.name}) | {decoding} | {bound:.1f} "
                f"| {serial:.1f} | {overlapped:.1f} | {overlapped / serial:.2f}x "
                f"| {overlapped / bound:.0%} "
                f"| {f'>= {target:.0f} img/s' if target else ''} |"
            )
    one, batch = decode["one image at a time"], decode["the batch at once"]
    print(
        f"\nGreedy decoding alone, {args.batch_size} images' features, one BLAS thread "
        f"(medians of {3 * args.repeats}): one image at a time {one:.2f} ms/image, the batch "
        f"at once {batch:.2f} ms/image ({one / batch:.1f}x less)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
