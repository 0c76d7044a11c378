"""imcap_hub.serving, without a Gradio server: which model to serve (configured, demo fallback),
the warm-up, /model_info, the model panel, the model card, and the service behind the endpoints
(messages that name the user's file, decoding options checked by DecodeOptions)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
from PIL import Image

import imcap_hub
from imcap_hub import ImcapError, images, inference, serving
from imcap_hub.demo import DEMO_MODEL_DIR, demo_model_available

ROOT = Path(__file__).resolve().parents[1]
INFO_KEYS = [
    "model_id",
    "source",
    "revision",
    "requested_model",
    "requested_revision",
    "is_demo_model",
    "notice",
    "runtime",
    "datasets",
    "license",
    "metrics",
    "config",
    "imcap_hub_version",
    "load_seconds",
    "warmup_seconds",
]
CARD = """---
license: mit
datasets:
- flickr8k
- 'coco'
---

# My captioner

Trained on Flickr8k.
"""


def test_errors_are_imcap_errors():
    for error in (serving.ServingError, serving.RequestError, serving.BadOptionError):
        assert issubclass(error, ImcapError)
    assert serving.NoImageError.title == "No image"
    assert serving.BadOptionError.title == "Bad decoding option"
    assert serving.RequestError.title == "Cannot caption this image"


# --- which model ---------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """huggingface_hub offline: a Hub repo that is not cached fails with reason "offline"."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_nothing_configured_serves_the_demo_model_and_says_so(tiny_model_dir, caplog):
    with caplog.at_level("WARNING", logger="imcap_hub.serving"):
        loaded = serving.load_model(None, demo_dir=tiny_model_dir, warmup=False)
    assert loaded.is_demo and loaded.notice == serving.DEMO_NOTICE
    assert loaded.requested is None and loaded.warmup_seconds == 0.0
    info = serving.model_info(loaded)
    assert info["is_demo_model"] and info["source"] == "demo" and info["model_id"] == "imcap-demo"
    assert info["notice"] == serving.DEMO_NOTICE and info["requested_model"] is None
    # The visitor is told what the model knows; the operator, in the log, what to configure.
    assert "photo" in loaded.notice and "IMCAP_MODEL" not in loaded.notice
    assert "--model" not in loaded.notice and "IMCAP_MODEL" in caplog.text


def test_unreachable_hub_falls_back_to_the_demo_model(tiny_model_dir, hub_server, offline):
    """Offline (as huggingface_hub sees it) and not cached: the demo model, with a notice."""
    repo_id = hub_server.new_repo_id("never-cached")
    loaded = serving.load_model(repo_id, "main", demo_dir=tiny_model_dir, warmup=False)
    assert loaded.is_demo and loaded.notice == serving.OFFLINE_NOTICE
    info = serving.model_info(loaded)
    assert info["requested_model"] == repo_id and info["requested_revision"] == "main"
    assert info["is_demo_model"] and info["source"] == "demo"


