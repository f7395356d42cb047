"""``qatcore demo --torch``: the digits demo trained in PyTorch with qatcore.torch.

1. the UCI digits (as ``qatcore demo``), split 80/20 stratified and seeded;
2. a torch MLP 64-128-64-10 trained in float (Adam, cosine schedule, batch 32);
3. PTQ: :func:`qatcore.torch.prepare_qat` (uint8 activations per tensor, int8 weights
   per channel, torch numerics), calibrated on the training set, frozen, converted
   to integer-only (:func:`qatcore.torch.convert` with ``integer=True``);
4. QAT: the same model fine-tuned a few epochs through qatcore's kernels (clipped STE),
   then converted integer-only again;
5. one table as ``qatcore demo``: accuracy and ms per batch of 64 for each model, how
   often integer-only and fake-quant predictions agree, and the cost of a QAT step
   relative to a float step.

The integer-only models run without torch: int8 codes in, int8 codes out
(``forward_int8``), fixed-point requantization between layers.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time


from .mlp import DemoResult, load_digits, split_dataset, time_per_batch

__all__ = ["run_demo", "main"]


def _torch():
    try:
        import torch
    except ImportError:
        raise RuntimeError('qatcore demo --torch needs PyTorch: pip install "qatcore[torch]"') \
            from None
    return torch


def _mlp(torch, sizes=(64, 128, 64, 10)):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _train(torch, model, X, y, epochs, lr, seed, label, quiet, batch_size=32):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(X), generator=g)
        total = 0.0
        for i in range(0, len(X), batch_size):
            idx = perm[i:i + batch_size]
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if not quiet:
            print(f"[{label}] epoch {epoch + 1}/{epochs}  loss {total / len(X):.4f}  "
                  f"({time.perf_counter() - t0:.2f} s)", file=sys.stderr, flush=True)
    model.eval()


def _predict(torch, model, X):
    model.eval()
    with torch.no_grad():
        return model(X).argmax(1).numpy()


def _step_time(torch, model, X, y, steps=30, repeats=5, batch_size=32):
    model = copy.deepcopy(model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, len(X), (batch_size,), generator=g) for _ in range(steps)]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for idx in batches:
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def run_demo(*, epochs: int = 15, qat_epochs: int = 3, seed: int = 0, quiet: bool = True,
             measure_steps: bool = True, eval_batch: int = 64) -> DemoResult:
    """Run the torch demo and return its figures (see the module docstring)."""
    torch = _torch()
    import qatcore.torch as qt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        X, y = load_digits()
        Xtr, ytr, Xte, yte = (torch.from_numpy(a) for a in split_dataset(X, y, 0.2, seed))
        res = DemoResult(bits=8, n_test=len(yte))
        y_np = yte.numpy()

        model = _mlp(torch)
        _train(torch, model, Xtr, ytr, epochs, 1e-2, seed + 1, "float", quiet)
        pred_float = _predict(torch, model, Xte)
        acc_float = float((pred_float == y_np).mean())

        def fwd(m):
            return lambda b: m(torch.from_numpy(b))

        with torch.no_grad():
            res.rows.append(("float32", "torch float", acc_float,
                             time_per_batch(fwd(model), Xte.numpy(), eval_batch)))

        qat = qt.prepare_qat(model)
        with torch.no_grad():
            qat(Xtr)                                  # calibrate every quantizer
        qt.freeze(qat)
        ptq = qt.convert(qat, integer=True)
        first = qat[0].input_fq

        def int_predict(m):
            return lambda b: m.forward_int8(first.quantize_int8(b)).argmax(1)

        pred_ptq = int_predict(ptq)(Xte.numpy())
        res.rows.append(("PTQ int8", "integer-only (qatcore)", float((pred_ptq == y_np).mean()),
                         time_per_batch(int_predict(ptq), Xte.numpy(), eval_batch)))

        _train(torch, qat, Xtr, ytr, qat_epochs, 1e-4, seed + 2, "QAT int8", quiet)
        pred_sim = _predict(torch, qat, Xte)
        acc_sim = float((pred_sim == y_np).mean())
        with torch.no_grad():
            res.rows.append(("QAT int8", "fake-quant torch (qatcore.torch)", acc_sim,
                             time_per_batch(fwd(qat), Xte.numpy(), eval_batch)))
        integer = qt.convert(qat, integer=True)
        pred_int = int_predict(integer)(Xte.numpy())
        acc_int = float((pred_int == y_np).mean())
        res.rows.append(("QAT int8", "integer-only (qatcore)", acc_int,
                         time_per_batch(int_predict(integer), Xte.numpy(), eval_batch)))
        res.agreement = float((pred_int == pred_sim).mean())
        res.accuracies = {"float": acc_float, "ptq": res.rows[1][2], "qat_sim": acc_sim,
                          "qat_int": acc_int}
        if measure_steps:
            res.float_step = _step_time(torch, model, Xtr, ytr)
            res.qat_step = _step_time(torch, qat, Xtr, ytr)
        return res
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    """Entry point of ``qatcore demo --torch``."""
    p = argparse.ArgumentParser(prog="qatcore demo --torch",
                                description="The digits demo trained in PyTorch with "
                                            "qatcore.torch: float, PTQ, QAT, integer-only.")
    p.add_argument("--epochs", type=int, default=15, help="float epochs (default 15)")
    p.add_argument("--qat-epochs", type=int, default=3, help="QAT epochs (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.qat_epochs < 0:
        print("qatcore demo --torch: --epochs must be >= 1 and --qat-epochs >= 0",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        res = run_demo(epochs=args.epochs, qat_epochs=args.qat_epochs, seed=args.seed,
                       quiet=args.quiet)
    except RuntimeError as exc:
        print(f"qatcore demo --torch: {exc}", file=sys.stderr)
        return 2
    print(f"qatcore demo --torch: UCI digits, torch MLP 64-128-64-10, int8 weights per "
          f"channel, uint8 activations, torch numerics, seed {args.seed}")
    print(res.table())
    print(f"integer-only vs fake-quant predictions agree on {100 * res.agreement:.2f}% "
          f"of the test set")
    print(f"training step (batch 32): float {1e6 * res.float_step:.0f} us, "
          f"QAT {1e6 * res.qat_step:.0f} us  ->  {res.step_ratio:.2f}x")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
