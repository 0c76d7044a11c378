"""training.evaluate: coco-caption scores (pycocoevalcap), reference grouping, end to end."""

import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest

import training.evaluate as ev
from imcap_hub import DecodeOptions
from imcap_hub.inference import OptionsError
from training.evaluate import (
    METRIC_NAMES,
    EvaluationError,
    JavaNotFoundError,
    evaluate,
    ptb_tokenize,
    read_metrics,
    references_by_image,
    score_captions,
    write_metrics,
)

# METEOR's JVM spends ~10 s loading its paraphrase table. It is one process, reused by every
# scoring call of the session: start it at collection, so that it loads while earlier modules run.
if shutil.which("java"):
    ev._start_meteor()

# Three images with two references each: CIDEr's IDF needs more than one image to mean anything.
REFS = {
    "dog.jpg": ["A dog is running in the park.", "The brown dog runs on the grass"],
    "kids.jpg": ["Two children are playing football", "Kids play with a ball outside"],
    "bike.jpg": ["A man rides a red bicycle down the road", "A cyclist on a country road"],
}


def _direct(gts, res):
    """pycocoevalcap's scorers called directly on already tokenized text."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, _ = ev._start_meteor().compute_score(gts, res)  # the METEOR 1.5 jar, unwrapped
    return {
        **{f"BLEU-{n + 1}": b for n, b in enumerate(bleu)},
        "METEOR": meteor,
        "ROUGE-L": Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }


def test_identical_captions_score_perfectly():
    hyps = {image: refs[0] for image, refs in REFS.items()}
    scores = score_captions(REFS, hyps)
    assert list(scores) == list(METRIC_NAMES)
    for metric in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L"):
        assert scores[metric] == pytest.approx(1.0, abs=1e-6), metric
    assert 3.0 < scores["CIDEr"] <= 10.0


def test_partial_overlap_gives_what_pycocoevalcap_gives():
    hyps = {
        "dog.jpg": "a dog runs in a park",
        "kids.jpg": "two kids playing with a ball",
        "bike.jpg": "a man on a bicycle",
    }
    scores = score_captions(REFS, hyps)
    # The same captions, lower-cased and stripped of punctuation by hand (what normalisation and
    # the PTB tokenizer do to them), scored by pycocoevalcap without our wrapper.
    gts = {
        0: ["a dog is running in the park", "the brown dog runs on the grass"],
        1: ["two children are playing football", "kids play with a ball outside"],
        2: ["a man rides a red bicycle down the road", "a cyclist on a country road"],
    }
    res = {0: [hyps["dog.jpg"]], 1: [hyps["kids.jpg"]], 2: [hyps["bike.jpg"]]}
    expected = _direct(gts, res)
    for metric in METRIC_NAMES:
        assert scores[metric] == pytest.approx(expected[metric], abs=1e-9), metric
    assert 0.0 < scores["BLEU-4"] < scores["BLEU-1"] < 1.0


def test_bleu_1_by_hand():
    # hypothesis (6 words) "a dog runs in a park" vs the one reference (7 words):
    # clipped unigram matches a, dog, in, park = 4 of 6; brevity penalty exp(1 - 7/6).
    scores = score_captions(
        {"x": ["A dog is running in the park."], "y": ["a cat"]},
        {"x": "a dog runs in a park", "y": "a cat"},
    )
    hand = (4 + 2) / (6 + 2) * math.exp(1 - 9 / 8)  # corpus level: both images together
    assert scores["BLEU-1"] == pytest.approx(hand, abs=1e-6)
    single = score_captions({"x": ["A dog is running in the park."]}, {"x": "a dog runs in a park"})
    assert single["BLEU-1"] == pytest.approx(4 / 6 * math.exp(1 - 7 / 6), abs=1e-6)


def test_references_and_hypotheses_are_normalised_alike():
    refs = {"a": ["A Black-and-White DOG, running!"], "b": ["Two cafés."]}
    hyps = {"a": "a black and white dog running", "b": "two cafes"}
    scores = score_captions(refs, hyps)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)


def test_empty_hypotheses_do_not_crash():
    empty = score_captions(REFS, dict.fromkeys(REFS, ""))
    assert empty == dict.fromkeys(METRIC_NAMES, 0.0)
    mixed = score_captions(REFS, {"dog.jpg": "a dog runs", "kids.jpg": "", "bike.jpg": " ... "})
    assert all(math.isfinite(v) and v >= 0 for v in mixed.values())
    assert mixed["BLEU-1"] > 0 and mixed["METEOR"] > 0


def test_hypotheses_for_other_images_are_refused():
    with pytest.raises(EvaluationError, match="different images"):
        score_captions(REFS, {"dog.jpg": "a dog"})


def test_ptb_tokenize_is_pycocoevalcaps_tokenizer():
    from pycocoevalcap.tokenizer import ptbtokenizer

    sentences = [
        "A dog's ball, black-and-white.",
        "",
        "Hello   World!",
        "...",
        "it's 5 o'clock (ok)",
        "x",
    ]
    ours = ptb_tokenize(sentences)
    assert ours[1] == "" and ours[3] == ""
    if not os.access(os.path.dirname(ptbtokenizer.__file__), os.W_OK):
        pytest.skip("PTBTokenizer writes its temp file next to its jar, which is read-only here")
    theirs = ptbtokenizer.PTBTokenizer().tokenize(
        {i: [{"caption": s}] for i, s in enumerate(sentences) if s}
    )
    assert {i: [ours[i]] for i in theirs} == theirs


def test_references_grouped_per_image():
    table = pd.DataFrame(
        {
            "image": ["/d/a.jpg", "/d/b.jpg", "/d/a.jpg", "/d/c.jpg", "/d/b.jpg", "/d/a.jpg"],
            "caption": ["a one", "b one", "  a two ", "c one", None, "!!!"],
            "split": ["test", "test", "test", "train", "test", "test"],
        }
    )
    assert references_by_image(table, "test") == {
        "/d/a.jpg": ["a one", "a two"],
        "/d/b.jpg": ["b one"],
    }
    assert references_by_image(table, "train") == {"/d/c.jpg": ["c one"]}
    assert list(references_by_image(table)) == ["/d/a.jpg", "/d/b.jpg", "/d/c.jpg"]
    with pytest.raises(EvaluationError, match="no column"):
        references_by_image(table.drop(columns="split"), "test")


def test_end_to_end_with_the_tiny_captioner(eval_metrics, eval_table):
    m = eval_metrics
    n_test = eval_table.loc[eval_table["split"] == "test", "image"].nunique()
    assert (m["split"], m["n_images"], m["n_references"]) == ("test", n_test, 4 * n_test)
    assert list(m["decodings"]) == ["greedy", "beam-3"]
    for scores in m["decodings"].values():
        assert list(scores) == list(METRIC_NAMES)
        for metric, value in scores.items():
            assert isinstance(value, float)
            assert 0.0 <= value <= (10.0 if metric == "CIDEr" else 1.0), metric
    assert m["scorer"] == "pycocoevalcap 1.2" and m["evaluated_at"].startswith("20")
    assert m["n_failed"] == 0
    example = m["examples"][0]
    assert set(example) == {"image", "references", "greedy", "beam-3"}
    assert example["image"].startswith("synth_") and len(example["references"]) == 4
    json.dumps(m)  # JSON-able as it is


def test_evaluate_matches_scoring_its_own_captions(tiny_captioner, eval_table):
    from imcap_hub import predict_many

    m = evaluate(tiny_captioner, eval_table, decodings=["greedy"], max_images=3, progress=False)
    assert m["n_images"] == 3 and list(m["decodings"]) == ["greedy"]
    refs = references_by_image(eval_table, "test")
    images = list(refs)[:3]
    preds = predict_many(tiny_captioner, images, DecodeOptions.from_label("greedy"))
    direct = score_captions(
        {i: refs[i] for i in images}, {i: p.text for i, p in zip(images, preds)}
    )
    assert m["decodings"]["greedy"] == {k: round(v, 6) for k, v in direct.items()}


def test_unreadable_image_counts_as_an_empty_caption(tiny_captioner, eval_table, tmp_path):
    test = eval_table[eval_table["split"] == "test"]
    first = test["image"].iloc[0]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    table = test.replace({"image": {first: str(broken)}})
    m = evaluate(tiny_captioner, table, decodings=["greedy"], max_images=2, progress=False)
    assert m["n_failed"] == 1 and m["failed_images"][0]["image"] == "broken.jpg"
    assert m["examples"][0]["greedy"] == ""


def test_bad_requests_are_clear_errors(tiny_captioner, eval_table):
    with pytest.raises(EvaluationError, match=r"split 'nope'.*test, train, val"):
        evaluate(tiny_captioner, eval_table, split="nope", progress=False)
    with pytest.raises(OptionsError, match="unknown decoding"):
        evaluate(tiny_captioner, eval_table, decodings=["beam"], progress=False)
    with pytest.raises(OptionsError, match="beam_size must be an integer from 1 to 20"):
        evaluate(tiny_captioner, eval_table, decodings=["beam-50"], progress=False)
    with pytest.raises(EvaluationError, match="max_images"):
        evaluate(tiny_captioner, eval_table, max_images=0, progress=False)


def test_missing_java_is_a_clear_error_before_any_captioning(
    tiny_captioner, eval_table, monkeypatch
):
    monkeypatch.setattr(ev.shutil, "which", lambda name: None)

    def fail(*args, **kwargs):
        raise AssertionError("captioned before checking for Java")

    monkeypatch.setattr(ev, "predict_decodings", fail)
    with pytest.raises(JavaNotFoundError, match=r"need Java.*install a Java runtime") as info:
        evaluate(tiny_captioner, eval_table, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(JavaNotFoundError):
        score_captions(REFS, {k: v[0] for k, v in REFS.items()})


def test_write_and_read_metrics(eval_metrics, tmp_path):
    path = write_metrics(eval_metrics, tmp_path / "run" / "metrics.json")
    assert json.loads(path.read_text()) == eval_metrics == read_metrics(path)
    assert not list(path.parent.glob(".*.tmp"))
    with pytest.raises(EvaluationError, match="does not exist"):
        read_metrics(tmp_path / "none.json")


def test_metrics_are_rounded_not_numpy(eval_metrics):
    for scores in eval_metrics["decodings"].values():
        for value in scores.values():
            assert not isinstance(value, np.floating) and round(value, 6) == value