@pytest.mark.parametrize(
    ("model", "is_offline", "demo", "message"),
    [
        (
            None,
            False,
            False,
            r"^the bundled demo model is not present \(.* has no config\.json\); pass --model REPO_OR_DIR or set IMCAP_MODEL$",
        ),
        (
            "never-cached",
            True,
            False,
            r"^cannot load model '.*never-cached.*': .* not in the local cache .*; and the bundled demo model is not present",
        ),
        (
            "missing",
            False,
            True,
            r"^cannot load model '.*missing.*': model '.*' not found on the Hub",
        ),
        (
            "/no/such/dir",
            False,
            True,
            r"^cannot load model '/no/such/dir': '/no/such/dir' is neither a model folder nor a valid Hub repo id$",
        ),
    ],
    ids=["nothing-configured-no-demo", "offline-no-demo", "wrong-name-is-no-demo", "bad-path"],
)
def test_what_cannot_be_served_is_one_clear_line(
    model, is_offline, demo, message, tiny_model_dir, tmp_path, hub_server, monkeypatch
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", is_offline)
    if model in ("never-cached", "missing"):
        model = hub_server.new_repo_id(model)
    demo_dir = tiny_model_dir if demo else tmp_path / "no-demo"
    with pytest.raises(serving.ServingError, match=message) as info:
        serving.load_model(model, demo_dir=demo_dir, warmup=False)
    assert "\n" not in str(info.value)


def test_a_broken_demo_model_is_a_serving_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(serving.ServingError, match="cannot load the bundled demo model"):
        serving.load_model(None, demo_dir=tmp_path, warmup=False)


def test_a_model_that_fails_its_warm_up_is_a_serving_error(tiny_model_dir, monkeypatch):
    """E.g. a ResNet50 whose ImageNet weights cannot be downloaded: one line, not a traceback."""
    from imcap_hub.encoder import Encoder, EncoderError

    def no_weights(self):
        raise EncoderError("could not load ResNet50 ImageNet weights (no network)")

    monkeypatch.setattr(Encoder, "prepare", no_weights)
    with pytest.raises(serving.ServingError, match="fails its warm-up: could not load") as info:
        serving.load_model(str(tiny_model_dir))
    assert "\n" not in str(info.value) and str(tiny_model_dir) in str(info.value)


def test_hub_model_shows_its_commit_hash(tiny_captioner, hub_server, tiny_model_dir):
    repo_id = hub_server.new_repo_id("app")
    tiny_captioner.push_to_hub(repo_id, token=hub_server.token)
    loaded = serving.load_model(
        repo_id, "main", token=hub_server.token, warmup=False, demo_dir=tiny_model_dir
    )
    info = serving.model_info(loaded)
    assert not loaded.is_demo and loaded.notice is None
    assert info["source"] == "hub" and info["model_id"] == repo_id
    assert re.fullmatch(r"[0-9a-f]{40}", info["revision"])
    assert info["requested_revision"] == "main"
    panel = serving.model_panel_markdown(info)
    assert f"**Revision:** `{info['revision']}`" in panel
    assert f"[{repo_id}](https://huggingface.co/{repo_id})" in panel


def test_warm_up_captions_a_grey_array(tiny_model_dir, monkeypatch):
    seen = []
    predict = serving.predict
    monkeypatch.setattr(serving, "predict", lambda *a, **k: seen.append(a[1]) or predict(*a, **k))
    loaded = serving.load_model(str(tiny_model_dir), warmup=False)
    assert seen == []
    assert serving.warm_up(loaded.model) >= 0
    (image,) = seen
    assert isinstance(image, np.ndarray) and image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image == 128).all()
    loaded = serving.load_model(str(tiny_model_dir))
    assert len(seen) == 2 and loaded.warmup_seconds > 0  # measured, whatever it took


# --- /model_info and the model panel --------------------------------------------------------------


