"""int8 linear layer (int8 x int8 -> int32 GEMM) benchmark table.

    python bench/bench_gemm.py                 # issue shapes, 1 thread
    python bench/bench_gemm.py --threads 1 2   # and 2 threads
    python bench/bench_gemm.py --quick         # small shapes, seconds
    python bench/bench_gemm.py --json out.json

Columns: median time (min–max), GOPS (2·M·K·N / median), the fraction of the measured
int8 peak (best GOPS of this machine's microkernel on cache-resident data, measured in
the same run), GOPS of the fastest call ("best": on a machine other processes share, the
least disturbed figure), and qatcore's speed-up over each peer (peer median / qatcore
median, and the same for the fastest calls).
Other processes on the same cores make every figure noisy: compare the spreads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qatcore import _backend  # noqa: E402
from qatcore.bench import gemm as _bench_gemm  # noqa: E402


def _us(s: float) -> str:
    return f"{s * 1e6:,.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="also write the records (and the peak) here")
    parser.add_argument("--no-peers", action="store_true", help="qatcore only")
    args = parser.parse_args(argv)

    peak = _bench_gemm.measure_peak()
    print(f"cpu: {platform.processor() or platform.machine()}, kernel target "
          f"{_backend.kernels.TARGET} ({_backend.kernels.GEMM_IMPL}), "
          f"measured microkernel peak {peak['gops']:.1f} GOPS (1 thread, {peak['shape']})")
    records = _bench_gemm.run(args.quick, tuple(args.threads), args.repeat,
                              peers=not args.no_peers)
    base = {(r["shape"], r["threads"]): r for r in records if r["impl"] == "qatcore"}
    head = (f"{'shape (M,K,N)':<18} {'thr':>3} {'impl':<14} {'median µs':>11} "
            f"{'(min–max)':>21} {'GOPS':>7} {'%peak':>6} {'best':>6} {'qatcore ×':>9} "
            f"{'best ×':>7} exact")
    print(head)
    print("-" * len(head))
    for r in records:
        q = base[(r["shape"], r["threads"])]
        speedup = r["median_s"] / q["median_s"]
        best_speedup = r["min_s"] / q["min_s"]
        exact = {True: "yes", False: "NO"}.get(r.get("exact"), "")
        print(f"{r['shape']:<18} {r['threads']:>3} {r['impl']:<14} {_us(r['median_s']):>11} "
              f"{'(' + _us(r['min_s']) + '–' + _us(r['max_s']) + ')':>21} {r['gops']:7.1f} "
              f"{100 * r['gops'] / peak['gops']:5.0f}% {r['gops_best']:6.1f} {speedup:9.2f} "
              f"{best_speedup:7.2f} {exact}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"peak": peak, "records": records}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
