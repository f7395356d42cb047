#!/usr/bin/env python
"""qatcore.torch side by side with PyTorch, one thread.

1. fake quantize forward + backward (x requires grad, per tensor, uint8 codes):
   ``qatcore.torch.fake_quantize`` vs ``torch.fake_quantize_per_tensor_affine`` at 1 000,
   2^16 and 2^20 elements (both bit-identical: the torch numerics preset).
2. one QAT training step (forward, cross entropy, backward, SGD) of an MLP
   784-512-512-10, batch 256: ``qatcore.torch.prepare_qat`` (quantizers frozen) vs
   ``torch.ao.quantization.prepare_qat`` with the x86 QAT qconfig (its fused fake-quant
   modules, observers disabled after calibration for the like-for-like row; observing
   every step as torch.ao does by default for the second row), plus the float step.

Times are medians of repeated runs after warm-up (spread = min-max); the ratio is the
peer's median over qatcore's, measured in the same run.

    python bench/bench_torch.py [--quick] [--repeat N]
"""

import argparse
import os
import statistics
import sys
import time
import warnings

# Prefer the checkout's package when run from a source tree with built kernels.
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_pkg = os.path.join(root, "qatcore")
if (os.path.isdir(_pkg) and any(f.startswith("_kernels") and f.endswith((".so", ".pyd"))
                                for f in os.listdir(_pkg)) and root not in sys.path):
    sys.path.insert(0, root)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import qatcore  # noqa: E402
import qatcore.torch as qt  # noqa: E402
from qatcore import _backend  # noqa: E402


def timeit(fn, repeat, number):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times), min(times), max(times)


def bench_fake_quantize(sizes, repeat):
    rows = []
    for n in sizes:
        x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 2
        g = torch.randn(n, generator=torch.Generator().manual_seed(n + 1))
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()

        def ours():
            a.grad = None
            qt.fake_quantize(a, 0.02, 128, 0, 255).backward(g)

        def theirs():
            b.grad = None
            torch.fake_quantize_per_tensor_affine(b, 0.02, 128, 0, 255).backward(g)

        ours()
        theirs()
        assert torch.equal(a.grad, b.grad)
        number = max(5, int(2e5 // n))
        t_ours = timeit(ours, repeat, number)
        t_theirs = timeit(theirs, repeat, number)
        rows.append((f"fake_quantize fwd+bwd n={n}", t_ours, t_theirs))
    return rows


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def step_fn(model, X, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()

    return step


def ao_model(observe):
    from torch.ao import quantization as tq

    model = mlp().train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tq.prepare_qat(model, inplace=False)
    if not observe:
        model.apply(tq.disable_observer)
    return model


def bench_step(batch, repeat):
    g = torch.Generator().manual_seed(1)
    X = torch.rand(batch, 784, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    float_model = mlp().train()
    ours = qt.prepare_qat(mlp())
    with torch.no_grad():
        ours(X)
    qt.freeze(ours)
    ours.train()
    ao_frozen = ao_model(observe=True)
    with torch.no_grad():
        ao_frozen(X)                          # calibrate, then freeze the observers
    from torch.ao import quantization as tq
    ao_frozen.apply(tq.disable_observer)
    ao_observing = ao_model(observe=True)
    number = 3
    t_float = timeit(step_fn(float_model, X, y), repeat, number)
    t_ours = timeit(step_fn(ours, X, y), repeat, number)
    t_ao = timeit(step_fn(ao_frozen, X, y), repeat, number)
    t_ao_obs = timeit(step_fn(ao_observing, X, y), repeat, number)
    b = f"b{batch}"
    rows = [(f"QAT step MLP 784-512-512-10 {b} (frozen)", t_ours, t_ao),
            ("  vs torch.ao observing every step", t_ours, t_ao_obs)]
    # The quantization cost alone: step minus the float step (same batches, same run).
    def over(t):
        d = [max(v - f, 1e-9) for v, f in zip(t, t_float)]
        return d[0], min(d[1:]), max(d[1:])
    rows += [("QAT overhead over float step (frozen)", over(t_ours), over(t_ao)),
             ("  vs torch.ao observing every step", over(t_ours), over(t_ao_obs))]
    return rows, t_float


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (CI smoke)")
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    qatcore.set_num_threads(1)
    repeat = 3 if args.quick else args.repeat
    sizes = [1000, 1 << 12] if args.quick else [1000, 1 << 16, 1 << 20]
    print(f"qatcore {qatcore.__version__} kernels {_backend.kernels.TARGET}, torch "
          f"{torch.__version__}, 1 thread; median (min-max) of {repeat} runs")
    rows = bench_fake_quantize(sizes, repeat)
    step_rows, t_float = bench_step(32 if args.quick else 256, repeat)
    rows += step_rows
    head = (f"{'case':<44} {'qatcore.torch µs':>28} {'torch µs':>28} {'ratio':>7} "
            f"{'best':>6}")
    print(head)
    print("-" * len(head))
    for name, (om, olo, ohi), (tm, tlo, thi) in rows:
        print(f"{name:<44} {om * 1e6:10,.1f} ({olo * 1e6:,.0f}-{ohi * 1e6:,.0f}) "
              f"{tm * 1e6:10,.1f} ({tlo * 1e6:,.0f}-{thi * 1e6:,.0f}) {tm / om:6.2f}x "
              f"{tlo / olo:5.2f}x")
    print("ratio = torch median / qatcore median; best = ratio of the fastest runs "
          "(the least disturbed on a shared machine)")
    print(f"float training step (no quantization): {t_float[0] * 1e6:,.1f} µs "
          f"(best {t_float[1] * 1e6:,.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
