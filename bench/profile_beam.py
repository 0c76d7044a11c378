"""Where one caption's decoding time goes, greedy against beam-3, and beam-3 before and after.

    python bench/profile_beam.py [--repeats 30] [--max-length 34] [--vocab 3000] [--before REV]

The models of bench_inference.py (ResNet50 features of one JPEG, a Flickr8k-sized decoder with
random weights, the ``<end>`` logit pushed down so that every caption runs to ``--max-length``
words), both decoder kinds. Three parts:

1. The profile: each search runs here as a copy of imcap_hub/search.py's loop and of the
   decoders' ``step``, line for line, with a clock read between the parts. The copy must give
   the library's captions (checked) and its total is printed next to the library's own time,
   timed round-robin with it. A part's number is the median over ``--repeats`` captions of its
   summed time per caption, in ms.
2. The check: the searches, decoders and ``log_softmax`` of ``--before`` (read with
   ``git show``) against this tree's, on several images and settings: same tokens, scores
   within float32 rounding (bit for bit up to 3 beams here; from 4 rows on, ONNX Runtime and
   one-thread OpenBLAS sum some products in another order), same attention maps.
3. End to end (JPEG bytes -> text, ``predict``), before and after, all variants round-robin,
   and the decoding part alone of the same calls. "openvino rows": beam-3 with the beams' rows
   multiplied by OpenVINO, as where onnxruntime is not installed (the Space); "numpy rows":
   one gemv each, as where neither is.
   Medians and the fastest run: the fastest is the closer to a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
from bench_inference import build_model, interleaved_times, jpeg_bytes

import imcap_hub.search as search_module
from imcap_hub import DecodeOptions, inference, predict
from imcap_hub.decoder import log_softmax, lstm_update, lstm_update_sigmoids_first, sigmoid
from imcap_hub.images import load_image
from imcap_hub.inference import single_threaded_blas
from imcap_hub.matmul import ConstantMatmul
from imcap_hub.search import Hypothesis, _allowed, _take, beam_search, greedy, normalised

ROOT = Path(__file__).resolve().parents[1]
# The last commit before issue 12's beam work: the "before" of the README's numbers.
BEFORE = "a9013af"


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
    h, c = lstm_update_sigmoids_first(x, c, dec.units)
    laps("step: LSTM cell (elementwise)")
    out = dec.fused_matmul(h)
    laps("step: matmul h @ [logits | recurrent] (512 x 5048)")
    logits = out[:, : dec.vocab_size] + dec.out_bias
    state = (h, c, out[:, dec.vocab_size :])
    laps("step: logits bias, slices")
    lp = log_softmax(logits)
    laps("step: log-softmax (N x V)")
    return lp, state


def attention_step(dec, tokens: np.ndarray, state: tuple, laps: Laps):
    laps.steps += 1
    context, projected, _, c, recurrent, _ = state
    e, u, att = dec.embedding_dim, dec.units, dec.attention_dim
    scores = projected + recurrent[:, None, :att]
    scores = np.tanh(scores, out=scores) @ dec.score
    laps("step: attention scores tanh(W_a a + W_h h) w (49 x 512)")
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
    from_h = dec.hidden_matmul(h)
    laps("step: matmul h @ [L_h|W_h|W_beta|recurrent] (512 x 2817)")
    deep = from_token[:, 4 * u :] + from_z[:, 4 * u :] + from_h[:, :e]
    laps("step: deep output sum")
    logits = dec.out_matmul(deep) + dec.out_bias
    laps("step: matmul logits (256 x V)")
    lp = log_softmax(logits)
    laps("step: log-softmax (N x V)")
    return lp, (context, projected, h, c, from_h[:, e:], alpha)


# --- the searches, timed (copies of search.beam_search and search.greedy) ---------------------


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
    beam_lp = [0.0]
    finished: list[Hypothesis] = []
    banned_set = frozenset(int(t) for t in banned)
    laps("search: bookkeeping (beams, hypotheses)")
    for n_words in range(max_length + 1):
        lp, state = step(tokens, state, laps)
        if attention is not None:
            step_maps = np.array(attention(state), copy=True)
            beam_maps = [(*m, w) for m, w in zip(beam_maps, step_maps)]
            laps("search: attention maps (copy, per-beam tuples)")
        # _best_continuations, in two laps
        k, last = beam_size, n_words >= max_length
        n_rows, vocab_size = lp.shape
        if last:
            top = np.full((n_rows, 1), end_id)
        else:
            m = min(k + len(banned_set), vocab_size)
            top = np.argpartition(lp, vocab_size - m, axis=1)[:, vocab_size - m :]
        laps("search: top-k, argpartition per row (N x V)")
        values = np.take_along_axis(lp, top, axis=1)
        candidates = [
            (-total, row, t)
            for row, (b, row_tokens, row_values) in enumerate(
                zip(beam_lp, top.tolist(), values.tolist())
            )
            for t, v in zip(row_tokens, row_values)
            if t not in banned_set and math.isfinite(total := b + v)
        ]
        candidates.sort()
        best = candidates[:k]
        laps("search: top-k, candidates (banned, totals, sort)")
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
            laps("search: bookkeeping (beams, hypotheses)")
            break
        rows = [row for _, row, _ in alive]
        beams = [beams[row] + (token,) for _, row, token in alive]
        if attention is not None:
            beam_maps = [beam_maps[row] for row in rows]
        beam_lp = [-negative for negative, _, _ in alive]
        tokens = np.array([token for _, _, token in alive], dtype=np.int64)
        laps("search: bookkeeping (beams, hypotheses)")
        state = _take(state, np.array(rows))
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
    banned_set = frozenset(int(t) for t in banned)
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
        if n_words >= max_length:
            chosen = np.full(len(lp), end_id)
        else:
            chosen = lp.argmax(axis=1)
            if not banned_set.isdisjoint(chosen.tolist()):
                chosen = _allowed(lp, banned, n_words, max_length, end_id).argmax(axis=1)
        laps("search: argmax, banned check")
        logprob[alive] += lp[np.arange(len(alive)), chosen]
        keep = chosen != end_id
        if keep.all():
            for row, tok in zip(alive.tolist(), chosen.tolist()):
                seqs[row].append(tok)
            tokens = chosen
            laps("search: bookkeeping (beams, hypotheses)")
            continue
        for row, tok in zip(alive[keep].tolist(), chosen[keep].tolist()):
            seqs[row].append(tok)
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


# --- 1. the profile -------------------------------------------------------------------------


def search_kwargs(model) -> dict:
    vocab = model.vocab
    return {
        "start_id": vocab.start_id,
        "end_id": vocab.end_id,
        "max_length": model.config.decoder.max_length,
        "banned": (vocab.pad_id, vocab.start_id, vocab.unk_id),
    }


def profile(model, features: np.ndarray, repeats: int, attention: bool) -> dict:
    """{search: (part medians, steps, the copy's median, the library's median and fastest)},
    times in ms per caption."""
    dec = model.decoder
    kwargs = search_kwargs(model)
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
            totals = interleaved_times({"copy": run_copy, "library": run_library}, repeats)
        runs = runs[-repeats:]  # not the warm-up runs
        parts = {p: statistics.median(1e3 * r.parts[p] for r in runs) for p in runs[0].parts}
        results[name] = (
            parts,
            runs[0].steps,
            statistics.median(totals["copy"]),
            statistics.median(totals["library"]),
            min(totals["library"]),
        )
    return results


def print_profile(title: str, results: dict) -> None:
    names = list(results)
    parts = sorted({p for r in results.values() for p in r[0]})
    print(f"\n{title}\n")
    print("| part | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for part in parts:
        cells = " | ".join(f"{results[n][0].get(part, 0.0):.2f}" for n in names)
        print(f"| {part} | {cells} |")
    rows = (
        ("copy, total", 2, ".2f"),
        ("library function, same run", 3, ".2f"),
        ("library function, fastest run", 4, ".2f"),
        ("steps", 1, ""),
    )
    for label, i, fmt in rows:
        print(f"| {label} | " + " | ".join(f"{results[n][i]:{fmt}}" for n in names) + " |")


# --- 2. the check against the code before ----------------------------------------------------


def load_before(rev: str) -> dict[str, ModuleType]:
    """imcap_hub's search, decoder and attention modules as they were at ``rev``, importable
    next to today's (their relative imports reach today's package for everything else)."""
    modules = {}
    for name in ("search", "decoder", "attention"):
        source = subprocess.run(
            ["git", "show", f"{rev}:imcap_hub/{name}.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        full = f"imcap_hub._before_{name}"
        spec = importlib.util.spec_from_loader(full, loader=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "imcap_hub"
        sys.modules[full] = module  # dataclasses look their module up
        exec(compile(source, f"{rev}:imcap_hub/{name}.py", "exec"), module.__dict__)
        modules[name] = module
    modules["attention"].log_softmax = modules["decoder"].log_softmax
    return modules


def before_decoder(model, before: dict[str, ModuleType]):
    if model.config.decoder.kind == "attention":
        return before["attention"].AttentionStepDecoder(model.decoder_weights, model.config)
    return before["decoder"].StepDecoder(model.decoder_weights, model.config)


def check_against_before(models: dict, before: dict[str, ModuleType], n_images: int) -> str:
    """Runs both codes on ``n_images`` images per setting; raises on a difference."""
    settings = [
        ("greedy", {}),
        ("beam-3, 3 results", {"beam_size": 3, "num_results": 3}),
        ("beam-5, 5 results, length penalty 0.7", {"beam_size": 5, "num_results": 5}),
    ]
    compared = 0
    worst = 0.0
    lengths: set[int] = set()
    for kind, model in models.items():
        images = [load_image(jpeg_bytes(200 + i)) for i in range(n_images)]
        features = model.encoder.encode(images)
        kwargs = search_kwargs(model)
        # The bench's model (every caption to max_length), then sharper distributions (logits
        # kernel x 8) with <end> biases that end captions at 4 to 12 words.
        variants = ((1.0, -1e4, kwargs["max_length"]), (8.0, 1.0, 12), (8.0, 3.0, 12))
        for logit_scale, end_bias, max_length in variants:
            weights = dict(model.decoder_weights)
            weights["logits/kernel"] = weights["logits/kernel"] * logit_scale
            weights["logits/bias"] = weights["logits/bias"].copy()
            weights["logits/bias"][model.vocab.end_id] = end_bias
            after_model = copy.copy(model)
            after_model.set_decoder_weights(weights)
            decoders = {
                "after": after_model.decoder,
                "before": before_decoder(after_model, before),
            }
            for label, extra in settings:
                extra = {**kwargs, **extra, "max_length": max_length}
                if "penalty" in label:
                    extra["length_penalty"] = 0.7
                for f in features:
                    out = {}
                    for side, module in (("after", search_module), ("before", before["search"])):
                        dec = decoders[side]
                        fn = module.greedy if label == "greedy" else module.beam_search
                        record = {"attention": dec.attention} if kind == "attention" else {}
                        with single_threaded_blas():
                            out[side] = fn(dec.step, dec.init_state(f[None]), **extra, **record)
                    a, b = out["after"], out["before"]
                    where = f"{kind}, logits x{logit_scale}, <end> bias {end_bias}, {label}"
                    assert [h.token_ids for h in a] == [h.token_ids for h in b], where
                    for ha, hb in zip(a, b):
                        np.testing.assert_allclose(ha.score, hb.score, rtol=1e-5, err_msg=where)
                        worst = max(worst, abs(ha.logprob - hb.logprob) / abs(hb.logprob))
                        lengths.add(len(ha.token_ids))
                        if ha.attention is not None:
                            np.testing.assert_allclose(
                                ha.attention, hb.attention, atol=1e-6, err_msg=where
                            )
                    compared += len(a)
    return (
        f"{compared} captions equal, of {len(lengths)} lengths from {min(lengths)} to "
        f"{max(lengths)} words (largest relative log-probability difference {worst:.1e})"
    )


# --- 3. end to end, before and after ---------------------------------------------------------


@contextlib.contextmanager
def searches_of(module: ModuleType):
    """predict() with ``module``'s greedy and beam_search."""
    saved = inference.greedy, inference.beam_search
    inference.greedy, inference.beam_search = module.greedy, module.beam_search
    try:
        yield
    finally:
        inference.greedy, inference.beam_search = saved


