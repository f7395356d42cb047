"""Whole-model calibration: qatcore.onnx vs onnxruntime.quantization.quantize_static.

Same pre-processed model (onnxruntime ``quant_pre_process`` + opset 13, done once, not
timed), same inputs generated batch by batch, each run in a fresh subprocess so its peak
RSS (``ru_maxrss``) is its own.  Timed: calibration (running the model over the inputs
and computing the ranges: onnxruntime's ``create_calibrator`` → ``collect_data`` →
``compute_data``, i.e. what ``quantize_static`` runs, vs ``calibrate_model``); the QDQ
write that follows is the same onnxruntime code for both and is reported apart.  Accuracy:
the QDQ model run in onnxruntime against the float model on held-out inputs (top-1
agreement for the classifier, SQNR in dB of the outputs).

    python bench/bench_onnx_calibrate.py --model cls --n 64 256
    python bench/bench_onnx_calibrate.py --model det --det-path ch_PP-OCRv4_det_infer.onnx --n 200

The cls model is tests/data/ch_ppocr_mobile_v2.0_cls_infer.onnx; the det model comes from
the rapidocr-onnxruntime==1.4.4 wheel (``pip download --no-deps``), not committed.

Side by side (``--compare``): each tool writes its own QDQ model from the same calibration
inputs (saved once as .npy batches) and the QDQ model is scored against the float model on
disjoint held-out inputs: qatcore's default ``calibrate_model(..., qdq_path=)`` (its own
placement), onnxruntime's ``quantize_static`` (its own calibration and placement, per
channel, QDQ int8) and, when a Python with nncf is given (``--nncf-python``), NNCF's
``nncf.quantize`` on the ONNX model.  Task metric: cls top-1 agreement, det IoU of the
``> 0.3`` probability maps, rec per-step argmax agreement.

    python bench/bench_onnx_calibrate.py --compare --model rec --model-path ch_PP-OCRv4_rec_infer.onnx \
        --configs qatcore:min_max qatcore:mse ort:MinMax ort:Percentile nncf:default
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))          # ocr_lines: the inputs the tests use
try:                                              # the installed qatcore, else this checkout
    import qatcore  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

CLS = ROOT / "tests" / "data" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
BATCH = 8

# (label, onnxruntime CalibrationMethod name + extra options, qatcore method + options)
PAIRS = [
    ("MinMax", ("MinMax", {}), ("min_max", {})),
    ("Entropy", ("Entropy", {}), ("entropy_signed", {"bins": 128})),
    ("Percentile", ("Percentile", {"percentile": 99.999}),
     ("percentile", {"bins": 2048, "percentile": 99.999})),
    ("qatcore entropy (ModelOpt |x|)", None, ("entropy", {"bins": 2048})),
    ("qatcore mse (ModelOpt)", None, ("mse", {"bins": 2048})),
]


def batches(kind, n, seed):
    """Calibration inputs, generated one batch at a time."""
    from ocr_lines import text_lines
    for b0 in range(0, n, BATCH):
        x, _ = text_lines(min(BATCH, n - b0), seed=seed * 100_003 + b0)
        if kind == "det":     # 2 x 6 lines make a 288 x 384 page (det needs multiples of 32)
            pages = []
            for j in range(x.shape[0]):
                rows = [x[(j + k) % x.shape[0]] for k in range(12)]
                page = np.concatenate([np.concatenate(rows[:6], axis=1),      # 6 lines: H 288
                                       np.concatenate(rows[6:], axis=1)], axis=2)  # W 384
                pages.append(page)
            x = np.stack(pages).astype(np.float32)
        yield x


def child(args):
    import logging
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    logging.disable(logging.WARNING)
    import contextlib
    import io
    from qatcore.onnx import write_qdq
    t0 = time.perf_counter()
    if args.impl == "infer":      # the floor: run the float model over the inputs, nothing else
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(args.pre, so, providers=["CPUExecutionProvider"])
        for x in batches(args.kind, args.n, 1):
            sess.run(None, {"x": x})
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mib": peak_mib}))
        return
    if args.impl == "qatcore":
        from qatcore.onnx import calibrate_model
        opts = json.loads(args.opts)
        ranges = calibrate_model(args.pre, batches(args.kind, args.n, 1), method=args.method,
                                 preprocess=False, **opts)
    else:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = batches(args.kind, args.n, 1)

            def get_next(self):
                x = next(self.it, None)
                return None if x is None else {"x": x}

        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            # what quantize_static does before it writes QDQ (its create_calibrator call)
            cal = create_calibrator(Path(args.pre), None,
                                    augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                    calibrate_method=getattr(CalibrationMethod, args.method),
                                    extra_options=json.loads(args.opts))
            cal.collect_data(Reader())
            data = cal.compute_data()
        ranges = {k: tuple(float(np.asarray(r).ravel()[0]) for r in v.range_value)
                  for k, v in data.items()}
    calib = time.perf_counter() - t0
    t1 = time.perf_counter()
    # the same writer for both: onnxruntime's quantize_static reading the ranges as its cache
    write_qdq(args.pre, ranges, args.out)
    write = time.perf_counter() - t1
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": calib, "write": write, "peak_mib": peak_mib}))


# --- side by side ----------------------------------------------------------------------------
NNCF_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, onnx, nncf
src, data, out, cfg = sys.argv[1:5]
files = sorted(Path(data).glob("*.npy"))
model = onnx.load(src)
name = model.graph.input[0].name
t0 = time.perf_counter()
ds = nncf.Dataset([np.load(f) for f in files], lambda x: {name: x})
kw = {"subset_size": sum(int(np.load(f, mmap_mode="r").shape[0]) for f in files)}
if cfg == "mixed":
    kw["preset"] = nncf.QuantizationPreset.MIXED
elif cfg == "transformer":
    kw["model_type"] = nncf.ModelType.TRANSFORMER
q = nncf.quantize(model, ds, **kw)
onnx.save(q, out)
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def compare_child(args):
    """One tool: calibrate on the .npy batches in args.data and write args.out."""
    import logging
    import warnings
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    tool, _, cfg = args.config.partition(":")
    files = sorted(Path(args.data).glob("*.npy"))
    t0 = time.perf_counter()
    extra = {}
    if tool == "qatcore":
        from qatcore.onnx import calibrate_model
        opts = {"bins": 2048, "bias_correction": False}
        for flag in cfg.split("@")[1:]:     # @bc: bias correction, @k3: keep 3 worst float
            if flag == "bc":
                opts["bias_correction"] = True
            elif flag.startswith("k"):
                opts["keep_float_worst"] = int(flag[1:])
        cfg = cfg.split("@")[0]
        if "/" in cfg:                      # e.g. min_max/onnxruntime: the other writer
            cfg, writer = cfg.split("/", 1)
            opts["qdq_writer"] = writer
        if "+" in cfg:                      # e.g. mse+transformer: a preset
            cfg, preset = cfg.split("+", 1)
            opts["preset"] = preset
        r = calibrate_model(args.src, args.data, method=cfg, qdq_path=args.out, **opts)
        extra = {"quantizers": len(r.placement.activations) if r.placement else None,
                 "fallbacks": len(r.fallbacks)}
    elif tool == "ort":
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                              QuantFormat, QuantType, quantize_static)
        from qatcore.onnx import preprocess_model

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(files)

            def get_next(self):
                f = next(self.it, None)
                return None if f is None else {"x": np.load(f)}

        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            pre = Path(tmp) / "pre.onnx"
            preprocess_model(args.src, pre)
            quantize_static(str(pre), args.out, Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, cfg))
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mib": peak, **extra}))


def eval_batches(kind, n, seed):
    if kind == "rec":               # text lines, the recognizer's 48 x W input
        from ocr_lines import text_lines
        for b0 in range(0, n, BATCH):
            yield text_lines(min(BATCH, n - b0), seed=seed * 100_003 + b0)[0]
    else:
        yield from batches(kind, n, seed)


def task_metric(kind, a, b):
    """(agreeing, total) of the task decision: cls top-1, det >0.3 map IoU parts, rec
    per-step argmax."""
    if kind == "cls":
        return float((a.argmax(1) == b.argmax(1)).sum()), a.shape[0]
    if kind == "det":
        pa, pb = a > 0.3, b > 0.3
        return float((pa & pb).sum()), float((pa | pb).sum())
    return float((a.argmax(-1) == b.argmax(-1)).sum()), a.shape[0] * a.shape[1]


def compare(args):
    import onnxruntime as ort
    src = Path(args.model_path) if args.model_path else CLS
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cal"
        data.mkdir()
        for i, x in enumerate(eval_batches(args.model, args.n_cal, 1)):
            np.save(data / f"{i:04d}.npy", x)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        f = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        ev = list(eval_batches(args.model, args.n_eval, 7))
        ref = [f.run(None, {"x": x})[0].astype(np.float64) for x in ev]
        metric = {"cls": "top-1", "det": "IoU>0.3", "rec": "step agr"}[args.model]
        print(f"model {src.name}: {args.n_cal} calibration inputs, {args.n_eval} others to "
              f"evaluate, batch {BATCH}; onnxruntime {ort.__version__} CPU")
        print(f"{'config':28s} | {'SQNR dB':>7s} {metric:>9s} | {'s':>7s} {'peak MiB':>8s} | notes")
        for cfg in args.configs:
            out = str(Path(tmp) / "q.onnx")
            if cfg.startswith("nncf"):
                if not args.nncf_python:
                    print(f"{cfg:28s} | skipped: no --nncf-python")
                    continue
                child = Path(tmp) / "nncf_child.py"
                child.write_text(NNCF_CHILD)
                pre = Path(tmp) / "pre.onnx"      # NNCF gets the model qatcore quantizes:
                if not pre.exists():              # pre-processed, opset 13 (per-axis DQ)
                    from qatcore.onnx import preprocess_model
                    preprocess_model(src, pre)
                cmd = [args.nncf_python, str(child), str(pre), str(data), out,
                       cfg.partition(":")[2] or "default"]
            else:
                cmd = [sys.executable, __file__, "--compare-child", "--config", cfg,
                       "--src", str(src), "--data", str(data), "--out", out]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{cfg:28s} | error: {res.stderr.strip().splitlines()[-1][:100]}", flush=True)
                continue
            info = json.loads(res.stdout.strip().splitlines()[-1])
            q = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
            sig = noise = agree = total = 0.0
            for x, a in zip(ev, ref):
                b = q.run(None, {"x": x})[0].astype(np.float64)
                sig += float((a ** 2).sum())
                noise += float(((a - b) ** 2).sum())
                g, t = task_metric(args.model, a, b)
                agree, total = agree + g, total + t
            import onnx
            n_q = sum(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)
            notes = f"{n_q} QuantizeLinear"
            if info.get("fallbacks"):
                notes += f", {info['fallbacks']} fallbacks"
            print(f"{cfg:28s} | {10 * np.log10(sig / max(noise, 1e-30)):7.2f} "
                  f"{agree / max(total, 1):9.3f} | {info['seconds']:7.2f} {info['peak_mib']:8.0f} | "
                  f"{notes}", flush=True)


def run_child(impl, method, opts, kind, pre, n, out):
    cmd = [sys.executable, __file__, "--child", "--impl", impl, "--method", method,
           "--opts", json.dumps(opts), "--kind", kind, "--pre", pre, "--n", str(n), "--out", out]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1][:120]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def accuracy(float_path, qdq_path, kind, n_eval=64):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    f = ort.InferenceSession(str(float_path), so, providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(qdq_path), so, providers=["CPUExecutionProvider"])
    agree, sig, noise = [], 0.0, 0.0
    for x in batches(kind, n_eval, 7):
        a = f.run(None, {"x": x})[0].astype(np.float64)
        b = q.run(None, {"x": x})[0].astype(np.float64)
        sig += float((a ** 2).sum())
        noise += float(((a - b) ** 2).sum())
        if kind == "cls":
            agree.append(a.argmax(1) == b.argmax(1))
    top1 = float(np.concatenate(agree).mean()) if agree else None
    return top1, 10 * np.log10(sig / max(noise, 1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl")
    ap.add_argument("--method")
    ap.add_argument("--opts", default="{}")
    ap.add_argument("--kind", default="cls")
    ap.add_argument("--pre")
    ap.add_argument("--out")
    ap.add_argument("--model", default="cls", choices=["cls", "det", "rec"])
    ap.add_argument("--det-path", default="/tmp/x/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")
    ap.add_argument("--n", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--methods", nargs="+", default=[p[0] for p in PAIRS])
    ap.add_argument("--compare", action="store_true",
                    help="side by side: each tool its own QDQ model (see the module docstring)")
    ap.add_argument("--compare-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config")
    ap.add_argument("--src")
    ap.add_argument("--data")
    ap.add_argument("--model-path", help="for --compare: the ONNX model (default: the classifier)")
    ap.add_argument("--n-cal", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--configs", nargs="+",
                    default=["qatcore:min_max", "qatcore:percentile", "qatcore:mse",
                             "qatcore:entropy_signed", "ort:MinMax", "ort:Percentile"])
    ap.add_argument("--nncf-python", help="a python with nncf installed (a separate venv)")
    args = ap.parse_args()
    if args.compare_child:
        compare_child(args)
        return
    if args.compare:
        if args.model not in ("cls", "det", "rec"):
            raise SystemExit("--model: cls, det or rec")
        compare(args)
        return
    if args.child:
        args.n = args.n[0]
        child(args)
        return
    import logging
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    logging.disable(logging.WARNING)
    src = CLS if args.model == "cls" else Path(args.det_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = str(Path(tmp) / "pre.onnx")
        quant_pre_process(str(src), pre, skip_symbolic_shape=True)
        m = onnx.load(pre)
        if max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 13:
            onnx.save(onnx.version_converter.convert_version(m, 13), pre)
        print(f"model {src.name}, batch {BATCH}, CPU-only onnxruntime; s = calibration seconds, "
              f"MiB = peak RSS of the process (QDQ write included), write = shared QDQ writer")
        print(f"{'method':32s} {'n':>5s} | {'ort s':>7s} {'ort MiB':>8s} {'ort top1':>8s} {'ort dB':>7s} | "
              f"{'qat s':>7s} {'qat MiB':>8s} {'qat top1':>8s} {'qat dB':>7s} | speed-up | write s")
        for n in args.n:
            r = run_child("infer", "-", {}, args.model, pre, n, "-")
            if "error" in r:
                raise SystemExit(f"the float model does not run on these inputs: {r['error']}")
            print(f"{'(float inference + input generation only)':32s} {n:5d} | {r['seconds']:7.2f} "
                  f"{r['peak_mib']:8.0f}", flush=True)
        for label, ort_side, qat_side in PAIRS:
            if label not in args.methods:
                continue
            for n in args.n:
                cells = []
                results = {}
                for impl, side in (("ort", ort_side), ("qatcore", qat_side)):
                    if side is None:
                        results[impl] = None
                        cells.append(f"{'-':>7s} {'-':>8s} {'-':>8s} {'-':>7s}")
                        continue
                    out = str(Path(tmp) / f"{impl}.onnx")
                    r = run_child(impl, side[0], side[1], args.model, pre, n, out)
                    if "error" in r:
                        results[impl] = None
                        cells.append(f"error: {r['error']}")
                        continue
                    top1, db = accuracy(src, out, args.model)
                    results[impl] = r
                    t1 = "-" if top1 is None else f"{top1:.3f}"
                    cells.append(f"{r['seconds']:7.2f} {r['peak_mib']:8.0f} {t1:>8s} {db:7.2f}")
                sp = (f"{results['ort']['seconds'] / results['qatcore']['seconds']:.1f}x"
                      if results.get("ort") and results.get("qatcore") else "-")
                w = results.get("qatcore") or results.get("ort") or {}
                print(f"{label:32s} {n:5d} | {cells[0]} | {cells[1]} | {sp:>8s} | "
                      f"{w.get('write', float('nan')):.2f}", flush=True)


if __name__ == "__main__":
    main()
