"""Inference speed on this machine: encoder runtimes, end-to-end captions, tutorial baseline.

    python bench/bench_inference.py [--repeats 20] [--max-length 16] [--vocab 3000]

A ResNet50 at 224 px with random weights (the ImageNet download is not reachable here; the
speed is the same) and a Flickr8k-sized decoder (embedding 256, LSTM 512, vocabulary 3000) with
random weights. The ``<end>`` logit is pushed down so that every caption runs to
``--max-length`` words (34 + ``<end>``: the 35 steps of the issue's baseline), so all
decoders do the same number of steps. Medians of ``--repeats``
runs; every ratio comes from this one run.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("IMCAP_CACHE", os.path.join(tempfile.gettempdir(), "imcap-bench-cache"))

import numpy as np
from PIL import Image

from imcap_hub import (
    CaptionerConfig,
    DecodeOptions,
    DecoderConfig,
    EncoderConfig,
    ImageCaptioner,
    Vocabulary,
    predict,
)
from imcap_hub.decoder import build_training_model, weights_into_keras
from imcap_hub.encoder import Encoder, preprocess, runtime_problem
from imcap_hub.images import load_image


def interleaved_times(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Every run's ms of each function, timed round-robin so background load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_medians(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of each function, timed round-robin so background load hits all alike."""
    return {
        name: statistics.median(t) for name, t in interleaved_times(fns, repeats, warmup).items()
    }


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    # A smooth image (like a photo, unlike noise) of a typical Flickr size.
    y, x = np.mgrid[0:375, 0:500]
    img = np.stack([(x + 40 * seed) % 256, (y * 0.7) % 256, ((x + y) * 0.3) % 256], -1)
    img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_model(
    vocab_size: int, max_length: int, runtime: str, encoder: Encoder | None, kind: str = "pooled"
) -> ImageCaptioner:
    """A Flickr8k-sized captioner; ``kind`` "attention": ResNet50's 7x7x2048 grid, attention
    512, the same embedding and LSTM sizes."""
    words = [f"w{i}" for i in range(vocab_size - 4)]
    vocab = Vocabulary.build([" ".join(words)])
    attention = kind == "attention"
    config = CaptionerConfig(
        encoder=EncoderConfig(weights="random", features="spatial" if attention else "pooled"),
        decoder=DecoderConfig(
            kind="attention" if attention else "init_state_lstm",
            embedding_dim=256,
            units=512,
            max_length=max_length,
            attention_dim=512 if attention else None,
        ),
        vocab_size=len(vocab),
    )
    model = ImageCaptioner.from_config(
        config,
        vocab,
        seed=0,
        runtime=runtime,
        encoder_model=encoder.keras_model if encoder else None,
    )
    weights = dict(model.decoder_weights)
    weights["logits/bias"] = weights["logits/bias"].copy()
    weights["logits/bias"][vocab.end_id] = -1e4  # every caption runs to max_length
    model.set_decoder_weights(weights)
    return model


