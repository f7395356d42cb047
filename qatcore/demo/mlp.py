"""``qatcore demo``: float vs post-training quantization vs QAT vs integer-only, on digits.

The whole job in one command, with numpy and qatcore only:

1. load the UCI handwritten digits (8×8 images, 1 797 samples, shipped in
   ``qatcore/data``), split 80/20 (stratified, seeded);
2. train an MLP 64→128→64→10 in float (:mod:`qatcore.nn`, Adam);
3. post-training quantization (PTQ): calibrate one :class:`FakeQuantize` per layer
   input on the training set (min/max observer), quantize the weights per tensor
   (int8, or int4 with ``--bits 4``) and convert every layer to integer inference;
4. quantization-aware training (QAT): a copy of the float model with
   :class:`FakeQuantize` on every weight and every layer input, fine-tuned for a few
   epochs with the straight-through estimator (``--lsq``: learned step sizes, Esser et
   al. 2020); convert it the same way;
5. evaluate on the held-out split and print one table: accuracy and inference time per
   batch for float, PTQ, QAT (float-simulated) and QAT integer-only, plus how often the
   integer-only and simulated predictions agree, and the cost of a QAT training step
   relative to a float one.

Integer-only inference is a :class:`qatcore.QuantizedSequential` built by ``from_qat``
(int8 in, int8 out, TFLite's fixed-point requantization between layers, ReLU as an
output clamp); its output is quantized to int8 with an asymmetric min/max quantizer
calibrated on the QAT model's logits over the training set, and the prediction is the
argmax of the int8 output codes.  ``run_demo(...).model`` is that integer model, ready
for ``save`` / ``to_tflite``.

Details: float training is 20 epochs of Adam (lr 1e-2, cosine schedule, batch 32);
QAT fine-tuning 5 epochs (lr 2e-4) with every quantizer's range frozen after
calibration (clipped STE); with ``--lsq`` the step sizes are learned too, each by its
own Adam whose learning rate is 1e-2 × its initial scale.  numpy's BLAS is kept on one
thread during the run (tiny matrices).  ``ms/batch`` is the best of 5 passes over the
test set in batches of 64; the step timing alternates float and QAT rounds and keeps
the best round of each.  Progress (one line per epoch) goes to stderr; ``--quiet`` silences it.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from qatcore import FakeQuantConfig, FakeQuantize, QuantizedSequential, nn

__all__ = ["main", "load_digits", "split_dataset", "build_mlp", "train", "calibrate",
           "build_qat_model", "output_quantizer", "convert", "predict_int", "run_demo",
           "DemoResult"]

_DATA_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "digits.csv.gz")
LAYER_SIZES = (64, 128, 64, 10)


# --------------------------------------------------------------------------- BLAS threads

class _single_threaded_blas:
    """Run numpy's BLAS on one thread inside the block (restored after), with
    threadpoolctl (``threadpool_limits(1, "blas")``).

    The demo's matrices are tiny (batch 32-64, at most 128 columns): BLAS threads only
    add synchronisation, and on a loaded 2-core machine a preempted BLAS worker turns a
    20 µs product into milliseconds.  Without threadpoolctl the BLAS keeps its threads
    and a note says so (unless `quiet`).
    """

    def __init__(self, quiet: bool = True):
        self.quiet = quiet
        self._limits = None

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            _log("note: threadpoolctl is not installed, so numpy's BLAS keeps its default "
                 "thread count (timings may be noisier): pip install threadpoolctl", self.quiet)
            return self
        self._limits = threadpool_limits(1, "blas")
        return self

    def __exit__(self, *exc):
        if self._limits is not None:
            self._limits.restore_original_limits()
        return False


# --------------------------------------------------------------------------- data

def load_digits(path: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits: ``X`` float32 (1797, 64) scaled to [0, 1], ``y`` int64.

    Reads the copy shipped in ``qatcore/data/digits.csv.gz`` (CC BY 4.0, see the README
    there); without it, falls back to ``sklearn.datasets.load_digits``.

    Raises
    ------
    RuntimeError
        Neither the shipped file nor scikit-learn is available.
    """
    path = _DATA_FILE if path is None else path
    if os.path.exists(path):
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",", dtype=np.float32)
        X, y = data[:, :-1], data[:, -1].astype(np.int64)
    else:
        try:
            from sklearn.datasets import load_digits as sk_load
        except ImportError:
            raise RuntimeError(
                f"the digits data file {path} is missing and scikit-learn is not installed; "
                "install it with `pip install qatcore[demo]` (or `pip install scikit-learn`)"
            ) from None
        bunch = sk_load()
        X, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    return np.ascontiguousarray(X / np.float32(16.0)), y


