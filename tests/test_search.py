import itertools

import numpy as np
import pytest

from imcap_hub.decoder import log_softmax
from imcap_hub.search import beam_search, greedy, normalised, sample

PAD, START, END, UNK = 0, 1, 2, 3
WORDS = (4, 5, 6)
VOCAB = 7
BANNED = (PAD, START, UNK)


class TableModel:
    """A toy language model: log p(next | previous token, position), from a random table."""

    def __init__(self, seed: int, max_length: int, sharpness: float = 2.0):
        rng = np.random.default_rng(seed)
        self.table = log_softmax(rng.normal(size=(max_length + 2, VOCAB, VOCAB)) * sharpness)

    def initial_state(self):
        return (np.zeros((1,), np.int64),)

    def step(self, tokens, state):
        (position,) = state
        return self.table[position, tokens], (position + 1,)

    def sequence_logprob(self, words) -> float:
        """log p(words + <end>), with banned tokens removed the same way the searches do."""
        total, previous = 0.0, START
        for pos, token in enumerate([*words, END]):
            total += self.table[pos, previous, token]
            previous = token
        return total


def _exhaustive(model: TableModel, max_length: int, length_penalty: float):
    """Every caption of 0..max_length words followed by <end>, best first."""
    results = []
    for n in range(max_length + 1):
        for words in itertools.product(WORDS, repeat=n):
            lp = model.sequence_logprob(words)
            results.append((normalised(lp, n, length_penalty), words))
    return sorted(results, key=lambda r: -r[0])


def _kwargs(max_length, length_penalty=1.0):
    return {
        "start_id": START,
        "end_id": END,
        "max_length": max_length,
        "banned": BANNED,
        "length_penalty": length_penalty,
    }


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_width_one_is_greedy(seed, length_penalty):
    model = TableModel(seed, max_length=6)
    g = greedy(model.step, model.initial_state(), **_kwargs(6, length_penalty))
    b = beam_search(model.step, model.initial_state(), beam_size=1, **_kwargs(6, length_penalty))
    assert len(g) == 1 and len(b) == 1
    assert b[0].token_ids == g[0].token_ids
    assert b[0].logprob == pytest.approx(g[0].logprob)
    assert g[0].logprob == pytest.approx(model.sequence_logprob(g[0].token_ids))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("length_penalty", [0.0, 0.7, 1.0])
def test_wide_beam_equals_exhaustive_search(seed, length_penalty):
    max_length = 4  # 3 words: 121 possible captions
    model = TableModel(seed, max_length, sharpness=1.0)
    best = _exhaustive(model, max_length, length_penalty)[:5]
    found = beam_search(
        model.step,
        model.initial_state(),
        beam_size=200,
        num_results=5,
        **_kwargs(max_length, length_penalty),
    )
    assert [h.token_ids for h in found] == [words for _, words in best]
    assert [h.score for h in found] == pytest.approx([score for score, _ in best])


def test_beam_results_are_sorted_finished_and_within_max_length():
    model = TableModel(0, max_length=5)
    hyps = beam_search(model.step, model.initial_state(), beam_size=4, num_results=4, **_kwargs(5))
    assert len(hyps) == 4
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for h in hyps:
        assert len(h.token_ids) <= 5 and not set(h.token_ids) & {PAD, START, END, UNK}
        assert h.logprob == pytest.approx(model.sequence_logprob(h.token_ids))


def test_greedy_is_batched_over_independent_states():
    model = TableModel(1, max_length=5)
    state = (np.array([0, 0, 0]),)
    out = greedy(model.step, state, **_kwargs(5))
    single = greedy(model.step, model.initial_state(), **_kwargs(5))
    assert all(h.token_ids == single[0].token_ids for h in out)


def test_sampling_is_reproducible_with_a_seed():
    model = TableModel(2, max_length=6, sharpness=0.5)

    def run(seed):
        hyps = sample(model.step, model.initial_state(), num_samples=8, seed=seed, **_kwargs(6))
        return [h.token_ids for h in hyps]

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1e-6), (1e-4, 1.0)])
def test_sampling_collapses_to_greedy(temperature, top_p):
    model = TableModel(3, max_length=6)
    g = greedy(model.step, model.initial_state(), **_kwargs(6))[0]
    for h in sample(
        model.step,
        model.initial_state(),
        num_samples=5,
        temperature=temperature,
        top_p=top_p,
        seed=0,
        **_kwargs(6),
    ):
        assert h.token_ids == g.token_ids


@pytest.mark.parametrize("top_p", [1.0, 0.6])
def test_sampling_follows_the_model_distribution(top_p):
    model = TableModel(4, max_length=1, sharpness=0.7)
    hyps = sample(
        model.step, model.initial_state(), num_samples=4000, top_p=top_p, seed=0, **_kwargs(1)
    )
    first = np.array([h.token_ids[0] if h.token_ids else END for h in hyps])
    probs = np.exp(model.table[0, START])
    probs[list(BANNED)] = 0
    probs /= probs.sum()
    if top_p < 1:  # the nucleus: smallest most-likely set reaching top_p
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)]
        nucleus = np.zeros_like(probs)
        nucleus[keep] = probs[keep]
        probs = nucleus / nucleus.sum()
    for token in range(VOCAB):
        assert np.mean(first == token) == pytest.approx(probs[token], abs=0.03)