def tutorial_caption(
    encoder_model, decoder_model, vocab: Vocabulary, data: bytes, max_length: int
) -> str:
    """The tutorial habit: Keras ``predict`` for the image, then ``predict`` on the padded prefix per word."""
    image = load_image(data)
    features = encoder_model.predict(preprocess([image], EncoderConfig()), verbose=0)
    ids = [vocab.start_id]
    for _ in range(max_length + 1):
        seq = np.zeros((1, max_length + 2), dtype=np.int32)
        seq[0, : len(ids)] = ids
        logits = decoder_model.predict([features, seq], verbose=0)[0, len(ids) - 1]
        logits[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf
        if len(ids) - 1 >= max_length:
            break
        nxt = int(np.argmax(logits))
        if nxt == vocab.end_id:
            break
        ids.append(nxt)
    return vocab.decode(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=34)
    parser.add_argument("--vocab", type=int, default=3000)
    args = parser.parse_args()

    images = [jpeg_bytes(i) for i in range(4)]
    keras_encoder = Encoder(EncoderConfig(weights="random"), runtime="keras")
    batch = preprocess([load_image(images[0])], keras_encoder.config)
    runtimes = ["keras"] + [
        r for r in ("onnxruntime", "openvino", "openvino-bf16") if runtime_problem(r) is None
    ]
    if runtime_problem("openvino-bf16"):  # OpenVINO would run it in fp32: no row, say why
        print(f"openvino-bf16 not measured: {runtime_problem('openvino-bf16')}")

    rows: list[tuple[str, float, str]] = []
    reference = keras_encoder.run(batch)
    keras_model = keras_encoder.keras_model
    encoders = {
        r: Encoder(keras_encoder.config, keras_model=keras_model, runtime=r) for r in runtimes
    }
    infos = {r: enc.prepare() for r, enc in encoders.items()}
    timed = interleaved_medians(
        {"predict": lambda: keras_model.predict(batch, verbose=0)}
        | {r: (lambda enc=enc: enc.run(batch)) for r, enc in encoders.items()},
        args.repeats,
    )
    rows.append(("encoder: Keras model.predict", timed["predict"], ""))
    encoder_ms = {r: timed[r] for r in runtimes}
    for runtime, enc in encoders.items():
        rel = float(np.max(np.abs(enc.run(batch) - reference)) / np.max(np.abs(reference)))
        label = "tf.function" if runtime == "keras" else runtime
        note = f"max rel. diff vs Keras {rel:.1e}; first build {infos[runtime].build_seconds:.1f} s"
        rows.append((f"encoder: {label}", encoder_ms[runtime], note))

    auto = build_model(args.vocab, args.max_length, "auto", keras_encoder)
    auto.encoder.prepare()
    chosen = auto.encoder.runtime.name
    attention = build_model(args.vocab, args.max_length, "auto", None, kind="attention")
    attention.encoder.prepare()
    options = {"greedy": DecodeOptions(decoding="greedy"), "beam-3": DecodeOptions(beam_size=3)}
    models = {"": auto, "attention ": attention}
    e2e = interleaved_medians(
        {
            f"{kind}{name}": (lambda m=m, o=o: predict(m, images[0], o))
            for kind, m in models.items()
            for name, o in options.items()
        },
        args.repeats,
    )
    for kind, model in models.items():
        for name in options:
            rows.append(
                (
                    f"end to end, JPEG bytes -> text, {kind}{name} ({model.encoder.runtime.name})",
                    e2e[f"{kind}{name}"],
                    f"{args.max_length} words"
                    + (", ResNet50 7x7x2048 grid, attention 512" if kind else ""),
                )
            )
    features = auto.encoder.encode([load_image(images[0])])
    from imcap_hub.inference import search_features, single_threaded_blas

    def decode_only():
        with single_threaded_blas():  # as predict() runs it
            search_features(auto, features[0], DecodeOptions(decoding="greedy"))

    decode_ms = median_ms(decode_only, args.repeats)
    rows.append(
        (
            "greedy decoding only (numpy step, 1 BLAS thread)",
            decode_ms,
            f"{args.max_length + 1} steps",
        )
    )

    agreement = ""
    if "openvino-bf16" in runtimes:
        bf16 = ImageCaptioner(
            auto.config,
            auto.vocab,
            auto.decoder_weights,
            Encoder(keras_encoder.config, keras_model=keras_model, runtime="openvino-bf16"),
        )
        many = [jpeg_bytes(100 + i) for i in range(16)]
        same = sum(predict(bf16, img).text == predict(auto, img).text for img in many)
        agreement = f"{same}/{len(many)}"

    decoder_model = build_training_model(auto.config, seed=0)
    weights_into_keras(decoder_model, auto.decoder_weights)
    tutorial_ms = median_ms(
        lambda: tutorial_caption(
            keras_model, decoder_model, auto.vocab, images[0], args.max_length
        ),
        args.baseline_repeats,
        warmup=1,
    )
    rows.append(
        (
            "tutorial baseline: predict per word, greedy",
            tutorial_ms,
            f"{args.max_length + 1} predict calls",
        )
    )
    assert (
        tutorial_caption(keras_model, decoder_model, auto.vocab, images[0], args.max_length)
        == predict(auto, images[0], DecodeOptions(decoding="greedy")).text
    ), "baseline and fast path disagree"

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"ResNet50 224x224 (random weights), decoder E=256 U=512 V={args.vocab}; medians of {args.repeats} runs\n"
    )
    print("| what | ms | notes |")
    print("|---|---:|---|")
    for what, ms, note in rows:
        print(f"| {what} | {ms:.1f} | {note} |")
    print()
    print("| ratio | value | target |")
    print("|---|---:|---|")
    print(
        f"| tutorial baseline / end-to-end greedy | {tutorial_ms / e2e['greedy']:.1f}x | >= 40x |"
    )
    print(
        f"| greedy decoding / encoder ({chosen}) | {100 * decode_ms / encoder_ms[chosen]:.0f}% | <= 30% |"
    )
    print(f"| Keras predict / {chosen} encoder | {rows[0][1] / encoder_ms[chosen]:.1f}x | |")
    for name in options:
        ratio = e2e[f"attention {name}"] / e2e[name]
        print(f"| attention / pooled, end-to-end {name} | {ratio:.2f}x | <= 1.5x (greedy) |")
    rows_backend = auto.decoder.fused_matmul.backend  # what multiplies the beams' rows
    for kind in models:
        ratio = e2e[f"{kind}beam-3"] / e2e[f"{kind}greedy"]
        label = f"beam-3 / greedy, end to end, {kind or 'pooled '}({rows_backend})"
        print(f"| {label} | {ratio:.2f}x | <= 1.2x |")
    if agreement:
        print(
            f"| beam-3 captions equal, openvino-bf16 vs {chosen} (random weights) | {agreement} | |"
        )


if __name__ == "__main__":
    main()
