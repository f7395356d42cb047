"""Integer CNNs side by side (issue 20, item 5): qatcore's ``forward_int8`` against LiteRT
(XNNPACK, and its builtin kernels without delegate), TensorFlow Lite Micro, onnxruntime on
the QDQ export and the C export compiled with -O2 and -O3, on the three MLPerf Tiny
models and the ops that dominate them; plus the C export's Cortex-M4 flash and RAM.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_cnn.py [--quick]
        [--models ds_cnn,resnet8] [--batches 1,64] [--threads 1,2] [--no-c] [--profile]
        [--markdown]

The models are ``qatcore.bench.cnn_models`` (seeded random int8 weights, plausible scales);
every runtime runs the same graph: the .tflite from ``qatcore.export.tflite_graph``, the
.onnx from ``qatcore.export.onnx_graph``, the C from ``qatcore.export.c_graph``.  Figures
are µs per sample (batch 64: the batch's time / 64), the fastest of repeated runs after a
warm-up (``--stat median_s`` for the median; on shared cores the fastest is the figure
least disturbed by other processes).  The C export is one sample per call on one thread
(batch 64 = 64 calls; its driver is compiled with ``gcc -O2|-O3 -march=native -std=c99``).  TFLM runs batch 1 on
one thread.  "× XNNPACK" = qatcore time / LiteRT XNNPACK time (< 1: qatcore faster);
"TFLM ×" = TFLM time / qatcore time.  Each runtime's outputs are compared with
``forward_int8`` (max |diff| in codes; "=" when equal).

``--profile`` adds qatcore's time per op (each op run alone on the codes the model feeds
it) and, for each convolution and FC, the int8 GEMM alone on the same (M, K, N) through
``QuantizedLinear.forward_quantized`` (the same GEMM kernel): what im2col, requantization
and scratch handling add.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

# Prefer the checkout's package when run from a source tree with built kernels (a clone's
# qatcore/ without them would shadow the installed package).
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_pkg = os.path.join(_root, "qatcore")
if (os.path.isdir(_pkg) and any(f.startswith("_kernels") and f.endswith((".so", ".pyd"))
                                for f in os.listdir(_pkg)) and _root not in sys.path):
    sys.path.insert(0, _root)

from qatcore.bench import cnn_models as CM          # noqa: E402
from qatcore.bench.suite import _cpu_name, measure  # noqa: E402

COLUMNS = ["qatcore", "litert_xnnpack", "litert_builtin", "tflm", "onnxruntime", "c_O2",
           "c_O3"]
HEAD = {"qatcore": "qatcore", "litert_xnnpack": "XNNPACK", "litert_builtin": "LiteRT builtin",
        "tflm": "TFLM", "onnxruntime": "onnxruntime", "c_O2": "C -O2", "c_O3": "C -O3"}

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "NAME.h"

static int8_t scratch[UP_SCRATCH_BYTES];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* argv[1]: samples in stdin; argv[2]: timed passes over them; argv[3]: repeats.
   Writes the outputs to stdout, then one line per repeat to stderr: ns per sample. */
int main(int argc, char **argv) {
    long n = atol(argv[1]), passes = atol(argv[2]), repeats = atol(argv[3]);
    int8_t *in = malloc((size_t)n * UP_INPUT_SIZE), *out = malloc((size_t)n * UP_OUTPUT_SIZE);
    if (!in || !out || fread(in, UP_INPUT_SIZE, (size_t)n, stdin) != (size_t)n) return 1;
    for (long i = 0; i < n; i++)
        NAME_invoke(in + i * UP_INPUT_SIZE, out + i * UP_OUTPUT_SIZE, scratch);
    fwrite(out, UP_OUTPUT_SIZE, (size_t)n, stdout);
    for (long r = 0; r < repeats; r++) {
        double t0 = now();
        for (long p = 0; p < passes; p++)
            for (long i = 0; i < n; i++)
                NAME_invoke(in + i * UP_INPUT_SIZE, out + i * UP_OUTPUT_SIZE, scratch);
        fprintf(stderr, "%.1f\n", 1e9 * (now() - t0) / (passes * n));
    }
    return 0;
}
"""


