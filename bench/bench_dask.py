"""Scale figures for ``qatcore calibrate --dask-workers N`` (issue 10).

Writes GIB GiB of float32 .npy files (FILES files) into DIR, reads them once so they sit
in the page cache, then runs the command in three ways on the same files and options:
in-process, ``--dask-workers 1``, ``--dask-workers 2`` and ``--scheduler`` on a running
2-worker cluster.  Reports wall time, the command's own time (after interpreter start-up;
with ``--dask-workers`` it includes starting the cluster) and its throughput, and the peak resident memory (RSS, sampled every 20 ms with psutil) of the
command process and of each Dask worker process; checks the three JSON outputs agree.

    python bench/bench_dask.py --gib 4 --dir /tmp/qatcore-bench-dask
    python bench/bench_dask.py --gib 0.25 --files 2        # quick

RSS counts the file pages a process has mapped (the chunk it is reading), so a worker's
peak is bounded by the chunk size (64 MiB of float32 per task), not by the data size.
Times depend on what else runs on the machine: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # the scheduler started here unpickles qatcore's graph


def write_files(folder, gib, files, seed=0):
    os.makedirs(folder, exist_ok=True)
    per = int(gib * (1 << 30) / 4 / files)
    cols = 1 << 16
    rows = max(1, per // cols)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(files):
        path = os.path.join(folder, f"act{i:02d}.npy")
        paths.append(path)
        if os.path.exists(path):
            try:
                if np.load(path, mmap_mode="r").shape == (rows, cols):
                    continue
            except ValueError:
                pass
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
        for r in range(0, rows, 256):
            block = rng.standard_normal((min(256, rows - r), cols), dtype=np.float32)
            block *= np.float32(1 + i)
            out[r:r + block.shape[0]] = block
        out.flush()
        del out
    return paths


def warm(paths):
    buf = bytearray(1 << 24)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


class Sampler:
    """Peak RSS per process of a process tree, sampled in a thread."""

    def __init__(self, pid, interval=0.02, extra=()):
        import psutil

        self.root = psutil.Process(pid)
        self.extra = [psutil.Process(p) for p in extra]
        self.peak = {}
        self.kind = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.interval = interval
        self.thread.start()

    def run(self):
        import psutil

        while not self.stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True) + self.extra
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if p.pid not in self.kind:
                        cmd = " ".join(p.cmdline())
                        # Worker processes are multiprocessing children (spawn_main); the
                        # resource tracker and forkserver helpers are not workers.
                        self.kind[p.pid] = ("command" if p.pid == self.root.pid else
                                            "worker" if "spawn_main" in cmd
                                            and "resource_tracker" not in cmd else "other")
                except psutil.Error:
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            time.sleep(self.interval)

    def close(self):
        self.stop.set()
        self.thread.join()


def run(argv, label, extra=()):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "qatcore", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, extra=extra)
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.close()
    if proc.returncode != 0:
        raise SystemExit(f"{label}: exit {proc.returncode}: {err.strip()}")
    import re

    # The command's own summary: the time after start-up and file discovery (it includes
    # starting a --dask-workers cluster, not the interpreter's imports).
    found = re.search(r"calibrated .* in ([0-9.]+) s", err)
    work = float(found.group(1)) if found else float("nan")
    command = sampler.peak.get(proc.pid, 0)
    workers = sorted((v for k, v in sampler.peak.items()
                      if k != proc.pid and (sampler.kind.get(k) == "worker" or k in extra)),
                     reverse=True)
    return wall, work, command, workers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0, help="data size in GiB (default 4)")
    ap.add_argument("--files", type=int, default=8, help="number of .npy files (default 8)")
    ap.add_argument("--dir", default=os.path.join("/tmp", "qatcore-bench-dask"))
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    ap.add_argument("--json", dest="json_path", default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)

    print(f"writing {args.gib:g} GiB in {args.files} files to {args.dir} ...", flush=True)
    paths = write_files(args.dir, args.gib, args.files)
    nbytes = sum(os.path.getsize(p) for p in paths)
    warm(paths)
    print(f"{nbytes / 2**30:.2f} GiB of .npy in the page cache; cpus: {os.cpu_count()}", flush=True)

    configs = [("min_max, whole tensor", ["--observer", "min_max"]),
               ("percentile, --batch-axis 0", ["--observer", "percentile", "--batch-axis", "0"])]
    # A running 2-worker cluster too, to separate the cluster's start-up (~1-2 s) from
    # the calibration itself.
    from distributed import Client, LocalCluster

    env_old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + env_old if env_old else "")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    client = Client(cluster)
    worker_pids = list(client.run(os.getpid).values())
    modes = [("in-process", [], ()), ("--dask-workers 1", ["--dask-workers", "1"], ()),
             ("--dask-workers 2", ["--dask-workers", "2"], ()),
             ("--scheduler (2 running)", ["--scheduler", cluster.scheduler_address], worker_pids)]
    rows = []
    for cname, copts in configs:
        outputs = []
        for mname, mopts, extra in modes:
            out = os.path.join(args.dir, f"out-{len(rows)}.json")
            wall, work, command, workers = run(["calibrate", args.dir, *copts, *mopts, "--json", out],
                                               mname, extra)
            with open(out) as f:
                doc = json.load(f)
            doc.pop("qatcore_version", None)
            outputs.append(doc)
            rows.append({"config": cname, "mode": mname, "seconds": wall, "command_seconds": work,
                         "gb_per_s": nbytes / work / 1e9, "command_rss_mib": command / 2**20,
                         "worker_rss_mib": [w / 2**20 for w in workers]})
            r = rows[-1]
            wtxt = ", ".join(f"{w:.0f}" for w in r["worker_rss_mib"]) or "-"
            print(f"{cname:28s} {mname:24s} wall {wall:6.2f} s, in command {work:6.2f} s "
                  f"{r['gb_per_s']:5.2f} GB/s  "
                  f"peak RSS: command {r['command_rss_mib']:6.0f} MiB, workers [{wtxt}] MiB", flush=True)
        same = all(o == outputs[0] for o in outputs[1:])
        print(f"{cname}: JSON outputs {'identical' if same else 'DIFFER'}", flush=True)
        if not same:
            raise SystemExit("outputs differ")
    client.close()
    cluster.close()
    base = {r["config"]: r["seconds"] for r in rows if r["mode"] == "in-process"}
    for r in rows:
        r["time_vs_in_process"] = r["seconds"] / base[r["config"]]
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"bytes": nbytes, "files": len(paths), "rows": rows}, f, indent=1)
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
