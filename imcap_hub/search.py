"""Caption search over a step function: greedy, beam (length-normalised, n-best) and sampling.

A step function maps (tokens (N,), state) to (log-probabilities (N, V), new state), where the
state is a tuple of arrays whose first axis is N. Every search here scores a finished caption
of n words plus ``<end>`` as ``logprob / (n + 1) ** length_penalty``; at ``max_length`` words
only ``<end>`` may follow. Tokens in ``banned`` (pad, start, unknown) are never produced.

Every search also takes ``attention``: None (the default), or a function of the state a step
returns that gives that step's attention weights (N, L), e.g. ``lambda state: state[-1]`` for
``AttentionStepDecoder``. Each Hypothesis then carries them, one row per step taken: one per
word and one for ``<end>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

StepFn = Callable[[np.ndarray, tuple], tuple[np.ndarray, tuple]]
AttentionFn = Callable[[tuple], np.ndarray]


@dataclass(frozen=True)
class Hypothesis:
    """A finished token sequence (words only, without start/end) and its scores."""

    token_ids: tuple[int, ...]
    logprob: float
    score: float
    # (len(token_ids) + 1, L) when the search was asked to record attention; not compared, so
    # recording it changes no equality between hypotheses.
    attention: np.ndarray | None = field(default=None, compare=False, repr=False)


def normalised(logprob: float, n_words: int, length_penalty: float) -> float:
    return logprob / float(n_words + 1) ** length_penalty


def _take(state: tuple, idx: np.ndarray) -> tuple:
    """Rows ``idx`` of every array of the state.

    An array whose first axis has stride 0 (one row repeated, as the attention decoder's
    per-image tables in a one-image search) stays a broadcast view: the same values, no copy.
    """
    return tuple(s[idx] if s.strides[0] != 0 else _repeated_row(s, len(idx)) for s in state)


def _repeated_row(s: np.ndarray, n: int) -> np.ndarray:
    # The same view when the row count stays (broadcast_to costs microseconds per call).
    return s if s.shape[0] == n else np.broadcast_to(s[:1], (n, *s.shape[1:]))


def _allowed(
    logprobs: np.ndarray, banned: Sequence[int], n_words: int, max_length: int, end_id: int
) -> np.ndarray:
    """A copy of the log-probabilities with every token that may not come next at -inf."""
    logprobs = logprobs.copy()
    if banned:
        logprobs[:, list(banned)] = -np.inf
    if n_words >= max_length:  # only <end> may follow
        end = logprobs[:, end_id].copy()
        logprobs[:] = -np.inf
        logprobs[:, end_id] = end
    return logprobs


def _best_continuations(
    lp: np.ndarray,
    beam_lp: list[float],
    k: int,
    banned: frozenset[int],
    last: bool,
    end_id: int,
) -> list[tuple[float, int, int]]:
    """The k best allowed continuations of the beams, best first, as (-total, row, token).

    A total is ``beam_lp[row] + lp[row, token]`` in float64; equal totals rank by row, then
    token. Fewer than k come back when fewer are allowed (finite and not banned; at ``last``,
    only ``<end>``). The result is that of ranking every entry of the (beams x V) totals, but
    only each row's ``k + len(banned)`` best tokens are looked at: each of the k best overall
    is among the k best of its own row, and at most len(banned) of those are banned. (Which of
    several tokens tied at a row's cut gets looked at is argpartition's choice, as which of
    several tied totals made the cut was when it partitioned them all.)
    """
    n_rows, vocab_size = lp.shape
    if last:  # at max_length only <end> may follow
        tokens = np.full((n_rows, 1), end_id)
    else:
        m = min(k + len(banned), vocab_size)
        # The m largest of each row, in no order, without negating or copying the rows.
        tokens = np.argpartition(lp, vocab_size - m, axis=1)[:, vocab_size - m :]
    values = np.take_along_axis(lp, tokens, axis=1)
    # A handful of candidates: plain Python ranks them faster than more numpy calls would.
    candidates = [
        (-total, row, t)
        for row, (b, row_tokens, row_values) in enumerate(
            zip(beam_lp, tokens.tolist(), values.tolist())
        )
        for t, v in zip(row_tokens, row_values)
        if t not in banned and math.isfinite(total := b + v)
    ]
    candidates.sort()
    return candidates[:k]


def _decode_rows(
    step: StepFn,
    state: tuple,
    choose: Callable[[np.ndarray, int], np.ndarray],
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    length_penalty: float,
    attention: AttentionFn | None = None,
) -> list[Hypothesis]:
    """One token per row per step, picked by ``choose(log-probs, n_words) -> token ids``, which
    must pick only tokens that may come next (see ``_allowed``)."""
    n = state[0].shape[0]
    tokens = np.full(n, start_id, dtype=np.int64)
    seqs: list[list[int]] = [[] for _ in range(n)]
    maps: list[list[np.ndarray]] = [[] for _ in range(n)]
    logprob = np.zeros(n, dtype=np.float64)
    alive = np.arange(n)
    for n_words in range(max_length + 1):
        lp, state = step(tokens, state)
        if attention is not None:
            for row, weights in zip(alive, np.array(attention(state), copy=True)):
                maps[row].append(weights)
        chosen = choose(lp, n_words)
        logprob[alive] += lp[np.arange(len(alive)), chosen]
        keep = chosen != end_id
        if keep.all():  # no row finished: nothing to gather
            for row, tok in zip(alive.tolist(), chosen.tolist()):
                seqs[row].append(tok)
            tokens = chosen
            continue
        for row, tok in zip(alive[keep].tolist(), chosen[keep].tolist()):
            seqs[row].append(tok)
        alive, tokens, state = alive[keep], chosen[keep], _take(state, np.flatnonzero(keep))
        if len(alive) == 0:
            break
    return [
        Hypothesis(
            tuple(s),
            float(lp_),
            normalised(float(lp_), len(s), length_penalty),
            np.stack(m) if attention is not None else None,
        )
        for s, lp_, m in zip(seqs, logprob, maps)
    ]


def greedy(
    step: StepFn,
    state: tuple,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    banned: Sequence[int] = (),
    length_penalty: float = 1.0,
    attention: AttentionFn | None = None,
) -> list[Hypothesis]:
    """Best next token each step, for a batch of N independent states at once."""
    banned_set = frozenset(int(t) for t in banned)

    def best(lp: np.ndarray, n_words: int) -> np.ndarray:
        if n_words >= max_length:  # only <end> may follow
            return np.full(len(lp), end_id)
        chosen = lp.argmax(axis=1)
        if not banned_set.isdisjoint(chosen.tolist()):  # rarely: only then copy and mask
            chosen = _allowed(lp, banned, n_words, max_length, end_id).argmax(axis=1)
        return chosen

    return _decode_rows(
        step,
        state,
        best,
        start_id=start_id,
        end_id=end_id,
        max_length=max_length,
        length_penalty=length_penalty,
        attention=attention,
    )


def beam_search(
    step: StepFn,
    state: tuple,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int = 3,
    num_results: int = 1,
    banned: Sequence[int] = (),
    length_penalty: float = 1.0,
    attention: AttentionFn | None = None,
) -> list[Hypothesis]:
    """Beam search for one image (``state`` has one row); returns the n best, best first.

    Alive beams are ranked by total log-probability (all have the same length at a step);
    finished captions by the length-normalised score. The search stops when ``beam_size``
    captions have finished or nothing is left alive.
    """
    if beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    num_results = min(num_results, beam_size)
    tokens = np.array([start_id], dtype=np.int64)
    beams: list[tuple[int, ...]] = [()]
    # Each beam's attention rows so far; they follow the beam through pruning and reordering.
    beam_maps: list[tuple[np.ndarray, ...]] = [()]
    beam_lp = [0.0]
    finished: list[Hypothesis] = []
    banned_set = frozenset(int(t) for t in banned)
    for n_words in range(max_length + 1):
        lp, state = step(tokens, state)
        if attention is not None:
            step_maps = np.array(attention(state), copy=True)
            beam_maps = [(*m, w) for m, w in zip(beam_maps, step_maps)]
        best = _best_continuations(
            lp, beam_lp, beam_size, banned_set, n_words >= max_length, end_id
        )
        alive = []
        for negative, row, token in best:
            if token == end_id:
                seq = beams[row]
                finished.append(
                    Hypothesis(
                        seq,
                        -negative,
                        normalised(-negative, len(seq), length_penalty),
                        np.stack(beam_maps[row]) if attention is not None else None,
                    )
                )
            else:
                alive.append((negative, row, token))
        if len(finished) >= beam_size or not alive:
            break
        rows = [row for _, row, _ in alive]
        beams = [beams[row] + (token,) for _, row, token in alive]
        if attention is not None:
            beam_maps = [beam_maps[row] for row in rows]
        beam_lp = [-negative for negative, _, _ in alive]
        tokens = np.array([token for _, _, token in alive], dtype=np.int64)
        state = _take(state, np.array(rows))
    finished.sort(key=lambda h: -h.score)
    return finished[:num_results]


def _top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    if top_p >= 1.0:
        return probs
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=1)
    cumulative = np.cumsum(sorted_p, axis=1)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    drop_sorted = cumulative - sorted_p >= top_p
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=1)
    probs = np.where(drop, 0.0, probs)
    return probs / probs.sum(axis=1, keepdims=True)


def sample(
    step: StepFn,
    state: tuple,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    banned: Sequence[int] = (),
    length_penalty: float = 1.0,
    attention: AttentionFn | None = None,
) -> list[Hypothesis]:
    """Draw ``num_samples`` captions for one image; same seed, same captions.

    Scores are the model's own log-probabilities (before temperature and top-p), so samples
    can be ranked against beam results.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    rng = np.random.default_rng(seed)

    def draw(lp: np.ndarray) -> np.ndarray:
        scaled = lp / temperature
        probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        probs = _top_p_filter(probs / probs.sum(axis=1, keepdims=True), top_p)
        cumulative = probs.cumsum(axis=1)
        u = rng.random((len(lp), 1)) * cumulative[:, -1:]
        return np.minimum((cumulative < u).sum(axis=1), probs.shape[1] - 1)

    hyps = _decode_rows(
        step,
        _take(state, np.zeros(num_samples, dtype=np.int64)),
        lambda lp, n_words: draw(_allowed(lp, banned, n_words, max_length, end_id)),
        start_id=start_id,
        end_id=end_id,
        max_length=max_length,
        length_penalty=length_penalty,
        attention=attention,
    )
    return sorted(hyps, key=lambda h: -h.score)
