"""model_card: the rendered README.md has a valid Hub header, the real numbers, and all sections."""

import re

import pytest
from helpers import tiny_config
from huggingface_hub import EvalResult, ModelCard

from imcap_hub import CaptionerConfig
from model_card import NOT_RECORDED, CardError, render_card

METRICS = {
    "split": "test",
    "n_images": 1000,
    "n_references": 5000,
    "decodings": {
        "greedy": {
            "BLEU-1": 0.581234,
            "BLEU-2": 0.391187,
            "BLEU-3": 0.25,
            "BLEU-4": 0.162349,
            "METEOR": 0.187651,
            "ROUGE-L": 0.443219,
            "CIDEr": 0.412345,
        },
        "beam-3": {
            "BLEU-1": 0.601234,
            "BLEU-2": 0.411111,
            "BLEU-3": 0.273456,
            "BLEU-4": 0.182345,
            "METEOR": 0.197654,
            "ROUGE-L": 0.453219,
            "CIDEr": 1.052345,
        },
    },
    "examples": [
        {
            "image": "1056338697_4f7d7ce270.jpg",
            "references": ["A dog | runs in the grass .", "A brown dog ."],
            "greedy": "a dog runs through the grass",
            "beam-3": "",
        }
    ],
    "scorer": "pycocoevalcap 1.2",
    "evaluated_at": "2025-11-23T12:00:00+00:00",
}
INFO = {
    "dataset": {"name": "Flickr8k", "layout": "flickr8k", "path": "/data/flickr8k"},
    "splits": {
        "train": {"images": 6000, "captions": 30000},
        "val": {"images": 1000, "captions": 5000},
        "test": {"images": 1000, "captions": 5000},
    },
    "vocabulary": {"size": 2984, "min_count": 5, "max_length": 30},
    "training": {
        "epochs_run": 12,
        "best_epoch": 9,
        "batch_size": 64,
        "learning_rate": 0.001,
        "train_encoder": False,
        "history": [{"epoch": 1, "loss": 4.12, "val_loss": 3.9}, {"epoch": 2, "loss": 3.5}],
        "seconds": {"prepare": 312.5, "train": 845.1},
    },
    "seed": 0,
    "hardware": "16 CPU cores",
}
RESNET = CaptionerConfig(vocab_size=2984)
REPO = "someone/imcap-resnet50-flickr8k"