def split_dataset(X, y, test_fraction: float = 0.2, seed: int = 0):
    """Stratified seeded split: ``(X_train, y_train, X_test, y_test)``."""
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    test_idx = np.sort(np.concatenate(test_idx))
    train_idx = np.sort(np.concatenate(train_idx))
    return (np.ascontiguousarray(X[train_idx]), y[train_idx],
            np.ascontiguousarray(X[test_idx]), y[test_idx])


# --------------------------------------------------------------------------- models

def build_mlp(seed: int = 0, sizes: Sequence[int] = LAYER_SIZES) -> nn.Sequential:
    """Float MLP ``Linear → ReLU → … → Linear`` with the given layer sizes."""
    rng = np.random.default_rng(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, seed=rng))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(layers)


def linears(model: nn.Sequential) -> List[nn.Linear]:
    return [layer for layer in model.layers if isinstance(layer, nn.Linear)]


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def train(model, X, y, *, epochs: int, lr: float, batch_size: int = 32, seed: int = 0,
          label: str = "float", quiet: bool = True, optimizer=None,
          after_step: Optional[Callable[[], None]] = None, cosine: bool = True) -> List[float]:
    """Mini-batch training with Adam, learning rate on a cosine schedule from `lr` to 0
    (per epoch) unless ``cosine=False``; one progress line per epoch.  Returns the
    epoch losses."""
    rng = np.random.default_rng(seed)
    loss_fn = nn.SoftmaxCrossEntropy()
    opt = optimizer or nn.Adam(model.parameters(), model.grads(), lr=lr,
                               after_step=after_step)
    losses = []
    n = len(X)
    for epoch in range(epochs):
        if cosine:
            opt.lr = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        t0 = time.perf_counter()
        order = rng.permutation(n)
        total, correct = 0.0, 0
        for start in range(0, n, batch_size):
            b = order[start:start + batch_size]
            logits = model.forward(X[b])
            total += loss_fn.forward(logits, y[b]) * len(b)
            correct += int((logits.argmax(axis=1) == y[b]).sum())
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
        losses.append(total / n)
        _log(f"[{label}] epoch {epoch + 1}/{epochs}  loss {total / n:.4f}  "
             f"train acc {correct / n:.4f}  ({time.perf_counter() - t0:.2f} s)", quiet)
    return losses


def calibrate(model: nn.Sequential, X, batch_size: int = 256) -> None:
    """Run ``X`` through ``model`` in batches so calibrating quantizers observe it."""
    for start in range(0, len(X), batch_size):
        model.forward(X[start:start + batch_size])


def build_qat_model(float_model: nn.Sequential, weight_config: FakeQuantConfig,
                    act_config: FakeQuantConfig) -> nn.Sequential:
    """QAT copy of a float MLP: FakeQuantize on every layer input and every weight."""
    layers: list = []
    for layer in float_model.layers:
        if isinstance(layer, nn.Linear):
            layers.append(nn.ActivationFakeQuant(act_config))
            layers.append(nn.QATLinear.from_linear(layer, weight_config))
        else:
            layers.append(copy.deepcopy(layer))
    return nn.Sequential(layers)


def _activation_quants(model: nn.Sequential):
    return [layer.fake_quant for layer in model.layers
            if isinstance(layer, nn.ActivationFakeQuant)]


def _weight_quants(model: nn.Sequential):
    return [layer.weight_fake_quant for layer in model.layers
            if isinstance(layer, nn.QATLinear)]


