"""bench/bench_scale.py's synthetic COCO: Karpathy's split at full size, a dataset_coco.json that
the coco example config reads as the README lays it out, and the sizes it computes. (The
bench's --quick run takes 25 s or more here, too long for the suite; it is not run.)"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

from PIL import Image

from training.__main__ import EXAMPLES
from training.prepare import read_table
from training.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "bench_scale.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_scale"] = bench  # its dataclasses look their module up there
_spec.loader.exec_module(bench)


def test_the_split_is_karpathys_at_full_size():
    assert bench.split_counts(bench.COCO_IMAGES) == bench.COCO_SPLIT_IMAGES
    assert (bench.COCO_IMAGES, bench.COCO_TRAIN_IMAGES) == (123_287, 113_287)
    counts = bench.split_counts(300)
    assert sum(counts.values()) == 300 and min(counts.values()) >= 1


def test_the_coco_example_config_reads_a_karpathy_file_laid_out_as_documented(tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(jpeg, format="JPEG")
    path = bench.write_karpathy_dataset(tmp_path / "data" / "coco", 300, image=jpeg.getvalue())
    assert path == tmp_path / "data" / "coco" / "dataset_coco.json"
    example = {**EXAMPLES["coco"], "work_dir": str(tmp_path / "runs")}
    config = RunConfig.from_dict(example).with_overrides([f"dataset.path={path}"])

    table, report, _, layout = read_table(config, log=lambda _: None)

    counts = bench.split_counts(300)
    assert layout == "coco" and report.n_dropped == 0
    assert len(table) == round(300 * bench.COCO_CAPTIONS / bench.COCO_IMAGES)
    assert report.split_images == {
        "train": counts["train"] + counts["restval"],  # restval is training data
        "val": counts["val"],
        "test": counts["test"],
    }
    folders = {Path(p).parent.name for p in table["image"]}
    assert folders == {"train2014", "val2014"}


def test_computed_sizes_come_from_the_encoder_configs():
    sizes = dict(bench.computed_sizes(table_bytes_per_caption=300.0))
    spatial = next(v for k, v in sizes.items() if k.startswith("spatial"))
    pooled = next(v for k, v in sizes.items() if k.startswith("pooled"))
    assert spatial == bench.size(7 * 7 * 2048 * 4 * bench.COCO_CACHED_IMAGES) == "47.5 GB"
    assert pooled == "969.0 MB"
