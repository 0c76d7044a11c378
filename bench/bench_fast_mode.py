"""Fast mode: the int8 (and bf16) encoder against the exact fp32 one, on a trained model.

    python bench/bench_fast_mode.py [--quick] [--variants] [--work-dir runs/bench-fast-mode]

1. Draws the synthetic shapes dataset (``training.synthetic``: coloured shapes, captions).
2. Freezes a randomly initialised ResNet50 at 224 px (the ImageNet weights cannot be downloaded
   here; random features still carry colour and shape) and trains the pooled LSTM decoder on its
   features with the ``python -m training`` stages (prepare, train, push), so the model folder
   is what a real run publishes, ``calibration.safetensors`` (training images) included.
3. Captions the held-out test split (greedy) with the exact encoder (``openvino``, fp32),
   ``openvino-int8`` and ``openvino-bf16`` (where the CPU has bf16), and prints a markdown table:
   encoder ms per image (median; batch 1 and batch 32, the runtimes timed round-robin), greedy
   captions identical to fp32's, BLEU-4 (``training.evaluate``) and the calibration set used.

The run folder (features, checkpoints, model) and the converted encoders stay in ``--work-dir``:
a second run only captions and times. ``--quick``: a small smoke test (ResNet50 at 64 px, 150
images, 2 epochs), not a measurement. ``--variants``: also quantises with other NNCF settings
(overflow fix, preset, bias correction, more calibration images, residual Adds left in float)
and OpenVINO compile settings, and reports each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

TARGET_ENCODER_MS = 15.0
TARGET_AGREEMENT = 0.99
TARGET_BLEU_GAP = 0.005


@dataclass(frozen=True)
class Scale:
    """How big the experiment is."""

    n_images: int
    draw_size: int
    encoder_size: int
    epochs: int
    calibration_images: int
    test_images: int
    repeats: int


FULL = Scale(2600, 128, 224, 12, 128, 520, 15)
QUICK = Scale(150, 64, 64, 2, 16, 30, 3)


def run_config(scale: Scale, work_dir: Path):
    """The training run: synthetic shapes, a frozen random ResNet50, the pooled LSTM."""
    from training.run_config import RunConfig

    data = {
        "name": "",
        "work_dir": str(work_dir),
        "seed": 0,
        "dataset": {
            "name": "synthetic shapes",
            "synthetic": {
                "n_images": scale.n_images,
                "image_size": scale.draw_size,
                "seed": 0,
                "max_shapes": 2,
                "captions_per_image": 4,
                # 20 % held out: at least 500 test images at full scale
                "split_fractions": [0.7, 0.1, 0.2],
            },
        },
        "vocab": {"min_count": 1, "max_length": 16},
        "model": {
            "encoder": {
                "architecture": "resnet50",
                "weights": "random",
                "image_size": scale.encoder_size,
                "preprocessing": "caffe",
                "features": "pooled",
            },
            "decoder": {"embedding_dim": 256, "units": 512, "dropout": 0.3},
        },
        "features": {"batch_size": 32, "runtime": "auto"},
        "training": {"epochs": scale.epochs, "batch_size": 64, "patience": 3},
        "evaluation": {"enabled": False},
        "publish": {"calibration_images": scale.calibration_images},
    }
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    data["name"] = f"fast-mode-{digest}"  # another scale or setting: another run folder
    return RunConfig.from_dict(data)


def trained_model_dir(config) -> Path:
    """The published model folder, trained once (a rerun finds it)."""
    from training.stages import stage_prepare, stage_push, stage_train

    paths = config.paths
    if (paths.model / "config.json").is_file():
        print(f"trained model: {paths.model} (cached)", flush=True)
        return paths.model
    start = time.perf_counter()
    if not paths.prepare_info.is_file():
        stage_prepare(config, progress=False)
    if not (paths.trained / "config.json").is_file():
        stage_train(config, progress=False)
    stage_push(config)
    print(f"trained model: {paths.model} in {time.perf_counter() - start:.0f} s", flush=True)
    return paths.model


def settings_label(settings) -> str:
    """The NNCF settings in words, for the table."""
    bias = "fast" if settings.fast_bias_correction else "accurate"
    return f"{settings.preset} preset, {bias} bias correction, overflow fix {settings.overflow_fix}"


def interleaved_ms_per_image(fns: dict, batch: int, repeats: int) -> dict[str, float]:
    """Median ms per image of each function, timed round-robin (background load hits all)."""
    for fn in fns.values():
        fn()  # warm-up: the first call of a compiled model is slower
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3 / batch)
    return {name: statistics.median(t) for name, t in times.items()}


def caption(model, images: list[str]) -> list[str]:
    """Greedy captions through the project's evaluation path (load, encode, decode)."""
    from imcap_hub import DecodeOptions
    from training.evaluate import caption_images

    texts, errors = caption_images(
        model, images, {"greedy": DecodeOptions(decoding="greedy")}, progress=False
    )
    if errors:
        raise SystemExit(
            f"{len(errors)} test images could not be read: {next(iter(errors.items()))}"
        )
    return texts["greedy"]