class _LSQOptimizer:
    """Adam for the weights and biases, plus one Adam per learned quantizer whose
    learning rate is ``lsq_lr`` times that quantizer's initial scale: step sizes span
    two orders of magnitude across layers (≈0.004 for int8 weights, ≈0.05 for hidden
    activations), and Adam's steps have the size of its learning rate.  Setting ``lr``
    (the cosine schedule) scales every group alike; every step ends by clamping the
    scales (``FakeQuantize.clamp_parameters``)."""

    def __init__(self, model, lr: float, lsq_lr: float):
        quants = _activation_quants(model) + _weight_quants(model)
        ids = {id(p) for fq in quants for p in fq.parameters()}
        pairs = [(p, g) for p, g in zip(model.parameters(), model.grads()) if id(p) not in ids]
        self.main = nn.Adam([p for p, _ in pairs], [g for _, g in pairs], lr=lr)
        self.groups = [(nn.Adam(fq.parameters(), fq.grads(), lr=lsq_lr * fq.scale,
                                after_step=fq.clamp_parameters), lsq_lr * fq.scale)
                       for fq in quants if fq.parameters()]
        self._base = lr

    @property
    def lr(self) -> float:
        return self.main.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.main.lr = value
        for opt, base in self.groups:
            opt.lr = base * value / self._base

    def step(self) -> None:
        self.main.step()
        for opt, _ in self.groups:
            opt.step()


def lsq_optimizer(model, lr: float, lsq_lr: float = 1e-2) -> _LSQOptimizer:
    """The optimizer the demo uses with ``--lsq`` (see :class:`_LSQOptimizer`)."""
    return _LSQOptimizer(model, lr, lsq_lr)


# --------------------------------------------------------------------------- integer inference

def output_quantizer(qat_model: nn.Sequential, X, batch_size: int = 256) -> FakeQuantize:
    """The integer model's output quantization: an int8 asymmetric min/max
    :class:`FakeQuantize` that observed the QAT model's logits over `X`, frozen.
    (Asymmetric: the logits are not centred on 0, and only their argmax matters, so all
    256 codes go to their actual range.)"""
    fq = FakeQuantize(FakeQuantConfig(bits=8, symmetric=False))
    was_training = qat_model.training
    qat_model.eval()
    try:
        for start in range(0, len(X), batch_size):
            fq.fake_quantize(qat_model.forward(X[start:start + batch_size]))
    finally:
        qat_model.train(was_training)
    fq.disable_calibration()
    return fq


def convert(qat_model: nn.Sequential, X_calib) -> QuantizedSequential:
    """Integer-only version of a QAT MLP (``ActivationFakeQuant`` before every
    ``QATLinear``, quantizers frozen): :meth:`QuantizedSequential.from_qat`, with the
    output quantized as :func:`output_quantizer` calibrates it on `X_calib`."""
    return QuantizedSequential.from_qat(qat_model,
                                        output_fake_quant=output_quantizer(qat_model, X_calib))


def predict_int(model: QuantizedSequential, X) -> np.ndarray:
    """Predicted classes of the integer model: the argmax of its int8 output codes (the
    input is quantized, then everything runs in integers)."""
    return model.forward_int8(model.quantize_input(X)).argmax(axis=1)


# --------------------------------------------------------------------------- evaluation

def predict_float(model, X, batch_size: int = 64) -> np.ndarray:
    """Predicted classes of a float or QAT model (run in eval mode, restored after)."""
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([model.forward(X[i:i + batch_size]).argmax(axis=1)
                               for i in range(0, len(X), batch_size)])
    finally:
        model.train(was_training)


def time_per_batch(fn: Callable[[np.ndarray], object], X, batch_size: int = 64,
                   repeats: int = 5) -> float:
    """Best-of-`repeats` mean seconds per batch of `batch_size` rows over X."""
    batches = [X[i:i + batch_size] for i in range(0, len(X) - batch_size + 1, batch_size)]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, (time.perf_counter() - t0) / len(batches))
    return best


def _eval_time(model, X, batch_size: int) -> float:
    """time_per_batch of a float/QAT model's forward in eval mode."""
    model.eval()
    try:
        return time_per_batch(model.forward, X, batch_size)
    finally:
        model.train()


