"""``qatcore demo --torch --cnn``: a small CNN trained in PyTorch, quantized with
qatcore.torch's whole-graph QAT and deployed as an integer graph (and a .tflite in TFLM).

1. the UCI digits (8x8, as ``qatcore demo``), split 80/20 stratified and seeded;
2. a CNN with conv-BN-ReLU, a depthwise-separable block, a residual add written
   ``F.relu(x + y)``, max and global average pooling, trained in float (Adam, cosine);
3. PTQ: :func:`qatcore.torch.prepare_qat` with an example input (torch.fx capture,
   BatchNorm folded, int8 weights per channel, int8 activations with zero point),
   calibrated on the training set, frozen, converted to a ``qatcore.QuantizedModel``;
4. QAT: the same model fine-tuned (BatchNorm statistics frozen) and converted again;
5. the integer model in TensorFlow Lite Micro (``.tflite`` from ``to_tflite``);
6. one table: accuracy and ms per batch of 64, how often the integer model and the
   fake-quant torch model predict the same class and give identical int8 output codes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .mlp import load_digits, split_dataset, time_per_batch
from .torch_mlp import _torch, _train

__all__ = ["run_demo", "main", "CnnDemoResult"]


def _model(torch):
    """The demo CNN: 8x8x1 -> 16 -> dw-separable 32 -> maxpool -> residual 32 -> GAP -> 10."""
    nn, F = torch.nn, torch.nn.functional

    def cbr(i, o, k=3, g=1):
        return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, groups=g, bias=False),
                             nn.BatchNorm2d(o), nn.ReLU())

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(1, 16)
            self.dw = cbr(16, 16, 3, g=16)
            self.pw = cbr(16, 32, 1)
            self.res1 = cbr(32, 32)
            self.res2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(32))
            self.drop = nn.Dropout(0.1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.pw(self.dw(self.stem(x)))
            x = F.max_pool2d(x, 2)
            x = F.relu(x + self.res2(self.res1(x)))
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.fc(self.drop(x))

    return DigitsCNN()


@dataclass
class CnnDemoResult:
    """Figures of one run of the CNN demo."""
    rows: List[Tuple[str, str, float, float]] = field(default_factory=list)
    accuracies: Dict[str, float] = field(default_factory=dict)
    #: integer model vs fake-quant torch model: same predicted class / identical codes
    argmax_agreement: float = float("nan")
    code_agreement: float = float("nan")
    #: TFLM vs forward_int8 (identical output codes), None when TFLM is not installed
    tflm_agreement: Optional[float] = None
    n_test: int = 0
    model: object = None          # the QAT model as a qatcore.QuantizedModel

    def table(self) -> str:
        head = f"{'model':<12} {'path':<48} {'accuracy':>9} {'ms/batch':>9}"
        lines = [head, "-" * len(head)]
        for name, path, acc, t in self.rows:
            ms = f"{'-':>9}" if math.isnan(t) else f"{1e3 * t:9.3f}"
            lines.append(f"{name:<12} {path:<48} {100 * acc:8.2f}% {ms}")
        return "\n".join(lines)


def _tflm_predict(model_int, x_q) -> Optional[np.ndarray]:
    try:
        from tflite_micro import runtime
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits_cnn.tflite")
        model_int.to_tflite(path)
        interp = runtime.Interpreter.from_file(path)
        outs = []
        for i in range(len(x_q)):
            interp.set_input(x_q[i:i + 1], 0)
            interp.invoke()
            outs.append(np.array(interp.get_output(0)).reshape(1, -1))
    return np.concatenate(outs)


def run_demo(*, epochs: int = 30, qat_epochs: int = 5, seed: int = 0, quiet: bool = True,
             eval_batch: int = 64, tflm: bool = True) -> CnnDemoResult:
    """Run the CNN demo and return its figures (see the module docstring)."""
    torch = _torch()
    import qatcore.torch as qt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        X, y = load_digits()
        Xtr, ytr, Xte, yte = split_dataset(X, y, 0.2, seed)
        Xtr_t = torch.from_numpy(Xtr.reshape(-1, 1, 8, 8))
        Xte_np = np.ascontiguousarray(Xte.reshape(-1, 1, 8, 8))
        Xte_t = torch.from_numpy(Xte_np)
        ytr_t = torch.from_numpy(ytr)
        res = CnnDemoResult(n_test=len(yte))

        def acc(pred):
            return float((pred == yte).mean())

        def torch_fn(m):
            def f(b):
                with torch.no_grad():
                    return m(torch.from_numpy(b)).argmax(1).numpy()
            return f

        model = _model(torch)
        _train(torch, model, Xtr_t, ytr_t, epochs, 3e-3, seed + 1, "float", quiet)
        pred_float = torch_fn(model)(Xte_np)
        res.rows.append(("float32", "torch", acc(pred_float),
                         time_per_batch(torch_fn(model), Xte_np, eval_batch)))

        # PTQ: capture, calibrate on the training set (running BN statistics), freeze
        qat = qt.prepare_qat(model, Xtr_t[:2])
        qt.freeze_bn_stats(qat)
        qat.eval()
        with torch.no_grad():
            for i in range(0, len(Xtr_t), 256):
                qat(Xtr_t[i:i + 256])
        qt.freeze(qat)
        input_fq = qat.get_submodule(next(n for n in qat.graph.nodes
                                          if n.op == "call_module").target)

        def codes(b):
            return input_fq.quantize_int8(b).transpose(0, 2, 3, 1)

        ptq = qt.convert(qat, integer=True)

        def int_fn(m):
            return lambda b: m.forward_int8(codes(b)).argmax(1)

        res.rows.append(("PTQ int8", "integer-only (qatcore QuantizedModel)",
                         acc(int_fn(ptq)(Xte_np)), time_per_batch(int_fn(ptq), Xte_np,
                                                                   eval_batch)))

        # QAT: fine-tune with frozen quantizers and BN statistics
        _train(torch, qat, Xtr_t, ytr_t, qat_epochs, 1e-4, seed + 2, "QAT int8", quiet)
        with torch.no_grad():
            y_sim = qat(Xte_t)
        pred_sim = y_sim.argmax(1).numpy()
        res.rows.append(("QAT int8", "fake-quant torch (qatcore.torch)", acc(pred_sim),
                         time_per_batch(torch_fn(qat), Xte_np, eval_batch)))
        model_int = qt.convert(qat, integer=True)
        out_q = model_int.forward_int8(codes(Xte_np))
        pred_int = out_q.argmax(1)
        res.rows.append(("QAT int8", "integer-only (qatcore QuantizedModel)", acc(pred_int),
                         time_per_batch(int_fn(model_int), Xte_np, eval_batch)))
        out_spec = model_int.tensors[model_int.outputs[0]]
        sim_codes = (np.round(y_sim.numpy() * (np.float32(1) / np.float32(out_spec.scale)))
                     .astype(np.int64) + out_spec.zero_point)
        res.argmax_agreement = float((pred_int == pred_sim).mean())
        res.code_agreement = float((sim_codes == out_q).all(axis=1).mean())
        if tflm:
            out_tflm = _tflm_predict(model_int, codes(Xte_np))
            if out_tflm is not None:
                res.rows.append(("QAT int8", ".tflite in TensorFlow Lite Micro",
                                 acc(out_tflm.argmax(1)), float("nan")))
                res.tflm_agreement = float((out_tflm == out_q).all(axis=1).mean())
        res.accuracies = {"float": res.rows[0][2], "ptq": res.rows[1][2],
                          "qat_sim": acc(pred_sim), "qat_int": acc(pred_int)}
        res.model = model_int
        return res
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    """Entry point of ``qatcore demo --torch --cnn``."""
    p = argparse.ArgumentParser(prog="qatcore demo --torch --cnn",
                                description="A CNN on the UCI digits trained in PyTorch with "
                                            "qatcore.torch: float, PTQ, QAT, integer-only, "
                                            "TFLM.")
    p.add_argument("--epochs", type=int, default=30, help="float epochs (default 30)")
    p.add_argument("--qat-epochs", type=int, default=5, help="QAT epochs (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tflm", action="store_true", help="skip the TFLM row")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.qat_epochs < 0:
        print("qatcore demo --torch --cnn: --epochs must be >= 1 and --qat-epochs >= 0",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        res = run_demo(epochs=args.epochs, qat_epochs=args.qat_epochs, seed=args.seed,
                       quiet=args.quiet, tflm=not args.no_tflm)
    except RuntimeError as exc:
        print(f"qatcore demo --torch --cnn: {exc}", file=sys.stderr)
        return 2
    print(f"qatcore demo --torch --cnn: UCI digits 8x8, CNN conv-BN-ReLU / depthwise-"
          f"separable / residual F.relu(x + y) / pooling, int8 per-channel weights, int8 "
          f"activations, seed {args.seed}, {res.n_test} test images")
    print(res.table())
    print(f"integer model vs fake-quant torch model: same class on "
          f"{100 * res.argmax_agreement:.2f}%, identical int8 output codes on "
          f"{100 * res.code_agreement:.2f}% of the test set")
    if res.tflm_agreement is not None:
        print(f"TFLM vs forward_int8: identical int8 output codes on "
              f"{100 * res.tflm_agreement:.2f}%")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
