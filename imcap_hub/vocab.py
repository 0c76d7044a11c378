"""The vocabulary (``vocab.json``) and the caption normalisation that training shares."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ImcapError
from .files import atomic_write_json
from .typed_json import read_json_file

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
VOCAB_FORMAT_VERSION = 1

_NON_WORD = re.compile(r"[^a-z0-9' ]+")
# Typographic and look-alike apostrophes: ’ ‘ ʼ ′ ＇ ` all mean '.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\u2032\uff07`", "'"))
_EDGE_APOSTROPHES = re.compile(r"(^'+|'+$)")
# Clitics are tokens of their own, as in the PTB tokenisation Flickr8k ships ("dog 's", "do n't"):
# one "dog" to learn instead of "dog" and "dog's". decode() glues them back on.
CLITICS = frozenset({"'s", "'re", "'ll", "'ve", "'d", "'m", "n't"})
_CLITIC = re.compile(r"^(.+?)('(?:s|re|ll|ve|d|m)|n't)$")
_SPLIT_CLITIC = re.compile(r"\s+('(?:s|re|ll|ve|d|m)|n't)\b")


class VocabularyError(ImcapError, ValueError):
    """A vocab.json that cannot be used."""


def normalize_caption(text: str) -> list[str]:
    """Lower-case, strip accents and punctuation, and split a caption into words.

    Training and inference both use this, so a word means the same thing on both sides.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = text.translate(_APOSTROPHES)
    text = _SPLIT_CLITIC.sub(r"\1", text)
    text = _NON_WORD.sub(" ", text)
    words = []
    for word in text.split():
        word = _EDGE_APOSTROPHES.sub("", word)
        match = _CLITIC.match(word)
        words.extend(match.groups() if match else (word,) if word else ())
    return words


def join_words(words: Sequence[str]) -> str:
    """Words -> text, with clitics ("'s", "n't") attached to the word before them."""
    text = ""
    for word in words:
        text += word if text and word in CLITICS else f" {word}"
    return text.strip()


@dataclass(frozen=True)
class Vocabulary:
    """Tokens in id order. The first four are always ``<pad> <start> <end> <unk>``."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
            raise VocabularyError(f"vocabulary must start with {', '.join(SPECIALS)}")
        if len(set(self.tokens)) != len(self.tokens):
            raise VocabularyError("vocabulary has duplicate tokens")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    pad_id = 0
    start_id = 1
    end_id = 2
    unk_id = 3

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(
        cls,
        captions: Iterable[str | Sequence[str]],
        min_count: int = 1,
        max_size: int | None = None,
    ) -> Vocabulary:
        """Build from captions (raw strings or word lists); most frequent words first."""
        counts: Counter[str] = Counter()
        for caption in captions:
            words = normalize_caption(caption) if isinstance(caption, str) else caption
            counts.update(words)
        for special in SPECIALS:
            counts.pop(special, None)
        words = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        return cls(SPECIALS + tuple(words))

    def id(self, token: str) -> int:
        return self._index.get(token, self.unk_id)  # type: ignore[attr-defined]

    def encode(self, caption: str | Sequence[str], add_special: bool = True) -> list[int]:
        """Caption -> ids, with ``<start>`` and ``<end>`` around it unless ``add_special=False``."""
        words = normalize_caption(caption) if isinstance(caption, str) else caption
        ids = [self.id(w) for w in words]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; stops at ``<end>``, skips ``<pad>`` and ``<start>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        return join_words(words)

    def to_dict(self) -> dict:
        return {
            "format_version": VOCAB_FORMAT_VERSION,
            "special_tokens": {"pad": PAD, "start": START, "end": END, "unknown": UNK},
            "tokens": list(self.tokens),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise VocabularyError("vocab.json must be an object with a 'tokens' list")
        version = data.get("format_version")
        if version != VOCAB_FORMAT_VERSION:
            raise VocabularyError(
                f"vocab.json has format_version {version!r}; this imcap reads {VOCAB_FORMAT_VERSION}"
            )
        specials = data.get("special_tokens", {})
        expected = {"pad": PAD, "start": START, "end": END, "unknown": UNK}
        if specials != expected:
            raise VocabularyError(f"vocab.json special_tokens must be {expected}, got {specials}")
        return cls(tuple(str(t) for t in data["tokens"]))

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read vocab.json; every error is a VocabularyError whose message names the file."""
        return read_json_file(path, VocabularyError, cls.from_dict)
