"""Where one caption's decoding time goes, greedy against beam-3, for both decoders.

    python bench/profile_beam.py [--repeats 30] [--max-length 34] [--vocab 3000]

The models of bench_inference.py (ResNet50 features of one JPEG, a Flickr8k-sized decoder with
random weights, the ``<end>`` logit pushed down so that every caption runs to ``--max-length``
words). Each search runs here as a copy of imcap_hub/search.py's loop and of the decoders'
``step``, line for line, with a clock read between the parts; the copy must give the library's
captions and scores (checked), and its total is printed next to the library's own time, timed
round-robin with it. Every part is the median over ``--repeats`` captions of its summed time
per caption, in ms; "steps" counts the step calls per caption.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from bench_inference import build_model, interleaved_medians, jpeg_bytes

from imcap_hub.decoder import log_softmax, lstm_update, sigmoid
from imcap_hub.images import load_image
from imcap_hub.inference import single_threaded_blas
from imcap_hub.search import Hypothesis, _allowed, _take, beam_search, greedy, normalised


class Laps:
    """Adds the time since the previous lap to a named part."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] += now - self.last
        self.last = now


# --- the decoders' steps, timed (copies of StepDecoder.step and AttentionStepDecoder.step) ----


def pooled_step(dec, tokens: np.ndarray, state: tuple, laps: Laps):
    laps.steps += 1
    _, c, h_recurrent = state
    x = dec.input_table[tokens] + h_recurrent
    laps("step: token row + recurrent sum")
    h, c = lstm_update(x, c, dec.units)
    laps("step: LSTM cell (elementwise)")
    out = h @ dec.fused
    laps("step: matmul h @ [logits | recurrent] (512 x 5048)")
    logits = out[:, : dec.vocab_size] + dec.out_bias
    state = (h, c, out[:, dec.vocab_size :])
    laps("step: logits bias, slices")
    lp = log_softmax(logits)
    laps("log-softmax (N x V)")
    return lp, state


def attention_step(dec, tokens: np.ndarray, state: tuple, laps: Laps):
    laps.steps += 1
    context, projected, _, c, recurrent, _ = state
    e, u, att = dec.embedding_dim, dec.units, dec.attention_dim
    scores = np.tanh(projected + recurrent[:, None, :att]) @ dec.score
    laps("step: attention scores tanh(W_a a + W_h h) w")
    alpha = np.exp(scores - scores.max(axis=1, keepdims=True))
    alpha /= alpha.sum(axis=1, keepdims=True)
    beta = sigmoid(recurrent[:, att : att + 1] + dec.beta_bias)
    laps("step: alpha softmax, beta")
    from_z = beta * (alpha[:, None, :] @ context)[:, 0]
    laps("step: context alpha @ (a [K_z|L_z]) (49 x 2304)")
    from_token = dec.token_table[tokens]
    gates = from_token[:, : 4 * u] + from_z[:, : 4 * u] + recurrent[:, att + 1 :]
    laps("step: token row + gate sum")
    h, c = lstm_update(gates, c, u)
    laps("step: LSTM cell (elementwise)")
    from_h = h @ dec.hidden_kernel
    laps("step: matmul h @ [L_h|W_h|W_beta|recurrent] (512 x 2817)")
    deep = from_token[:, 4 * u :] + from_z[:, 4 * u :] + from_h[:, :e]
    laps("step: deep output sum")
    logits = deep @ dec.out_kernel + dec.out_bias
    laps("step: matmul logits (256 x V)")
    lp = log_softmax(logits)
    laps("log-softmax (N x V)")
    return lp, (context, projected, h, c, from_h[:, e:], alpha)


# --- the searches, timed (copies of search.beam_search and search._decode_rows) ----------------


def timed_beam_search(
    step: Callable,
    state: tuple,
    laps: Laps,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int = 3,
    num_results: int = 1,
    banned=(),
    length_penalty: float = 1.0,
    attention=None,
) -> list[Hypothesis]:
    laps.start()
    num_results = min(num_results, beam_size)
    tokens = np.array([start_id], dtype=np.int64)
    beams: list[tuple[int, ...]] = [()]
    beam_maps: list[tuple[np.ndarray, ...]] = [()]
    beam_lp = np.zeros(1, dtype=np.float64)
    finished: list[Hypothesis] = []
    laps("search: bookkeeping (beams, hypotheses)")
    for n_words in range(max_length + 1):
        lp, state = step(tokens, state, laps)
        if attention is not None:
            step_maps = np.array(attention(state), copy=True)
            beam_maps = [(*m, w) for m, w in zip(beam_maps, step_maps)]
            laps("search: attention maps (copy, per-beam tuples)")
        lp = _allowed(lp, banned, n_words, max_length, end_id)
        laps("search: _allowed (copy, mask)")
        total = beam_lp[:, None] + lp.astype(np.float64)
        flat = total.ravel()
        laps("search: float64 totals (beam x V)")
        k = min(beam_size, int(np.isfinite(flat).sum()))
        if k == 0:
            break
        top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
        top = top[np.lexsort((top, -flat[top]))]
        rows, toks = np.divmod(top, total.shape[1])
        laps("search: top-k (isfinite, argpartition, lexsort)")
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
            laps("search: bookkeeping (beams, hypotheses)")
            break
        idx = np.array(keep_rows)
        beams = [beams[r] + (int(t),) for r, t in zip(keep_rows, keep_toks)]
        if attention is not None:
            beam_maps = [beam_maps[r] for r in keep_rows]
        beam_lp = np.array(keep_lp, dtype=np.float64)
        tokens = np.array(keep_toks, dtype=np.int64)
        laps("search: bookkeeping (beams, hypotheses)")
        state = _take(state, idx)
        laps("search: state gather (_take)")
    finished.sort(key=lambda h: -h.score)
    laps("search: bookkeeping (beams, hypotheses)")
    return finished[:num_results]