def _table_row(text, label):
    """The cells of the results-table row for one decoding."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] == label and len(cells) == 8:
            return cells[1:]
    raise AssertionError(f"no results row for {label}")


def _model_index_values(card):
    index = card.data.to_dict()["model-index"]
    assert len(index) == 1 and index[0]["name"] == "imcap-resnet50-flickr8k"
    values = {}
    for result in index[0]["results"]:
        assert result["task"]["type"] == "image-to-text"
        assert result["dataset"] == {"name": "Flickr8k", "type": "flickr8k", "split": "test"}
        for metric in result["metrics"]:
            values[metric["name"]] = (metric["type"], metric["value"])
    return values


def test_card_has_the_real_numbers_in_table_and_model_index():
    text = render_card(RESNET, METRICS, INFO, repo_id=REPO)
    card = ModelCard(text)
    values = _model_index_values(card)
    assert len(values) == 14
    types = {"BLEU": "bleu", "METEOR": "meteor", "ROUGE": "rouge", "CIDEr": "cider"}
    for label, scores in METRICS["decodings"].items():
        row = _table_row(text, label)
        for cell, (metric, value) in zip(row, scores.items()):
            assert cell == f"{value:.4f}"
            kind, indexed = values[f"{metric} ({label})"]
            assert indexed == round(value, 4)
            assert kind == types[re.match(r"[A-Za-z]+", metric).group()]
    assert "**test** split: 1,000 images, 5,000" in text.replace("\n", " ")


def test_card_header_is_valid_hub_metadata():
    card = ModelCard(render_card(RESNET, METRICS, INFO, repo_id=REPO))
    data = card.data.to_dict()
    assert data["library_name"] == "imcap"
    assert data["pipeline_tag"] == "image-to-text"
    assert data["license"] == "apache-2.0"
    assert data["datasets"] == ["flickr8k"]
    assert {"image-captioning", "keras", "lstm", "resnet50"} <= set(data["tags"])
    assert set(data["metrics"]) == {"bleu", "meteor", "rouge", "cider"}
    results = card.data.eval_results
    assert all(isinstance(r, EvalResult) for r in results) and len(results) == 14
    beam = next(r for r in results if r.metric_name == "CIDEr (beam-3)")
    assert beam.metric_value == 1.0523 and beam.metric_args == {"decoding": "beam", "beam_size": 3}
    custom = ModelCard(render_card(RESNET, METRICS, {**INFO, "license": "mit"})).data
    assert custom.license == "mit"


def test_card_sections():
    text = render_card(RESNET, METRICS, INFO, repo_id=REPO, space_url="someone/imcap")
    for heading in (
        "## What it does",
        "## How to use it",
        "## Training data",
        "## Training procedure",
        "## Results",
        "## Limitations and biases",
    ):
        assert heading in text
    assert f'ImageCaptioner.from_pretrained("{REPO}")' in text
    assert 'Client("someone/imcap")' in text
    assert 'handle_file("dog.jpg"), api_name="/caption")' in text
    assert 'api_name="/caption_details"' in text
    assert f"python -m imcap_hub caption dog.jpg --model {REPO}" in text
    assert "| train | 6,000 | 30,000 |" in text
    assert "| best epoch | 9 |" in text and "| time: train | 14 min 05 s |" in text
    assert "English only" in text and "gender" in text and "Western" in text
    assert "only knows shapes" not in text
    # a reference containing "|" does not break the examples table
    assert "A dog \\| runs in the grass ." in text and "*(empty)*" in text


def test_without_metrics_it_says_not_evaluated_and_has_no_numbers():
    text = render_card(RESNET, None, INFO, repo_id=REPO)
    card = ModelCard(text)
    assert "model-index" not in card.data.to_dict()
    assert "metrics" not in card.data.to_dict()
    assert "not evaluated" in text.lower()
    assert "BLEU-4" not in text and "| greedy |" not in text
    results = text.split("## Results")[1].split("## Limitations")[0]
    assert not re.search(r"\d\.\d", results)


def test_tolerates_missing_and_odd_training_info():
    for info in (
        {},
        None,
        {"dataset": "Flickr8k", "training": {"history": "not a list"}, "splits": {"train": 5}},
        {"dataset": {"name": None}, "training": None, "vocabulary": [], "hardware": None},
    ):
        text = render_card(RESNET, METRICS, info)
        ModelCard(text)
        assert NOT_RECORDED in text
    text = render_card(RESNET, None, {})
    assert "| epochs run | not recorded |" in text and "| dataset | not recorded |" in text
    assert 'from_pretrained("USER/MODEL")' in text


def test_run_details_as_the_training_cli_records_them():
    info = {
        **INFO,
        "vocabulary": {**INFO["vocabulary"], "train_captions": 30000, "train_captions_kept": 29950},
        "training": {**INFO["training"], "epochs": 30, "patience": 3, "stopped_early": True},
        "hardware": {"cpu": "Xeon", "cpu_count": 16, "gpus": [], "tensorflow": "2.21.0"},
    }
    text = render_card(RESNET, METRICS, info)
    assert "| hardware | Xeon (16 cores); no GPU; TensorFlow 2.21.0 |" in text
    assert "| maximum epochs | 30 |" in text and "| stopped early | yes |" in text
    assert "| training captions kept | 29,950 of 30,000 |" in text


def test_synthetic_demo_model_card():
    info = {"dataset": {"name": "synthetic-shapes", "layout": "flickr8k"}, "license": "mit"}
    text = render_card(tiny_config(), METRICS, info, repo_id="someone/imcap-demo")
    card = ModelCard(text)
    assert "tiny-resnet" in card.data.tags and "resnet50" not in card.data.tags
    assert "only knows shapes" in text and "Demo model" in text
    assert "gender" not in text
    assert "encoder.safetensors" in text


def test_metrics_without_results_are_refused():
    with pytest.raises(CardError, match="decodings"):
        render_card(RESNET, {"split": "test"}, INFO)


def test_card_from_real_evaluation(eval_metrics):
    info = {"dataset": {"name": "synthetic-shapes"}}
    card = ModelCard(render_card(tiny_config(), eval_metrics, info, repo_id="someone/x"))
    names = {r.metric_name: r.metric_value for r in card.data.eval_results}
    for label, scores in eval_metrics["decodings"].items():
        for metric, value in scores.items():
            assert names[f"{metric} ({label})"] == round(value, 4)
