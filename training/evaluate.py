"""Score a captioner with the coco-caption metrics (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L, CIDEr.

:func:`evaluate` captions every image of a split with each decoding (``"greedy"``, ``"beam-K"``)
through :func:`imcap_hub.inference.predict_decodings` (each batch encoded once for all decodings,
through the fast encoder runtime where one is installed) and scores the captions against all references of each image. It returns the
``metrics.json`` dict that :func:`write_metrics` writes and the model card reads.

Text normalisation is the same on both sides: every reference and every hypothesis goes through
:func:`imcap_hub.normalize_caption` (lower case, accents and punctuation stripped; what the
model's vocabulary was built from, so a reference's "t-shirt" reads "t shirt" as the model can say
it), then through the Stanford PTB tokenizer that coco-caption uses (lower-cased, punctuation
tokens removed). METEOR and the PTB tokenizer are Java programs shipped with pycocoevalcap: without
a ``java`` on PATH, :func:`evaluate` refuses to start (:class:`JavaNotFoundError`) rather than
silently dropping METEOR.

Notes on the numbers: BLEU is corpus-level (pycocoevalcap's "closest" reference length); METEOR is
METEOR 1.5 (``-l en -norm``); CIDEr is pycocoevalcap's CIDEr-D (x10, so in [0, 10]) and its IDF
comes from the references of the images scored, so CIDEr on a handful of images is not comparable
to CIDEr on a full test split.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imcap_hub import DecodeOptions, ImcapError, normalize_caption
from imcap_hub.files import atomic_write_json
from imcap_hub.inference import predict_decodings

if TYPE_CHECKING:
    import pandas as pd

    from imcap_hub import ImageCaptioner

log = logging.getLogger(__name__)

DEFAULT_DECODINGS: tuple[str, ...] = ("greedy", "beam-3")
METRIC_NAMES: tuple[str, ...] = (
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr",
)
BATCH_SIZE = 32  # images per encoder call
N_EXAMPLES = 5  # example captions kept in metrics.json
DECIMALS = 6  # metrics.json precision (pycocoevalcap's BLEU carries ~1e-9 of smoothing noise)
MAX_FAILED_LISTED = 10
NORMALISATION = (
    "imcap_hub.normalize_caption (lower case, no accents or punctuation) on references and "
    "hypotheses alike, then the Stanford PTB tokenizer of coco-caption (-lowerCase, punctuation removed)"
)
TABLE_COLUMNS = ("image", "caption", "split")


class EvaluationError(ImcapError, ValueError):
    """The evaluation cannot run as asked (bad table, split, decoding or images)."""


class JavaNotFoundError(ImcapError, RuntimeError):
    """No Java runtime: METEOR and the PTB tokenizer cannot run."""


class ScorerError(ImcapError, RuntimeError):
    """A Java scorer (the PTB tokenizer or METEOR) failed."""


# --- references ---------------------------------------------------------------------------------


def references_by_image(table: pd.DataFrame, split: str | None = None) -> dict[str, list[str]]:
    """All reference captions of each image of ``split`` (every split if None), in table order.

    Captions that are empty once normalised (or not strings at all) are skipped; an image left with
    no reference is left out.
    """
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise EvaluationError(
            f"the captions table has no column(s) {', '.join(missing)}; expected {', '.join(TABLE_COLUMNS)}"
        )
    rows = table if split is None else table[table["split"] == split]
    refs: dict[str, list[str]] = {}
    for image, caption in zip(rows["image"], rows["caption"]):
        if not isinstance(caption, str) or not normalize_caption(caption):
            continue
        refs.setdefault(str(image), []).append(caption.strip())
    return refs


# --- Java scorers -------------------------------------------------------------------------------


def require_java() -> str:
    """The path of ``java``; raises :class:`JavaNotFoundError` with what to install."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "METEOR and the PTB tokenizer (pycocoevalcap) need Java, and there is no `java` on "
            "PATH: install a Java runtime (JRE 8 or newer, e.g. `apt-get install -y "
            "default-jre-headless`) and run again"
        )
    return java


