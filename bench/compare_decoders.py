"""Pooled (Show and Tell) against attention (Show, Attend and Tell) on the synthetic relations
dataset, at two data sizes with the same epochs; prints the README's comparison table and the
attention sanity check.

    python bench/compare_decoders.py                      # 3,000 and 6,000 images, 20 epochs
    python bench/compare_decoders.py --sizes 600 --epochs 2 --work /tmp/cmp   # a smoke run

Each cell is one ``python -m training run`` (resumable: a killed comparison picks up where it
stopped) of the tiny ResNet-style encoder trained end to end at 64 px with an LSTM of 128, on
the relations arrangement (1 to 3 shapes; "to the left of", "above", L-shapes). Columns:

- BLEU-4 and CIDEr: ``training/evaluate.py`` on the test split, greedy decoding;
- exact: the share of test images whose greedy caption is one of its references, word for word;
- ms/caption: median end-to-end greedy ``predict`` time per image (load, encode, decode) over
  the first 200 test images, measured right after each other in this process;
- training time: the sum of the epoch times (train.json), so resumed runs count in full.

The sanity check: on the test images with one shape, where does the attention map of the
shape's noun ("circle", "square", "triangle") peak? It counts the peaks whose cell centre lies
inside the shape's box, against chance: the share of the grid's cell centres inside the box.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOUNS = ("circle", "square", "triangle")


def run_config(name: str, work: Path, n_images: int, epochs: int, kind: str) -> dict:
    encoder = {
        "architecture": "tiny_resnet",
        "weights": "repo",
        "image_size": 64,
        "preprocessing": "unit",
        "widths": [16, 32, 64, 128],  # 64 px -> a 4x4 grid of 128 channels
        "blocks": 1,
        "features": "spatial" if kind == "attention" else "pooled",
    }
    decoder = {"embedding_dim": 64, "units": 128, "dropout": 0.1}
    if kind == "attention":
        decoder.update(kind="attention", attention_dim=64)
    return {
        "name": name,
        "work_dir": str(work),
        "seed": 0,
        "dataset": {
            "name": "imcap synthetic relations",
            "synthetic": {
                "n_images": n_images,
                "image_size": 64,
                "max_shapes": 3,
                "captions_per_image": 5,
                "seed": 0,
                "arrangement": "relations",
            },
            "synthetic_layout": "flickr8k",
        },
        "vocab": {"min_count": 1, "max_length": 26},
        "model": {"encoder": encoder, "decoder": decoder},
        "training": {
            "epochs": epochs,
            "batch_size": 32,
            "learning_rate": 0.002,
            "lr_schedule": "cosine",
            "patience": 0,
            "train_encoder": True,
            "attention_penalty": 0.1,
        },
        "evaluation": {"split": "test", "decodings": ["greedy"]},
    }


def train(config: dict, work: Path) -> Path:
    """One resumable ``python -m training run``; returns the run folder. A run that has already
    been evaluated is not run again (delete its folder to retrain it)."""
    run = work / config["name"]
    if (run / "metrics.json").exists() and (run / "model" / "config.json").exists():
        return run
    path = work / f"{config['name']}.json"
    path.write_text(json.dumps(config, indent=2))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "training", "run", str(path), "--no-progress"]
    log = work / f"{config['name']}.log"
    with open(log, "a") as out:
        code = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        sys.exit(f"error: {config['name']} failed (exit {code}); see {log}")
    return work / config["name"]


def _words(text: str) -> str:
    from imcap_hub import normalize_caption

    return " ".join(normalize_caption(text))


def measure(run: Path) -> dict:
    """Exact-match rate, ms per caption and (attention) the noun-peak check on the test split."""
    import numpy as np
    import pandas as pd

    from imcap_hub import DecodeOptions, ImageCaptioner, predict

    metrics = json.loads((run / "metrics.json").read_text())["decodings"]["greedy"]
    table = pd.read_csv(run / "prepared" / "captions.csv", dtype=str, keep_default_na=False)
    test = table[table["split"] == "test"]
    refs: dict[str, set[str]] = {}
    for image, caption in zip(test["image"], test["caption"]):
        refs.setdefault(image, set()).add(_words(caption))
    model = ImageCaptioner.from_pretrained(run / "model")
    attention = model.config.decoder.kind == "attention"
    options = DecodeOptions(decoding="greedy", return_attention=attention)
    scenes = _scenes(run)
    exact, times, peaks_in, chance = 0, [], [], []
    for n, (image, references) in enumerate(refs.items()):
        result = predict(model, image, options)
        if n < 200:
            times.append(result.timings_ms["total"])
        best = result.captions[0]
        exact += _words(best.text) in references
        scene = scenes[Path(image).name]
        if attention and len(scene["shapes"]) == 1:
            shape = scene["shapes"][0]
            if shape["shape"] in best.tokens:
                grid = best.attention[best.tokens.index(shape["shape"])]
                inside = _cells_inside(grid.shape, shape, model.config.encoder.image_size)
                peaks_in.append(bool(inside.ravel()[int(np.argmax(grid))]))
                chance.append(float(inside.mean()))
    return {
        "bleu4": metrics["BLEU-4"],
        "cider": metrics["CIDEr"],
        "exact": exact / len(refs),
        "ms": statistics.median(times),
        "n_test": len(refs),
        "peak_inside": sum(peaks_in) / len(peaks_in) if peaks_in else None,
        "chance": statistics.mean(chance) if chance else None,
        "n_single": len(peaks_in),
    }


def _scenes(run: Path) -> dict[str, dict]:
    marker = run / "data" / "synthetic-flickr8k" / "synthetic.json"
    return {s["file_name"]: s for s in json.loads(marker.read_text())["scenes"]}


def _cells_inside(grid_shape: tuple[int, int], shape: dict, image_size: int):
    """Which cells of the attention grid have their centre inside the shape's box (the grid
    covers the whole square image the encoder saw)."""
    import numpy as np

    rows, cols = grid_shape
    ys = (np.arange(rows) + 0.5) * image_size / rows
    xs = (np.arange(cols) + 0.5) * image_size / cols
    x0, y0, side = shape["x"], shape["y"], shape["side"]
    inside_y = (ys >= y0) & (ys < y0 + side)
    inside_x = (xs >= x0) & (xs < x0 + side)
    return inside_y[:, None] & inside_x[None, :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3000,6000", help="images per dataset (comma list)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--work", default="runs/compare", help="where the runs go")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for kind in ("pooled", "attention"):
            name = f"relations-{size}-{kind}"
            run = train(run_config(name, work, size, args.epochs, kind), work)
            record = json.loads((run / "train.json").read_text())
            # Summed epoch times: right across resumed runs (stages.json keeps the last call's).
            seconds = sum(epoch["seconds"] for epoch in record["history"])
            rows.append((size, kind, measure(run), seconds))
            print(f"done: {name}", file=sys.stderr, flush=True)
    print(f"\nrelations dataset, {args.epochs} epochs, tiny_resnet 64 px end to end, greedy\n")
    print("| images | decoder | BLEU-4 | CIDEr | exact | ms/caption | training time |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size, kind, m, seconds in rows:
        print(
            f"| {size:,} | {kind} | {m['bleu4']:.3f} | {m['cider']:.3f} | {m['exact']:.1%} "
            f"| {m['ms']:.1f} | {seconds / 60:.1f} min |"
        )
    print("\nattention sanity check: test images with one shape, the noun's map")
    print("| images | single-shape images | peak inside the shape | chance |")
    print("|---:|---:|---:|---:|")
    for size, kind, m, _ in rows:
        if kind == "attention" and m["peak_inside"] is not None:
            print(f"| {size:,} | {m['n_single']} | {m['peak_inside']:.1%} | {m['chance']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
