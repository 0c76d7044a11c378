"""python -m imcap_hub caption, run as a user runs it: a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imcap_hub import DecodeOptions, ImageCaptioner, predict

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "imcap_hub", "caption", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def expected(tiny_model_dir, image_files):
    # The CLI's default runtime, so both sides run the same encoder (an untrained model has
    # near-tied beams that float rounding between runtimes could reorder).
    model = ImageCaptioner.from_pretrained(tiny_model_dir)
    return {str(p): predict(model, p, DecodeOptions()).text for p in image_files["good"]}


def test_caption_prints_one_line_per_image(tiny_model_dir, image_files, expected):
    result = run_cli(*image_files["good"], "--model", tiny_model_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t") for line in lines] == [[p, expected[p]] for p in expected]


def test_json_output_with_n_best(tiny_model_dir, image_files):
    result = run_cli(
        image_files["good"][0],
        "--model",
        tiny_model_dir,
        "--beam-size",
        "4",
        "--num-captions",
        "3",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["image"] == str(image_files["good"][0])
    assert len(record["captions"]) == 3
    scores = [c["score"] for c in record["captions"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("kind", ["text_named_jpg", "truncated_jpeg", "huge_png"])
def test_bad_images_get_one_line_errors_and_a_nonzero_exit(tiny_model_dir, image_files, kind):
    bad = image_files["bad"][kind]
    result = run_cli(bad, "--model", tiny_model_dir)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0]


def test_good_images_still_caption_next_to_a_bad_one(tiny_model_dir, image_files, expected):
    good = image_files["good"][0]
    result = run_cli(image_files["bad"]["truncated_jpeg"], good, "--model", tiny_model_dir)
    assert result.returncode == 1
    assert result.stdout == f"{good}\t{expected[str(good)]}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "neither a model folder nor a valid Hub repo id"),
        (["--beam-size", "0"], "beam_size must be an integer from 1 to 20"),
        (["--decoding", "sample", "--seed", "-1"], "seed must be an integer from 0"),
        (["--max-length", "0"], "max_length must be a positive integer"),
        (["--top-p", "1.5"], "top_p must be a number in (0, 1]"),
    ],
)
def test_bad_model_or_options_exit_2_with_one_line(tiny_model_dir, image_files, args, message):
    if "--model" not in args:
        args = [*args, "--model", str(tiny_model_dir)]
    result = run_cli(image_files["good"][0], *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_heatmaps_writes_one_png_per_image_with_a_panel_per_word(
    attention_model_dir, image_files, tmp_path
):
    from PIL import Image

    good = image_files["good"]
    out = tmp_path / "maps"
    result = run_cli(*good, "--model", attention_model_dir, "--heatmaps", out, "--json")
    assert result.returncode == 0, result.stderr
    model = ImageCaptioner.from_pretrained(attention_model_dir)
    # good.jpg and good.png: the second of two same-named images gets a suffix.
    names = ["good.png", "good-2.png"]
    assert [Path(p).stem for p in good] == ["good", "good"]
    for path, line, name in zip(good, result.stdout.splitlines(), names, strict=True):
        best = json.loads(line)["captions"][0]
        assert best["text"] == model.caption(path)[0].text
        assert [a["word"] for a in best["attention"]] == [*best["tokens"], "<end>"]
        with Image.open(out / name) as sheet:
            assert sheet.format == "PNG" and sheet.width > 100 and sheet.height > 100
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_heatmaps_from_a_pooled_model_is_one_line_and_exit_2(tiny_model_dir, image_files, tmp_path):
    result = run_cli(
        image_files["good"][0], "--model", tiny_model_dir, "--heatmaps", tmp_path / "m"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "has no attention" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "m").exists()