def _import_error(e: ImportError) -> EvaluationError:
    return EvaluationError(
        f"the coco-caption scorers are not installed ({e}): pip install pycocoevalcap "
        "(see requirements-dev.txt)"
    )


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """coco-caption's PTB tokenization of each sentence, line for line.

    The same jar, flags and punctuation filter as ``pycocoevalcap``'s ``PTBTokenizer``, but the
    temporary file goes to the system temp folder (PTBTokenizer writes into site-packages, which
    may be read-only), empty sentences skip the tokenizer, and a line count that does not match is
    an error instead of silently misaligned references.
    """
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError as e:
        raise _import_error(e) from None
    out = [""] * len(sentences)
    todo = [i for i, s in enumerate(sentences) if s and s.strip()]
    if not todo:
        return out
    java = require_java()
    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    text = "\n".join(" ".join(sentences[i].split()) for i in todo)
    with tempfile.TemporaryDirectory(prefix="imcap-ptb-") as tmp:
        path = Path(tmp) / "sentences.txt"
        path.write_text(text, encoding="utf-8")
        cmd = [java, "-cp", os.fspath(jar), "edu.stanford.nlp.process.PTBTokenizer"]
        cmd += ["-preserveLines", "-lowerCase", "-encoding", "utf-8", os.fspath(path)]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ScorerError(
            f"the PTB tokenizer failed (exit {proc.returncode}): {detail[-1] if detail else 'no message'}"
        )
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(todo) or any(line.strip() for line in lines[len(todo) :]):
        raise ScorerError(
            f"the PTB tokenizer returned {len(lines)} lines for {len(todo)} sentences"
        )
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    for i, line in zip(todo, lines):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w and w not in punctuation)
    return out


_meteor = None
_meteor_lock = threading.Lock()


def _start_meteor():
    """The METEOR 1.5 process, started once and reused: it spends ~10 s loading its paraphrase
    table, so :func:`evaluate` starts it before captioning and the two overlap."""
    global _meteor
    with _meteor_lock:
        if _meteor is not None and _meteor.meteor_p.poll() is None:
            return _meteor
        require_java()
        try:
            from pycocoevalcap.meteor.meteor import Meteor
        except ImportError as e:
            raise _import_error(e) from None
        _meteor = Meteor()
        return _meteor


def _shutdown(meteor) -> str:
    """Kill a METEOR process; returns the end of what it wrote to stderr."""
    proc = meteor.meteor_p
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    message = ""
    if proc.stderr is not None and not proc.stderr.closed:
        lines = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
        message = lines[-1] if lines else ""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if meteor.lock.locked():  # held by a compute_score that raised; Meteor.__del__ takes it again
        meteor.lock.release()
    return message


def close_meteor() -> None:
    """Stop the METEOR process if one is running (also done at exit)."""
    global _meteor
    with _meteor_lock:
        meteor, _meteor = _meteor, None
    if meteor is not None:
        _shutdown(meteor)


atexit.register(close_meteor)


def _meteor_score(gts: dict, res: dict) -> float:
    global _meteor
    meteor = _start_meteor()
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    except (ValueError, OSError) as e:  # the JVM died: no (or no numeric) answer
        with _meteor_lock:
            if _meteor is meteor:
                _meteor = None
        reason = _shutdown(meteor) or str(e)
        raise ScorerError(f"METEOR failed: {reason}") from None


# --- scoring ------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(normalize_caption(text or ""))