def step_times(models: Sequence, X, y, batch_size: int = 32, steps: int = 40,
               repeats: int = 7) -> List[float]:
    """Seconds of one training step (forward, loss, backward, Adam) of each model: the
    best of `repeats` rounds of `steps` steps (as ``timeit``: on a shared machine the
    fastest round is the one least disturbed).

    The models (deep copies: the callers' stay untouched) run the same batches in
    alternation, round by round, so that load changes hit them alike.
    """
    loss_fn = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(123)
    idx = [rng.integers(0, len(X), batch_size) for _ in range(steps)]
    batches = [(np.ascontiguousarray(X[i]), y[i]) for i in idx]
    runs = []
    for model in models:
        model = copy.deepcopy(model)
        runs.append((model, nn.Adam(model.parameters(), model.grads(), lr=1e-5)))
    times: List[List[float]] = [[] for _ in runs]
    for r in range(repeats + 1):
        for k, (model, opt) in enumerate(runs):
            t0 = time.perf_counter()
            for xb, yb in batches:
                loss_fn.forward(model.forward(xb), yb)
                model.backward(loss_fn.backward(), need_input_grad=False)
                opt.step()
            if r:                                    # round 0 warms up
                times[k].append((time.perf_counter() - t0) / steps)
    return [float(np.min(t)) for t in times]


@dataclass
class DemoResult:
    """Figures of one demo run (what the table shows)."""
    bits: int
    rows: List[Tuple[str, str, float, float]] = field(default_factory=list)
    agreement: float = float("nan")
    float_step: float = float("nan")
    qat_step: float = float("nan")
    accuracies: dict = field(default_factory=dict)
    n_test: int = 0
    #: The QAT model converted to integers (``QuantizedSequential``), ready to save/export.
    model: Optional[QuantizedSequential] = None

    @property
    def step_ratio(self) -> float:
        return self.qat_step / self.float_step

    def table(self) -> str:
        head = f"{'model':<28} {'path':<44} {'accuracy':>9} {'ms/batch':>9}"
        lines = [head, "-" * len(head)]
        for name, path, acc, t in self.rows:
            lines.append(f"{name:<28} {path:<44} {100 * acc:8.2f}% {1e3 * t:9.3f}")
        return "\n".join(lines)


def run_demo(*, bits: int = 8, epochs: int = 20, qat_epochs: int = 5, seed: int = 0,
             lsq: bool = False, quiet: bool = True, data=None, batch_size: int = 32,
             eval_batch: int = 64, measure_steps: bool = True,
             lsq_lr: float = 1e-2, qat_lr: float = 2e-4) -> DemoResult:
    """Run the whole pipeline and return its figures (see the module docstring).

    numpy's BLAS runs single-threaded meanwhile (see :class:`_single_threaded_blas`).
    """
    with _single_threaded_blas(quiet):
        return _run_demo(bits=bits, epochs=epochs, qat_epochs=qat_epochs, seed=seed, lsq=lsq,
                         quiet=quiet, data=data, batch_size=batch_size, eval_batch=eval_batch,
                         measure_steps=measure_steps, lsq_lr=lsq_lr, qat_lr=qat_lr)


