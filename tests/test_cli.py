"""python -m imcap_hub caption, run as a user runs it: a subprocess."""

import json
import os
import re
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


# --- feedback on stderr (issue 10, point 6) ------------------------------------------------------

# What a progress line looks like: a step announced before it starts, or its duration after.
PROGRESS_LINE = re.compile(r"\S.*\.\.\.|\S.*: done in \d+\.\d s")
# Words of TensorFlow's and absl's start-up noise, independent of imcap_hub.startup's list.
NOISE_WORDS = ("absl", "cuInit", "cudart", "cuda_", "cpu_feature_guard", "oneDNN", "I0000", "E0000")


def test_a_first_run_says_what_it_does_on_stderr_without_tensorflow_noise(
    tiny_model_dir, image_files, expected, tmp_path
):
    """A fresh IMCAP_CACHE: TensorFlow is imported and the encoder converted, each announced
    and timed; stderr has nothing else (no absl/CUDA lines); stdout only the caption. The second
    run uses the converted encoder and never imports TensorFlow."""
    from imcap_hub.encoder import runtime_available

    good = str(image_files["good"][0])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMCAP_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "imcap_hub", "caption", good, "--model", str(tiny_model_dir)]

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
        )

    first = run()
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{good}\t{expected[good]}\n"
    lines = first.stderr.splitlines()
    assert not [line for line in lines if any(w in line for w in NOISE_WORDS)], first.stderr
    assert all(PROGRESS_LINE.fullmatch(line) for line in lines), first.stderr
    steps = [
        "loading the model",
        "importing TensorFlow",
        "building the Keras encoder",
        "captioning 1 image",
    ]
    converted = next((r for r in ("openvino", "onnxruntime") if runtime_available(r)), None)
    if converted:
        label = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}[converted]
        steps.append(f"converting the encoder to {label}")
    for step in steps:  # announced, then timed
        (start,) = [
            i for i, line in enumerate(lines) if line.startswith(step) and line.endswith("...")
        ]
        (done,) = [i for i, line in enumerate(lines) if line.startswith(f"{step}: done in ")]
        assert start < done, first.stderr

    second = run()
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    if converted:  # a cached converted encoder: no TensorFlow at all
        assert "TensorFlow" not in second.stderr and "Keras" not in second.stderr, second.stderr


def test_quiet_leaves_stderr_empty_and_json_timings_are_rounded(tiny_model_dir, image_files):
    result = run_cli(image_files["good"][0], "--model", tiny_model_dir, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    timings = json.loads(result.stdout)["timings_ms"]
    assert set(timings) >= {"load", "encode", "decode", "total"}
    # As the app's /caption_details: milliseconds to 3 decimals.
    assert all(round(value, 3) == value for value in timings.values()), timings


# --- a folder of images to a caption table (issue 10, point 2) -----------------------------------


@pytest.fixture
def folder(tmp_path, image_files):
    """Five images (two in a sub-folder, one of them not an image) and a file that is no image."""
    from helpers import random_image
    from PIL import Image

    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(random_image(10 + i, (40, 50))).save(root / f"p{i}.png")
    Image.fromarray(random_image(20, (30, 30))).save(root / "more" / "q.jpg")
    (root / "more" / "broken.jpg").write_text("not an image")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


def read_rows(path):
    from imcap_hub.caption_files import read_rows

    return read_rows(path)


def _in_process(argv, capsys):
    from imcap_hub.__main__ import main

    status = main(["caption", *map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_folder_goes_to_a_caption_table_and_a_rerun_resumes(
    folder, app_model_dir, tmp_path, capsys, monkeypatch, suffix
):
    from imcap_hub import pipeline

    model = ImageCaptioner.from_pretrained(app_model_dir)
    table = tmp_path / f"captions{suffix}"
    calls = []  # images per encoder call
    encode = pipeline.encode_images
    monkeypatch.setattr(
        pipeline,
        "encode_images",
        lambda m, batch: calls.append(len(batch.errors)) or encode(m, batch),
    )
    status, out, err = _in_process([folder, "--model", app_model_dir, "--output", table, "--batch-size", "2"], capsys)  # fmt: skip
    assert status == 1 and out == ""  # captions go to the table; one file is not an image
    images = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
    rows = read_rows(table)
    assert [r["file"] for r in rows] == images and calls == [2, 2, 1]
    for row in rows:
        if row["file"].endswith("broken.jpg"):
            assert "not an image" in row["error"] and not row["caption"]
            assert err.count("error: ") == 1 and "broken.jpg" in err
        else:
            assert row["caption"] == model.caption(row["file"])[0].text and not row["error"]

    (folder / "p9.png").write_bytes((folder / "p0.png").read_bytes())  # one more image
    calls.clear()
    status, out, err = _in_process([folder, "--model", app_model_dir, "--output", table], capsys)
    assert status == 0 and calls == [1]  # only the new image
    again = read_rows(table)
    assert again[:-1] == rows and again[-1]["file"] == str(folder / "p9.png")


def test_a_row_cut_short_by_a_crash_is_captioned_again(folder, app_model_dir, tmp_path, capsys):
    table = tmp_path / "captions.jsonl"
    _in_process([folder / "p0.png", folder / "p1.png", "--model", app_model_dir, "--output", table], capsys)  # fmt: skip
    text = table.read_text()
    table.write_text(text[: len(text) - 15])  # the last row half written
    status, _, _ = _in_process([folder / "p0.png", folder / "p1.png", "--model", app_model_dir, "--output", table], capsys)  # fmt: skip
    assert status == 0
    assert [r["file"] for r in read_rows(table)] == [str(folder / "p0.png"), str(folder / "p1.png")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output", "c.txt"], "c.txt: write captions to a .csv or a .jsonl file, not .txt"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ],
)
def test_a_bad_output_or_batch_size_is_one_line_and_exit_2(
    folder, app_model_dir, capsys, args, message
):
    status, out, err = _in_process([folder, "--model", app_model_dir, *args], capsys)
    assert status == 2 and not out and err.strip().splitlines() == [f"error: {message}"]


def test_an_empty_folder_is_one_line_and_the_rest_is_captioned(
    folder, tmp_path, app_model_dir, capsys
):
    (tmp_path / "empty").mkdir()
    argv = [tmp_path / "empty", folder / "p0.png", "--model", app_model_dir]
    status, out, err = _in_process(argv, capsys)
    assert status == 1 and out.startswith(f"{folder / 'p0.png'}\t")
    assert err.strip() == f"error: '{tmp_path / 'empty'}': a folder with no image files in it"


def test_the_folder_cli_shows_a_progress_bar(folder, app_model_dir, tmp_path):
    result = run_cli(folder, "--model", app_model_dir, "--output", tmp_path / "c.jsonl")
    assert result.returncode == 1 and result.stdout == ""
    assert "5/5" in result.stderr and "image/s" in result.stderr  # tqdm's bar, at its end
    assert "Traceback" not in result.stderr
