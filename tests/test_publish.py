"""training.publish: the model folder, and pushing it to the (local) Hub; the card and the
commit message name the same best decoding."""

import json
from pathlib import Path

import pytest
from helpers import random_image, tiny_config
from huggingface_hub import HfApi, hf_hub_download
from test_record import synthetic_record

from imcap_hub import ImageCaptioner, ImcapError
from model_card import INSTALL_COMMAND, REPO_PLACEHOLDER, render_card
from training.evaluate import best_decoding
from training.publish import (
    PublishError,
    PublishResult,
    _default_commit_message,
    calibration_set,
    publish,
)

IMAGES = [random_image(seed, (40, 52)) for seed in range(3)]
RECORD = synthetic_record()
MODEL_FILES = [
    "README.md",
    "config.json",
    "encoder.safetensors",
    "metrics.json",
    "model.safetensors",
    "vocab.json",
]


def _captions(model):
    return [
        [c.to_dict() for c in model.caption(img, beam_size=3, num_captions=2)] for img in IMAGES
    ]


@pytest.fixture
def model(tiny_vocab):
    """A fresh untrained tiny captioner: publish sets its card and metrics, so not the shared one."""
    return ImageCaptioner.from_config(tiny_config(), tiny_vocab, seed=7, runtime="keras")


def test_publish_writes_the_model_folder(model, eval_metrics, tmp_path):
    out = tmp_path / "model"
    result = publish(model, out, metrics=eval_metrics, record=RECORD)
    assert isinstance(result, PublishResult)
    assert (result.out_dir, result.repo_id, result.commit_hash) == (out, None, None)
    assert result.files == MODEL_FILES == sorted(p.name for p in out.iterdir())
    card = (out / "README.md").read_text()
    assert card == model.card == render_card(model.config, eval_metrics, RECORD)
    assert json.loads((out / "metrics.json").read_text()) == eval_metrics == model.metrics
    loaded = ImageCaptioner.from_pretrained(out, runtime="keras")
    assert _captions(loaded) == _captions(model)
    assert (loaded.card, loaded.metrics) == (card, eval_metrics)


def test_republish_without_metrics_leaves_no_stale_metrics(model, eval_metrics, tmp_path):
    publish(model, tmp_path, metrics=eval_metrics, record=RECORD)
    result = publish(model, tmp_path, metrics=None, record=RECORD)
    assert "metrics.json" not in result.files
    assert "not evaluated" in (tmp_path / "README.md").read_text().lower()


def test_push_then_from_pretrained_gives_the_same_model(hub_server, model, eval_metrics, tmp_path):
    repo_id = hub_server.new_repo_id("published")
    result = publish(
        model,
        tmp_path / "model",
        metrics=eval_metrics,
        record=RECORD,
        repo_id=repo_id,
        token=hub_server.token,
        commit_message="first model",
    )
    assert result.repo_id == repo_id and len(result.commit_hash) == 40
    assert result.commit_hash in result.commit_url
    loaded = ImageCaptioner.from_pretrained(repo_id, cache_dir=tmp_path / "cache", runtime="keras")
    assert loaded.source["revision"] == result.commit_hash
    assert _captions(loaded) == _captions(model)
    assert loaded.card == (tmp_path / "model" / "README.md").read_text()
    assert f'from_pretrained("{repo_id}")' in loaded.card
    assert loaded.metrics == eval_metrics
    api = HfApi(token=hub_server.token)
    assert set(MODEL_FILES) <= set(api.list_repo_files(repo_id))
    assert api.list_repo_commits(repo_id)[0].title == "first model"


PLACEHOLDERS = (REPO_PLACEHOLDER, "REPO_ID")  # render_card's and the mixin card's


def _pushed_card(repo_id: str, cache_dir: Path) -> str:
    """The README.md on the Hub, as a visitor downloads it."""
    return Path(hf_hub_download(repo_id, "README.md", cache_dir=cache_dir)).read_text("utf-8")


def test_the_pushed_card_installs_the_library_and_names_its_repo(
    hub_server, model, eval_metrics, tmp_path
):
    """Even after a local publish without a repo id left the placeholder in the same folder."""
    repo_id = hub_server.new_repo_id("named")
    out = tmp_path / "model"
    publish(model, out, metrics=eval_metrics, record=RECORD)
    assert f'from_pretrained("{REPO_PLACEHOLDER}")' in (out / "README.md").read_text()
    publish(
        model, out, metrics=eval_metrics, record=RECORD, repo_id=repo_id, token=hub_server.token
    )
    card = _pushed_card(repo_id, tmp_path / "cache")
    assert card == (out / "README.md").read_text()
    assert not [p for p in PLACEHOLDERS if p in card]
    usage = card.split("## How to use it")[1].split("## Training data")[0]
    assert f"```bash\n{INSTALL_COMMAND}\n```" in usage
    assert "from imcap_hub import ImageCaptioner" in usage
    assert f'ImageCaptioner.from_pretrained("{repo_id}")' in usage
    assert f"IMCAP_MODEL={repo_id} python app.py" in usage
    assert f"caption dog.jpg --model {repo_id}\n" in usage


