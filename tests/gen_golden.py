"""Generate the Rust golden files for the bit-parity tests (tests/test_rust_parity.py).

Builds the std-only Rust reference (``bench/rust``, ``cargo build --release --offline``),
rebuilds every input batch from its small JSON description, runs
``qatcore-ref golden SPEC OUT`` and stores what the Rust code computed:

``tests/golden/fake_quantize.json``
    ``inputs``: every distinct input batch as a small JSON description plus the SHA-256
    of its float32 bytes.  ``cases``: one entry per case (a config and a sequence of
    commands on one ``FakeQuantize``): for every command the input's number, the
    observer range and the qparams afterwards as hex float32 bits, and for outputs their
    length, SHA-256 and, for big outputs, the exact bits at ``sample_indices(len)``.
``tests/golden/fake_quantize_outputs.npz``
    Full outputs (as uint32 bits) of every output of at most ``FULL_MAX`` elements.

The inputs do not depend on numpy's random streams: they come from splitmix64 in numpy
uint64 arithmetic, mapped to floats by exact operations only (no transcendental
function), so they are the same bits on every platform and numpy version.

Usage::

    python tests/gen_golden.py            # regenerate tests/golden/ (needs cargo)
    python tests/gen_golden.py --check    # regenerate into a temp dir and compare
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CRATE = ROOT / "bench" / "rust"
GOLDEN = Path(__file__).resolve().parent / "golden"
JSON_NAME = "fake_quantize.json"
NPZ_NAME = "fake_quantize_outputs.npz"

FULL_MAX = 1001          # outputs up to this length are stored in full
N_SAMPLE = 256           # sampled indices stored for bigger outputs
BIG_N = 1_048_583        # > 10^6, odd, not a power of two
BITS = (2, 3, 4, 6, 8, 12, 16)
OBSERVERS = ("min_max", "percentile", "moving_average", "mean_std")

F32 = np.float32
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SQRT3 = 1.7320508075688772          # float64 nearest sqrt(3)


# ------------------------------------------------------------------------------- inputs

def splitmix64(seed: int, n: int) -> np.ndarray:
    """n outputs of splitmix64 started at `seed` (uint64, wrapping arithmetic)."""
    state = np.uint64(seed % 2**64) + np.arange(1, n + 1, dtype=np.uint64) * _GAMMA
    z = (state ^ (state >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, n: int) -> np.ndarray:
    """n float64 uniforms in (0, 1) with 53 random bits each (exact conversions)."""
    return ((splitmix64(seed, n) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def normal(seed: int, n: int) -> np.ndarray:
    """n float64 values, approximately N(0, 1): a sum of 4 uniforms, centred and scaled
    (Irwin-Hall).  Only + - * of exact values: bit-stable everywhere."""
    u = uniform(seed, 4 * n).reshape(n, 4)
    return (((u[:, 0] + u[:, 1]) + u[:, 2]) + u[:, 3] - 2.0) * _SQRT3


def _indices(seed: int, k: int, n: int) -> np.ndarray:
    return (splitmix64(seed ^ 0xA5A5A5A5, k) % np.uint64(n)).astype(np.int64)


def _quant_range(bits: int, symmetric: bool):
    if symmetric:
        m = (1 << (bits - 1)) - 1
        return -m, m
    return 0, (1 << bits) - 1


def _ties(spec) -> np.ndarray:
    """Values whose x / scale + zero_point is exactly k + 0.5 once a batch made of the
    range ends has set scale = 2^e (and, asymmetric, an integer zero point a).

    Calibrating batches ("probe": false) stay inside [lo, hi] with each end repeated
    often enough to be the percentile order statistics too; probes add ties and values
    outside the range (saturation)."""
    n, seed, bits, sym, e = spec["n"], spec["seed"], spec["bits"], spec["symmetric"], spec["e"]
    qmin, qmax = _quant_range(bits, sym)
    s = 2.0 ** e
    a = 0 if sym else qmax // 3                     # zero point, integer
    lo, hi = (qmin - a) * s, (qmax - a) * s
    ends = max(4, n // 200)                         # > 0.1 % of the batch at each end
    body = n - 2 * ends
    u = splitmix64(seed, body)
    if spec.get("probe"):
        # k in [qmin - 3, qmax + 2]: ties inside and just outside the code range.
        k = (u % np.uint64(qmax - qmin + 6)).astype(np.int64) + (qmin - 3)
    else:
        k = (u % np.uint64(qmax - qmin)).astype(np.int64) + qmin   # k + 0.5 <= qmax - 0.5
    x = (k.astype(np.float64) + 0.5 - a) * s
    # a few exact codes and +-0.5 ties around zero
    special = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5], dtype=np.float64) * s
    if not spec.get("probe"):
        special = special[(special >= lo) & (special <= hi)]
    m = min(len(special), body)
    pos = _indices(seed, m, body) if body else np.zeros(0, np.int64)
    x[pos] = special[:m]
    if spec.get("probe"):
        x[:6] = [hi * 4, lo * 4, 3.0e38, -3.0e38, 0.0, -0.0]
    out = np.concatenate([np.full(ends, lo), x, np.full(ends, hi)])
    perm = np.argsort(splitmix64(seed + 1, n), kind="stable")
    return out[perm]


def build_input(spec) -> np.ndarray:
    """The float32 batch a JSON-able description stands for (deterministic)."""
    kind, n, seed = spec["kind"], spec["n"], spec.get("seed", 0)
    if kind == "normal":
        x = spec.get("mu", 0.0) + spec.get("sigma", 1.0) * normal(seed, n)
        k = spec.get("outliers", 0)
        if k and n:
            idx = _indices(seed, k, n)
            x[idx] *= 8.0 + 24.0 * uniform(seed + 7, k)
        return x.astype(F32)
    if kind == "positive":
        x = np.abs(normal(seed, n)) * spec.get("sigma", 1.0) + spec.get("offset", 0.0)
        x = x.astype(F32)
        if spec.get("zeros") and n:
            # ~10 % zeros of both signs: the 0.1 % order statistic is one of them, and
            # which sign a stable sort picks depends on their order.
            idx = np.unique(_indices(seed, n // 10 + 1, n))
            signs = splitmix64(seed + 3, idx.size) & np.uint64(1)
            x[idx] = np.where(signs == 1, F32(-0.0), F32(0.0))
        return x
    if kind == "const":
        return np.full(n, spec["value"], dtype=F32)
    if kind == "zeros":
        x = np.zeros(n, dtype=F32)
        if spec.get("mixed"):
            x[splitmix64(seed, n) & np.uint64(1) == 1] = F32(-0.0)
        return x
    if kind == "huge":
        # Calibration-safe extremes: +-1e30 (no float32 overflow in max - min),
        # subnormals, +-0, tiny normals, inside N(0, 1) noise.
        x = normal(seed, n).astype(F32)
        special = np.array([1e30, -1e30, 1e-40, -1e-40, 0.0, -0.0, 1e-30, -1e-30, 1e-45,
                            -1e-45, 2.5e29, -7.5e28], dtype=F32)
        m = min(len(special), n)
        x[_indices(seed, m, n)] = special[:m]
        return x
    if kind == "probe":
        # Frozen-forward probe: wide noise, saturating values up to float32 max,
        # subnormals and signed zeros.
        x = (spec.get("sigma", 4.0) * normal(seed, n)).astype(F32)
        special = np.array([3.4028235e38, -3.4028235e38, 1e30, -1e30, 1e-40, -1e-40,
                            0.0, -0.0, 1e-45, -1e-45, 65504.0, -65504.0, 0.49999997,
                            -0.49999997, 0.5, -0.5], dtype=F32)
        m = min(len(special), n)
        x[:m] = special[:m]
        return x
    if kind == "ties":
        return _ties(spec).astype(F32)
    raise ValueError(f"unknown input kind {kind!r}")


@functools.lru_cache(maxsize=None)
def _cached_input(key: str) -> np.ndarray:
    x = build_input(json.loads(key))
    x.setflags(write=False)
    return x


def input_for(spec) -> np.ndarray:
    """build_input with a cache (read-only result), keyed by the canonical JSON."""
    return _cached_input(json.dumps(spec, sort_keys=True))


def sha256_bits(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).view(np.uint8)).hexdigest()


# -------------------------------------------------------------------------------- cases

def percentile_edge_sizes(limit: int = 200_000):
    """Smallest batch sizes above 1001 where the float32 index products of the Rust
    percentile observer differ from the exact ones (low and high index)."""
    found = {}
    n = np.arange(1002, limit, dtype=np.int64)
    nf = n.astype(F32)
    low32 = np.floor(nf * F32(0.001)).astype(np.int64)
    high32 = np.ceil(nf * F32(0.999)).astype(np.int64)
    low_exact = (n * 1) // 1000
    high_exact = -((-n * 999) // 1000)
    d_low = np.flatnonzero(low32 != low_exact)
    d_high = np.flatnonzero(high32 != high_exact)
    if d_low.size:
        found["low"] = int(n[d_low[0]])
    if d_high.size:
        found["high"] = int(n[d_high[0]])
    return sorted(set(found.values()))


def config_cases(bits: int, symmetric: bool, observer: str):
    """The cases run for one config: (name suffix, [commands]); a command is
    ("fq"|"fwd", input spec) or ("disable"|"enable", None)."""
    tag = (bits * 2 + int(symmetric)) * 16 + OBSERVERS.index(observer)
    seed = 1000 * tag
    edge = [{"kind": "normal", "n": n, "seed": seed + 50 + i, "sigma": 0.7}
            for i, n in enumerate(percentile_edge_sizes())]
    e = -3 if bits <= 8 else -10                    # scale 2^e; hi = qmax * 2^e
    cases = [
        ("seq", [
            ("fq", {"kind": "normal", "n": 1000, "seed": seed + 1}),
            ("fq", {"kind": "normal", "n": 999, "seed": seed + 2, "mu": 0.25, "sigma": 1.5}),
            ("fq", {"kind": "normal", "n": 1001, "seed": seed + 3, "outliers": 3}),
            ("fq", {"kind": "normal", "n": 1, "seed": seed + 4, "sigma": 5.0}),
            *[("fq", s) for s in edge],
            # same big batch for every config (built once, shared by the tests)
            ("fq", {"kind": "normal", "n": BIG_N, "seed": 77, "outliers": 20}),
            ("disable", None),
            ("fwd", {"kind": "probe", "n": 1001, "seed": seed + 5}),
            ("enable", None),
            ("fq", {"kind": "normal", "n": 1000, "seed": seed + 6, "sigma": 3.0, "mu": -1.0}),
            ("disable", None),
            ("fwd", {"kind": "probe", "n": 1000, "seed": seed + 7, "sigma": 10.0}),
        ]),
        ("ties", [
            ("fq", {"kind": "ties", "n": 1001, "seed": seed + 11, "bits": bits,
                    "symmetric": symmetric, "e": e}),
            ("disable", None),
            ("fwd", {"kind": "ties", "n": 1001, "seed": seed + 12, "bits": bits,
                     "symmetric": symmetric, "e": e, "probe": True}),
        ]),
        ("positive", [
            ("fq", {"kind": "positive", "n": 1000, "seed": seed + 21, "offset": 0.125}),
            ("fq", {"kind": "positive", "n": 1001, "seed": seed + 22, "zeros": True}),
            ("disable", None),
            ("fwd", {"kind": "probe", "n": 999, "seed": seed + 23, "sigma": 2.0}),
        ]),
        ("zeros", [
            ("fq", {"kind": "zeros", "n": 1}),
            ("fq", {"kind": "zeros", "n": 999, "seed": seed + 31, "mixed": True}),
            ("disable", None),
            ("fwd", {"kind": "probe", "n": 64, "seed": seed + 32}),
        ]),
        ("const", [
            ("fq", {"kind": "const", "n": 1, "value": 0.3}),
            ("fq", {"kind": "const", "n": 1000, "value": 0.3}),
            ("disable", None),
            ("fwd", {"kind": "probe", "n": 100, "seed": seed + 41, "sigma": 0.5}),
        ]),
        ("huge", [
            ("fq", {"kind": "huge", "n": 1001, "seed": seed + 61}),
            ("fq", {"kind": "normal", "n": 1000, "seed": seed + 62}),
            ("disable", None),
            ("fwd", {"kind": "probe", "n": 1001, "seed": seed + 63}),
        ]),
    ]
    return cases


def all_configs():
    """(bits, symmetric, observer) for every golden config."""
    out = []
    for observer in OBSERVERS:
        for symmetric in (True, False):
            for bits in BITS:
                out.append((bits, symmetric, observer))
        out.append((1, False, observer))            # 1-bit asymmetric: codes {0, 1}
    return out


def config_name(bits: int, symmetric: bool, observer: str) -> str:
    return f"{observer}-{'sym' if symmetric else 'asym'}-{bits}b"


# ------------------------------------------------------------------------------- runner

def build_crate(target_dir=None, rustflags: str = "") -> Path:
    """cargo build --release --offline; returns the binary's path.

    The golden files come from the generic build (RUSTFLAGS empty). A
    ``-C target-cpu=native`` build computes the same bits (rustc never contracts FMAs)
    except the sign of a zero MIN_MAX / MOVING_AVERAGE range end: ``f32::min``/``max``
    leave it unspecified and the generated fold differs (see `zero_sign_insensitive`)."""
    env = dict(os.environ)
    env["RUSTFLAGS"] = rustflags
    if target_dir is not None:
        env["CARGO_TARGET_DIR"] = str(target_dir)
    tdir = Path(env.get("CARGO_TARGET_DIR", CRATE / "target"))
    subprocess.run(["cargo", "build", "--release", "--offline", "--quiet"],
                   cwd=CRATE, env=env, check=True)
    return tdir / "release" / "qatcore-ref"


def run_rust(binary: Path, workdir: Path):
    """Run every case through `qatcore-ref golden`; returns (golden dict, outputs dict)."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = {}
    lines = []
    plan = []                          # (case name, config, [(cmd, spec)])
    for bits, sym, obs in all_configs():
        for suffix, cmds in config_cases(bits, sym, obs):
            name = f"{config_name(bits, sym, obs)}/{suffix}"
            plan.append((name, (bits, sym, obs), cmds))
            lines.append(f"case {name} bits={bits} symmetric={int(sym)} observer={obs}")
            for cmd, spec in cmds:
                if spec is None:
                    lines.append(cmd)
                    continue
                key = json.dumps(spec, sort_keys=True)
                if key not in files:
                    path = workdir / f"in{len(files)}.f32"
                    input_for(spec).astype("<f4").tofile(path)
                    files[key] = path
                lines.append(f"{cmd} {files[key]}")
    spec_path = workdir / "spec.txt"
    spec_path.write_text("\n".join(lines) + "\n")
    out_path = workdir / "out.jsonl"
    subprocess.run([str(binary), "golden", str(spec_path), str(out_path)], check=True)
    records = [json.loads(line) for line in out_path.read_text().splitlines()]
    bits_all = np.fromfile(str(out_path) + ".bin", dtype="<u4")

    golden = {"format": 1, "full_max": FULL_MAX, "inputs": [], "cases": []}
    input_ids = {}
    outputs = {}
    it = iter(records)
    for name, (bits, sym, obs), cmds in plan:
        steps = []
        for step, (cmd, spec) in enumerate(cmds):
            rec = next(it)
            assert rec["case"] == name and rec["step"] == step and rec["op"] == cmd, rec
            entry = {"op": cmd, "min": rec["min"], "max": rec["max"],
                     "scale": rec["scale"], "zp": rec["zp"]}
            if spec is not None:
                x = input_for(spec)
                key = json.dumps(spec, sort_keys=True)
                if key not in input_ids:
                    input_ids[key] = len(golden["inputs"])
                    golden["inputs"].append({"spec": spec, "sha256": sha256_bits(x)})
                entry["input"] = input_ids[key]
                out = bits_all[rec["off"]:rec["off"] + rec["len"]]
                assert out.size == x.size
                entry["len"] = int(out.size)
                entry["sha256"] = sha256_bits(out)
                if out.size <= FULL_MAX:
                    outputs[f"{name}/{step}"] = out.copy()
                else:
                    entry["sample"] = " ".join(f"{int(v):08x}"
                                               for v in out[sample_indices(out.size)])
            steps.append(entry)
        golden["cases"].append({"name": name, "bits": bits, "symmetric": sym,
                                "observer": obs, "steps": steps})
    return golden, outputs