def with_encoder(model, runtime: str, **encoder_args):
    """``model`` with another encoder runtime (and calibration or NNCF settings)."""
    from imcap_hub import ImageCaptioner
    from imcap_hub.encoder import Encoder

    encoder = Encoder(
        model.config.encoder,
        weights_file=model.encoder.weights_file,
        runtime=runtime,
        calibration=encoder_args.pop("calibration", model.encoder.calibration),
        **encoder_args,
    )
    return ImageCaptioner(model.config, model.vocab, model.decoder_weights, encoder)


def openvino_hint_rows(model, batches: dict[int, np.ndarray], repeats: int) -> list[str]:
    """The int8 and fp32 models compiled with other OpenVINO settings than imcap's own
    (PERFORMANCE_HINT LATENCY): ms per image, batch 1 and 32."""
    import openvino as ov

    folders = {}
    for runtime in ("openvino", "openvino-int8"):
        encoder = (
            model.encoder if runtime == "openvino-int8" else with_encoder(model, runtime).encoder
        )
        encoder.prepare()
        folder = encoder._cache_folder(runtime)
        folders[runtime] = folder / json.loads((folder / "meta.json").read_text())["file"]
    settings = {
        "LATENCY (imcap's)": {"PERFORMANCE_HINT": "LATENCY"},
        "THROUGHPUT": {"PERFORMANCE_HINT": "THROUGHPUT"},
        "LATENCY, 1 thread": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1},
    }
    core = ov.Core()
    rows = []
    for (runtime, xml), (label, config) in [
        (f, s) for f in folders.items() for s in settings.items()
    ]:
        compiled = core.compile_model(os.fspath(xml), "CPU", config)
        request = compiled.create_infer_request()
        ms = {
            size: interleaved_ms_per_image(
                {"x": lambda b=batch, r=request: r.infer({0: b})}, size, repeats
            )["x"]
            for size, batch in batches.items()
        }
        rows.append(f"| {runtime} | {label} | {ms[1]:.1f} | {ms[32]:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    parser.add_argument("--variants", action="store_true", help="also try other NNCF settings")
    parser.add_argument("--work-dir", default="runs/bench-fast-mode")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats per runtime")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    repeats = args.repeats or scale.repeats
    work_dir = Path(args.work_dir).resolve()
    # Converted and quantised encoders live with the run: a rerun loads them.
    os.environ.setdefault("IMCAP_CACHE", str(work_dir / "imcap-cache"))

    from imcap_hub import ImageCaptioner
    from imcap_hub.encoder import cpu_capabilities, preprocess, runtime_problem
    from imcap_hub.images import load_image
    from imcap_hub.quantize import default_settings
    from training.evaluate import references_by_image, score_decodings
    from training.prepare import load_prepared
    from training.publish import calibration_set

    config = run_config(scale, work_dir)
    model_dir = trained_model_dir(config)
    table, _, _ = load_prepared(config)
    references = references_by_image(table, "test")
    images = list(references)[: scale.test_images]
    exact = ImageCaptioner.from_pretrained(model_dir, runtime="openvino")
    calibration = exact.encoder.calibration
    assert calibration is not None, "the published model has no calibration.safetensors"

    modes = {"openvino": exact}
    missing = {}
    for runtime in ("openvino-int8", "openvino-bf16"):
        problem = runtime_problem(runtime)
        if problem:
            missing[runtime] = problem
            continue
        start = time.perf_counter()
        modes[runtime] = ImageCaptioner.from_pretrained(model_dir, runtime=runtime)
        info = modes[runtime].encoder.prepare()
        how = "from the cache" if info.cached else "quantised" if "int8" in runtime else "built"
        print(f"{runtime}: {how} in {time.perf_counter() - start:.1f} s; {info.note}", flush=True)

    pixels = [load_image(path) for path in images[:32]]
    batches = {
        1: preprocess(pixels[:1], exact.config.encoder),
        32: preprocess((pixels * 32)[:32], exact.config.encoder),
    }
    speed = {
        size: interleaved_ms_per_image(
            {name: (lambda m=m, b=batch: m.encoder.run(b)) for name, m in modes.items()},
            size,
            repeats if size == 1 else max(3, repeats // 3),
        )
        for size, batch in batches.items()
    }

    captions = {}
    for name, model in modes.items():
        start = time.perf_counter()
        captions[name] = caption(model, images)
        print(
            f"captioned {len(images)} test images with {name} in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    if "openvino-int8" in modes:  # the run-to-run noise of int8 itself
        captions["openvino-int8, 2nd pass"] = caption(modes["openvino-int8"], images)

    variant_rows = []
    if args.variants and "openvino-int8" in modes:
        more = calibration_set(
            table, exact.config.encoder.image_size, 300, config.seed + 1
        )  # 300: NNCF's default subset size
        default = default_settings()
        other_fix = "first_layer_only" if default.overflow_fix == "enable" else "enable"
        variants = {
            f"overflow fix {other_fix}": {"overflow_fix": other_fix},
            "preset mixed": {"preset": "mixed"},
            "accurate bias correction": {"fast_bias_correction": False},
            "residual Adds in float": {"ignored_types": ("Add",)},
            "300 calibration images": {},
        }
        for label, change in variants.items():
            encoder_args = {"quantization": replace(default, **change)}
            if label == "300 calibration images":
                encoder_args["calibration"] = more
            model = with_encoder(exact, "openvino-int8", **encoder_args)
            start = time.perf_counter()
            model.encoder.prepare()
            built = time.perf_counter() - start
            ms = {
                size: interleaved_ms_per_image(
                    {"x": lambda b=batch, m=model: m.encoder.run(b)}, size, max(3, repeats // 3)
                )["x"]
                for size, batch in batches.items()
            }
            captions[f"int8: {label}"] = caption(model, images)
            variant_rows.append((label, ms, built))
        hint_rows = openvino_hint_rows(modes["openvino-int8"], batches, max(3, repeats // 3))
    keys = range(len(images))
    scores = score_decodings(
        {i: references[images[i]] for i in keys},
        {name: dict(zip(keys, texts)) for name, texts in captions.items()},
    )

    # --- the report ---------------------------------------------------------------------------
    fp32 = captions["openvino"]

    def agreement(name: str, against: list[str] = fp32) -> float:
        return sum(a == b for a, b in zip(captions[name], against)) / len(images)

    bleu_fp32 = scores["openvino"]["BLEU-4"]
    print()
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, OpenVINO CPU capabilities "
        f"{', '.join(cpu_capabilities())}; load average {os.getloadavg()[0]:.1f} at the end"
        + (" (QUICK: a smoke test, not a measurement)" if args.quick else "")
    )
    print(
        f"Model: {model_dir} (ResNet50 {exact.config.encoder.image_size} px, random weights, "
        f"frozen; pooled LSTM {exact.config.decoder.units} units, vocabulary "
        f"{exact.config.vocab_size}, trained {config.training.epochs} epochs at most)"
    )
    print(
        f"Calibration: {len(calibration)} training images ({calibration.nbytes() / 1e6:.2f} MB "
        f"of JPEG in calibration.safetensors); test: {len(images)} held-out images, "
        f"{sum(len(references[i]) for i in images)} references; greedy decoding"
    )
    print()
    print(
        "| encoder | ms/image, batch 1 | ms/image, batch 32 | greedy captions = fp32 | "
        "BLEU-4 | BLEU-4 - fp32 | CIDEr |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in modes:
        s = scores[name]
        print(
            f"| {name}{' (fp32, exact)' if name == 'openvino' else ''} | {speed[1][name]:.1f} | "
            f"{speed[32][name]:.1f} | {agreement(name):.1%} | {s['BLEU-4']:.4f} | "
            f"{s['BLEU-4'] - bleu_fp32:+.4f} | {s['CIDEr']:.3f} |"
        )
    for runtime, problem in missing.items():
        print(f"| {runtime} | not available on this CPU | | | | | |  ({problem})")
    if "openvino-int8, 2nd pass" in captions:
        print(
            f"\nint8 run to run: the second pass gives the first pass's caption for "
            f"{agreement('openvino-int8, 2nd pass', captions['openvino-int8']):.1%} of the images"
        )
    if variant_rows:
        print("\nOther NNCF settings (int8; each quantised once):\n")
        print(
            "| int8 variant | ms/image, batch 1 | ms/image, batch 32 | quantise s | "
            "captions = fp32 | BLEU-4 - fp32 |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        print(
            f"| imcap's (for this CPU: {settings_label(default_settings())}, "
            f"{len(calibration)} images) | "
            f"{speed[1]['openvino-int8']:.1f} | {speed[32]['openvino-int8']:.1f} | | "
            f"{agreement('openvino-int8'):.1%} | "
            f"{scores['openvino-int8']['BLEU-4'] - bleu_fp32:+.4f} |"
        )
        for label, ms, built in variant_rows:
            name = f"int8: {label}"
            print(
                f"| {label} | {ms[1]:.1f} | {ms[32]:.1f} | {built:.0f} | {agreement(name):.1%} | "
                f"{scores[name]['BLEU-4'] - bleu_fp32:+.4f} |"
            )
        print("\nOpenVINO compile settings (imcap uses the first):\n")
        print("| model | setting | ms/image, batch 1 | ms/image, batch 32 |")
        print("|---|---|---:|---:|")
        print("\n".join(hint_rows))

    if "openvino-int8" in modes:
        int8 = "openvino-int8"
        gap = scores[int8]["BLEU-4"] - bleu_fp32
        checks = [
            (
                f"encoder at most {TARGET_ENCODER_MS:.0f} ms (batch 1)",
                speed[1][int8] <= TARGET_ENCODER_MS,
                f"{speed[1][int8]:.1f} ms",
            ),
            (
                f"at least {TARGET_AGREEMENT:.0%} identical greedy captions",
                agreement(int8) >= TARGET_AGREEMENT,
                f"{agreement(int8):.1%}",
            ),
            (
                f"BLEU-4 within {TARGET_BLEU_GAP} of fp32",
                abs(gap) <= TARGET_BLEU_GAP,
                f"{gap:+.4f}",
            ),
        ]
        print("\n| target (openvino-int8) | met here | value |")
        print("|---|---|---:|")
        for label, met, value in checks:
            print(f"| {label} | {'yes' if met else 'no'} | {value} |")


if __name__ == "__main__":
    main()