def test_the_library_card_installs_the_library_and_takes_a_repo_id(model, tmp_path):
    """The mixin's card (``DEFAULT_CARD``), for a model without a card of its own."""
    model.save_pretrained(tmp_path / "a")
    text = (tmp_path / "a" / "README.md").read_text()
    assert f"```bash\n{INSTALL_COMMAND}\n```" in text
    assert "from imcap_hub import ImageCaptioner" in text
    assert f'from_pretrained("{REPO_PLACEHOLDER}")' in text
    model.save_pretrained(tmp_path / "b", model_card_kwargs={"repo_id": "someone/x"})
    text = (tmp_path / "b" / "README.md").read_text()
    assert 'from_pretrained("someone/x")' in text and REPO_PLACEHOLDER not in text


@pytest.mark.parametrize("card", ["generated", "local"])
def test_library_push_to_hub_names_its_repo_in_the_card(hub_server, model, tmp_path, card):
    """``ImageCaptioner.push_to_hub``: the mixin's card (no card set), or a card rendered for a
    local folder and loaded with it."""
    repo_id = hub_server.new_repo_id(f"mixin-{card}")
    if card == "local":
        publish(model, tmp_path / "model", metrics=None, record=RECORD)
        model = ImageCaptioner.from_pretrained(tmp_path / "model", runtime="keras")
        assert REPO_PLACEHOLDER in model.card
    model.push_to_hub(repo_id, token=hub_server.token)
    text = _pushed_card(repo_id, tmp_path / "cache")
    assert "from imcap_hub import ImageCaptioner" in text and 'pip install "imcap @ git+' in text
    assert not [p for p in PLACEHOLDERS if p in text]
    assert f'from_pretrained("{repo_id}")' in text


def test_repush_deletes_what_the_model_no_longer_has(hub_server, model, eval_metrics, tmp_path):
    repo_id = hub_server.new_repo_id("republished")
    common = {"record": RECORD, "repo_id": repo_id, "token": hub_server.token}
    publish(model, tmp_path / "a", metrics=eval_metrics, **common)
    publish(model, tmp_path / "b", metrics=None, **common)
    files = HfApi(token=hub_server.token).list_repo_files(repo_id)
    assert "metrics.json" not in files and "README.md" in files
    readme = hf_hub_download(repo_id, "README.md", cache_dir=tmp_path / "cache")
    assert "not evaluated" in Path(readme).read_text(encoding="utf-8").lower()


def test_push_to_a_new_branch(hub_server, model, tmp_path):
    repo_id = hub_server.new_repo_id("branched")
    result = publish(
        model,
        tmp_path / "model",
        metrics=None,
        record=RECORD,
        repo_id=repo_id,
        token=hub_server.token,
        branch="experiment",
    )
    loaded = ImageCaptioner.from_pretrained(
        repo_id, revision="experiment", cache_dir=tmp_path / "cache", runtime="keras"
    )
    assert loaded.source["revision"] == result.commit_hash
    assert _captions(loaded) == _captions(model)


@pytest.mark.parametrize(
    ("token_kind", "message"),
    [("wrong", r"refused the token .*\(401 Unauthorized\)"), ("read", r"\(403 Forbidden\)")],
)
def test_bad_token_is_a_clear_one_line_error(hub_server, model, tmp_path, token_kind, message):
    token = "hf_not_a_valid_token" if token_kind == "wrong" else hub_server.read_token
    repo_id = hub_server.new_repo_id("refused")
    with pytest.raises(PublishError, match=message) as info:
        publish(
            model,
            tmp_path / "model",
            metrics=None,
            record=RECORD,
            repo_id=repo_id,
            token=token,
        )
    assert isinstance(info.value, ImcapError) and "\n" not in str(info.value)
    assert repo_id in str(info.value)
    assert (tmp_path / "model" / "README.md").is_file()  # the local folder is still written


@pytest.mark.parametrize("repo_id", ["no namespace", "a/b/c", "name-only"])
def test_invalid_repo_id_is_refused_before_writing(model, tmp_path, repo_id):
    with pytest.raises(PublishError, match="repo id"):
        publish(model, tmp_path / "model", metrics=None, record=RECORD, repo_id=repo_id)
    assert not (tmp_path / "model").exists()


