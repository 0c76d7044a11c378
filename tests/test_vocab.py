import pytest

from imcap_hub import Vocabulary, normalize_caption
from imcap_hub.vocab import SPECIALS, VocabularyError


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("A dog runs through the grass.", ["a", "dog", "runs", "through", "the", "grass"]),
        ("  Two  children, playing!  ", ["two", "children", "playing"]),
        ("A café's owner", ["a", "cafe", "'s", "owner"]),
        ("The dog's ball 'bounces'", ["the", "dog", "'s", "ball", "bounces"]),
        ("3 men-on a bench", ["3", "men", "on", "a", "bench"]),
        (
            "A horse 's tail , they do n't care .",
            ["a", "horse", "'s", "tail", "they", "do", "n't", "care"],
        ),
        ("they don't", ["they", "do", "n't"]),
        ("", []),
    ],
)
def test_normalize_caption(text, words):
    assert normalize_caption(text) == words


def test_build_orders_by_frequency_and_applies_min_count_and_max_size():
    captions = ["a dog runs", "a dog sits", "a cat sits", "zebra"]
    vocab = Vocabulary.build(captions, min_count=2)
    assert vocab.tokens == (*SPECIALS, "a", "dog", "sits")
    assert len(Vocabulary.build(captions, max_size=6)) == 6


def test_decode_attaches_clitics():
    vocab = Vocabulary.build(["the dog's ball, they don't care"])
    assert (
        vocab.decode(vocab.encode("The dog 's ball ; they do n't care"))
        == "the dog's ball they don't care"
    )


def test_encode_decode_and_unknown_words():
    vocab = Vocabulary.build(["a dog runs"])
    ids = vocab.encode("A dog flies")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert ids[3] == vocab.unk_id
    assert vocab.decode(ids) == "a dog <unk>"
    assert vocab.decode([vocab.start_id, vocab.id("dog"), vocab.end_id, vocab.id("a")]) == "dog"
    assert vocab.decode([vocab.id("a"), vocab.pad_id, vocab.id("dog")]) == "a dog"


def test_round_trip_json(tmp_path):
    vocab = Vocabulary.build(["a dog runs through the grass"])
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tokens": ["a"]}, "format_version"),
        ({"format_version": 1, "tokens": ["a", "b"], "special_tokens": {}}, "special_tokens"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_vocab_files(data, message):
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.from_dict(data)


def test_specials_must_come_first():
    with pytest.raises(VocabularyError, match="must start with"):
        Vocabulary(("a", *SPECIALS))


@pytest.mark.parametrize("apostrophe", ["'", "\u2019", "\u2018", "\u02bc", "\u2032", "\uff07", "`"])
def test_clitics_split_alike_with_any_apostrophe(apostrophe):
    assert normalize_caption(f"The dog{apostrophe}s ball") == ["the", "dog", "'s", "ball"]
