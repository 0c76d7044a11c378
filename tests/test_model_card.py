"""model_card: the rendered README.md has a valid Hub header, the real numbers, all sections,
and says what the training record says."""

import re
from dataclasses import replace

import pytest
from helpers import tiny_config
from huggingface_hub import EvalResult, ModelCard
from test_record import sample_record, synthetic_record

from imcap_hub import CaptionerConfig, EncoderConfig
from model_card import (
    INSTALL_COMMAND,
    NOT_RECORDED,
    REPO_PLACEHOLDER,
    CardError,
    render_card,
)
from training.record import DatasetInfo, EpochRecord, SplitUse
from training.run_config import TrainingSection

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
RECORD = sample_record()
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
    text = render_card(RESNET, METRICS, RECORD, repo_id=REPO)
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
    card = ModelCard(render_card(RESNET, METRICS, RECORD, repo_id=REPO))
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


def test_card_sections():
    text = render_card(RESNET, METRICS, RECORD, repo_id=REPO, space_url="someone/imcap")
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
    assert "| best epoch | 2 |" in text and "| time: train | 14 min 05 s |" in text
    assert "| time: prepare | 5 min 12 s |" in text and "| time: evaluate | 1 min 00 s |" in text
    assert "English only" in text and "gender" in text and "Western" in text
    assert "only knows shapes" not in text
    # a reference containing "|" does not break the examples table
    assert "A dog \\| runs in the grass ." in text and "*(empty)*" in text


def test_without_metrics_it_says_not_evaluated_and_has_no_numbers():
    text = render_card(RESNET, None, RECORD, repo_id=REPO)
    card = ModelCard(text)
    assert "model-index" not in card.data.to_dict()
    assert "metrics" not in card.data.to_dict()
    assert "not evaluated" in text.lower()
    assert "BLEU-4" not in text and "| greedy |" not in text
    results = text.split("## Results")[1].split("## Limitations")[0]
    assert not re.search(r"\d\.\d", results)


def test_what_a_record_may_lack():
    """No val split (no val columns), no gradient clipping, an unknown dataset without url or
    licence: the card leaves out or says "not recorded" what is not there."""
    record = sample_record(
        used={"train": SplitUse(captions=100, images=50, dropped_unreadable=0, dropped_length=0)},
        history=[EpochRecord(1, 2.5, 0.4, 3.25), EpochRecord(2, 2.0, 0.5, 3.0)],
        settings=TrainingSection(clipnorm=None),
        dataset=DatasetInfo(name="my photos", layout="imagefolder", synthetic=False),
    )
    text = render_card(RESNET, None, record)
    ModelCard(text)
    assert "| epoch | loss | token_accuracy | seconds |" in text
    assert "| 1 | 2.5000 | 0.4000 | 3.2 |" in text and "val_loss" not in text
    assert "gradient clipping" not in text
    assert f"| source | {NOT_RECORDED} |" in text and f"| licence | {NOT_RECORDED} |" in text
    assert "| dataset | my photos |" in text and "trained on my photos." in text
    assert 'from_pretrained("USER/MODEL")' in text
    assert "\n# resnet50-flickr8k\n" in text  # no repo id, no model name: the run's name
    assert "\n# my-model\n" in render_card(RESNET, None, record, model_name="my-model")