def score_decodings(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[str, Mapping[Hashable, str]],
) -> dict[str, dict[str, float]]:
    """Score several sets of hypotheses (one per decoding) against the same references.

    ``references``: image -> its reference captions (raw text); ``hypotheses``: decoding ->
    (image -> caption). Every decoding must caption exactly the images of ``references``. Returns
    decoding -> {"BLEU-1", ..., "CIDEr"} (unrounded floats). One tokenizer call for everything.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as e:
        raise _import_error(e) from None
    keys = list(references)
    if not keys:
        raise EvaluationError("nothing to score: no images with references")
    for name, hyps in hypotheses.items():
        if set(hyps) != set(keys):
            extra, missing = set(hyps) - set(keys), set(keys) - set(hyps)
            raise EvaluationError(
                f"decoding {name!r}: hypotheses and references are for different images "
                f"({len(missing)} without a hypothesis, {len(extra)} without references)"
            )
    require_java()
    _start_meteor()  # the JVM loads while the tokenizer runs
    sentences = [_normalise(r) for k in keys for r in references[k]]
    n_refs = len(sentences)
    for hyps in hypotheses.values():
        sentences += [_normalise(hyps[k]) for k in keys]
    tokens = ptb_tokenize(sentences)

    gts: dict[int, list[str]] = {}
    pos = 0
    for i, k in enumerate(keys):
        gts[i] = [t for t in tokens[pos : pos + len(references[k])] if t]
        pos += len(references[k])
        if not gts[i]:
            raise EvaluationError(f"image {k!r} has no non-empty reference caption")
    assert pos == n_refs

    results: dict[str, dict[str, float]] = {}
    for name in hypotheses:
        res = {i: [tokens[pos + i]] for i in range(len(keys))}
        pos += len(keys)
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        scores = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
        scores["METEOR"] = _meteor_score(gts, res)
        scores["ROUGE-L"] = float(rouge)
        scores["CIDEr"] = float(cider)
        for metric, value in scores.items():
            if not math.isfinite(value):
                raise ScorerError(f"{metric} for {name!r} is {value}")
        results[name] = scores
    return results


def score_captions(
    references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str]
) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of one caption per image against its references."""
    return score_decodings(references, {"captions": hypotheses})["captions"]


# --- captioning ---------------------------------------------------------------------------------


