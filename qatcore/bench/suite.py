"""The qatcore benchmark suite (``qatcore bench``, ``python bench/run.py``).

Measures qatcore through its public API against the peers a user would otherwise use,
in the same run: numpy, torch (when importable), the Rust reference crate
``bench/rust`` (when ``--rust DIR`` points at it and ``cargo`` is present) and the int8
GEMM suite of ``qatcore.bench.gemm``.  It also measures the
machine's limits (read and copy bandwidth, the divider) so each figure can be judged
against what the hardware allows.

Every figure is the median of repeated runs after a warm-up; the spread (min–max) is
printed next to it.  Ratios are peer time / qatcore time (> 1: qatcore is faster).
Nothing here asserts a timing: the numbers are for people.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np

__all__ = ["main", "run"]

F32 = np.float32

HELP_EPILOG = """\
examples:
  qatcore bench --quick                       # CI-sized, < 60 s
  qatcore bench --rust bench/rust --json bench.json --plot bench.png
  python bench/run.py --threads 1             # same as `qatcore bench`

Timing numpy fairly: run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, e.g.
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE qatcore bench
Other processes on the same cores make every figure noisy: compare the spreads.
torch columns appear when torch is importable; the Rust column with --rust DIR
(built with `cargo build --release --offline` and RUSTFLAGS="-C target-cpu=native").
"""


# --------------------------------------------------------------------------- timing

def measure(fn: Callable[[], object], repeat: int, *, warmup: int = 2,
            min_sample_s: float = 0.0) -> Dict[str, float]:
    """Median / min / max seconds per call of `fn` over `repeat` samples after warm-up.

    With `min_sample_s` > 0, each sample loops `fn` enough times to last that long and
    reports the time per call (for microsecond-sized calls)."""
    number = 1
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
    if min_sample_s > 0:
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-8)
        number = max(1, int(min_sample_s / one))
    samples = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return {"median_s": statistics.median(samples), "min_s": min(samples),
            "max_s": max(samples), "repeat": len(samples), "number": number}


def _data(n: int, seed: int = 0) -> np.ndarray:
    """float32 ~N(0, 1) with a few outliers (x40 every ~10 000th element)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n, dtype=np.float32)
    if n > 100:
        idx = rng.integers(0, n, size=max(1, n // 10_000))
        x[idx] *= F32(40)
    return x


def _size_label(n: int) -> str:
    if n > 0 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


# --------------------------------------------------------------------------- peers

def _try_torch():
    try:
        import torch  # noqa: F401
    except Exception:       # ImportError, or a broken install
        return None
    return torch


class RustPeer:
    """The ``bench/rust`` crate's ``qatcore-ref bench`` binary."""

    def __init__(self, crate_dir: str, log=print):
        self.crate_dir = os.path.abspath(crate_dir)
        self.binary = os.path.join(self.crate_dir, "target", "release", "qatcore-ref")
        self.error: Optional[str] = None
        self.log = log

    def build(self) -> bool:
        if not os.path.isfile(os.path.join(self.crate_dir, "Cargo.toml")):
            self.error = f"{self.crate_dir}: no Cargo.toml"
            return False
        cargo = shutil.which("cargo")
        if cargo is None:
            if os.path.isfile(self.binary):
                self.log("rust: cargo not found; using the existing binary "
                         "(it may not have been built with target-cpu=native)")
                return True
            self.error = "cargo not found"
            return False
        env = dict(os.environ)
        env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " -C target-cpu=native").strip()
        env["CARGO_TARGET_DIR"] = os.path.join(self.crate_dir, "target")
        proc = subprocess.run([cargo, "build", "--release", "--offline"], cwd=self.crate_dir,
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(self.binary):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            self.error = "cargo build failed: " + " | ".join(tail)
            return False
        return True

    def run(self, op: str, n: int, repeat: int, bits: Optional[int] = None) -> Optional[dict]:
        cmd = [self.binary, "bench", "--op", op, "--n", str(n), "--repeat", str(repeat)]
        if bits is not None:
            cmd += ["--bits", str(bits)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.log(f"rust: {op} n={n}: {exc}")
            return None
        if proc.returncode != 0:
            self.log(f"rust: {op} n={n}: exit {proc.returncode}: {proc.stderr.strip()[:200]}")
            return None
        for line in reversed(proc.stdout.strip().splitlines()):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            return {"median_s": float(rec["median_s"]), "min_s": float(rec["min_s"]),
                    "max_s": float(rec["max_s"]), "repeat": int(rec.get("repeat", repeat)),
                    "number": 1}
        self.log(f"rust: {op} n={n}: no JSON line in the output")
        return None


# ----------------------------------------------------------------- numpy formulas

def numpy_fake_quantize(x, out, tmp, scale, zero_point, qmin, qmax):
    """The fastest correct in-place numpy fake quantize found: divide, half-away
    rounding as trunc(v + copysign(0.49999997, v)) (np.round is half-to-even),
    clip, dequantize with out=.  zero-point steps are skipped when it is 0."""
    s = F32(scale)
    np.divide(x, s, out=out)
    if zero_point != 0.0:
        np.add(out, F32(zero_point), out=out)
    np.copysign(F32(0.49999997), out, out=tmp)
    np.add(out, tmp, out=out)
    np.trunc(out, out=out)
    np.clip(out, F32(qmin), F32(qmax), out=out)
    if zero_point != 0.0:
        np.subtract(out, F32(zero_point), out=out)
    np.multiply(out, s, out=out)
    return out


# --------------------------------------------------------------------------- suite

class Suite:
    def __init__(self, quick: bool, threads: List[int], repeat: Optional[int],
                 rust: Optional[RustPeer], use_torch: bool, log=print,
                 sizes: Optional[List[int]] = None):
        import qatcore
        from qatcore import _backend

        self.qc = qatcore
        self.backend = _backend
        self.k = _backend.kernels
        self.quick = quick
        self.threads = threads
        self.repeat_override = repeat
        self.size_override = sizes
        self.rust = rust
        self.torch = _try_torch() if use_torch else None
        self.log = log
        self.rows: List[dict] = []
        self.skipped: List[dict] = []
        self.limits: List[dict] = []
        self.gemm: List[dict] = []
        self.gemm_peak: Optional[dict] = None
        self.cnn: List[dict] = []
        self._rust_cache: Dict[tuple, Optional[dict]] = {}
        self._np_cache: Dict[tuple, Dict[str, dict]] = {}

    # -- helpers
    def repeat_for(self, n: int) -> int:
        if self.repeat_override:
            return self.repeat_override
        if self.quick:
            return 7
        if n >= 1 << 24:
            return 9
        return 25

    def sizes(self) -> List[int]:
        if self.size_override:
            return list(self.size_override)
        return [1 << 16] if self.quick else [1 << 20, 1 << 24]

    def _torch_threads(self, nt: int):
        if self.torch is not None:
            self.torch.set_num_threads(nt)

    def _rust(self, op: str, n: int, bits: Optional[int] = None) -> Optional[dict]:
        if self.rust is None:
            return None
        key = (op, n, bits)
        if key not in self._rust_cache:
            self._rust_cache[key] = self.rust.run(op, n, max(3, self.repeat_for(n) // 2), bits)
        return self._rust_cache[key]

    def add_row(self, op: str, n: int, nt: int, qatcore: dict, peers: Dict[str, dict],
                note: str = "") -> dict:
        row = {"op": op, "size": n, "threads": nt, "qatcore": qatcore,
               "target": self.k.TARGET, "peers": {}, "note": note}
        for name, m in peers.items():
            if m is None:
                continue
            row["peers"][name] = dict(m, ratio=m["median_s"] / qatcore["median_s"])
        self.rows.append(row)
        self.log(format_row(row))
        return row

    def skip(self, op: str, n: int, nt: int, exc: BaseException):
        reason = f"{type(exc).__name__}: {exc}"
        self.skipped.append({"op": op, "size": n, "threads": nt, "reason": reason})
        self.log(f"  {op} {_size_label(n)} {nt}t: skipped ({reason})")

    # -- machine limits
    def measure_limits(self):
        k = self.k
        probes = all(hasattr(k, f) for f in ("probe_read", "probe_copy", "probe_divide"))
        for n in self.sizes():
            x = _data(n, 1)
            out = np.empty_like(x)
            out[:] = 0
            rep = self.repeat_for(n)
            for nt in self.threads:
                if probes:
                    m = measure(lambda: k.probe_read(x, nt), rep)
                    self._limit("read", n, nt, m, 4 * n)
                    m = measure(lambda: k.probe_copy(x, out, nt), rep)
                    self._limit("copy", n, nt, m, 8 * n)
                    m = measure(lambda: k.probe_divide(x, out, 0.0371, nt), rep)
                    self._limit("divide", n, nt, m, 8 * n)
                elif nt == 1:
                    m = measure(lambda: np.copyto(out, x), rep)
                    self._limit("copy (np.copyto)", n, 1, m, 8 * n)
                    m = measure(lambda: np.divide(x, F32(0.0371), out=out), rep)
                    self._limit("divide (np.divide)", n, 1, m, 8 * n)

    def _limit(self, what, n, nt, m, nbytes):
        rec = dict(m, what=what, size=n, threads=nt, bytes=nbytes,
                   gb_s=nbytes / m["median_s"] / 1e9, gb_s_best=nbytes / m["min_s"] / 1e9)
        self.limits.append(rec)
        self.log(f"  {what:<8} {_size_label(n):>5} {nt}t  {_us(m['median_s']):>10} µs "
                 f"({_us(m['min_s'])}–{_us(m['max_s'])})  {rec['gb_s']:6.1f} GB/s"
                 f" (best {rec['gb_s_best']:.1f})")

    # -- observers
    def bench_observers(self):
        qc, torch = self.qc, self.torch
        methods = [
            ("MIN_MAX", "minmax"), ("MEAN_STD", "mean_std"),
            ("PERCENTILE", "percentile"), ("MOVING_AVERAGE", "moving_average"),
        ]
        for n in self.sizes():
            x = _data(n)
            t = torch.from_numpy(x) if torch is not None else None
            rep = self.repeat_for(n)
            for name, rust_op in methods:
                method = getattr(qc.ObserverMethod, name)
                for nt in self.threads:
                    obs = qc.QuantObserver(method, n_threads=nt)
                    try:
                        obs.observe(x[:1000])
                    except Exception as exc:    # e.g. a kernel not built yet
                        self.skip(f"observe {name}", n, nt, exc)
                        continue
                    # the state does not change the work: every call scans the batch
                    # (MOVING_AVERAGE: the steady-state averaging update after the first)
                    q = measure(lambda: obs.observe(x), rep)
                    peers = {}
                    peers.update(self._numpy_observer(name, x, rep))
                    if torch is not None:
                        self._torch_threads(nt)
                        peers.update(self._torch_observer(name, t, rep))
                    peers["rust"] = self._rust(rust_op, n)
                    self.add_row(f"observe {name}", n, nt, q, peers)

    def _numpy_observer(self, name, x, rep):
        key = (name, x.size)
        if key in self._np_cache:           # numpy is single-threaded: measure once
            return self._np_cache[key]
        if name in ("MIN_MAX", "MOVING_AVERAGE"):
            res = {"numpy": measure(lambda: (np.min(x), np.max(x)), rep)}
        elif name == "MEAN_STD":
            res = {"numpy": measure(lambda: (np.mean(x), np.std(x)), rep)}
        else:
            res = {"numpy": measure(lambda: np.percentile(x, [0.1, 99.9]), max(3, rep // 3))}
        self._np_cache[key] = res
        return res

    def _torch_observer(self, name, t, rep):
        torch = self.torch
        if name in ("MIN_MAX", "MOVING_AVERAGE"):
            return {"torch": measure(lambda: torch.aminmax(t), rep)}
        if name == "MEAN_STD":
            return {"torch": measure(lambda: (torch.mean(t), torch.std(t, correction=0)), rep)}
        n = t.numel()
        lo_k = int(math.floor(F32(n) * F32(0.001))) + 1
        hi_k = min(int(math.ceil(F32(n) * F32(0.999))), n - 1) + 1
        res = {"torch": measure(lambda: (torch.kthvalue(t, lo_k), torch.kthvalue(t, hi_k)),
                                max(3, rep // 3))}
        if n <= 1 << 24:        # torch.quantile refuses larger inputs
            q = torch.tensor([0.001, 0.999])
            res["torch quantile"] = measure(lambda: torch.quantile(t, q), max(3, rep // 3))
        return res

    # -- fake quantize
    def bench_fake_quantize(self):
        qc, torch = self.qc, self.torch
        for bits in (8, 4):
            cfg = qc.FakeQuantConfig.int8() if bits == 8 else qc.FakeQuantConfig.int4()
            qmin, qmax = cfg.quant_range()
            for n in self.sizes():
                x = _data(n)
                out = np.zeros_like(x)
                nout = np.zeros_like(x)
                tmp = np.zeros_like(x)
                rep = self.repeat_for(n)
                fq0 = qc.FakeQuantize(cfg)
                fq0.fake_quantize(x)
                fq0.disable_calibration()
                scale, zp = fq0.scale, fq0.zero_point
                for nt in self.threads:
                    fq = qc.FakeQuantize(cfg, n_threads=nt)
                    fq.fake_quantize(x)
                    fq.disable_calibration()
                    fq.eval()           # inference forward: no STE mask to write
                    q = measure(lambda: fq.fake_quantize(x, out=out), rep)
                    fq.train()
                    qm = measure(lambda: fq.fake_quantize(x, out=out), rep)
                    peers = {"qatcore +mask": qm}
                    key = ("fq", bits, n)
                    if key not in self._np_cache:
                        self._np_cache[key] = {"numpy": measure(
                            lambda: numpy_fake_quantize(x, nout, tmp, scale, zp, qmin, qmax), rep)}
                        if not np.array_equal(nout, out):       # values; -0.0 == 0.0
                            self.log("  warning: the numpy fake quantize differs from qatcore")
                    peers.update(self._np_cache[key])
                    if torch is not None:
                        self._torch_threads(nt)
                        t = torch.from_numpy(x)
                        tzp = int(round(zp))
                        peers["torch fq"] = measure(
                            lambda: torch.fake_quantize_per_tensor_affine(
                                t, scale, tzp, int(qmin), int(qmax)), rep)
                        peers["torch q→dq"] = measure(
                            lambda: torch.quantize_per_tensor(
                                t, scale, tzp, torch.qint8).dequantize(), rep)
                    peers["rust"] = self._rust("fake_quantize", n, bits)
                    self.add_row(f"fake_quantize int{bits} out=", n, nt, q, peers,
                                 note="eval(): no mask; 'qatcore +mask' = train() mode")

    # -- per-call cost on small batches
    def bench_small(self):
        qc, torch, k = self.qc, self.torch, self.k
        n = 1000
        x = _data(n, 3)
        out = np.zeros_like(x)
        tmp = np.zeros_like(x)
        rep = 15 if not self.quick else 5
        tmin = 2e-3 if not self.quick else 5e-4
        obs = qc.QuantObserver(qc.ObserverMethod.MIN_MAX, n_threads=1)
        q = measure(lambda: obs.observe(x), rep, min_sample_s=tmin)
        peers = {"kernel only": measure(lambda: k.minmax(x, 1), rep, min_sample_s=tmin),
                 "numpy": measure(lambda: (np.min(x), np.max(x)), rep, min_sample_s=tmin)}
        if torch is not None:
            self._torch_threads(1)
            t = torch.from_numpy(x)
            peers["torch"] = measure(lambda: torch.aminmax(t), rep, min_sample_s=tmin)
        self.add_row("observe MIN_MAX (1 call)", n, 1, q, peers)

        cfg = qc.FakeQuantConfig.int8()
        fq = qc.FakeQuantize(cfg, n_threads=1)
        fq.fake_quantize(x)
        fq.disable_calibration()
        scale, zp = fq.scale, fq.zero_point
        qmin, qmax = cfg.quant_range()
        fq.eval()
        q = measure(lambda: fq.fake_quantize(x, out=out), rep, min_sample_s=tmin)
        fq.train()
        qm = measure(lambda: fq.fake_quantize(x, out=out), rep, min_sample_s=tmin)
        peers = {"qatcore +mask": qm,
                 "kernel only": measure(lambda: k.fake_quantize(x, out, scale, zp, qmin, qmax,
                                                                None, 1),
                                        rep, min_sample_s=tmin),
                 "numpy": measure(lambda: numpy_fake_quantize(x, out, tmp, scale, zp, qmin, qmax),
                                  rep, min_sample_s=tmin)}
        if torch is not None:
            t = torch.from_numpy(x)
            peers["torch fq"] = measure(
                lambda: torch.fake_quantize_per_tensor_affine(t, scale, 0, int(qmin), int(qmax)),
                rep, min_sample_s=tmin)
            peers["torch q→dq"] = measure(
                lambda: torch.quantize_per_tensor(t, scale, 0, torch.qint8).dequantize(),
                rep, min_sample_s=tmin)
        self.add_row("fake_quantize int8 out= (1 call)", n, 1, q, peers,
                     note="eval(): no mask")

        # The calibrating call (observe + qparams + fake quantize, fresh output): the
        # frozen call of the row above is its floor.
        cal = qc.FakeQuantize(cfg, n_threads=1)
        cal.eval()
        q = measure(lambda: cal.fake_quantize(x), rep, min_sample_s=tmin)
        cal.train()
        peers = {"qatcore +mask": measure(lambda: cal.fake_quantize(x), rep, min_sample_s=tmin)}
        fq.eval()
        peers["frozen"] = measure(lambda: fq.fake_quantize(x), rep, min_sample_s=tmin)
        peers["observe + fake_quantize kernels"] = measure(
            lambda: (k.minmax(x, 1), k.fake_quantize(x, out, scale, zp, qmin, qmax, None, 1)),
            rep, min_sample_s=tmin)

        def numpy_calibrating():
            s = max(-float(np.min(x)), float(np.max(x))) / 127.0
            return numpy_fake_quantize(x, np.empty_like(x), tmp, s, 0.0, qmin, qmax)

        peers["numpy"] = measure(numpy_calibrating, rep, min_sample_s=tmin)
        if torch is not None:
            t = torch.from_numpy(x)

            def torch_calibrating():
                lo, hi = torch.aminmax(t)
                s = float(max(-lo, hi)) / 127.0
                return torch.fake_quantize_per_tensor_affine(t, s, 0, -127, 127)

            peers["torch aminmax + fq"] = measure(torch_calibrating, rep, min_sample_s=tmin)
        self.add_row("fake_quantize calibrating (1 call)", n, 1, q, peers,
                     note="eval(): no mask, fresh output; MIN_MAX observer")

    # -- int8 GEMM (qatcore.bench.gemm)
    def bench_gemm(self):
        from .gemm import measure_peak, run as run_gemm

        try:
            peak = measure_peak(5 if self.quick else 30)
            self.gemm_peak = dict(peak)
            self.log(f"  int8 peak (GEMM microkernel, cache-resident, 1 thread): "
                     f"{peak['gops']:.1f} GOPS ({peak.get('impl', '?')})")
        except Exception as exc:
            self.log(f"  gemm peak: {type(exc).__name__}: {exc}")
        for nt in self.threads:
            try:
                recs = run_gemm(self.quick, nt, self.repeat_override or (5 if self.quick else 15))
            except Exception as exc:        # a peer's failure must not sink the suite
                self.log(f"  gemm: {type(exc).__name__}: {exc}")
                continue
            for rec in recs:
                self.gemm.append(rec)
                self.log("  {op:<20} {shape!s:<18} {threads}t {impl:<16} {med:>10} µs "
                         "({lo}–{hi})  {gops:7.1f} GOPS".format(
                             op=str(rec.get("op")), shape=rec.get("shape"),
                             threads=rec.get("threads"), impl=str(rec.get("impl")),
                             med=_us(rec["median_s"]), lo=_us(rec["min_s"]),
                             hi=_us(rec["max_s"]), gops=float(rec.get("gops", float("nan")))))

    # -- integer CNNs (qatcore.bench.cnn_models; bench/bench_cnn.py has the full table)
    def bench_cnn(self):
        from .cnn_models import MODELS, RUNTIMES, build, random_codes, runner

        names = ["ds_cnn"] if self.quick else list(MODELS)
        batches = [1, 4] if self.quick else [1, 64]
        rep = self.repeat_override or (3 if self.quick else 9)
        tmin = 5e-4 if self.quick else 0.05
        for name in names:
            for batch in batches:
                for nt in self.threads:
                    model = build(name, tiny=self.quick)
                    x = random_codes(model, batch)
                    base = None
                    for impl in RUNTIMES:
                        try:
                            fn = runner(impl, model, batch, nt)
                            m = measure(lambda: fn(x), rep, warmup=1, min_sample_s=tmin)
                        except ValueError:      # a case the runtime does not run
                            continue
                        except Exception as exc:  # a missing or failing peer: skip it
                            self.log(f"  cnn {name} b{batch} {nt}t {impl}: "
                                     f"{type(exc).__name__}: {exc}")
                            continue
                        rec = dict(m, model=name, batch=batch, threads=nt, impl=impl,
                                   tiny=self.quick, per_sample_s=m["median_s"] / batch)
                        if impl == "qatcore":
                            base = m["median_s"]
                        rec["ratio"] = m["median_s"] / base if base else float("nan")
                        self.cnn.append(rec)
                        self.log(f"  cnn {name:<17} b{batch:<3} {nt}t {impl:<15} "
                                 f"{_us(rec['per_sample_s']):>9} µs/sample  "
                                 f"×{rec['ratio']:.2f}")

    def machine(self) -> dict:
        info = {
            "platform": platform.platform(),
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "qatcore": getattr(self.qc, "__version__", "?"),
            "kernel_target": self.k.TARGET,
            "available_targets": self.backend.available_targets(),
            "openmp": bool(getattr(self.k, "OPENMP", False)),
            "torch": getattr(self.torch, "__version__", None),
            "rust": None if self.rust is None else (self.rust.error or self.rust.binary),
            "openblas_env": {v: os.environ[v] for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                             if v in os.environ},
        }
        return info


def _cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it, with its family/model and the vector ISA the
    kernel targets care about (a VM often reports only "AMD EPYC")."""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break                   # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    isa = ("AVX-512" + (" + VNNI" if "avx512_vnni" in flags else "") if "avx512f" in flags
           else "AVX2" if "avx2" in flags else "no AVX2")
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']}; {isa})"
    return f"{name} ({isa})" if flags else name


def _us(s: float) -> str:
    us = s * 1e6
    if us >= 1000:
        return f"{us:,.0f}"
    if us >= 10:
        return f"{us:.1f}"
    return f"{us:.2f}"


PEER_ORDER = ["kernel only", "qatcore +mask", "numpy", "torch", "torch quantile", "torch fq",
              "torch q→dq", "rust"]


def format_row(row: dict) -> str:
    q = row["qatcore"]
    head = (f"{row['op']:<34} {_size_label(row['size']):>5} {row['threads']:>2}t "
            f"{_us(q['median_s']):>9} µs ({_us(q['min_s'])}–{_us(q['max_s'])})")
    parts = []
    for name in PEER_ORDER + [p for p in row["peers"] if p not in PEER_ORDER]:
        m = row["peers"].get(name)
        if m is None:
            continue
        parts.append(f"{name} {_us(m['median_s'])} (×{m['ratio']:.2f})")
    return head + ("  | " + "; ".join(parts) if parts else "")


def format_table(rows: List[dict]) -> str:
    """A fixed-width table: one line per row, peers as 'median µs (peer/qatcore)'."""
    names = []
    for row in rows:
        for p in row["peers"]:
            if p not in names:
                names.append(p)
    names.sort(key=lambda p: PEER_ORDER.index(p) if p in PEER_ORDER else 99)
    hdr = ["op", "size", "thr", "qatcore µs", "spread µs"] + [f"{p} µs (×)" for p in names]
    lines = []
    table = []
    for row in rows:
        q = row["qatcore"]
        cells = [row["op"], _size_label(row["size"]), str(row["threads"]), _us(q["median_s"]),
                 f"{_us(q['min_s'])}–{_us(q['max_s'])}"]
        for p in names:
            m = row["peers"].get(p)
            cells.append("—" if m is None else f"{_us(m['median_s'])} (×{m['ratio']:.2f})")
        table.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h)
              for i, h in enumerate(hdr)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines.append(fmt(hdr))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(c) for c in table)
    return "\n".join(lines)


def format_cnn_table(recs: List[dict]) -> str:
    """One line per (model, batch, threads), one column per runtime: 'µs (×ratio)'."""
    impls: List[str] = []
    keys: List[tuple] = []
    for r in recs:
        if r["impl"] not in impls:
            impls.append(r["impl"])
        key = (r["model"] + (" (tiny)" if r.get("tiny") else ""), r["batch"], r["threads"])
        if key not in keys:
            keys.append(key)
    hdr = ["model", "batch", "thr"] + impls
    table = []
    for key in keys:
        cells = [key[0], str(key[1]), str(key[2])]
        for impl in impls:
            hit = [r for r in recs if (r["model"] + (" (tiny)" if r.get("tiny") else ""),
                                       r["batch"], r["threads"]) == key and r["impl"] == impl]
            if not hit:
                cells.append("–")
            elif impl == "qatcore":
                cells.append(_us(hit[0]["per_sample_s"]))
            else:
                cells.append(f"{_us(hit[0]['per_sample_s'])} (×{hit[0]['ratio']:.2f})")
        table.append(cells)
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(hdr)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(hdr, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(t, widths)) for t in table]
    return "\n".join(lines)


def format_gemm_table(recs: List[dict]) -> str:
    hdr = ["shape (M,K,N)", "thr", "impl", "median µs", "spread µs", "GOPS"]
    table = [[str(r.get("shape")), str(r.get("threads")), str(r.get("impl")),
              _us(r["median_s"]), f"{_us(r['min_s'])}–{_us(r['max_s'])}",
              f"{float(r.get('gops', float('nan'))):.1f}"] for r in recs]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(hdr)]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(hdr, widths))),
             "  ".join("-" * w for w in widths)]
    for t in table:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(t, widths))))
    return "\n".join(lines)


def plot(path: str, result: dict) -> None:
    """Bars of throughput (GB/s of float32 input) per op, machine limits as lines."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    rows = [r for r in result["rows"] if "(1 call)" not in r["op"]]
    if not rows:
        raise RuntimeError("--plot: nothing to plot")
    impls = ["qatcore"] + sorted({p for r in rows for p in r["peers"]},
                                 key=lambda p: PEER_ORDER.index(p) if p in PEER_ORDER else 99)
    labels = [f"{r['op']}\n{_size_label(r['size'])} {r['threads']}t" for r in rows]
    gemm = result.get("gemm") or []
    if gemm:
        fig, (ax, gx) = plt.subplots(2, 1, figsize=(max(9, 1.1 * len(rows)), 11),
                                     gridspec_kw={"height_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(max(9, 1.1 * len(rows)), 6))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        vals = []
        for r in rows:
            m = r["qatcore"] if impl == "qatcore" else r["peers"].get(impl)
            vals.append(0 if m is None else 4 * r["size"] / m["median_s"] / 1e9)
        ax.bar([i + (j - len(impls) / 2 + 0.5) * width for i in range(len(rows))], vals,
               width, label=impl)
    styles = iter(["--", ":", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1))])
    for lim in result.get("limits", []):
        if lim["threads"] != 1:
            continue
        gbs = lim["gb_s"] if lim["what"] == "read" else lim["gb_s"] / 2   # input GB/s
        ax.axhline(gbs, color="k", lw=0.8, ls=next(styles, "--"),
                   label=f"{lim['what']} limit {_size_label(lim['size'])} ({gbs:.0f} GB/s in)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("GB/s of float32 input (higher is better)")
    ax.set_title(f"qatcore bench — {result['machine']['cpu']} — kernels: "
                 f"{result['machine']['kernel_target']}")
    ax.legend(fontsize=7, ncol=2)
    if gemm:
        keys = []
        for r in gemm:
            key = (str(r.get("shape")), r.get("threads"))
            if key not in keys:
                keys.append(key)
        gimpls = sorted({str(r.get("impl")) for r in gemm}, key=lambda p: (p != "qatcore", p))
        gw = 0.8 / len(gimpls)
        for j, impl in enumerate(gimpls):
            vals = []
            for key in keys:
                hit = [r for r in gemm if (str(r.get("shape")), r.get("threads")) == key
                       and str(r.get("impl")) == impl]
                vals.append(float(hit[0].get("gops", 0)) if hit else 0)
            gx.bar([i + (j - len(gimpls) / 2 + 0.5) * gw for i in range(len(keys))], vals, gw,
                   label=impl)
        peak = result.get("gemm_peak")
        if peak:
            gx.axhline(peak["gops"], color="k", lw=0.8, ls="--",
                       label=f"int8 peak, 1 thread ({peak['gops']:.0f} GOPS)")
        gx.set_xticks(range(len(keys)))
        gx.set_xticklabels([f"{k[0]} {k[1]}t" for k in keys], rotation=30, ha="right", fontsize=7)
        gx.set_ylabel("int8 GOPS (higher is better)")
        gx.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_threads(text: str) -> List[int]:
    try:
        vals = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads: expected e.g. 1,2, got {text!r}") from None
    if not vals or any(v < 1 or v > 64 for v in vals):
        raise argparse.ArgumentTypeError("--threads: counts must be between 1 and 64")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qatcore bench",
        description="Benchmark qatcore against numpy, torch and the Rust reference, "
                    "with the machine's measured limits.",
        epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI-sized inputs (2^16 elements), finishes in well under a minute")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    p.add_argument("--plot", metavar="FILE.png",
                   help="bar chart of throughput with the limits (needs matplotlib)")
    p.add_argument("--rust", metavar="DIR",
                   help="the bench/rust crate: built with cargo (target-cpu=native), then run")
    p.add_argument("--threads", type=_parse_threads, default=None, metavar="N[,N...]",
                   help="thread counts, one column set each (default: 1,2 when OpenMP "
                        "is built in, else 1)")
    p.add_argument("--repeat", type=int, default=None, metavar="R",
                   help="timed runs per figure (default: 25 at 2^20, 9 at 2^24, 7 quick)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch columns")
    p.add_argument("--only", default=None, metavar="PART[,PART...]",
                   help="run only some parts: limits, observe, fake_quantize, small, gemm, "
                        "cnn")
    return p


PARTS = ("limits", "observe", "fake_quantize", "small", "gemm", "cnn")


def run(quick: bool = False, threads: Optional[List[int]] = None, repeat: Optional[int] = None,
        rust_dir: Optional[str] = None, use_torch: bool = True,
        parts=PARTS, log=print, sizes: Optional[List[int]] = None) -> dict:
    """Run the suite and return every figure as a dict (what ``--json`` writes).

    `sizes` overrides the array sizes (tests use tiny ones)."""
    from qatcore import _backend

    if threads is None:
        threads = [1, 2] if getattr(_backend.kernels, "OPENMP", False) else [1]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}; expected some of {PARTS}")
    log(f"CPU: {_cpu_name()} — kernels: {_backend.kernels.TARGET}")
    rust = None
    if rust_dir:
        rust = RustPeer(rust_dir, log=log)
        log(f"building the Rust reference in {rust.crate_dir} ...")
        if not rust.build():
            log(f"rust: {rust.error}; the Rust column is skipped")
            rust = None
    suite = Suite(quick, threads, repeat, rust, use_torch, log=log, sizes=sizes)
    m = suite.machine()
    log(f"qatcore {m['qatcore']} — kernels: {m['kernel_target']} "
        f"(available: {', '.join(m['available_targets'])}; OpenMP: {m['openmp']}) — "
        f"{m['cpu']}, {m['cpu_count']} CPUs — numpy {m['numpy']}"
        + (f", torch {m['torch']}" if m["torch"] else ", torch not installed")
        + (", rust: yes" if rust else ""))
    if m["openblas_env"]:
        log(f"note: {', '.join(m['openblas_env'])} set: unset them to time numpy fairly")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # torch deprecates quantize_per_tensor; it is still the peer users know
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        _run_parts(suite, parts, log)
    return {"machine": m, "quick": quick, "threads": threads, "limits": suite.limits,
            "rows": suite.rows, "skipped": suite.skipped, "gemm": suite.gemm,
            "gemm_peak": suite.gemm_peak, "cnn": suite.cnn,
            "elapsed_s": time.perf_counter() - t0}


def _run_parts(suite: "Suite", parts, log) -> None:
    if "limits" in parts:
        log("machine limits (probe kernels, median of runs):")
        suite.measure_limits()
    if "observe" in parts:
        log("observe:")
        suite.bench_observers()
    if "fake_quantize" in parts:
        log("fake_quantize (frozen, out=):")
        suite.bench_fake_quantize()
    if "small" in parts:
        log("per-call cost, 1000 elements:")
        suite.bench_small()
    if "gemm" in parts:
        log("int8 GEMM:")
        suite.bench_gemm()
    if "cnn" in parts:
        log("integer CNNs (forward_int8 vs LiteRT, TFLM, onnxruntime; "
            "bench/bench_cnn.py for the full table):")
        suite.bench_cnn()


def main(argv=None) -> int:
    """Entry point of ``qatcore bench``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    parts = PARTS if args.only is None else tuple(p.strip() for p in args.only.split(",") if p.strip())
    if set(parts) - set(PARTS):
        parser.error(f"--only: unknown part(s); expected some of {', '.join(PARTS)}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("qatcore bench: --plot needs matplotlib (pip install matplotlib)",
                  file=sys.stderr)
            return 2
    if args.rust and not os.path.isdir(args.rust):
        print(f"qatcore bench: --rust {args.rust}: not a directory", file=sys.stderr)
        return 2
    for path in (args.json, args.plot):
        if path:
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d) or not os.access(d, os.W_OK):
                print(f"qatcore bench: {path}: directory is not writable", file=sys.stderr)
                return 2
    try:
        result = run(args.quick, args.threads, args.repeat, args.rust, not args.no_torch,
                     parts, log=lambda s: print(s, flush=True))
    except KeyboardInterrupt:
        print("qatcore bench: interrupted", file=sys.stderr)
        return 130
    print()
    print(f"summary (kernels: {result['machine']['kernel_target']}; median µs, "
          f"spread min–max; × = peer time / qatcore time):")
    print(format_table(result["rows"]))
    if result["gemm"]:
        print()
        print("int8 GEMM (median µs, spread, GOPS = 2·M·K·N / median):")
        print(format_gemm_table(result["gemm"]))
    if result["cnn"]:
        print()
        print("integer CNNs (median µs per sample; × = runtime time / qatcore time):")
        print(format_cnn_table(result["cnn"]))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        try:
            plot(args.plot, result)
        except RuntimeError as exc:
            print(f"qatcore bench: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
