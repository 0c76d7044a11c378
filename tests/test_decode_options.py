"""DecodeOptions: every decoding option is checked here once, for Python, the CLI, the app and
run configs; labels ("greedy", "beam-K", "sample") map to and from options."""

import numpy as np
import pytest
from helpers import tiny_config

from imcap_hub import DecodeOptions, ImcapError
from imcap_hub.inference import MAX_BEAM, OptionsError


@pytest.mark.parametrize("label", ["greedy", "sample", "beam-1", "beam-3", f"beam-{MAX_BEAM}"])
def test_labels_round_trip(label):
    options = DecodeOptions.from_label(label)
    assert options.label == label
    assert options.num_captions == 1
    assert DecodeOptions.from_label(options.label) == options


def test_label_parsing_is_lenient_about_case_and_spaces():
    assert DecodeOptions.from_label(" Beam-5 ") == DecodeOptions(beam_size=5)


@pytest.mark.parametrize("label", ["beam", "beam3", "top-k", "", 3])
def test_bad_labels_name_the_choices(label):
    with pytest.raises(OptionsError, match="'greedy', 'sample' or 'beam-K'"):
        DecodeOptions.from_label(label)


@pytest.mark.parametrize("label", ["beam-0", f"beam-{MAX_BEAM + 1}", "beam-50"])
def test_beam_labels_out_of_range_name_the_limit(label):
    with pytest.raises(
        OptionsError, match=f"decoding '{label}': beam_size must be an integer from 1 to {MAX_BEAM}"
    ):
        DecodeOptions.from_label(label)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"decoding": "top-k"}, "decoding must be one of greedy, beam, sample"),
        ({"beam_size": "abc"}, "beam_size must be an integer from 1 to 20, got 'abc'"),
        ({"beam_size": 2.5}, "beam_size must be an integer from 1 to 20, got 2.5"),
        ({"beam_size": True}, "beam_size must be an integer"),
        ({"beam_size": 0}, "beam_size must be an integer from 1 to 20, got 0"),
        ({"beam_size": 21}, "beam_size must be an integer from 1 to 20"),
        ({"beam_size": float("nan")}, "beam_size must be an integer"),
        ({"num_captions": 4}, "num_captions must be an integer from 1 to 3, got 4 \\(for beam"),
        ({"decoding": "greedy", "num_captions": 2}, "num_captions must be an integer from 1 to 1"),
        (
            {"decoding": "sample", "num_captions": 21},
            "num_captions must be an integer from 1 to 20",
        ),
        ({"max_length": 0}, "max_length must be a positive integer \\(words\\), got 0"),
        ({"max_length": "10"}, "max_length must be a positive integer"),
        ({"temperature": 0}, "temperature must be a number > 0, got 0"),
        ({"temperature": float("inf")}, "temperature must be a number > 0"),
        ({"temperature": "hot"}, "temperature must be a number > 0, got 'hot'"),
        ({"top_p": 0}, "top_p must be a number in \\(0, 1\\]"),
        ({"top_p": 1.5}, "top_p must be a number in \\(0, 1\\]"),
        ({"seed": -1}, "seed must be an integer from 0 to 4294967295, got -1"),
        ({"seed": "x"}, "seed must be an integer from 0"),
        ({"seed": 1.5}, "seed must be an integer from 0"),
        ({"length_penalty": -1}, "length_penalty must be a number >= 0"),
    ],
)
def test_a_wrong_option_is_a_one_line_error_naming_it(options, named):
    with pytest.raises(OptionsError, match=named) as caught:
        DecodeOptions(**options)
    assert isinstance(caught.value, ImcapError)
    assert "\n" not in str(caught.value)


def test_integral_numbers_from_uis_are_accepted_as_integers():
    options = DecodeOptions(beam_size=5.0, num_captions=np.int64(2), seed=7.0, max_length=9.0)
    assert (options.beam_size, options.num_captions, options.seed, options.max_length) == (
        5,
        2,
        7,
        9,
    )
    assert all(type(v) is int for v in (options.beam_size, options.num_captions, options.seed))


def test_max_length_beyond_the_model_limit_is_refused_by_validate():
    config = tiny_config(max_length=12)
    DecodeOptions(max_length=12).validate(config)
    with pytest.raises(OptionsError, match="max_length must be an integer from 1 to 12"):
        DecodeOptions(max_length=13).validate(config)


def test_from_kwargs_names_a_misspelt_option():
    assert DecodeOptions.from_kwargs(beam_size=4) == DecodeOptions(beam_size=4)
    with pytest.raises(OptionsError, match="unknown decoding option\\(s\\) beam_sise"):
        DecodeOptions.from_kwargs(beam_sise=4)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"beam_sise": 3}, "beam_sise"),
        ({"beam_size": "abc"}, "beam_size"),
        ({"beam_size": 2.5}, "beam_size"),
        ({"seed": -1, "decoding": "sample"}, "seed"),
        ({"max_length": 0}, "max_length"),
    ],
)
def test_caption_checks_its_options_through_decode_options(
    tiny_captioner, image_files, options, named
):
    with pytest.raises(OptionsError, match=named):
        tiny_captioner.caption(image_files["good"][0], **options)
