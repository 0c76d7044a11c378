"""``python -m training``: ``run`` from one config pushes a model that loads from the (local)
Hub and captions like the local folder, in the Flickr8k and captions.txt layouts; user
mistakes are one ``error:`` line and a non-zero exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from imcap_hub import DecodeOptions, ImageCaptioner, load_image
from imcap_hub.calibration import CalibrationSet
from training.__main__ import EXAMPLES, main
from training.evaluate import best_decoding
from training.record import TrainRecord
from training.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny_run(tmp_path: Path, layout: str, train_encoder: bool, kind: str = "pooled") -> dict:
    """A run small enough for CI: 40 synthetic images, two epochs, a tiny model. ``kind``
    "attention": the relations dataset, spatial features (a 4x4 grid) and an attention decoder."""
    run = {
        "name": f"tiny-{layout}",
        "work_dir": str(tmp_path / "runs"),
        "seed": 0,
        "dataset": {
            "synthetic": {
                "n_images": 40,
                "image_size": 32,
                "max_shapes": 1,
                "captions_per_image": 2,
                "seed": 3,
            },
            "synthetic_layout": layout,
        },
        "vocab": {"min_count": 1, "max_length": 8},
        "model": {
            "encoder": {
                "architecture": "tiny_resnet",
                # A frozen encoder is drawn at random (kept in the repo); a trained one starts so.
                "weights": "repo" if train_encoder else "random",
                "image_size": 32,
                "preprocessing": "unit",
                "widths": [8, 16],
            },
            "decoder": {"embedding_dim": 16, "units": 32, "dropout": 0.0},
        },
        "features": {"batch_size": 16},
        "training": {"epochs": 2, "batch_size": 16, "train_encoder": train_encoder},
        "evaluation": {"decodings": ["greedy", "beam-3"], "max_images": 4},
    }
    if kind == "attention":
        run["name"] += "-attention"
        run["dataset"]["synthetic"].update(arrangement="relations", max_shapes=2)
        run["vocab"]["max_length"] = 20
        run["model"]["encoder"].update(features="spatial", widths=[8, 16, 12])
        run["model"]["decoder"].update(kind="attention", attention_dim=8)
    return run


@pytest.mark.parametrize(
    ("layout", "train_encoder", "kind"),
    [
        ("flickr8k", True, "pooled"),
        ("captions_txt", False, "pooled"),
        ("flickr8k", True, "attention"),
        ("captions_txt", False, "attention"),
    ],
)
def test_run_pushes_a_model_that_loads_from_the_hub_and_captions_like_the_local_folder(
    hub_server, tmp_path, capsys, layout, train_encoder, kind
):
    config_file = tmp_path / "run.json"
    config = tiny_run(tmp_path, layout, train_encoder, kind)
    config_file.write_text(json.dumps(config))
    repo_id = hub_server.new_repo_id(f"tiny-{layout.replace('_', '-')}-{kind}")
    code = main(
        [
            "run",
            str(config_file),
            "--repo-id",
            repo_id,
            "--token",
            hub_server.token,
            "--no-progress",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert f"pushed to {hub_server.url}/{repo_id}" in out.out

    run = tmp_path / "runs" / config["name"]
    local_dir = run / "model"
    files = sorted(p.name for p in local_dir.iterdir())
    assert files == [
        "README.md",
        "calibration.safetensors",
        "config.json",
        "encoder.safetensors",
        "metrics.json",
        "model.safetensors",
        "vocab.json",
    ]
    for record in ("config.json", "stages.json", "train.json", "metrics.json"):
        assert (run / record).is_file(), record
    # the int8 encoder's calibration images: every training image (there are fewer than 128)
    calibration = CalibrationSet.load(local_dir / "calibration.safetensors", 32)
    assert f"calibration.safetensors: {len(calibration)} training images" in out.out
    stages = json.loads((run / "stages.json").read_text())
    assert set(stages) == {"prepare", "train", "evaluate", "push"}
    metrics = json.loads((local_dir / "metrics.json").read_text())
    assert set(metrics["decodings"]) == {"greedy", "beam-3"} and metrics["split"] == "test"
    card = (local_dir / "README.md").read_text()
    assert "model-index" in card and "BLEU-4 (greedy)" in card
    assert json.loads((local_dir / "config.json").read_text())["encoder"]["weights"] == "repo"

    # train.json is the run's record; the card says what it says
    record = TrainRecord.read(run / "train.json")
    assert record.train_encoder is train_encoder and record.epochs_run == len(record.history) == 2
    assert record.dataset.layout == layout and record.dataset.synthetic
    assert record.used["train"].captions == record.splits["train"].captions
    assert len(calibration) == record.splits["train"].images
    assert set(record.stage_seconds) == {"prepare", "train"}
    assert f"| encoder trained | {'yes' if train_encoder else 'no'} |" in card
    assert "| time: evaluate |" in card  # push brings the stage times up to date
    # the card's summary and the commit message name the same best decoding
    best, _ = best_decoding(metrics)
    assert f"with {DecodeOptions.from_label(best).describe()}." in card
    title = HfApi(token=hub_server.token).list_repo_commits(repo_id)[0].title
    assert title.endswith(f", {best}, test split)"), title

    local = ImageCaptioner.from_pretrained(local_dir)
    hub = ImageCaptioner.from_pretrained(repo_id, token=hub_server.token)
    assert hub.source["kind"] == "hub" and hub.metrics == local.metrics
    images = sorted((run / "data" / f"synthetic-{layout}").rglob("*.jpg"))[:6]
    for image in images:
        pixels = load_image(image)
        for options in ({"decoding": "greedy"}, {"beam_size": 3, "num_captions": 2}):
            if kind == "attention":
                options["return_attention"] = True
            assert [c.to_dict() for c in hub.caption(pixels, **options)] == [
                c.to_dict() for c in local.caption(pixels, **options)
            ]
    assert hub.config.decoder.kind == ("attention" if kind == "attention" else "init_state_lstm")
    if kind == "attention":
        assert "| attention penalty (lambda) | 0.1 |" in card and "attention 8" in card
        assert "4x4 grid" in card


# --- user mistakes ----------------------------------------------------------------------------


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_missing_config_file_is_one_line_from_the_real_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "training", "run", str(tmp_path / "nope.json")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "nope.json does not exist" in _one_error_line(proc.stderr)


@pytest.mark.parametrize(
    ("change", "command", "message"),
    [
        (
            {"training": {"epoch": 3}},
            "prepare",
            "unknown key 'training.epoch' (did you mean 'epochs'?)",
        ),
        ({"training": {"epochs": "3"}}, "train", "training.epochs must be an integer"),
        (
            {"dataset": {"path": "/no/such/folder"}},
            "prepare",
            "dataset.path /no/such/folder does not exist",
        ),
        (
            {"model": {"encoder": {"architecture": "vgg"}}},
            "run",
            "unknown encoder architecture 'vgg'",
        ),
        ({"evaluation": {"decodings": ["beam"]}}, "run", "unknown decoding 'beam'"),
        ({}, "train", "run `python -m training prepare` with this config first"),
        ({}, "push", "no trained model"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, change, command, message):
    config = {"name": "oops", "work_dir": str(tmp_path), "dataset": {"path": str(tmp_path)}}
    for section, values in change.items():
        config[section] = values
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    assert main([command, str(path)]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_push_of_a_run_trained_by_an_older_imcap_says_to_train_again(
    tmp_path, capsys, tiny_model_dir
):
    """train.json from before the training record: one line that says what to do."""
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({"name": "old", "work_dir": str(tmp_path), "dataset": {"path": "."}})
    )
    shutil.copytree(tiny_model_dir, tmp_path / "old" / "trained")
    old = {"best_epoch": 2, "epochs_run": 2, "history": {"loss": [2.9, 2.8]}, "seed": 0}
    (tmp_path / "old" / "train.json").write_text(json.dumps(old))
    assert main(["push", str(path), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "an older imcap wrote it" in line and "python -m training train" in line
    assert not (tmp_path / "old" / "model").exists()


def test_a_beam_too_wide_is_refused_when_the_config_is_read_before_any_stage(tmp_path, capsys):
    """Evaluation's limits apply when the config is read, not after training has finished."""
    data = tmp_path / "data"
    data.mkdir()
    config = {
        "name": "wide",
        "work_dir": str(tmp_path / "runs"),
        "dataset": {"path": str(data)},
        "evaluation": {"decodings": ["greedy", "beam-50"]},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    assert main(["run", str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert (
        "evaluation.decodings: decoding 'beam-50': beam_size must be an integer from 1 to 20"
        in line
    )
    assert not (tmp_path / "runs").exists()  # no stage ran, not even the run folder was made


def test_bad_json_and_bad_overrides_are_one_line(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text('{"name": "x",')
    assert main(["prepare", str(path)]) == 2
    assert "is not valid JSON" in _one_error_line(capsys.readouterr().err)
    path.write_text(json.dumps({"name": "x", "dataset": {"path": str(tmp_path)}}))
    assert main(["prepare", str(path), "--set", "training.epochs"]) == 2
    assert "expected KEY=VALUE" in _one_error_line(capsys.readouterr().err)
    assert main(["evaluate"]) == 2
    assert "needs a run config" in _one_error_line(capsys.readouterr().err)


def test_an_unknown_dataset_layout_is_one_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("nothing to see\n")
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps(
            {"name": "x", "work_dir": str(tmp_path), "dataset": {"path": str(tmp_path / "data")}}
        )
    )
    assert main(["prepare", str(path)]) == 2
    assert "cannot tell the layout" in _one_error_line(capsys.readouterr().err)


def test_the_run_config_round_trips_through_json(tmp_path):
    config = RunConfig.from_dict(tiny_run(tmp_path, "flickr8k", True))
    again = RunConfig.from_json(config.to_json())
    assert again == config and again.to_dict() == config.to_dict()
    assert config.captioner_config(10).decoder.max_length == 8
    changed = config.with_overrides(["training.epochs=7", "dataset.synthetic.n_images=12"])
    assert changed.training.epochs == 7 and changed.dataset.synthetic["n_images"] == 12


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_configs_are_valid_run_configs(name):
    example = subprocess.run(
        [sys.executable, "-m", "training", "example-config", name],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert example.returncode == 0, example.stderr
    config = RunConfig.from_json(example.stdout)
    if name.startswith(("flickr8k", "coco")):
        assert config.model.encoder.architecture == "resnet50" and config.model.decoder.units == 512
    if name.endswith("-attention"):
        model = config.captioner_config(100)
        assert (model.encoder.features, model.decoder.kind) == ("spatial", "attention")
        assert model.encoder.feature_shape == (7, 7, 2048) and model.decoder.attention_dim == 512
    if name.startswith("coco"):
        # Karpathy's file itself, not its folder (the zip's flickr files would be read too).
        assert (config.dataset.layout, Path(config.dataset.path).name) == (
            "coco",
            "dataset_coco.json",
        )
        assert config.vocab.min_count == 5 and config.evaluation.split == "test"
        assert config.evaluation.decodings == ["greedy", "beam-3"]
