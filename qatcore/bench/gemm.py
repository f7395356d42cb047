"""int8 x int8 -> int32 linear layer benchmark: qatcore vs numpy, torch._int_mm,
onnxruntime MatMulInteger and the Rust reference loop (``bench/rust``), same run.

``run()`` returns one record per (shape, threads, implementation); ``bench/bench_gemm.py``
prints them as a table, and ``qatcore bench`` includes them.  Peers appear only when they
are importable (torch, onnxruntime + onnx) or buildable (cargo, for the Rust crate).
Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["run", "measure_peak", "SHAPES", "QUICK_SHAPES"]

#: (M, K, N) of the issue's performance targets.
SHAPES = [(1, 1024, 1024), (64, 1024, 1024), (256, 512, 512), (512, 512, 512),
          (1024, 1024, 1024)]
QUICK_SHAPES = [(1, 256, 256), (64, 256, 256)]

_CRATE = Path(__file__).resolve().parent.parent / "bench" / "rust"


def _time(fn: Callable[[], object], repeat: int, budget_s: float) -> Dict[str, float]:
    """Median/min/max seconds of `fn` over up to `repeat` calls after one warm-up, stopping
    early (after at least 3 calls) once `budget_s` is spent (numpy's integer matmul)."""
    fn()
    samples = []
    start = time.perf_counter()
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 3 and time.perf_counter() - start > budget_s:
            break
    return {"median_s": statistics.median(samples), "min_s": min(samples),
            "max_s": max(samples), "repeat": len(samples)}


def _record(shape, threads, impl, timing, exact=None) -> dict:
    m, k, n = shape
    rec = {"op": "linear", "shape": f"({m},{k},{n})", "threads": threads, "impl": impl,
           "median_s": timing["median_s"], "min_s": timing["min_s"], "max_s": timing["max_s"],
           "repeat": timing["repeat"], "gops": 2.0 * m * k * n / timing["median_s"] / 1e9,
           "gops_best": 2.0 * m * k * n / timing["min_s"] / 1e9}
    if exact is not None:
        rec["exact"] = bool(exact)
    return rec


def _layer(w: np.ndarray, n_threads: int):
    from qatcore import QuantizedLinear

    state = {"weights_q": w, "weight_scale": np.float32(1.0), "bits": np.int32(8),
             "per_channel": np.bool_(False), "input_scale": np.float32(1.0),
             "input_zero_point": np.int32(0), "input_qrange": np.array([-128, 127], np.int32)}
    return QuantizedLinear.from_state_dict(state, n_threads=n_threads)


def measure_peak(repeat: int = 30) -> dict:
    """Best int8 GOPS of this machine's GEMM microkernel on cache-resident data
    (M=96, K=256, N=64 through the kernel entry point, one thread): the practical peak
    the table's fractions refer to."""
    from qatcore import _backend

    kern = _backend.kernels
    rng = np.random.default_rng(1)
    m, k, n = 96, 256, 64
    x = rng.integers(-128, 128, (m, k), dtype=np.int64).astype(np.int8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int64).astype(np.int8)
    packed = np.empty(kern.packed_size(n, k), np.int8)
    kern.pack_weights(w, packed)
    wsum = w.astype(np.int64).sum(axis=1).astype(np.int32)
    out = np.empty((m, n), np.int32)
    inner = 20
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            kern.gemm_i8_i32(x, packed, n, wsum, None, out, 1)
        best = min(best, (time.perf_counter() - t0) / inner)
    return {"impl": kern.GEMM_IMPL, "target": kern.TARGET, "gops": 2.0 * m * k * n / best / 1e9,
            "shape": f"({m},{k},{n})"}


# ------------------------------------------------------------------------------ peers

def _vnni_beside_amx(x: np.ndarray, w: np.ndarray, want: np.ndarray, n_threads: int):
    """On the amx target: the avx512 (VNNI) kernel on the same data, so that AMX and VNNI
    appear in one run.  A kernel call (weights packed beforehand), without the layer's
    ~2-5 µs of Python; None elsewhere."""
    from qatcore import _backend

    if _backend.kernels.TARGET != "amx" or "avx512" not in _backend.available_targets():
        return None, None
    kern = _backend.load("avx512")
    n = w.shape[0]
    packed = np.empty(kern.packed_size(n, w.shape[1]), np.int8)
    kern.pack_weights(w, packed)
    wsum = w.astype(np.int64).sum(axis=1).astype(np.int32)
    out = np.empty((x.shape[0], n), np.int32)

    def call():
        kern.gemm_i8_i32(x, packed, n, wsum, None, out, n_threads)
        return out

    return call, bool(np.array_equal(call(), want))


def _torch():
    try:
        import torch
    except Exception:
        return None
    if not hasattr(torch, "_int_mm"):
        return None
    return torch


def _ort_session(w: np.ndarray, threads: int):
    """onnxruntime MatMulInteger(A uint8, B int8 initializer, a_zero_point 128): the u8 x s8
    path ONNX exporters emit; exact only when its u8 x s8 pair sums do not saturate."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except Exception:
        return None
    k, n = w.shape[1], w.shape[0]
    b = numpy_helper.from_array(np.ascontiguousarray(w.T), name="B")
    azp = numpy_helper.from_array(np.array(128, np.uint8), name="a_zp")
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])
    graph = helper.make_graph([node], "linear",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, n])],
                              initializer=[b, azp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads must not spin on the cores the round-robin timing shares.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


class _Rust:
    """``qatcore-ref bench --op linear`` built with ``-C target-cpu=native`` (cached)."""

    def __init__(self, crate: Path = _CRATE):
        self.binary: Optional[Path] = None
        self.error: Optional[str] = None
        if not (crate / "Cargo.toml").exists():
            self.error = "bench/rust not found"
            return
        if shutil.which("cargo") is None:
            self.error = "cargo not on PATH"
            return
        target = crate / "target" / "native"
        env = dict(os.environ, RUSTFLAGS="-C target-cpu=native", CARGO_TARGET_DIR=str(target))
        proc = subprocess.run(["cargo", "build", "--release", "--offline", "--quiet"],
                              cwd=crate, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            self.error = f"cargo build failed: {proc.stderr.strip()[-300:]}"
            return
        self.binary = target / "release" / "qatcore-ref"

    def bench(self, shape, repeat: int) -> Optional[dict]:
        m, k, n = shape
        proc = subprocess.run([str(self.binary), "bench", "--op", "linear", "--m", str(m),
                               "--k", str(k), "--n", str(n), "--repeat", str(repeat)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        data = json.loads(line)
        return {"median_s": data["median_s"], "min_s": data["min_s"], "max_s": data["max_s"],
                "repeat": repeat}


_RUST: Optional[_Rust] = None


def _rust() -> _Rust:
    """The Rust peer, built once per process."""
    global _RUST
    if _RUST is None:
        _RUST = _Rust()
    return _RUST


# ------------------------------------------------------------------------------- run

def _interleaved(fns: Dict[str, Callable[[], object]], repeat: int,
                 budget_s: float) -> Dict[str, Dict[str, float]]:
    """Time several implementations round-robin (one timed call of each per round, right
    after an untimed one so its weights are back in cache, as in a loop over the same
    layer) so that other processes on the machine slow them alike; an implementation
    whose calls have used up `budget_s` (after at least 3 samples) drops out."""
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    for fn in fns.values():
        fn()                                            # warm-up
    for _ in range(max(1, repeat)):
        active = [n for n in fns if len(samples[n]) < 3 or spent[n] < budget_s]
        if not active:
            break
        for name in active:
            if not samples[name] or samples[name][-1] < 0.01:
                fns[name]()         # untimed: reload this implementation's data into cache
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            samples[name].append(dt)
            spent[name] += dt
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                   "repeat": len(v)} for name, v in samples.items()}


def run(quick: bool = False, threads: Union[int, Sequence[int]] = (1,), repeat: int = 20,
        *, shapes=None, peers: bool = True) -> List[dict]:
    """Benchmark the int8 linear layer; one dict per (shape, threads, implementation).

    Keys: ``op`` ("linear"), ``shape`` "(M,K,N)", ``threads``, ``impl`` ("qatcore",
    "numpy", "torch._int_mm", "onnxruntime", "rust"; on the amx target also
    "qatcore[avx512]", the VNNI kernel on the same data), ``target`` (qatcore's kernel
    target, on its row), ``median_s``, ``min_s``, ``max_s``,
    ``repeat``, ``gops`` (2·M·K·N / median), ``gops_best`` (from ``min_s``: on a busy
    machine the least disturbed call), and ``exact`` for peers whose result was
    compared with qatcore's. The in-process implementations are timed round-robin; slow
    ones (numpy, torch on CPUs without VNNI) stop after 3 samples once ~1.5 s is spent.
    Rust runs single-threaded in its own process (records only for threads == 1, at most
    5 repeats on large shapes).
    """
    from qatcore import _backend

    if isinstance(threads, (int, np.integer)):
        threads = (int(threads),)
    shapes = list(shapes) if shapes is not None else (QUICK_SHAPES if quick else SHAPES)
    budget = 0.3 if quick else 1.5
    torch = _torch() if peers else None
    rust = _rust() if peers else None
    rng = np.random.default_rng(0)
    data = []
    for m, k, n in shapes:
        x = rng.integers(-128, 128, (m, k), dtype=np.int64).astype(np.int8)
        w = rng.integers(-127, 128, (n, k), dtype=np.int64).astype(np.int8)
        data.append(((m, k, n), x, w, np.ascontiguousarray(w.T)))
    records: List[dict] = []
    wants = {}
    for shape, x, w, wt in data:
        for nt in threads:
            layer = _layer(w, nt)
            wants.setdefault(shape, layer.forward_quantized(x))
            want = wants[shape]
            fns: Dict[str, Callable[[], object]] = {
                "qatcore": lambda layer=layer, x=x: layer.forward_quantized(x)}
            exact: Dict[str, bool] = {}
            vnni, vnni_exact = _vnni_beside_amx(x, w, want, nt)
            if vnni is not None:
                fns["qatcore[avx512]"] = vnni
                exact["qatcore[avx512]"] = vnni_exact
            if peers and shape[0] * shape[1] * shape[2] <= (1 << 28):
                # numpy's integer matmul runs at ~0.1-1 GOPS: a 1024^3 call takes ~30 s.
                fns["numpy"] = lambda x=x, wt=wt: x.astype(np.int32) @ wt.astype(np.int32)
            if peers:
                sess = _ort_session(w, nt)
                if sess is not None:
                    xu = x.view(np.uint8) ^ np.uint8(0x80)          # x + 128 as uint8
                    exact["onnxruntime"] = np.array_equal(sess.run(None, {"A": xu})[0], want)
                    fns["onnxruntime"] = lambda sess=sess, xu=xu: sess.run(None, {"A": xu})
            for name, timing in _interleaved(fns, repeat, budget).items():
                records.append(_record(shape, nt, name, timing, exact.get(name)))
                if name == "qatcore":
                    records[-1]["target"] = _backend.kernels.TARGET
    if rust is not None and rust.binary is not None and 1 in threads:
        for shape, *_ in data:
            m, k, n = shape
            reps = repeat if m * k * n <= (1 << 26) else min(repeat, 5)
            timing = rust.bench(shape, max(1, reps))
            if timing is not None:
                records.append(_record(shape, 1, "rust", timing))
    if torch is not None:
        # Last: torch's OpenMP pool keeps spinning between calls and would slow whatever
        # ran after it (qatcore's own OpenMP threads most of all).
        prev = torch.get_num_threads()
        try:
            for shape, x, w, wt in data:
                for nt in threads:
                    torch.set_num_threads(nt)
                    try:
                        a, b = torch.from_numpy(x), torch.from_numpy(wt)
                        ok = np.array_equal(torch._int_mm(a, b).numpy(), wants[shape])
                        timing = _interleaved({"t": lambda a=a, b=b: torch._int_mm(a, b)},
                                              repeat, budget)["t"]
                    except Exception:       # e.g. shapes the op refuses
                        continue
                    records.append(_record(shape, nt, "torch._int_mm", timing, ok))
        finally:
            torch.set_num_threads(prev)
    order = {"qatcore": 0, "qatcore[avx512]": 0.5, "numpy": 1, "torch._int_mm": 2, "onnxruntime": 3, "rust": 4}
    index = {s: i for i, s in enumerate(shapes)}
    records.sort(key=lambda r: (index[tuple(int(v) for v in r["shape"][1:-1].split(","))],
                                r["threads"], order.get(r["impl"], 9)))
    return records
