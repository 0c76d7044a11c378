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
    return tuple(s[idx] for s in state)


def _allowed(
    logprobs: np.ndarray, banned: Sequence[int], n_words: int, max_length: int, end_id: int
):
    logprobs = logprobs.copy()
    if banned:
        logprobs[:, list(banned)] = -np.inf
    if n_words >= max_length:  # only <end> may follow
        end = logprobs[:, end_id].copy()
        logprobs[:] = -np.inf
        logprobs[:, end_id] = end
    return logprobs


def _decode_rows(
    step: StepFn,
    state: tuple,
    choose: Callable[[np.ndarray], np.ndarray],
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    banned: Sequence[int],
    length_penalty: float,
    attention: AttentionFn | None = None,
) -> list[Hypothesis]:
    """One token per row per step, picked by ``choose(allowed log-probs) -> token ids``."""
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
        lp = _allowed(lp, banned, n_words, max_length, end_id)
        chosen = choose(lp)
        logprob[alive] += lp[np.arange(len(alive)), chosen]
        keep = chosen != end_id
        for row, tok in zip(alive[keep], chosen[keep]):
            seqs[row].append(int(tok))
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
    return _decode_rows(
        step,
        state,
        lambda lp: lp.argmax(axis=1),
        start_id=start_id,
        end_id=end_id,
        max_length=max_length,
        banned=banned,
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
    beam_lp = np.zeros(1, dtype=np.float64)
    finished: list[Hypothesis] = []
    for n_words in range(max_length + 1):
        lp, state = step(tokens, state)
        if attention is not None:
            step_maps = np.array(attention(state), copy=True)
            beam_maps = [(*m, w) for m, w in zip(beam_maps, step_maps)]
        lp = _allowed(lp, banned, n_words, max_length, end_id)
        total = beam_lp[:, None] + lp.astype(np.float64)
        flat = total.ravel()
        k = min(beam_size, int(np.isfinite(flat).sum()))
        if k == 0:
            break
        top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
        # Best first; ties break towards the lowest index, as greedy's argmax does.
        top = top[np.lexsort((top, -flat[top]))]
        rows, toks = np.divmod(top, total.shape[1])
        keep_rows, keep_toks, keep_lp = [], [], []
        for row, tok, score in zip(rows, toks, flat[top]):
            if tok == end_id:
                seq = beams[row]
                finished.append(
                    Hypothesis(
                        seq,
                        float(score),
                        normalised(float(score), len(seq), length_penalty),
                        np.stack(beam_maps[row]) if attention is not None else None,
                    )
                )
            else:
                keep_rows.append(row)
                keep_toks.append(tok)
                keep_lp.append(score)
        if len(finished) >= beam_size or not keep_rows:
            break
        idx = np.array(keep_rows)
        beams = [beams[r] + (int(t),) for r, t in zip(keep_rows, keep_toks)]
        if attention is not None:
            beam_maps = [beam_maps[r] for r in keep_rows]
        beam_lp = np.array(keep_lp, dtype=np.float64)
        tokens = np.array(keep_toks, dtype=np.int64)
        state = _take(state, idx)
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
        draw,
        start_id=start_id,
        end_id=end_id,
        max_length=max_length,
        banned=banned,
        length_penalty=length_penalty,
        attention=attention,
    )
    return sorted(hyps, key=lambda h: -h.score)
