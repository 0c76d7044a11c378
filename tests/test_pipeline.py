"""Batches with overlapped stages (imcap_hub/pipeline.py): the same predictions, in the same
order, as one batch at a time through predict_many; a bad image fails only itself."""

from __future__ import annotations

import pytest

from imcap_hub import DecodeOptions, predict_many
from imcap_hub.pipeline import caption_batches


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_overlapped_batches_give_predict_many_s_captions_in_order(
    tiny_captioner, image_files, decoding
):
    good, bad = image_files["good"], image_files["bad"]
    images = [good[0], bad["truncated_jpeg"], good[1], good[1], bad["text_named_jpg"], good[0]]
    batches = [images[0:2], images[2:4], images[4:6], images[5:6]]
    options = DecodeOptions(decoding=decoding, num_captions=1)
    expected = [predict_many(tiny_captioner, b, options) for b in batches]
    for overlap in (True, False):
        got = list(caption_batches(tiny_captioner, batches, options, overlap=overlap))
        assert [[p.captions for p in b] for b in got] == [[p.captions for p in b] for b in expected]
        assert [[p.error for p in b] for b in got] == [[p.error for p in b] for b in expected]
    assert expected[0][1].error and expected[2][0].error and expected[0][0].captions


def test_no_batches_give_no_predictions(tiny_captioner):
    assert list(caption_batches(tiny_captioner, [], DecodeOptions())) == []