def test_run_details_as_the_training_cli_records_them():
    text = render_card(RESNET, METRICS, RECORD)
    assert (
        "| hardware | Xeon (16 cores); no GPU; TensorFlow 2.21.0; Python 3.11.7; "
        "platform: Linux-6.1-x86_64 |"
    ) in text
    assert "| maximum epochs | 30 |" in text and "| stopped early | no |" in text
    assert "| learning rate | 0.0005 |" in text and "| gradient clipping (norm) | 5 |" in text
    assert "| early-stopping patience (epochs) | 3 |" in text
    assert (
        "| tf.distribute strategy | chief: yes, devices: none, name: default (one device), "
        "replicas: 1 |"
    ) in text
    assert "| training captions kept | 29,950 of 30,000 |" in text
    assert "| unknown-word rate (training) | 3.12% |" in text
    assert "| distinct words in the training captions | 8,412 |" in text
    assert "| epoch | loss | token_accuracy | val_loss | val_token_accuracy | seconds |" in text
    assert "| 3 | 3.3000 | 0.3800 | 3.7500 | 0.3500 | 69.1 |" in text
    gpus = replace(RECORD.hardware, gpus=["/physical_device:GPU:0"], cpu_count=None)
    text = render_card(RESNET, METRICS, replace(RECORD, hardware=gpus))
    assert "| hardware | Xeon; GPU: /physical_device:GPU:0; TensorFlow" in text


ENCODER_PROSE = {
    "imagenet": "keeps its ImageNet weights (frozen); its features are computed once per image",
    "fine-tuned": "starts from ImageNet weights and is fine-tuned end to end with the decoder",
    "frozen": "The encoder is frozen: it keeps the weights it started with",
    "trained": "has no pretrained weights: it is trained end to end together with the decoder",
    "random": "The encoder has random weights: this model is not meant to be used.",
}


@pytest.mark.parametrize(
    ("architecture", "weights", "trained", "prose", "table"),
    [
        ("resnet50", "imagenet", False, "imagenet", "ImageNet (Keras `ResNet50`)"),
        ("resnet50", "repo", True, "fine-tuned", "fine-tuned, in `encoder.safetensors`"),
        ("resnet50", "repo", False, "frozen", "frozen, in `encoder.safetensors`"),
        ("tiny_resnet", "repo", True, "trained", "trained with the decoder, in `encoder."),
        ("tiny_resnet", "repo", False, "frozen", "frozen, in `encoder.safetensors`"),
        ("resnet50", "random", False, "random", "random (untrained)"),
    ],
)
def test_the_card_says_how_the_encoder_was_trained(architecture, weights, trained, prose, table):
    """The template writes the encoder's sentences from the facts: its architecture, its
    weights, and whether the record says it was trained."""
    size = {"resnet50": 224, "tiny_resnet": 32}[architecture]
    encoder = EncoderConfig(architecture=architecture, weights=weights, image_size=size)
    if architecture == "tiny_resnet":
        encoder = replace(tiny_config().encoder, weights=weights)
    config = replace(RESNET, encoder=encoder)
    record = sample_record(settings=TrainingSection(train_encoder=trained))
    text = render_card(config, METRICS, record)
    assert ENCODER_PROSE[prose] in text
    assert [p for p, s in ENCODER_PROSE.items() if s in text] == [prose]
    assert f"weights: {table}" in text
    assert f"| encoder trained | {'yes' if trained else 'no'} |" in text
    assert ("`encoder.safetensors` (encoder)" in text) == (weights == "repo")
    what = "ResNet50 CNN" if architecture == "resnet50" else "small ResNet-style CNN (`tiny_resnet`"
    assert f"A {what}" in text


@pytest.mark.parametrize(
    ("metrics", "summary"),
    [
        (
            METRICS,
            "On the test split (1,000 images) it scores BLEU-4 0.1823 and CIDEr 1.0523 with "
            "beam search (beam 3).",
        ),
        (
            {**METRICS, "decodings": {"sample": METRICS["decodings"]["greedy"]}},
            "it scores BLEU-4 0.1623 and CIDEr 0.4123 with sampling.",
        ),
        (None, "Not evaluated: no scores are reported."),
    ],
    ids=["beam", "sample", "not-evaluated"],
)
def test_summary_names_the_best_decoding(metrics, summary):
    text = render_card(RESNET, metrics, RECORD)
    first = text.split("\n# ")[1].split("\n\n")[1]
    assert first.startswith(
        "An image-captioning model: a ResNet50 encoder and an LSTM decoder, trained on Flickr8k."
    )
    assert summary in first and first.count("\n") == 0