def test_unreachable_hub_is_a_clear_error(model, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(PublishError, match="cannot reach the Hub") as info:
        publish(
            model,
            tmp_path / "model",
            metrics=None,
            record=RECORD,
            repo_id="tester/unreachable",
            token="hf_x",
        )
    assert "\n" not in str(info.value)


# --- the best decoding --------------------------------------------------------------------------


def _scores(bleu4: float, cider: float) -> dict[str, float]:
    other = {"BLEU-1": 0.5, "BLEU-2": 0.4, "BLEU-3": 0.3, "METEOR": 0.2, "ROUGE-L": 0.4}
    return {**other, "BLEU-4": bleu4, "CIDEr": cider}


def _metrics(**decodings) -> dict:
    return {
        "split": "test",
        "n_images": 8,
        "n_references": 32,
        "decodings": {label.replace("_", "-"): s for label, s in decodings.items()},
        "examples": [],
    }


# greedy has the best BLEU-4, beam-5 the best CIDEr: they disagree.
DISAGREE = _metrics(
    greedy=_scores(0.30, 0.50), beam_5=_scores(0.20, 0.90), sample=_scores(0.1, 0.2)
)


@pytest.mark.parametrize(
    ("metrics", "best"),
    [
        (DISAGREE, "beam-5"),
        (_metrics(greedy=_scores(0.30, 0.70), beam_3=_scores(0.35, 0.70)), "beam-3"),  # tie
        (_metrics(greedy=_scores(0.30, 0.70), beam_3=_scores(0.30, 0.70)), "greedy"),  # first
        (_metrics(), None),
        (None, None),
    ],
    ids=["cider-first", "bleu4-breaks-a-tie", "first-of-equals", "no-decodings", "no-metrics"],
)
def test_best_decoding_ranks_by_cider_then_bleu4(metrics, best):
    found = best_decoding(metrics)
    assert (found[0] if found else None) == best
    if found:
        assert found[1] is metrics["decodings"][best]


def test_the_card_and_the_commit_message_name_the_same_decoding(model):
    card = render_card(model.config, DISAGREE, RECORD)
    message = _default_commit_message(model, DISAGREE, RECORD)
    assert "with beam search (beam 5)." in card and "greedy decoding." not in card
    assert "BLEU-4 0.2000 and CIDEr 0.9000" in card
    assert message == (
        "imcap tiny_resnet + LSTM captioner trained on synthetic-shapes "
        "(BLEU-4 0.2000, CIDEr 0.9000, beam-5, test split)"
    )
    assert _default_commit_message(model, None, RECORD) == (
        "imcap tiny_resnet + LSTM captioner trained on synthetic-shapes"
    )


def test_a_push_without_a_message_commits_the_cards_best_decoding(hub_server, model, tmp_path):
    repo_id = hub_server.new_repo_id("best")
    publish(
        model,
        tmp_path / "model",
        metrics=DISAGREE,
        record=RECORD,
        repo_id=repo_id,
        token=hub_server.token,
    )
    title = HfApi(token=hub_server.token).list_repo_commits(repo_id)[0].title
    assert "beam-5" in title and "CIDEr 0.9000" in title
    assert "beam search (beam 5)" in (tmp_path / "model" / "README.md").read_text()


# --- calibration.safetensors: the int8 encoder's calibration images ------------------------------


def _colour_table(tmp_path: Path):
    """Red training images, a blue test image, and a training 'image' that is not one."""
    import pandas as pd
    from PIL import Image

    rows = []
    for i in range(5):
        path = tmp_path / f"train{i}.png"
        Image.new("RGB", (20 + i, 30), (200, 10, 10)).save(path)
        rows += [(str(path), "a red square", "train")] * 2  # two captions, one image
    (tmp_path / "broken.jpg").write_text("not an image")
    rows.append((str(tmp_path / "broken.jpg"), "a red square", "train"))
    Image.new("RGB", (30, 30), (10, 10, 200)).save(tmp_path / "test.png")
    rows.append((str(tmp_path / "test.png"), "a blue square", "test"))
    return pd.DataFrame(rows, columns=["image", "caption", "split"])


def test_calibration_set_draws_readable_training_images_at_the_encoder_size(tmp_path):
    table = _colour_table(tmp_path)
    three = calibration_set(table, 16, count=3, seed=0)
    assert three is not None and len(three) == 3 and three.image_size == 16
    for image in three.images():
        assert image.shape == (16, 16, 3) and image[..., 0].mean() > 150  # red: training only
    every = calibration_set(table, 16, count=100, seed=0)
    assert every is not None and len(every) == 5  # each readable training image once
    assert calibration_set(table, 16, count=3, seed=0) == three  # the seed decides
    assert calibration_set(table, 16, count=0, seed=0) is None


def test_calibration_set_without_a_readable_training_image_is_one_line(tmp_path):
    table = _colour_table(tmp_path)
    table = table[table["image"].str.endswith("broken.jpg") | (table["split"] == "test")]
    with pytest.raises(PublishError, match="no training image can be read for calibration"):
        calibration_set(table, 16, count=3, seed=0)


def test_publish_writes_calibration_and_a_republish_without_removes_it(model, tmp_path):
    from imcap_hub.calibration import CALIBRATION_FILE

    model.encoder.calibration = calibration_set(_colour_table(tmp_path), 32, count=2, seed=0)
    out = tmp_path / "model"
    result = publish(model, out, metrics=None, record=RECORD)
    assert CALIBRATION_FILE in result.files
    loaded = ImageCaptioner.from_pretrained(out, runtime="keras")
    assert loaded.encoder.calibration == model.encoder.calibration
    model.encoder.calibration = None
    assert CALIBRATION_FILE not in publish(model, out, metrics=None, record=RECORD).files