def timed_greedy(
    step: Callable,
    state: tuple,
    laps: Laps,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    banned=(),
    length_penalty: float = 1.0,
    attention=None,
) -> list[Hypothesis]:
    laps.start()
    n = state[0].shape[0]
    tokens = np.full(n, start_id, dtype=np.int64)
    seqs: list[list[int]] = [[] for _ in range(n)]
    maps: list[list[np.ndarray]] = [[] for _ in range(n)]
    logprob = np.zeros(n, dtype=np.float64)
    alive = np.arange(n)
    laps("search: bookkeeping (beams, hypotheses)")
    for n_words in range(max_length + 1):
        lp, state = step(tokens, state, laps)
        if attention is not None:
            for row, weights in zip(alive, np.array(attention(state), copy=True)):
                maps[row].append(weights)
            laps("search: attention maps (copy, per-beam tuples)")
        lp = _allowed(lp, banned, n_words, max_length, end_id)
        laps("search: _allowed (copy, mask)")
        chosen = lp.argmax(axis=1)
        laps("search: top-k (isfinite, argpartition, lexsort)")
        logprob[alive] += lp[np.arange(len(alive)), chosen]
        keep = chosen != end_id
        for row, tok in zip(alive[keep], chosen[keep]):
            seqs[row].append(int(tok))
        alive, tokens = alive[keep], chosen[keep]
        laps("search: bookkeeping (beams, hypotheses)")
        state = _take(state, np.flatnonzero(keep))
        laps("search: state gather (_take)")
        if len(alive) == 0:
            break
    out = [
        Hypothesis(
            tuple(s),
            float(lp_),
            normalised(float(lp_), len(s), length_penalty),
            np.stack(m) if attention is not None else None,
        )
        for s, lp_, m in zip(seqs, logprob, maps)
    ]
    laps("search: bookkeeping (beams, hypotheses)")
    return out


# --- the profile ------------------------------------------------------------------------------


def profile(model, features: np.ndarray, repeats: int, attention: bool) -> dict:
    """{search: (part medians in ms, steps, the copy's total ms, the library's ms)}."""
    vocab, dec = model.vocab, model.decoder
    kwargs = {
        "start_id": vocab.start_id,
        "end_id": vocab.end_id,
        "max_length": model.config.decoder.max_length,
        "banned": (vocab.pad_id, vocab.start_id, vocab.unk_id),
    }
    timed_step = attention_step if attention else pooled_step

    def step(tokens, state, laps):
        return timed_step(dec, tokens, state, laps)

    searches = {
        "greedy": (timed_greedy, greedy, {}),
        "beam-3": (timed_beam_search, beam_search, {"beam_size": 3}),
    }
    if attention:  # predict(return_attention=True): every step's map recorded
        searches["beam-3, maps"] = (
            timed_beam_search,
            beam_search,
            {"beam_size": 3, "attention": dec.attention},
        )
    results = {}
    for name, (timed, real, extra) in searches.items():
        runs: list[Laps] = []

        def run_copy(timed=timed, extra=extra, runs=runs):
            laps = Laps()
            out = timed(step, dec.init_state(features[None]), laps, **kwargs, **extra)
            runs.append(laps)
            return out

        def run_library(real=real, extra=extra):
            return real(dec.step, dec.init_state(features[None]), **kwargs, **extra)

        with single_threaded_blas():
            copy_out, library_out = run_copy(), run_library()
            assert [(h.token_ids, h.logprob) for h in copy_out] == [
                (h.token_ids, h.logprob) for h in library_out
            ], f"the timed copy of {name} differs from the library"
            assert len(library_out[0].token_ids) == kwargs["max_length"]
            runs.clear()
            totals = interleaved_medians({"copy": run_copy, "library": run_library}, repeats)
        parts = {p: statistics.median(1e3 * r.parts[p] for r in runs) for p in runs[0].parts}
        results[name] = (parts, runs[0].steps, totals["copy"], totals["library"])
    return results


def print_table(title: str, results: dict) -> None:
    names = list(results)
    parts = sorted({p for r in results.values() for p in r[0]})
    print(f"\n{title}\n")
    print("| part | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for part in parts:
        cells = " | ".join(f"{results[n][0].get(part, 0.0):.2f}" for n in names)
        print(f"| {part} | {cells} |")
    print("| sum of the parts (copy) | " + " | ".join(f"{results[n][2]:.2f}" for n in names) + " |")
    print(
        "| library function, same run | " + " | ".join(f"{results[n][3]:.2f}" for n in names) + " |"
    )
    print("| steps | " + " | ".join(str(results[n][1]) for n in names) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=34)
    parser.add_argument("--vocab", type=int, default=3000)
    args = parser.parse_args()

    image = load_image(jpeg_bytes(0))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" numpy {np.__version__}; load average at start {os.getloadavg()[0]:.1f}"
    )
    print(f"decoder E=256 U=512 V={args.vocab}, {args.max_length} words; medians of {args.repeats}")
    for kind in ("pooled", "attention"):
        model = build_model(args.vocab, args.max_length, "auto", None, kind=kind)
        features = model.encoder.encode([image])[0]
        results = profile(model, features, args.repeats, attention=kind == "attention")
        print_table(f"{kind} decoder, one caption of {args.max_length} words", results)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