def test_synthetic_demo_model_card():
    text = render_card(tiny_config(), METRICS, synthetic_record(), repo_id="someone/imcap-demo")
    card = ModelCard(text)
    assert "tiny-resnet" in card.data.tags and "resnet50" not in card.data.tags
    assert "only knows shapes" in text and "Demo model" in text
    assert "gender" not in text
    assert "encoder.safetensors" in text and "synthetic-data" in card.data.tags
    assert card.data.datasets == ["synthetic-shapes"]
    assert "| source | drawn by `training/synthetic.py`" in text


def _usage(text: str) -> str:
    return text.split("## How to use it")[1].split("## Training data")[0]


def test_usage_installs_the_library_and_names_the_repo():
    usage = _usage(render_card(RESNET, METRICS, RECORD, repo_id=REPO))
    assert INSTALL_COMMAND == 'pip install "imcap @ git+https://github.com/imcap/imcap"'
    assert f"```bash\n{INSTALL_COMMAND}\n```" in usage
    assert usage.index(INSTALL_COMMAND) < usage.index("from imcap_hub import ImageCaptioner")
    assert usage.count(REPO) == 4  # from_pretrained, IMCAP_MODEL=, and the two CLI lines
    assert REPO_PLACEHOLDER not in usage and "REPO_ID" not in usage
    local = _usage(render_card(RESNET, METRICS, RECORD))  # a folder not pushed: the placeholder
    assert local == usage.replace(REPO, REPO_PLACEHOLDER) and INSTALL_COMMAND in local


def test_metrics_without_results_are_refused():
    with pytest.raises(CardError, match="decodings"):
        render_card(RESNET, {"split": "test"}, RECORD)


def test_card_from_real_evaluation(eval_metrics):
    card = ModelCard(
        render_card(tiny_config(), eval_metrics, synthetic_record(), repo_id="someone/x")
    )
    names = {r.metric_name: r.metric_value for r in card.data.eval_results}
    for label, scores in eval_metrics["decodings"].items():
        for metric, value in scores.items():
            assert names[f"{metric} ({label})"] == round(value, 4)


def test_notes_stand_under_the_summary():
    notes = "Chosen over the pooled kind: it gets the spatial relations right."
    text = render_card(RESNET, METRICS, RECORD, repo_id=REPO, notes=f"  {notes}\n")
    assert text.index(notes) < text.index("## What it does")
    assert notes not in render_card(RESNET, METRICS, RECORD, repo_id=REPO)


def test_an_attention_model_card_describes_the_grid_the_maps_and_the_penalty():
    from imcap_hub import DecoderConfig

    config = CaptionerConfig(
        encoder=EncoderConfig(features="spatial"),
        decoder=DecoderConfig(kind="attention", attention_dim=512),
        vocab_size=2984,
    )
    record = replace(RECORD, model=config)
    text = render_card(config, METRICS, record, repo_id=REPO)
    assert "a 7x7 grid of 2048-d feature vectors" in text and "soft" in text
    assert "attention 512" in text and "(7x7 x 2048-d)" in text
    assert "return_attention=True" in text
    assert "| attention penalty (lambda) | 0.1 |" in text
    assert "no attention" not in text and "coarse" in text
    pooled = render_card(RESNET, METRICS, RECORD, repo_id=REPO)
    assert "return_attention" not in pooled and "attention penalty" not in pooled
    assert "no attention" in pooled


def test_card_lists_calibration_safetensors_only_when_the_model_has_it():
    files = next(
        line for line in render_card(RESNET, None, RECORD).splitlines() if "| files |" in line
    )
    assert "calibration.safetensors" not in files
    text = render_card(RESNET, None, RECORD, calibration_images=128)
    files = next(line for line in text.splitlines() if "| files |" in line)
    assert "`calibration.safetensors` (128 training images: the `openvino-int8`" in files