@pytest.fixture(scope="module")
def carded_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a model card and a metrics.json of another layout."""
    path = tmp_path_factory.mktemp("carded-model")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, path / f.name)
    (path / "README.md").write_text(CARD)
    (path / "metrics.json").write_text(json.dumps({"bleu": 0.123456}))
    return path


def test_model_info_keys_and_values(carded_model_dir):
    loaded = serving.load_model(str(carded_model_dir), runtime="keras")  # warm: a runtime
    loaded.load_seconds, loaded.warmup_seconds = 1.23456, 0.5
    info = serving.model_info(loaded)
    assert list(info) == INFO_KEYS
    model = loaded.model
    assert info == {
        "model_id": str(carded_model_dir),
        "source": "local",
        "revision": None,
        "requested_model": str(carded_model_dir),
        "requested_revision": None,
        "is_demo_model": False,
        "notice": None,
        "runtime": "keras",
        "datasets": ["flickr8k", "coco"],
        "license": "mit",
        "metrics": {"bleu": 0.123456},
        "config": model.config.to_dict(),
        "imcap_hub_version": imcap_hub.__version__,
        "load_seconds": 1.235,
        "warmup_seconds": 0.5,
    }
    assert json.loads(json.dumps(info)) == info  # what /model_info sends


def test_model_panel_for_a_local_model(carded_model_dir):
    info = serving.model_info(serving.load_model(str(carded_model_dir), warmup=False))
    config = info["config"]
    assert serving.model_panel_markdown(info).splitlines() == [
        f"**Model:** `{carded_model_dir}` (local folder)  ",
        "**Revision:** `n/a (not from the Hub)`  ",
        f"**Runtime:** encoder on `{info['runtime']}`; LSTM decoder in numpy  ",
        f"**Architecture:** tiny_resnet encoder (32 px) + LSTM (16 units), vocabulary of "
        f"{config['vocab_size']} words, captions up to 8 words  ",
        "**Trained on:** flickr8k, coco",
        "",
        "**Metrics** (from `metrics.json`):",
        "",
        "| metric | value |",
        "|---|---|",
        "| bleu | 0.1235 |",
    ]


def test_model_panel_for_the_demo_model_and_no_card(tiny_model_dir):
    info = serving.model_info(serving.load_model(None, demo_dir=tiny_model_dir, warmup=False))
    panel = serving.model_panel_markdown(info)
    assert "**Model:** the bundled demo model (`imcap_hub/demo_model`)" in panel
    assert "**Trained on:** not stated in the model card" in panel
    assert panel.endswith("No metrics.json: this model has not been evaluated.")


def test_metrics_of_training_evaluate_are_one_row_per_metric_and_a_column_per_decoding(
    eval_metrics,
):
    lines = serving.metrics_markdown(eval_metrics)
    decodings = list(eval_metrics["decodings"])
    names = list(next(iter(eval_metrics["decodings"].values())))
    n = eval_metrics["n_images"]
    assert lines[:4] == [
        f"**Evaluation** (split `{eval_metrics['split']}`, {n} images; from `metrics.json`):",
        "",
        "| metric | " + " | ".join(decodings) + " |",
        "|---|" + "---|" * len(decodings),
    ]
    rows = lines[4:]
    assert [r.split(" | ")[0] for r in rows] == [f"| {name}" for name in names]
    for row, name in zip(rows, names, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        want = [eval_metrics["decodings"][d][name] for d in decodings]
        assert cells == [serving.four_significant_digits(v) for v in want]


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (None, ["No metrics.json: this model has not been evaluated."]),
        ({}, ["No metrics.json: this model has not been evaluated."]),
        (
            {
                "split": "val",
                "decodings": {
                    "greedy": {"BLEU-1": 0.123456, "CIDEr": 1},
                    "beam-3": {"METEOR": 0.25},
                },
            },
            [
                "**Evaluation** (split `val`; from `metrics.json`):",
                "",
                "| metric | greedy | beam-3 |",
                "|---|---|---|",
                "| BLEU-1 | 0.1235 |  |",
                "| CIDEr | 1 |  |",
                "| METEOR |  | 0.25 |",
            ],
        ),
        (
            {
                "bleu": 0.98765,
                "nested": {"a": 1, "b": [1, 2]},
                "runs": [{"x": 1.23456789}],
                "note": "a<b",
                "skip": None,
            },
            [
                "**Metrics** (from `metrics.json`):",
                "",
                "| metric | value |",
                "|---|---|",
                "| bleu | 0.9877 |",
                "| nested / a | 1 |",
                "| nested / b | 1, 2 |",
                "| runs[0] / x | 1.235 |",
                "| note | a&lt;b |",
            ],
        ),
        (
            {"decodings": {}, "cider": 2.0},  # no decodings: any other layout
            [
                "**Metrics** (from `metrics.json`):",
                "",
                "| metric | value |",
                "|---|---|",
                "| cider | 2 |",
            ],
        ),
        (
            [{"bleu": 0.5}],  # a list at the top
            [
                "**Metrics** (from `metrics.json`):",
                "",
                "| metric | value |",
                "|---|---|",
                "| [0] / bleu | 0.5 |",
            ],
        ),
    ],
    ids=["none", "empty", "evaluate-layout", "nested", "empty-decodings", "list"],
)
def test_metrics_tables(metrics, expected):
    assert serving.metrics_markdown(metrics) == expected


def test_metrics_tables_stop_at_forty_rows():
    lines = serving.metrics_markdown({f"m{i}": i for i in range(100)})
    assert len(lines) == 4 + serving.MAX_METRIC_ROWS and lines[-1] == "| m39 | 39 |"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.98765, "0.9877"),
        (1234567.0, "1.235e+06"),
        (2.0, "2"),
        (3, "3"),
        ("x", "x"),
        (None, "None"),
    ],
)
def test_four_significant_digits(value, text):
    assert serving.four_significant_digits(value) == text


# --- the model card ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("card", "datasets", "license", "body"),
    [
        (None, [], None, ""),
        ("", [], None, ""),
        ("# Just a body\n", [], None, "# Just a body\n"),
        (CARD, ["flickr8k", "coco"], "mit", "# My captioner\n\nTrained on Flickr8k.\n"),
        (
            "---\ndatasets: [x, 'y']\nlicense: apache-2.0\n---\nbody",
            ["x", "y"],
            "apache-2.0",
            "body",
        ),
        ("---\ndatasets: flickr8k\n---\nx", ["flickr8k"], None, "x"),
        ("\ufeff---\nlicense: mit\n---\nbody", [], "mit", "body"),
        ("---\n---\nbody", [], None, "---\n---\nbody"),  # ModelCard: no header
        ("---\nlicense: mit\nmodel-index: 3\n---\nbody", [], "mit", "body"),  # invalid model-index
        ("---\nlicense: [mit\n---\nbody", [], None, "---\nlicense: [mit\n---\nbody"),  # not YAML
        ("---\n- a\n- b\n---\nbody", [], None, "---\n- a\n- b\n---\nbody"),  # not a mapping
        ("---\n1: a\n---\nbody", [], None, "---\n1: a\n---\nbody"),  # not names
        ("---\nunterminated\n", [], None, "---\nunterminated\n"),
    ],
)
def test_model_card_header_and_body(card, datasets, license, body):
    assert serving.parse_card(card) == (datasets, license, body)


@pytest.mark.skipif(not demo_model_available(), reason="the bundled demo model has not landed")
def test_the_demo_model_card():
    card = serving.parse_card((DEMO_MODEL_DIR / "README.md").read_text())
    assert card.datasets == ["imcap-synthetic-shapes"] and card.license == "apache-2.0"
    assert card.body.startswith("#") and "model-index" not in card.body


# --- the service behind the endpoints ------------------------------------------------------------


@pytest.fixture(scope="module")
def service(app_model_dir):
    return serving.CaptionService(serving.load_model(str(app_model_dir), warmup=False))


def upload(path, name="holiday.jpg"):
    """A file as Gradio hands it over with preprocess=False."""
    return {"path": str(path), "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def test_caption_is_batched_and_matches_predict(service, image_files):
    good = image_files["good"]
    service.batch_sizes.clear()
    captions = service.caption([upload(good[0]), str(good[1]), upload(good[0])])
    expected = [imcap_hub.predict(service.loaded.model, p).text for p in (*good, good[0])]
    assert captions == expected and all(captions)
    assert list(service.batch_sizes) == [3]


def test_caption_reads_each_image_the_validator_checked_once(service, image_files, monkeypatch):
    good = image_files["good"]
    expected = [imcap_hub.predict(service.loaded.model, p).text for p in good[:2]]
    reads = []

    def reading(image, limits=images.DEFAULT_LIMITS, target_size=None):
        if not isinstance(image, np.ndarray):  # a file read and decoded
            reads.append(image)
        return images.load_image(image, limits, target_size)

    for module in (serving, inference):  # the validator's reader and the model's
        monkeypatch.setattr(module, "load_image", reading)
    before = service.decoded_once
    assert all(service.image_problem(upload(p)) is None for p in good[:2])
    assert service.caption([upload(good[0]), upload(good[1])]) == expected
    assert reads == [str(p) for p in good[:2]] and service.decoded_once == before + 2
    # Not validated (a direct call), or pushed out of the bounded store: read from the file.
    monkeypatch.setattr(service, "CHECKED_IMAGES", 1)
    assert all(service.image_problem(upload(p)) is None for p in good[:2])
    assert service.caption([upload(good[0]), upload(good[1])]) == expected
    assert reads[-1] == str(good[0]) and service.decoded_once == before + 3


def test_a_phone_sized_jpeg_gets_one_caption_whichever_way_it_comes(service, tmp_path):
    """A large JPEG is decoded at a reduced scale for the encoder (images.DRAFT_MARGIN): the
    validator's pixels (which /caption reuses), predict's and the folder pipeline's are the same,
    so the caption is too."""
    from imcap_hub.pipeline import caption_batches

    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:1500, 0:2000]
    photo = np.stack([x * 0.1 % 256, y * 0.15 % 256, (x + y) * 0.05 % 256], -1)
    photo = (photo + rng.normal(0, 6, photo.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "phone.jpg"
    Image.fromarray(photo).save(path, quality=90)
    model = service.loaded.model
    size = model.config.encoder.image_size
    expected = imcap_hub.predict(model, str(path)).text
    before = service.decoded_once
    assert service.image_problem(upload(path)) is None
    np.testing.assert_array_equal(
        service._checked[str(path)], images.resize(images.load_image(path, target_size=size), size)
    )
    assert service.caption([upload(path)]) == [expected]
    assert service.decoded_once == before + 1  # the validator's pixels were the model's
    (folder,) = caption_batches(model, [[str(path)]], imcap_hub.DecodeOptions())
    assert folder[0].text == expected


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text_named_jpg", r"^'holiday\.jpg': not an image"),
        ("truncated_jpeg", r"^'holiday\.jpg': the image data is damaged or truncated"),
        ("huge_png", r"^'holiday\.jpg': image is (30000x30000 pixels|too large)"),
    ],
)
def test_a_bad_upload_is_named_by_its_file_name(service, image_files, kind, message):
    bad = upload(image_files["bad"][kind])
    assert re.search(message, service.image_problem(bad))
    assert service.image_problem(upload(image_files["good"][0])) is None
    for call in (lambda: service.caption([bad]), lambda: service.caption_details(bad)):
        with pytest.raises(serving.RequestError, match=message) as info:
            call()
        assert str(image_files["bad"][kind].parent) not in str(info.value)
        assert info.value.title == "Cannot caption this image"


@pytest.mark.parametrize("image", [None, {}, {"path": None}, 42])
def test_no_image(service, image):
    assert service.image_problem(image) == serving.NO_IMAGE
    for call in (service.caption_details, lambda x: service.caption([x])):
        with pytest.raises(serving.NoImageError, match="No image: upload one") as info:
            call(image)
        assert info.value.title == "No image"


def test_caption_details_answer(service, image_files):
    path = image_files["good"][0]
    details = service.caption_details(upload(path), "beam", 4.0, 3.0, None, 1.0, 1.0, 0)
    expected = service.loaded.model.caption(path, beam_size=4, num_captions=3)
    assert list(details) == ["caption", "captions", "timings_ms", "options", "model"]
    assert details["caption"] == expected[0].text
    assert details["captions"] == [c.to_dict() for c in expected]
    assert {"load", "encode", "decode", "total"} <= set(details["timings_ms"])
    assert details["options"] == imcap_hub.DecodeOptions(beam_size=4, num_captions=3).to_dict()
    assert details["options"]["max_length"] is None  # None: the model's own limit
    assert details["model"] == {
        k: service.info[k]
        for k in ("model_id", "revision", "source", "is_demo_model", "notice", "runtime")
    }
    assert serving.render_details(details) == (
        details["caption"],
        [
            [i, c["text"], round(c["score"], 4), round(c["logprob"], 4)]
            for i, c in enumerate(details["captions"], 1)
        ],
        f"**{details['timings_ms']['total']:.0f} ms** in the model (load {details['timings_ms']['load']:.1f} ms, "
        f"encode {details['timings_ms']['encode']:.1f} ms, decode {details['timings_ms']['decode']:.1f} ms)",
    )
    assert serving.render_details(None) == ("", [], "")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_length": 0}, "max_length must be a positive integer \\(words\\), got 0"),
        ({"max_length": 9}, r"max_length must be an integer from 1 to 8 \(this model's limit\)"),
        ({"max_length": 2.5}, "max_length must be a positive integer \\(words\\), got 2.5"),
        ({"beam_size": 2.5}, "beam_size must be an integer from 1 to 20, got 2.5"),
        ({"num_captions": 5}, r"num_captions must be an integer from 1 to 3, got 5 \(for beam"),
        ({"decoding": "nonsense"}, "decoding must be one of greedy, beam, sample"),
        ({"temperature": 0}, "temperature must be a number > 0"),
        ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
        ({"seed": 0.5}, "seed must be an integer"),
        ({"seed": "7"}, "seed must be an integer"),
    ],
)
def test_bad_options_name_the_option(service, image_files, options, message):
    with pytest.raises(serving.BadOptionError, match=f"^Bad option: {message}") as info:
        service.caption_details(upload(image_files["good"][0]), **options)
    assert info.value.title == "Bad decoding option"


def test_integral_floats_from_sliders_are_accepted(service):
    options = service.decode_options(
        decoding="sample", beam_size=3.0, num_captions=2.0, max_length=5.0, seed=7.0
    )
    assert (options.beam_size, options.num_captions, options.max_length, options.seed) == (
        3,
        2,
        5,
        7,
    )
    assert type(options.max_length) is int


# --- the command line ----------------------------------------------------------------------------


def test_command_line_defaults_come_from_the_environment(monkeypatch):
    for var in ("IMCAP_MODEL", "IMCAP_REVISION", "IMCAP_RUNTIME", "IMCAP_MAX_BATCH_SIZE"):
        monkeypatch.delenv(var, raising=False)
    args = serving.argument_parser().parse_args([])
    assert (args.model, args.revision, args.runtime, args.max_batch_size, args.mcp) == (
        None,
        None,
        "auto",
        serving.DEFAULT_MAX_BATCH,
        None,
    )
    monkeypatch.setenv("IMCAP_MODEL", "someone/model")
    monkeypatch.setenv("IMCAP_REVISION", "v1")
    monkeypatch.setenv("IMCAP_RUNTIME", "keras")
    monkeypatch.setenv("IMCAP_MAX_BATCH_SIZE", "4")
    args = serving.argument_parser().parse_args(["--no-mcp", "--port", "7999"])
    assert (args.model, args.revision, args.runtime, args.max_batch_size) == (
        "someone/model",
        "v1",
        "keras",
        4,
    )
    assert args.mcp is False and args.port == 7999 and args.host is None
    args = serving.argument_parser().parse_args(
        ["--model", "dir", "--revision", "main", "--max-batch-size", "1", "--mcp"]
    )
    assert (args.model, args.revision, args.max_batch_size, args.mcp) == ("dir", "main", 1, True)


def test_remove_empty_folders_keeps_recent_and_full_ones(tmp_path):
    old = time.time() - 100
    for name in ("empty-old", "empty-new", "full-old"):
        (tmp_path / name).mkdir()
    (tmp_path / "full-old" / "upload.png").write_bytes(b"x")
    (tmp_path / "a-file").write_bytes(b"x")
    for name in ("empty-old", "full-old"):
        os.utime(tmp_path / name, (old, old))
    assert serving.remove_empty_folders(tmp_path, older_than=10) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty-new", "full-old"]
    assert serving.remove_empty_folders(tmp_path / "gone", older_than=10) == 0


def test_an_upload_check_that_fails_unexpectedly_is_still_a_message(service, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise IndexError("a decoder bug")

    monkeypatch.setattr(serving, "load_image", broken)
    with caplog.at_level("ERROR", logger="imcap_hub.serving"):
        problem = service.image_problem({"path": "/tmp/x/upload.png", "orig_name": "cat.png"})
    assert problem == "'cat.png': this image could not be checked (a server error, logged)"
    assert "a decoder bug" in caplog.text


def test_batch_view_shows_the_captioned_and_names_the_rest(service, image_files):
    good, bad = image_files["good"][0], image_files["bad"]["truncated_jpeg"]
    entries = service.caption_batch([upload(good, "a.jpg"), upload(bad, "b.jpg"), None])
    caption = service.loaded.model.caption(good)[0].text
    assert entries == [
        {"file": "a.jpg", "caption": caption},
        {"file": "b.jpg", "error": ANY},
        {"file": "", "error": "not a file"},
    ]
    assert entries[1]["error"].startswith("'b.jpg': the image data is damaged or truncated")
    pairs, note, downloads = service.batch_view([str(good), str(bad), "x"], entries)
    assert pairs == [(str(good), caption)]
    assert note.splitlines() == [
        "**Not captioned (2):**",
        f"- {entries[1]['error']}",
        "- not a file",
    ]
    csv_path, jsonl_path = map(Path, downloads)
    assert csv_path.read_text().splitlines()[:2] == ["file,caption,error", f"a.jpg,{caption},"]
    assert json.loads(jsonl_path.read_text().splitlines()[2]) == entries[2]
    assert service.batch_view(None, None) == ([], "", None)