class CExport:
    """The C export of one model, compiled at -O2 and -O3 with a timing driver."""

    def __init__(self, model: Any, workdir: str) -> None:
        from qatcore.export.c_graph import write_c
        self.name = "m" + "".join(ch for ch in model.name if ch.isalnum())[:20]
        self.dir = os.path.join(workdir, self.name)
        os.makedirs(self.dir, exist_ok=True)
        write_c(model, self.dir, self.name)
        with open(os.path.join(self.dir, "driver.c"), "w") as f:
            f.write(DRIVER.replace("NAME", self.name).replace("UP", self.name.upper()))
        self.exe = {}
        for opt in ("O2", "O3"):
            exe = os.path.join(self.dir, f"run_{opt}")
            subprocess.run(["gcc", f"-{opt}", "-march=native", "-std=c99",
                            "-D_POSIX_C_SOURCE=199309L", "-o", exe,
                            os.path.join(self.dir, "driver.c"),
                            os.path.join(self.dir, f"{self.name}.c")],
                           check=True, capture_output=True)
            self.exe[opt] = exe
        with open(os.path.join(self.dir, f"{self.name}.h")) as f:
            self.scratch = int(next(line.split()[2] for line in f if line.startswith(
                f"#define {self.name.upper()}_SCRATCH_BYTES ")))

    def run(self, opt: str, x: np.ndarray, budget_s: float = 0.3, repeats: int = 5
            ) -> Dict[str, Any]:
        n = len(x)
        probe = subprocess.run([self.exe[opt], str(n), "1", "1"], input=x.tobytes(),
                               capture_output=True, check=True)
        one = float(probe.stderr.split()[-1]) * 1e-9 * n
        passes = max(1, int(budget_s / repeats / max(one, 1e-7)))
        res = subprocess.run([self.exe[opt], str(n), str(passes), str(repeats)],
                             input=x.tobytes(), capture_output=True, check=True)
        times = sorted(float(v) * 1e-9 for v in res.stderr.split())
        out = np.frombuffer(res.stdout, np.int8)
        return {"median_s": times[len(times) // 2], "min_s": times[0], "max_s": times[-1],
                "out": out}

    def cortex_m4(self) -> Optional[Dict[str, int]]:
        """Flash (.text + .rodata + .data) and RAM (the scratch arena + .data + .bss) of
        name.c alone, arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os."""
        if not shutil.which("arm-none-eabi-gcc"):
            return None
        obj = os.path.join(self.dir, "m4.o")
        subprocess.run(["arm-none-eabi-gcc", "-std=c99", "-mcpu=cortex-m4", "-mthumb", "-Os",
                        "-c", "-o", obj, os.path.join(self.dir, f"{self.name}.c")],
                       check=True, capture_output=True)
        out = subprocess.run(["arm-none-eabi-size", "-A", obj], check=True,
                             capture_output=True, text=True).stdout
        sec: Dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                key = parts[0].split(".")[1] if parts[0].count(".") > 1 else parts[0]
                key = "." + key.lstrip(".")
                sec[key] = sec.get(key, 0) + int(parts[1])
        flash = sec.get(".text", 0) + sec.get(".rodata", 0) + sec.get(".data", 0)
        return {"flash": flash, "ram": self.scratch + sec.get(".data", 0) + sec.get(".bss", 0)}


_ARENA_PROBE = """
import sys
from tflite_micro import runtime
runtime.Interpreter.from_bytes(open(sys.argv[1], "rb").read(), arena_size=int(sys.argv[2]))
"""


def tflm_arena(model: Any, workdir: str) -> Optional[int]:
    """The smallest arena TFLM's Python interpreter accepts for the model (bisection to
    64 bytes; each probe in its own process: the wheel can crash on a too-small arena)."""
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        return None
    from qatcore.export.tflite_graph import tflite_bytes
    path = os.path.join(workdir, "arena_probe.tflite")
    with open(path, "wb") as f:
        f.write(tflite_bytes(model, batch_size=1))

    def fits(size: int) -> bool:
        return subprocess.run([sys.executable, "-c", _ARENA_PROBE, path, str(size)],
                              capture_output=True).returncode == 0

    lo, hi = 256, 1 << 22
    if not fits(hi):
        return None
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _us(s: Optional[float]) -> str:
    if s is None:
        return "–"
    us = s * 1e6
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def bench(args: argparse.Namespace) -> List[Dict[str, Any]]:
    names = args.models
    rows = []
    workdir = tempfile.mkdtemp(prefix="qatcore-bench-cnn-")
    try:
        for name in names:
            model = CM.build(name, tiny=args.quick)
            cexp = None
            if not args.no_c and shutil.which("gcc"):
                try:
                    cexp = CExport(CM.build(name, tiny=args.quick), workdir)
                except (subprocess.CalledProcessError, ImportError, OSError) as exc:
                    print(f"# {name}: C export skipped ({type(exc).__name__}: {exc})",
                          file=sys.stderr)
            for batch in args.batches:
                x = CM.random_codes(model, batch, seed=1)
                ref = model.forward_int8(x)
                for threads in args.threads:
                    row: Dict[str, Any] = {"model": name, "batch": batch, "threads": threads,
                                           "times": {}, "diff": {}}
                    for kind in CM.RUNTIMES:
                        try:
                            fn = CM.runner(kind, CM.build(name, tiny=args.quick)
                                           if kind == "qatcore" else model, batch, threads)
                        except (ValueError, ImportError):
                            continue
                        out = fn(x)
                        m = measure(lambda: fn(x), args.repeat, min_sample_s=args.sample_s)
                        row["times"][kind] = m[args.stat] / batch
                        row["diff"][kind] = int(np.abs(np.asarray(out, np.int32)
                                                       - ref.astype(np.int32)).max())
                    if cexp is not None and threads == 1:
                        for opt in ("O2", "O3"):
                            m = cexp.run(opt, x)
                            row["times"][f"c_{opt}"] = m[args.stat]
                            row["diff"][f"c_{opt}"] = int(np.abs(
                                m["out"].astype(np.int32).reshape(ref.shape)
                                - ref.astype(np.int32)).max())
                    rows.append(row)
                    print(format_row(row), flush=True)
            if cexp is not None and name in CM.MODELS:
                fig = cexp.cortex_m4()
                if fig is not None:
                    from qatcore.export.tflite_graph import tflite_bytes
                    fig["tflite"] = len(tflite_bytes(model, batch_size=1))
                    fig["tflm_arena"] = None if args.quick else tflm_arena(model, workdir)
                    rows.append({"model": name, "embedded": fig})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def format_row(row: Dict[str, Any]) -> str:
    cells = [row["model"], str(row["batch"]), str(row["threads"])]
    t = row["times"]
    for c in COLUMNS:
        d = row["diff"].get(c)
        mark = "" if d is None or c == "qatcore" else (" =" if d == 0 else f" ±{d}")
        cells.append(_us(t.get(c)) + mark if c in t else "–")
    x = t.get("litert_xnnpack")
    q = t.get("qatcore")
    cells.append(f"{q / x:.2f}" if q and x else "–")
    tf = t.get("tflm")
    cells.append(f"{tf / q:.1f}" if q and tf else "–")
    return "| " + " | ".join(cells) + " |"


def table(rows: List[Dict[str, Any]]) -> str:
    head = ["model", "batch", "thr"] + [HEAD[c] for c in COLUMNS] + ["× XNNPACK", "TFLM ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [format_row(r) for r in rows if "times" in r]
    emb = [r for r in rows if "embedded" in r]
    if emb:
        lines += ["", "| model | C flash (Cortex-M4 -Os) | .tflite | C RAM (arena) | "
                      "TFLM min. arena |", "|---|---|---|---|---|"]
        for r in emb:
            e = r["embedded"]
            lines.append(f"| {r['model']} | {e['flash']} | {e['tflite']} | {e['ram']} | "
                         f"{e['tflm_arena'] if e['tflm_arena'] else '–'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- profile

def _clone(op: Any) -> Any:
    params, arrays = op._describe()
    io = {"inputs": op.inputs} if op._MULTI_INPUT else {"input": op.inputs[0]}
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return type(op)(**io, output=op.output, **params, **arrays)


def profile(name: str, batch: int, threads: int, quick: bool, repeat: int) -> str:
    """qatcore's time per op (each op alone on the codes the model feeds it); for each
    convolution the GEMM alone on its (M, K, N) through the same int8 GEMM kernel."""
    from qatcore import QuantizedLinear
    from qatcore.model import QuantizedModel
    model = CM.build(name, tiny=quick)
    model.n_threads = threads
    x = CM.random_codes(model, batch, seed=1)
    whole = measure(lambda: model.forward_int8(x), repeat, min_sample_s=0.05)["min_s"]
    outs = [op.output for op in model.ops]
    full = QuantizedModel(list(model.tensors.values()), [_clone(o) for o in model.ops],
                          model.inputs, outs)
    inter = dict(zip(outs, full.forward_int8(x)))
    inter[model.inputs[0]] = x
    lines = [f"qatcore per op: {name}, batch {batch}, {threads} thread(s); whole model "
             f"{_us(whole)} µs per batch",
             "| op | in → out | µs | share | GOPS | GEMM alone µs (M,K,N) |",
             "|---|---|---|---|---|---|"]
    rows, total = [], 0.0
    by_kind: Dict[str, float] = {}
    for op in model.ops:
        names = list(dict.fromkeys([*op.inputs, op.output]))
        sub = QuantizedModel([model.tensors[t] for t in names], [_clone(op)],
                             list(dict.fromkeys(op.inputs)), [op.output])
        sub.n_threads = threads
        xs = [inter[t] for t in sub.inputs]
        arg = xs if len(xs) > 1 else xs[0]
        t = measure(lambda: sub.forward_int8(arg), repeat, min_sample_s=0.02)["min_s"]
        total += t
        kind = type(op).__name__
        ish, osh = model.tensors[op.inputs[0]].shape, model.tensors[op.output].shape
        macs, gemm = 0, ""
        w = getattr(op, "weights_q", None)
        if w is not None:
            pixels = int(np.prod(osh[:-1])) if len(osh) == 3 else 1
            if kind == "DepthwiseConv2D":
                macs = pixels * int(np.prod(w.shape))
            else:
                macs = pixels * int(w.size)
            if kind in ("Conv2D", "FullyConnected"):
                mm, kk, nn = batch * pixels, int(w[0].size), int(w.shape[0])
                layer = QuantizedLinear.from_float(
                    np.random.default_rng(0).standard_normal((nn, kk)).astype(np.float32),
                    None, kk, nn)
                a = np.random.default_rng(1).integers(-128, 128, (mm, kk)).astype(np.int8)
                tg = measure(lambda: layer.forward_quantized(a), repeat,
                             min_sample_s=0.02)["min_s"]
                gemm = f"{_us(tg)} ({mm},{kk},{nn})"
                kind_g = by_kind.get("GEMM alone (conv/FC)", 0.0)
                by_kind["GEMM alone (conv/FC)"] = kind_g + tg
        by_kind[kind] = by_kind.get(kind, 0.0) + t
        gops = 2 * macs * batch / t / 1e9 if macs else 0
        rows.append(f"| {kind} | {ish} → {osh} | {_us(t)} | {{share:{t}}} | "
                    f"{gops:.1f} | {gemm} |")
    for r in rows:
        head, rest = r.split("{share:")
        t_s, tail = rest.split("}", 1)
        lines.append(f"{head}{100 * float(t_s) / total:.1f} %{tail}")
    lines.append(f"sum of the ops alone: {_us(total)} µs; by kind: " + ", ".join(
        f"{k} {_us(v)} µs ({100 * v / total:.0f} %)" for k, v in
        sorted(by_kind.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, few repeats")
    p.add_argument("--models", default=",".join([*CM.MODELS, *CM.OPS]))
    p.add_argument("--batches", default="1,64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--stat", choices=("min_s", "median_s"), default="min_s",
                   help="which of the repeats to report (default: the fastest, the figure "
                        "least disturbed by other processes on shared cores)")
    p.add_argument("--no-c", action="store_true", help="skip the C export columns")
    p.add_argument("--profile", action="store_true", help="qatcore's time per op")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    args.sample_s = 0.005 if args.quick else 0.05
    if args.quick:
        args.repeat = min(args.repeat, 3)
    cmd = "python bench/bench_cnn.py " + " ".join(argv if argv is not None else sys.argv[1:])
    import qatcore
    from qatcore import _backend
    versions = []
    for mod in ("ai_edge_litert", "tflite_micro", "onnxruntime"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except (ImportError, AttributeError):
            pass
    gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True
                         ).stdout.strip() if shutil.which("gcc") else "none"
    print(f"$ {cmd.strip()}")
    print(f"CPU: {_cpu_name()}, {os.cpu_count()} CPUs; qatcore {qatcore.__version__} "
          f"(kernels {_backend.kernels.TARGET}); {', '.join(versions)}; gcc {gcc}; "
          f"{platform.python_implementation()} {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"µs per sample (batch 64: batch time / 64), {args.stat.split('_')[0]} of "
          f"{args.repeat} runs; ± = max |diff| vs forward_int8 in codes, = equal; load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
    print()
    rows = bench(args)
    print()
    print(table(rows))
    if args.profile:
        for name in args.models:
            if name in CM.MODELS:
                for batch in args.batches:
                    print()
                    print(profile(name, batch, 1, args.quick, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
