"""The searches' shortcuts give the results of the plain algorithm.

Beam search ranks only each beam's best ``beam_size + len(banned)`` tokens, greedy masks banned
tokens only when one of them is the argmax, and a state array whose rows are one row repeated
(stride 0) is gathered as a view. Each is checked here against the plain algorithm: every
entry of the (beams x V) totals ranked, every row masked, every array copied.
"""

import numpy as np
import pytest
from helpers import tiny_attention_config

from imcap_hub.attention import AttentionStepDecoder
from imcap_hub.decoder import expected_shapes, log_softmax
from imcap_hub.search import Hypothesis, _take, beam_search, greedy, normalised

START, END = 1, 2
BANNED = (0, 1, 3)


class WideTableModel:
    """log p(next | previous token, position) from a random table over ``vocab`` tokens."""

    def __init__(self, seed: int, vocab: int, max_length: int, dtype=np.float64):
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(max_length + 2, vocab, vocab)) * 2.0
        self.table = log_softmax(logits).astype(dtype)

    def initial_state(self):
        return (np.zeros((1,), np.int64),)

    def step(self, tokens, state):
        (position,) = state
        return self.table[position, tokens], (position + 1,)


def plain_beam_search(
    step, state, *, max_length, beam_size, num_results, length_penalty, banned=BANNED
):
    """Beam search as written before the shortcuts: rank every allowed (beam, token) total."""
    tokens, beams, beam_lp, finished = np.array([START]), [()], np.zeros(1), []
    for n_words in range(max_length + 1):
        lp, state = step(tokens, state)
        allowed = lp.astype(np.float64)
        allowed[:, list(banned)] = -np.inf
        if n_words >= max_length:
            end = allowed[:, END].copy()
            allowed[:] = -np.inf
            allowed[:, END] = end
        total = beam_lp[:, None] + allowed
        ranked = sorted(
            (-total[r, t], r, t) for r, t in np.ndindex(total.shape) if np.isfinite(total[r, t])
        )[:beam_size]
        alive = []
        for negative, r, t in ranked:
            if t == END:
                lp_ = -negative
                finished.append(
                    Hypothesis(beams[r], lp_, normalised(lp_, len(beams[r]), length_penalty))
                )
            else:
                alive.append((negative, r, t))
        if len(finished) >= beam_size or not alive:
            break
        beams = [beams[r] + (int(t),) for _, r, t in alive]
        beam_lp = np.array([-negative for negative, _, _ in alive])
        tokens = np.array([t for _, _, t in alive])
        state = tuple(s[[r for _, r, _ in alive]] for s in state)
    return sorted(finished, key=lambda h: -h.score)[:num_results]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("beam_size", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_beam_search_equals_ranking_every_total(seed, beam_size, dtype):
    max_length = 5
    model = WideTableModel(seed, vocab=40, max_length=max_length, dtype=dtype)
    for length_penalty in (0.0, 0.7, 1.0):
        common = {
            "max_length": max_length,
            "beam_size": beam_size,
            "num_results": beam_size,
            "length_penalty": length_penalty,
        }
        plain = plain_beam_search(model.step, model.initial_state(), **common)
        found = beam_search(
            model.step,
            model.initial_state(),
            start_id=START,
            end_id=END,
            banned=BANNED,
            **common,
        )
        assert found == plain  # tokens, log-probabilities and scores, bit for bit


def test_beam_search_never_returns_banned_tokens_even_when_they_are_the_best():
    model = WideTableModel(0, vocab=12, max_length=4)
    model.table[:, :, list(BANNED)] = -0.01  # the banned tokens are the most likely everywhere
    kwargs = {"max_length": 4, "beam_size": 4, "num_results": 4, "length_penalty": 1.0}
    found = beam_search(
        model.step, model.initial_state(), start_id=START, end_id=END, banned=BANNED, **kwargs
    )
    assert found == plain_beam_search(model.step, model.initial_state(), **kwargs)
    assert all(not set(h.token_ids) & set(BANNED) for h in found) and len(found) == 4


@pytest.mark.parametrize("seed", range(4))
def test_greedy_masks_a_banned_argmax(seed):
    model = WideTableModel(seed, vocab=12, max_length=6)
    model.table[2:4, :, 3] = 0.0  # the unknown token is the argmax at two positions
    hyp = greedy(
        model.step, model.initial_state(), start_id=START, end_id=END, max_length=6, banned=BANNED
    )[0]
    one = {"max_length": 6, "beam_size": 1, "num_results": 1, "length_penalty": 1.0}
    plain = plain_beam_search(model.step, model.initial_state(), **one)[0]
    assert hyp.token_ids == plain.token_ids and 3 not in hyp.token_ids
    assert hyp.logprob == pytest.approx(plain.logprob)


def test_take_gathers_repeated_rows_as_views():
    table = np.arange(12.0).reshape(1, 3, 4)
    repeated = np.broadcast_to(table[0], (1, 3, 4))
    assert repeated.strides[0] == 0
    plain = np.arange(6.0).reshape(3, 2)
    for idx in (np.array([0, 0, 0]), np.array([0, 0]), np.array([0])):
        gathered, rows = _take((repeated, plain[: len(idx)]), idx)
        np.testing.assert_array_equal(gathered, table[idx])
        assert np.shares_memory(gathered, table) and gathered.strides[0] == 0
        np.testing.assert_array_equal(rows, plain[: len(idx)][idx])


def test_attention_tables_shared_by_the_beams_give_the_same_captions_as_copies():
    config = tiny_attention_config()
    rng = np.random.default_rng(5)
    weights = {
        n: rng.normal(0, 0.5, s).astype("float32") for n, s in expected_shapes(config).items()
    }
    decoder = AttentionStepDecoder(weights, config)
    search = {"start_id": START, "end_id": END, "max_length": 7, "banned": BANNED}
    record = {"attention": decoder.attention}
    for image in rng.normal(size=(3, 1, 4, 4, 12)).astype("float32"):
        shared = decoder.init_state(image)
        assert shared[0].strides[0] == 0 and shared[1].strides[0] == 0
        copied = tuple(np.ascontiguousarray(s) for s in shared)
        for run in (
            lambda state: beam_search(
                decoder.step, state, beam_size=3, num_results=3, **search, **record
            ),
            lambda state: greedy(decoder.step, state, **search, **record),
        ):
            a, b = run(shared), run(copied)
            assert a == b
            for ha, hb in zip(a, b):
                np.testing.assert_array_equal(ha.attention, hb.attention)