# Without onnxruntime (the Space's requirements.txt) the beams' rows go to OpenVINO; without
# either, to numpy (one gemv per row).
ROW_VARIANTS = ("openvino", "numpy")


def rows_by(model, backend: str):
    """A copy of ``model`` whose decoder multiplies the beams' rows with ``backend``."""
    fallback = copy.copy(model)
    fallback.decoder = copy.copy(model.decoder)
    for name in ("fused_matmul", "hidden_matmul", "out_matmul"):
        if hasattr(fallback.decoder, name):
            weights = getattr(fallback.decoder, name).weights
            setattr(fallback.decoder, name, ConstantMatmul(weights, backend))
    return fallback


def end_to_end(
    models: dict, before: dict[str, ModuleType], data: bytes, repeats: int
) -> tuple[dict, dict]:
    """Every run's ms, end to end and decoding only (predict's own "decode" timing: the search
    and the captions), keyed (decoder kind, decoding, variant); all variants round-robin."""
    options = {"greedy": DecodeOptions(decoding="greedy"), "beam-3": DecodeOptions(beam_size=3)}
    variants = {}
    for kind, model in models.items():
        old = copy.copy(model)
        old.decoder = before_decoder(model, before)
        for name, opts in options.items():
            variants[(kind, name, "before")] = (old, opts, before["search"])
            variants[(kind, name, "after")] = (model, opts, None)
        for backend in ROW_VARIANTS:
            variants[(kind, "beam-3", f"{backend} rows")] = (
                rows_by(model, backend),
                options["beam-3"],
                None,
            )
    decode: dict[tuple, list[float]] = {key: [] for key in variants}

    def caption(key):
        model, opts, searches = variants[key]
        with searches_of(searches) if searches else contextlib.nullcontext():
            prediction = predict(model, data, opts)
        decode[key].append(prediction.timings_ms["decode"])
        return prediction.text

    fns = {key: (lambda key=key: caption(key)) for key in variants}
    for key, fn in fns.items():  # the same captions every way
        assert fn() == fns[(*key[:2], "before")](), key
    total = interleaved_times(fns, repeats)
    return total, {key: times[-repeats:] for key, times in decode.items()}


