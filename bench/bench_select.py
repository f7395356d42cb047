"""Benchmark select_order_stats (percentile order statistics) against numpy peers.

    PYTHONPATH=. python bench/bench_select.py [--sizes 20,24] [--repeat 30]

Data: float32 ~N(0,1) with a few outliers (+-1e30); ranks are the Rust percentile
indices floor(n*0.001), min(ceil(n*0.999), n-1).  Times are the minimum over repeats.
"""
import argparse
import time

import numpy as np

from qatcore import _backend


def best(f, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def rust_indices(n):
    nf = np.float32(n)
    lo = int(np.floor(nf * np.float32(0.001)))
    hi = min(int(np.ceil(nf * np.float32(0.999))), n - 1)
    return lo, hi


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,16,20,24")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--targets", default=",".join(_backend.available_targets()))
    ap.add_argument("--dist", default="normal", choices=["normal", "relu", "zeros60"])
    ap.add_argument("--ranks", default="rust", choices=["rust", "median"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'n':>10} {'target':>8} {'thr':>3} {'qatcore':>10} {'np.percentile':>14} "
          f"{'np.partition':>13} {'np.sort':>10} {'stable':>10} {'x pct':>7} {'x sort':>7} {'x stbl':>7}")
    for e in [int(s) for s in args.sizes.split(",")]:
        n = 2**e
        x = rng.standard_normal(n).astype(np.float32)
        if args.dist == "relu":
            x = np.maximum(x, 0)
        elif args.dist == "zeros60":
            x[rng.random(n) < 0.6] = 0
        x[rng.integers(0, n, 8)] = np.float32(1e30) * np.sign(rng.standard_normal(8)).astype(np.float32)
        k_lo, k_hi = rust_indices(n) if args.ranks == "rust" else (n // 2, n // 2)
        rep = max(3, args.repeat if n <= 2**20 else args.repeat // 6)
        t_pct = best(lambda: np.percentile(x, [0.1, 99.9]), max(3, rep // 3))
        t_part = best(lambda: np.partition(x, [k_lo, k_hi]), max(3, rep // 3))
        t_sort = best(lambda: np.sort(x), max(3, rep // 3))
        # a stable merge sort, as Rust's sort_by(partial_cmp) does
        t_stable = best(lambda: np.sort(x, kind="stable"), max(3, rep // 3))
        for target in args.targets.split(","):
            f = _backend.load(target).select_order_stats
            for nt in (1, 2):
                t = best(lambda: f(x, k_lo, k_hi, nt), rep)
                print(f"{n:>10} {target:>8} {nt:>3} {t*1e6:>8.0f}us {t_pct*1e6:>12.0f}us "
                      f"{t_part*1e6:>11.0f}us {t_sort*1e6:>8.0f}us {t_stable*1e6:>8.0f}us "
                      f"{t_pct/t:>6.1f}x {t_sort/t:>6.1f}x {t_stable/t:>6.1f}x")


if __name__ == "__main__":
    main()
