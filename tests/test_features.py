"""The encoder feature cache (training/features.py): correct rows, keyed by the encoder,
unreadable images skipped, and resuming after a SIGKILL in the middle of an extraction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from imcap_hub import EncoderConfig, load_image
from imcap_hub.encoder import Encoder, build_keras_encoder, keras_weights
from imcap_hub.images import resize
from training.features import DONE, RowCache, cache_images, extract_features

ROOT = Path(__file__).resolve().parents[1]
ENCODER = EncoderConfig(
    architecture="tiny_resnet", weights="repo", image_size=32, preprocessing="unit", widths=[8, 16]
)


def _save_encoder(path: Path, seed: int) -> Path:
    import keras
    from safetensors.numpy import save_file

    keras.utils.set_random_seed(seed)
    save_file(keras_weights(build_keras_encoder(replace(ENCODER, weights="random"))), str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder-weights")
    return _save_encoder(root / "a.safetensors", 1), _save_encoder(root / "b.safetensors", 2)


def _fresh(paths, weights_file) -> np.ndarray:
    """Features computed one image at a time with the Keras reference encoder."""
    enc = Encoder(ENCODER, weights_file=weights_file, runtime="keras")
    return np.concatenate([enc.encode([load_image(p)]) for p in paths])


def test_features_equal_a_fresh_computation_and_unreadable_images_are_skipped(
    shapes, weights, tmp_path
):
    images, bad = shapes
    paths = [*images[:12], bad, *images[12:20]]
    enc = Encoder(ENCODER, weights_file=weights[0], runtime="auto")
    got = extract_features(paths, enc, tmp_path, batch_size=8, progress=False)

    assert got.report.n_computed == 20 and got.report.n_cached == 0
    assert list(got.report.failed) == [bad] and "not an image" in got.report.failed[bad]
    assert got.ok.tolist() == [p != bad for p in paths]
    good = [p for p in paths if p != bad]
    np.testing.assert_allclose(
        got.array[got.rows[got.ok]], _fresh(good, weights[0]), rtol=1e-4, atol=1e-5
    )
    assert got.report.runtime in ("openvino", "onnxruntime", "keras")
    # Metadata is plain JSON; the failure is remembered next to the arrays.
    index = json.loads((got.folder / "index.json").read_text())
    assert index["keys"] == list(dict.fromkeys(paths)) and index["row_shape"] == [16]
    assert bad in json.loads((got.folder / "failed.json").read_text())

    again = extract_features(paths, enc, tmp_path, batch_size=8, progress=False)
    assert again.report.n_computed == 0 and again.report.n_cached == 20
    assert list(again.report.failed) == [bad]  # retried, still reported, never fatal
    np.testing.assert_array_equal(again.array, got.array)


def test_the_cache_is_keyed_by_encoder_config_and_weights(shapes, weights, tmp_path):
    images, _ = shapes
    paths = images[:4]
    folders = {}
    for name, config, w in [
        ("a", ENCODER, weights[0]),
        ("a-again", ENCODER, weights[0]),
        ("other-weights", ENCODER, weights[1]),
        ("other-size", replace(ENCODER, image_size=40), weights[0]),
    ]:
        enc = Encoder(config, weights_file=w, runtime="keras")
        folders[name] = extract_features(paths, enc, tmp_path, progress=False)
    assert folders["a"].folder == folders["a-again"].folder
    assert folders["a-again"].report.n_cached == 4
    assert len({folders[k].folder for k in ("a", "other-weights", "other-size")}) == 3
    assert not np.allclose(folders["a"].array, folders["other-weights"].array)
    key = json.loads((folders["other-size"].folder / "key.json").read_text())
    assert key["encoder"]["image_size"] == 40 and key["kind"] == "features"


def test_asking_for_more_images_grows_the_cache_and_keeps_done_rows(shapes, weights, tmp_path):
    images, _ = shapes
    enc = Encoder(ENCODER, weights_file=weights[0], runtime="keras")
    first = extract_features(images[:6], enc, tmp_path, progress=False)
    more = extract_features(images[:10], enc, tmp_path, progress=False)
    assert more.folder == first.folder
    assert (more.report.n_cached, more.report.n_computed) == (6, 4)
    np.testing.assert_allclose(more.array[more.rows], _fresh(images[:10], weights[0]), atol=1e-5)


@pytest.mark.parametrize("features", ["pooled", "spatial"])
def test_reopening_with_a_reordered_grown_key_list_keeps_every_row_with_its_image(
    shapes, weights, tmp_path, features
):
    """[a, b, c], then [c, d]: c keeps its row, d gets a new one, and every row read back is
    the feature the encoder gives that image (not just whatever the cache holds)."""
    images, _ = shapes
    a, b, c, d = images[0], images[5], images[31], images[36]  # two image sizes
    config = replace(ENCODER, features=features)
    enc = Encoder(config, weights_file=weights[0], runtime="keras")
    first = extract_features([a, b, c], enc, tmp_path, progress=False)
    grown = extract_features([c, d], enc, tmp_path, progress=False)
    assert grown.folder == first.folder
    assert (grown.report.n_cached, grown.report.n_computed) == (1, 1)
    index = json.loads((grown.folder / "index.json").read_text())
    assert index["keys"] == [a, b, c, d]
    assert first.rows.tolist() == [0, 1, 2] and grown.rows.tolist() == [2, 3]
    assert grown.ok.all() and grown.array.shape == (4, *config.feature_shape)

    fresh = np.concatenate(
        [
            Encoder(config, weights_file=weights[0], runtime="keras").encode([load_image(p)])
            for p in (a, b, c, d)
        ]
    )
    assert not np.allclose(fresh[2], fresh[3])  # a swapped c/d row would show
    np.testing.assert_allclose(grown.array[grown.rows], fresh[2:], rtol=1e-4, atol=1e-5)
    again = extract_features([d, b, a, c], enc, tmp_path, progress=False)
    assert (again.report.n_cached, again.report.n_computed) == (4, 0)
    assert again.rows.tolist() == [3, 1, 0, 2] and again.ok.all()
    np.testing.assert_allclose(again.array[again.rows], fresh[[3, 1, 0, 2]], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(again.array, fresh, rtol=1e-4, atol=1e-5)  # row i is keys[i]


def test_image_cache_holds_images_resized_as_at_inference(shapes, tmp_path):
    images, bad = shapes
    got = cache_images([*images[25:35], bad], 32, tmp_path, batch_size=4, progress=False)
    assert got.array.dtype == np.uint8 and got.ok.sum() == 10 and list(got.report.failed) == [bad]
    for path, row in zip(images[25:35], got.rows):
        np.testing.assert_array_equal(got.array[row], resize(load_image(path), 32))


KILLED_EXTRACTION = textwrap.dedent(
    """
    import os, signal, sys
    import imcap_hub
    from imcap_hub.encoder import Encoder
    from training.features import extract_features
    sys.path.insert(0, {tests!r})
    from test_features import ENCODER

    paths = {paths!r}
    enc = Encoder(ENCODER, weights_file={weights!r}, runtime="keras")
    run = enc.run
    calls = []

    def run_then_die(batch):
        calls.append(1)
        if len(calls) == 4:  # the 4th batch is loaded but never computed
            os.kill(os.getpid(), signal.SIGKILL)
        return run(batch)

    enc.run = run_then_die
    extract_features(paths, enc, {root!r}, batch_size=5, flush_seconds=0.0, progress=False)
    print("not killed")
    """
)


def test_a_killed_extraction_resumes_and_every_row_equals_a_fresh_computation(
    shapes, weights, tmp_path
):
    images, _ = shapes
    paths = images[:32]
    script = KILLED_EXTRACTION.format(
        tests=str(ROOT / "tests"), paths=paths, weights=str(weights[0]), root=str(tmp_path)
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (folder,) = tmp_path.glob("features-*")
    done = np.load(folder / "done.npy")
    assert done.sum() == 15  # three batches of five made it
    index = json.loads((folder / "index.json").read_text())  # metadata intact
    assert index["keys"] == paths

    enc = Encoder(ENCODER, weights_file=weights[0], runtime="keras")
    resumed = extract_features(paths, enc, tmp_path, batch_size=5, progress=False)
    assert (resumed.report.n_cached, resumed.report.n_computed) == (15, 17)
    assert resumed.folder == folder and resumed.ok.all()
    np.testing.assert_allclose(resumed.array[resumed.rows], _fresh(paths, weights[0]), atol=1e-5)


def test_a_cache_with_other_rows_is_refused_with_a_clear_error(tmp_path):
    from training.features import CacheError

    cache = RowCache.open(tmp_path, ["a", "b"], (4,), "float32")
    assert cache.status(["a", "b"]).tolist() == [0, 0] and DONE == 1
    with pytest.raises(CacheError, match="delete the folder"):
        RowCache.open(tmp_path, ["a"], (8,), "float32")
