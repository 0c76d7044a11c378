"""ConstantMatmul (x @ W for a fixed W, several rows through a runtime) and the decoders' use of it."""

import threading

import numpy as np
import pytest
from helpers import tiny_attention_config, tiny_config

from imcap_hub import matmul
from imcap_hub.attention import AttentionStepDecoder
from imcap_hub.decoder import StepDecoder, expected_shapes
from imcap_hub.matmul import ROW_BACKENDS, ConstantMatmul, backend_available
from imcap_hub.search import beam_search, greedy

INSTALLED = [b for b in ROW_BACKENDS if backend_available(b)]
SEARCH = {"start_id": 1, "end_id": 2, "max_length": 6, "banned": (0, 1, 3)}


@pytest.mark.parametrize("backend", INSTALLED)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 17])
def test_every_backend_multiplies_like_numpy(backend, rows):
    rng = np.random.default_rng(rows)
    weights = rng.normal(size=(40, 70)).astype(np.float32)
    x = rng.normal(size=(rows, 40)).astype(np.float32)
    product = ConstantMatmul(weights, backend)(x)
    assert product.shape == (rows, 70) and product.dtype == np.float32
    np.testing.assert_allclose(product, x @ weights, rtol=1e-5, atol=1e-5)
    if rows == 1:  # one row is always numpy's own product, bit for bit
        np.testing.assert_array_equal(product, x @ weights)


def test_numpy_is_always_there_and_unknown_backends_are_refused():
    assert "numpy" in INSTALLED
    with pytest.raises(
        ValueError, match="backend must be 'auto' or one of onnxruntime, openvino, numpy"
    ):
        ConstantMatmul(np.eye(3, dtype=np.float32), "openblas")


def test_auto_takes_the_first_installed_backend(monkeypatch):
    weights = np.eye(4, dtype=np.float32)
    assert ConstantMatmul(weights).backend == INSTALLED[0]
    monkeypatch.setattr(matmul, "backend_available", lambda b: b == "numpy")
    assert ConstantMatmul(weights).backend == "numpy"


def test_broken_runtimes_fall_back_to_the_next_with_a_warning(monkeypatch, caplog):
    def broken(weights):
        raise OSError("libonnxruntime.so: cannot open shared object file")

    monkeypatch.setattr(matmul, "backend_available", lambda b: True)
    for backend in ROW_BACKENDS[:-1]:
        monkeypatch.setitem(matmul._BUILDERS, backend, broken)
    weights = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    product = ConstantMatmul(weights)
    np.testing.assert_allclose(product(x), x @ weights, rtol=1e-5, atol=1e-6)
    assert product.backend == "numpy"
    for backend in ROW_BACKENDS[:-1]:
        assert f"{backend} unavailable for the decoder, trying the next" in caplog.text


def test_the_runtime_is_built_on_the_first_call_with_several_rows_and_only_once(monkeypatch):
    built = []
    real = matmul._BUILDERS["numpy"]

    def counting(weights):
        built.append(1)
        return real(weights)

    monkeypatch.setitem(matmul._BUILDERS, "numpy", counting)
    weights = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    product = ConstantMatmul(weights, "numpy")
    product(np.ones((1, 8), np.float32))
    assert built == []  # one row (greedy) never builds it
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    results = []
    threads = [threading.Thread(target=lambda: results.append(product(x))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert built == [1] and len(results) == 8
    for result in results:
        np.testing.assert_array_equal(result, results[0])


@pytest.mark.parametrize("backend", INSTALLED)
def test_every_backend_gives_each_thread_its_own_product(backend):
    weights = np.random.default_rng(0).normal(size=(64, 96)).astype(np.float32)
    product = ConstantMatmul(weights, backend)
    inputs = [np.random.default_rng(s).normal(size=(3, 64)).astype(np.float32) for s in range(6)]
    results: dict[int, list[tuple[int, np.ndarray]]] = {i: [] for i in range(len(inputs))}

    def work(i):
        for k in range(50):  # another input each call: a result must not change after it
            j = (i + k) % len(inputs)
            results[i].append((j, product(inputs[j])))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(len(inputs)):
        assert len(results[i]) == 50
        for j, got in results[i]:
            np.testing.assert_allclose(got, inputs[j] @ weights, rtol=1e-5, atol=1e-4)


def _weights(config, seed):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 0.5, s).astype("float32") for n, s in expected_shapes(config).items()}


@pytest.mark.parametrize("kind", ["pooled", "attention"])
def test_searches_give_the_same_captions_whichever_backend_multiplies_the_beams(kind):
    if kind == "attention":
        config = tiny_attention_config()
        decoder = AttentionStepDecoder(_weights(config, 1), config)
        features = np.random.default_rng(2).normal(size=(4, 4, 4, 12)).astype("float32")
    else:
        config = tiny_config()
        decoder = StepDecoder(_weights(config, 1), config)
        features = np.random.default_rng(2).normal(size=(4, 16)).astype("float32")

    def use(backend):
        for name in ("fused_matmul", "hidden_matmul", "out_matmul"):
            if hasattr(decoder, name):
                setattr(decoder, name, ConstantMatmul(getattr(decoder, name).weights, backend))

    results = {}
    for backend in INSTALLED:
        use(backend)
        hyps = []
        for f in features:
            state = decoder.init_state(f[None])
            hyps += beam_search(decoder.step, state, beam_size=3, num_results=3, **SEARCH)
            hyps += greedy(decoder.step, decoder.init_state(f[None]), **SEARCH)
        hyps += greedy(decoder.step, decoder.init_state(features), **SEARCH)  # 4 rows at once
        results[backend] = hyps
    for backend, hyps in results.items():
        assert [h.token_ids for h in hyps] == [h.token_ids for h in results["numpy"]], backend
        np.testing.assert_allclose(
            [h.logprob for h in hyps], [h.logprob for h in results["numpy"]], rtol=1e-5
        )