def caption_images(
    model: ImageCaptioner,
    images: Sequence[str],
    options: dict[str, DecodeOptions],
    *,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The best caption of each image for each decoding (``""`` for an image that could not be
    read), and the errors. Each image is encoded once for all decodings."""
    from tqdm.auto import tqdm

    texts: dict[str, list[str]] = {spec: [] for spec in options}
    errors: dict[str, str] = {}
    desc = "caption " + ", ".join(options)
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            per_option = predict_decodings(model, batch, list(options.values()))
            for spec, predictions in zip(options, per_option):
                for image, prediction in zip(batch, predictions):
                    if prediction.error is not None:
                        errors[image] = prediction.error
                    texts[spec].append(prediction.captions[0].text if prediction.captions else "")
            bar.update(len(batch))
    return texts, errors


def _scorer_version() -> str:
    try:
        return f"pycocoevalcap {metadata.version('pycocoevalcap')}"
    except metadata.PackageNotFoundError:
        return "pycocoevalcap"


def evaluate(
    model: ImageCaptioner,
    table: pd.DataFrame,
    split: str = "test",
    decodings: Sequence[str] = DEFAULT_DECODINGS,
    max_images: int | None = None,
    progress: bool = True,
    *,
    batch_size: int = BATCH_SIZE,
) -> dict[str, Any]:
    """Caption the images of ``split`` with each decoding and score them; the metrics.json dict.

    ``table``: one row per reference caption, columns ``image`` (path), ``caption``, ``split``.
    ``decodings``: labels of :meth:`DecodeOptions.from_label` (``"greedy"``, ``"beam-K"``, ``"sample"``). ``max_images``: the first N images of the
    split (table order). An image that cannot be read is captioned ``""`` (scored as a miss) and
    listed under ``failed_images``.
    """
    if isinstance(decodings, str):
        decodings = (decodings,)
    specs = list(dict.fromkeys(str(d).strip() for d in decodings))
    if not specs:
        raise EvaluationError("no decodings to evaluate; e.g. decodings=('greedy', 'beam-3')")
    options = {spec: DecodeOptions.from_label(spec) for spec in specs}
    for opts in options.values():
        opts.validate(model.config)
    if max_images is not None and (isinstance(max_images, bool) or int(max_images) < 1):
        raise EvaluationError(f"max_images must be a positive integer or None, got {max_images!r}")
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
    require_java()

    refs = references_by_image(table, split)
    if not refs:
        splits = sorted(str(s) for s in table["split"].dropna().unique())
        raise EvaluationError(
            f"no images with captions in split {split!r}; the table has: {', '.join(splits) or 'no rows'}"
        )
    images = list(refs)
    if max_images is not None:
        images = images[: int(max_images)]
    _start_meteor()  # ~10 s of JVM start-up, overlapped with captioning

    timings: dict[str, float] = {}
    start = time.perf_counter()
    hypotheses, failed = caption_images(
        model, images, options, batch_size=batch_size, progress=progress
    )
    timings["captioning"] = round(time.perf_counter() - start, 3)
    if len(failed) == len(images):
        first = next(iter(failed.items()))
        raise EvaluationError(
            f"none of the {len(images)} images could be read; e.g. {first[0]}: {first[1]}"
        )
    if failed:
        log.warning(
            "%d of %d images could not be read and count as empty captions; e.g. %s",
            len(failed),
            len(images),
            next(iter(failed.items())),
        )

    start = time.perf_counter()
    keys = range(len(images))
    scores = score_decodings(
        {i: refs[images[i]] for i in keys},
        {spec: dict(zip(keys, texts)) for spec, texts in hypotheses.items()},
    )
    timings["scoring"] = round(time.perf_counter() - start, 3)

    examples = []
    for i in range(min(N_EXAMPLES, len(images))):
        example: dict[str, Any] = {
            "image": Path(images[i]).name,
            "references": refs[images[i]],
        }
        example.update({spec: hypotheses[spec][i] for spec in specs})
        examples.append(example)

    return {
        "split": split,
        "n_images": len(images),
        "n_references": sum(len(refs[image]) for image in images),
        "decodings": {
            spec: {metric: round(scores[spec][metric], DECIMALS) for metric in METRIC_NAMES}
            for spec in specs
        },
        "decoding_options": {spec: opts.to_dict() for spec, opts in options.items()},
        "examples": examples,
        "n_failed": len(failed),
        "failed_images": [
            {"image": Path(image).name, "error": error}
            for image, error in list(failed.items())[:MAX_FAILED_LISTED]
        ],
        "normalisation": NORMALISATION,
        "timings_s": timings,
        "scorer": _scorer_version(),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --- metrics.json -------------------------------------------------------------------------------


def best_decoding(
    metrics: Mapping[str, Any] | None,
) -> tuple[str, Mapping[str, float]] | None:
    """The best decoding of ``metrics`` (a metrics.json dict) and its scores; None when there is
    nothing to rank (no metrics, or no decodings).

    Ranked by CIDEr, then by BLEU-4 where CIDEr ties (the first listed of equals wins): the one
    choice that the model card's summary and the Hub commit message both report.
    """
    decodings = (metrics or {}).get("decodings") or {}
    if not decodings:
        return None
    label = max(decodings, key=lambda d: (decodings[d]["CIDEr"], decodings[d]["BLEU-4"]))
    return label, decodings[label]


def write_metrics(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``metrics`` as JSON (atomically: a half-written metrics.json never exists)."""
    return atomic_write_json(path, metrics, ensure_ascii=False)


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read a metrics.json written by :func:`write_metrics`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvaluationError(f"{path} does not exist; run the evaluation first") from None
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "decodings" not in data:
        raise EvaluationError(f"{path} is not an imcap metrics.json (no 'decodings')")
    return data
