"""``x @ W`` for a fixed weight matrix W, fast for one row and for a few (beam search's beams).

numpy's BLAS (OpenBLAS) multiplies one row by W with a gemv that streams W once. Two rows or
more go to its gemm, which first copies (packs) the whole of W into its own layout, on every
call: for the decoder's 512 x 5048 matrix, 3 rows cost about 5 times one row
(bench/profile_beam.py), and that was most of beam search's time. ONNX Runtime packs a constant
W once, when its session is made (a second copy of W in memory), and then, on one thread,
multiplies 3 rows for 1.5 to 2 times the price of one.

So: one row always goes to numpy; several rows go to ONNX Runtime where it is installed (with
``onnx`` to write its one-node graph), else to OpenVINO (the encoder's runtime, installed on the
Space), else to numpy: a gemv per row (still about twice as fast as numpy's gemm at 3 rows)
below ``GEMM_ROWS`` rows, its gemm from there on (greedy decoding of a whole batch: at 8 rows
and more, packing W once pays for itself).

ONNX Runtime runs on ``ROW_THREADS`` threads whose idle workers sleep rather than spin (numpy's
BLAS stays on one thread, see ``inference.single_threaded_blas``: its idle workers spin and
slowed the next encoder call); OpenVINO on as many. 3 rows of the 512 x 5048 product took 0.39
ms on one ONNX Runtime thread and 0.20 ms on two, less than numpy's one-row gemv (0.23 ms), so
beam search's matrix products cost about what greedy's do; OpenVINO took 0.22 to 0.33 ms. At 2
and 3 rows ONNX Runtime's products have the same bits as one-thread OpenBLAS's gemm here; from 4
rows on, and OpenVINO's at any count, the last bits of some differ (relative 1e-6).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable

import numpy as np

# Backends for several rows, in the order "auto" tries them.
ROW_BACKENDS = ("onnxruntime", "openvino", "numpy")
_NEEDS = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino",), "numpy": ()}
# From this many rows numpy's gemm beats a gemv per row (512 x 5048, one thread: 8 rows 1.0 ms
# against 1.9, 16 rows 1.7 against 4.3; 4 rows about even; measured with the cores shared).
GEMM_ROWS = 8
# The runtimes' threads for several rows: two measured here (2 vCPUs), more not tried.
ROW_THREADS = 2

logger = logging.getLogger(__name__)


def backend_available(backend: str) -> bool:
    """Whether the packages a row backend needs are installed."""
    return all(importlib.util.find_spec(package) for package in _NEEDS[backend])


class ConstantMatmul:
    """``x (N, K) -> x @ weights (N, M)`` in float32, for weights that never change.

    ``backend``: the backend for N > 1 rows, one of ``ROW_BACKENDS``, or "auto" (the first
    installed). A runtime's copy of the weights is made on the first call with several rows,
    so greedy decoding (one row) never pays for it. Safe to call from several threads.
    """

    def __init__(self, weights: np.ndarray, backend: str = "auto") -> None:
        if backend != "auto" and backend not in ROW_BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {', '.join(ROW_BACKENDS)}")
        if backend != "auto" and not backend_available(backend):
            raise ValueError(f"backend {backend!r} needs {' and '.join(_NEEDS[backend])}")
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.requested = backend
        self._rows: Callable[[np.ndarray], np.ndarray] | None = None
        self._backend: str | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """The backend used for several rows (chosen now if no multi-row call made it yet)."""
        self._row_function()
        assert self._backend is not None
        return self._backend

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] <= 1:
            return x @ self.weights
        return self._row_function()(np.ascontiguousarray(x, dtype=np.float32))

    def _row_function(self) -> Callable[[np.ndarray], np.ndarray]:
        rows = self._rows
        if rows is None:
            with self._lock:  # two threads' first beams build it once
                if self._rows is None:
                    self._rows, self._backend = self._build()
                rows = self._rows
        return rows

    def _build(self) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
        if self.requested != "auto":
            return _BUILDERS[self.requested](self.weights), self.requested
        for backend in ROW_BACKENDS[:-1]:
            if backend_available(backend):
                try:
                    return _BUILDERS[backend](self.weights), backend
                except Exception as e:  # a broken install must not break beam search
                    logger.warning(
                        "%s unavailable for the decoder, trying the next: %s", backend, e
                    )
        return _numpy_rows(self.weights), "numpy"


def _numpy_rows(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        if x.shape[0] >= GEMM_ROWS:
            return x @ weights
        out = np.empty((x.shape[0], weights.shape[1]), dtype=np.float32)
        for row, target in zip(x, out):
            np.matmul(row, weights, out=target)
        return out

    return run


def _onnxruntime_rows(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    k, m = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "constant_matmul",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", k])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", m])],
        [numpy_helper.from_array(weights, "w")],
    )
    # Opset 13 and IR 7: old enough for any ONNX Runtime this project supports.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(ROW_THREADS, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    # Idle workers sleep: a spinning one would take a core from the encoder's next call.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": x})[0]

    return run


def _openvino_rows(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([-1, weights.shape[0]], np.float32, name="x")
    model = ov.Model([ops.matmul(x, ops.constant(weights), False, False)], [x], "constant_matmul")
    compiled = ov.Core().compile_model(
        model,
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": min(ROW_THREADS, os.cpu_count() or 1),
            # f32: a CPU with bf16 or AMX would otherwise run it in bfloat16.
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    local = threading.local()  # an infer request serves one call at a time: one per thread

    def run(x: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()  # the request reuses its buffer

    return run


_BUILDERS = {"onnxruntime": _onnxruntime_rows, "openvino": _openvino_rows, "numpy": _numpy_rows}
