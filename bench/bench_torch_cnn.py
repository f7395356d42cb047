#!/usr/bin/env python
"""QAT training step of CNNs: qatcore.torch (whole-graph capture) vs PyTorch's PT2E QAT
vs the float step, on 1 and 2 threads.

Models: ResNet-8 (MLPerf Tiny; 32x32x3, batch 64) and DS-CNN (49x10x1, 64 channels, 4
depthwise-separable blocks, batch 100). One step = forward, cross entropy, backward,
SGD update, in train mode (BatchNorm batch statistics).

* float: the model as written.
* qatcore frozen: ``qatcore.torch.prepare_qat(model, x)`` calibrated on one batch, then
  ``freeze`` (qparams fixed, the usual QAT phase); qatcore observing: quantizers still
  calibrating (observe every step).
* PT2E: ``torch.export`` -> torchao's ``prepare_qat_pt2e`` with the X86Inductor quantizer
  (QAT config; torch 2.13 ships PT2E in torchao, ``pip install torchao``), observing
  every step as it does by default, and with observers disabled after one batch.

Overhead = step - float step; the ratio is PT2E's overhead over qatcore's.
Times are the best of `--repeat` runs of `--number` steps after warm-up (the best, not
the median: on a shared machine the other processes only ever add time).

    python bench/bench_torch_cnn.py [--quick] [--threads 1 2] [--clock wall|cpu]
"""

import argparse
import copy
import os
import sys
import time
import warnings

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_pkg = os.path.join(root, "qatcore")
if (os.path.isdir(_pkg) and any(f.startswith("_kernels") and f.endswith((".so", ".pyd"))
                                for f in os.listdir(_pkg)) and root not in sys.path):
    sys.path.insert(0, root)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import qatcore.torch as qt  # noqa: E402


def _cbr(i, o, k=3, s=1, p=1, g=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, p, groups=g, bias=False), nn.BatchNorm2d(o),
                         nn.ReLU())


class DSCNN(nn.Module):
    def __init__(self, ch=64, blocks=4, classes=12):
        super().__init__()
        self.stem = _cbr(1, ch, (10, 4), (2, 2), (5, 1))
        layers = []
        for _ in range(blocks):
            layers += [_cbr(ch, ch, 3, 1, 1, g=ch), _cbr(ch, ch, 1, 1, 0)]
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d((25, 5))
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class BasicBlock(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.shortcut = None
        if s != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet8(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.stack = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                                   BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.stack(self.stem(x)), 1), 1))


MODELS = {"resnet8": (ResNet8, (3, 32, 32), 64, 10), "ds_cnn": (DSCNN, (1, 49, 10), 100, 12)}


def _step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    if isinstance(model, torch.fx.GraphModule) and not hasattr(model, "qat_left_float"):
        from torchao.quantization.pt2e import move_exported_model_to_train
        move_exported_model_to_train(model)          # PT2E: train() is refused
    else:
        model.train()

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


CLOCK = time.perf_counter


def _time(fn, repeat, number):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        t0 = CLOCK()
        for _ in range(number):
            fn()
        times.append((CLOCK() - t0) / number)
    return min(times)


def _pt2e(model, x, observe):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    exported = torch.export.export(model, (x,)).module()
    prepared = prepare_qat_pt2e(exported, quantizer)
    prepared(x)
    if not observe:
        from torchao.quantization.pt2e import disable_observer
        prepared.apply(disable_observer)
    return prepared


def bench(name, threads, repeat, number):
    make, shape, batch, classes = MODELS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = make()
    x = torch.randn(batch, *shape)
    y = torch.randint(0, classes, (batch,))
    rows = {}
    rows["float"] = _time(_step_fn(copy.deepcopy(model), x, y), repeat, number)
    ours = qt.prepare_qat(copy.deepcopy(model), x)
    ours(x)
    observing = copy.deepcopy(ours)
    qt.freeze(ours)
    rows["qatcore frozen"] = _time(_step_fn(ours, x, y), repeat, number)
    rows["qatcore observing"] = _time(_step_fn(observing, x, y), repeat, number)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows["PT2E observing"] = _time(_step_fn(_pt2e(copy.deepcopy(model), x, True), x, y),
                                           repeat, number)
            rows["PT2E frozen"] = _time(_step_fn(_pt2e(copy.deepcopy(model), x, False), x, y),
                                        repeat, number)
    except ImportError as exc:
        print(f"  PT2E unavailable ({exc}); pip install torchao", file=sys.stderr)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--number", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="1 repeat of 2 steps (smoke test)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or the process's CPU time (steadier on a loaded machine; "
                        "with 2 threads it sums both)")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.quick:
        args.repeat, args.number = 1, 2
    print(f"torch {torch.__version__}, CPU: {_cpu()}, clock: {args.clock}")
    print(f"{'model':<8} {'thr':>3} {'variant':<18} {'ms/step':>9} {'overhead ms':>12} "
          f"{'vs float':>9}")
    for name in args.models:
        for threads in args.threads:
            rows = bench(name, threads, args.repeat, args.number)
            base = rows["float"]
            for variant, t in rows.items():
                print(f"{name:<8} {threads:>3} {variant:<18} {1e3 * t:9.2f} "
                      f"{1e3 * (t - base):12.2f} {t / base:8.2f}x")
            for mode in ("frozen", "observing"):
                ours, peer = rows.get(f"qatcore {mode}"), rows.get(f"PT2E {mode}")
                if ours is not None and peer is not None and ours > base:
                    print(f"{'':<8} {'':>3} overhead PT2E / qatcore ({mode}): "
                          f"{(peer - base) / (ours - base):.2f}")
    return 0


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