def sample_indices(n: int) -> np.ndarray:
    """Ends plus a deterministic spread of indices."""
    edge = np.r_[np.arange(16), np.arange(n - 16, n)]
    mid = _indices(12345, N_SAMPLE - 32, n)
    return np.unique(np.r_[edge, mid])


def write_golden(golden, outputs, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / JSON_NAME).write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    np.savez_compressed(dest / NPZ_NAME, **outputs)


def load_golden(src: Path = GOLDEN):
    golden = json.loads((src / JSON_NAME).read_text())
    with np.load(src / NPZ_NAME) as z:
        outputs = {k: z[k] for k in z.files}
    return golden, outputs


def zero_sign_insensitive(golden):
    """A copy of `golden` where a zero range end of MIN_MAX / MOVING_AVERAGE cases is +0
    (Rust's f32::min/max fold gives either zero, depending on the build)."""
    out = json.loads(json.dumps(golden))
    for case in out["cases"]:
        if case["observer"] in ("min_max", "moving_average"):
            for step in case["steps"]:
                for key in ("min", "max"):
                    if step[key] == "80000000":
                        step[key] = "00000000"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary directory and compare with tests/golden")
    ap.add_argument("--target-dir", help="CARGO_TARGET_DIR (default bench/rust/target)")
    ap.add_argument("--rustflags", default="",
                    help="RUSTFLAGS for the build (--check only; e.g. '-C target-cpu=native')")
    args = ap.parse_args(argv)
    if args.rustflags and not args.check:
        ap.error("--rustflags only with --check: the golden files come from the generic build")
    binary = build_crate(args.target_dir, args.rustflags)
    with tempfile.TemporaryDirectory() as tmp:
        golden, outputs = run_rust(binary, Path(tmp))
    if args.check:
        ref, ref_out = load_golden()
        if args.rustflags:
            ref, golden = zero_sign_insensitive(ref), zero_sign_insensitive(golden)
        same = ref == golden and ref_out.keys() == outputs.keys() and all(
            np.array_equal(ref_out[k], outputs[k]) for k in outputs)
        print("golden files up to date" if same else "golden files DIFFER")
        return 0 if same else 1
    write_golden(golden, outputs, GOLDEN)
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    print(f"wrote {len(golden['cases'])} cases to {GOLDEN} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