def _run_demo(*, bits, epochs, qat_epochs, seed, lsq, quiet, data, batch_size, eval_batch,
              measure_steps, lsq_lr, qat_lr) -> DemoResult:
    if data is None:
        X, y = load_digits()
        data = split_dataset(X, y, 0.2, seed)
    Xtr, ytr, Xte, yte = data
    res = DemoResult(bits=bits, n_test=len(yte))

    # 1. float
    model = build_mlp(seed)
    train(model, Xtr, ytr, epochs=epochs, lr=1e-2, batch_size=batch_size, seed=seed + 1,
          label="float", quiet=quiet)
    pred_float = predict_float(model, Xte, eval_batch)
    acc_float = float((pred_float == yte).mean())
    res.rows.append(("float32", "numpy float", acc_float,
                     _eval_time(model, Xte, eval_batch)))

    # 2. PTQ: FakeQuantize on every layer input and weight; the activation observers
    #    see the training set, the weight observers the trained weights; freeze; convert.
    act_config = FakeQuantConfig(bits=8)
    weight_config = FakeQuantConfig(bits=bits)
    if lsq:
        act_config, weight_config = act_config.with_learnable(), weight_config.with_learnable()
    qat_model = build_qat_model(model, weight_config, act_config)
    calibrate(qat_model, Xtr)
    quants = _activation_quants(qat_model) + _weight_quants(qat_model)
    for fq in quants:
        fq.disable_calibration()
    ptq = convert(qat_model, Xtr)
    pred_ptq = predict_int(ptq, Xte)
    acc_ptq = float((pred_ptq == yte).mean())
    wname = f"int{bits} weights / int8 act" if bits != 8 else "int8"
    int_path = "integer-only (QuantizedSequential)"
    res.rows.append((f"PTQ {wname}", int_path, acc_ptq,
                     time_per_batch(lambda b: predict_int(ptq, b), Xte, eval_batch)))

    # 3. QAT fine-tuning: quantizer ranges frozen at their calibrated values (clipped
    #    STE); --lsq: the step sizes are learned too (LSQ).
    optimizer = lsq_optimizer(qat_model, qat_lr, lsq_lr) if lsq else None
    train(qat_model, Xtr, ytr, epochs=qat_epochs, lr=qat_lr, batch_size=batch_size,
          seed=seed + 2, label=f"QAT int{bits}" + (" LSQ" if lsq else ""), quiet=quiet,
          optimizer=optimizer)
    pred_sim = predict_float(qat_model, Xte, eval_batch)
    acc_sim = float((pred_sim == yte).mean())
    res.rows.append((f"QAT {wname}", "float-simulated (FakeQuantize)", acc_sim,
                     _eval_time(qat_model, Xte, eval_batch)))

    qint = convert(qat_model, Xtr)
    res.model = qint
    pred_int = predict_int(qint, Xte)
    acc_int = float((pred_int == yte).mean())
    res.rows.append((f"QAT {wname}", int_path, acc_int,
                     time_per_batch(lambda b: predict_int(qint, b), Xte, eval_batch)))
    res.agreement = float((pred_int == pred_sim).mean())
    res.accuracies = {"float": acc_float, "ptq": acc_ptq, "qat_sim": acc_sim, "qat_int": acc_int}

    if measure_steps:
        res.float_step, res.qat_step = step_times([model, qat_model], Xtr, ytr, batch_size)
    return res


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qatcore demo",
        description="Train an MLP on the UCI digits in float, quantize it after training "
                    "(PTQ) and with quantization-aware training (QAT), run it integer-only, "
                    "and print accuracy and speed of each.")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8,
                   help="weight bits (activations stay int8); default 8")
    p.add_argument("--epochs", type=int, default=20, help="float training epochs (default 20)")
    p.add_argument("--qat-epochs", type=int, default=5, help="QAT fine-tuning epochs (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--lsq", action="store_true",
                   help="learn the quantizer step sizes (LSQ, Esser et al. 2020)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    p.add_argument("--save", metavar="PATH", default=None,
                   help="save the QAT integer model (a QuantizedSequential .npz) to PATH, "
                        "for `qatcore inspect` / `qatcore export`")
    return p


def main(argv=None) -> int:
    """Entry point of ``qatcore demo``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.epochs < 1 or args.qat_epochs < 0:
        print("qatcore demo: --epochs must be >= 1 and --qat-epochs >= 0", file=sys.stderr)
        return 2
    if args.save is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.save))):
        print(f"qatcore demo: --save {args.save}: the directory does not exist", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = run_demo(bits=args.bits, epochs=args.epochs, qat_epochs=args.qat_epochs,
                   seed=args.seed, lsq=args.lsq, quiet=args.quiet)
    total = time.perf_counter() - t0
    print(f"qatcore demo: UCI digits (1797 samples, 8x8), MLP 64-128-64-10, "
          f"weights int{args.bits}, activations int8, seed {args.seed}"
          + (", LSQ" if args.lsq else ""))
    print(res.table())
    print(f"integer-only vs simulated QAT predictions agree on {100 * res.agreement:.2f}% "
          f"of the test set")
    print(f"training step (batch 32): float {1e6 * res.float_step:.0f} us, "
          f"QAT {1e6 * res.qat_step:.0f} us  ->  {res.step_ratio:.2f}x")
    if args.save is not None:
        try:
            res.model.save(args.save)
        except OSError as exc:
            print(f"qatcore demo: --save {args.save}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"integer model saved to {args.save} (qatcore inspect / qatcore export it)")
    print(f"total {total:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