def print_end_to_end(times: dict, kinds, title: str) -> None:
    print(f"\n{title}\n")
    rows = [f"{backend} rows" for backend in ROW_VARIANTS]
    print(
        "| decoder | greedy before | greedy after | beam-3 before | beam-3 after "
        + "".join(f"| beam-3 after, {r} " for r in rows)
        + "| beam-3 / greedy before | after "
        + "".join(f"| after, {r} " for r in rows)
        + "|"
    )
    print("|---|" + "---:|" * (6 + 2 * len(rows)))
    for stat, label in ((statistics.median, "median"), (min, "fastest")):
        for kind in kinds:
            g0, g1 = (stat(times[(kind, "greedy", side)]) for side in ("before", "after"))
            b0, b1 = (stat(times[(kind, "beam-3", side)]) for side in ("before", "after"))
            bs = [stat(times[(kind, "beam-3", r)]) for r in rows]
            print(
                f"| {kind}, {label} | {g0:.1f} | {g1:.1f} | {b0:.1f} | {b1:.1f} "
                + "".join(f"| {b:.1f} " for b in bs)
                + f"| {b0 / g0:.2f}x | {b1 / g1:.2f}x "
                + "".join(f"| {b / g1:.2f}x " for b in bs)
                + "|"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=34)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--before", default=BEFORE, help="the git revision to compare with")
    parser.add_argument("--check-images", type=int, default=6)
    args = parser.parse_args()

    data = jpeg_bytes(0)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" numpy {np.__version__}; load average at start {os.getloadavg()[0]:.1f}"
    )
    print(f"decoder E=256 U=512 V={args.vocab}, {args.max_length} words; medians of {args.repeats}")
    models = {}
    for kind in ("pooled", "attention"):
        model = build_model(args.vocab, args.max_length, "auto", None, kind=kind)
        model.encoder.prepare()
        models[kind] = model
        features = model.encoder.encode([load_image(data)])[0]
        results = profile(model, features, args.repeats, attention=kind == "attention")
        matmul = model.decoder.fused_matmul if kind == "pooled" else model.decoder.hidden_matmul
        print_profile(
            f"{kind} decoder, one caption of {args.max_length} words (several rows: "
            f"{matmul.backend})",
            results,
        )

    before = load_before(args.before)
    print(
        f"\ncheck against {args.before}: {check_against_before(models, before, args.check_images)}"
    )

    total, decode = end_to_end(models, before, data, args.repeats)
    words = f"{args.max_length} words, before = {args.before}, ms"
    print_end_to_end(total, models, f"end to end, JPEG bytes -> text, {words}")
    print_end_to_end(decode, models, f"decoding only, in the same predict() calls, {words}")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
