"""The Intel AMX GEMM (qatcore/kernels/qc_amx.h) on every CPU: the same header compiled on
C emulations of the tile intrinsics (tests/amx_emulation.h, with AddressSanitizer when
the compiler has it, so a tile load past a packed buffer fails), checked bit for bit
against the int64 numpy oracle over M, N, K that are not multiples of 16/32/64, zero
points at both ends, the fused requantization epilogue, the small-M (VNNI) path, the
no-permission fallback and threads.  On a CPU with AMX the amx kernel module is checked
against the same oracle with the real instructions."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qatcore import _backend

from reference import gemm_ref, requantize_ref

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "qatcore" / "kernels"

DRIVER = r"""
#include "amx_emulation.h"
#include "qc_amx.h"

static void *read_n(FILE *f, size_t n) {
    void *p = malloc(n ? n : 1);
    if (n && fread(p, 1, n, f) != n) { fprintf(stderr, "short input\n"); exit(4); }
    return p;
}

/* argv: in out m k n n_threads has_offset zero_point qmin qmax */
int main(int argc, char **argv) {
    if (argc != 11) return 5;
    long m = atol(argv[3]), k = atol(argv[4]), n = atol(argv[5]);
    int nt = atoi(argv[6]), has_off = atoi(argv[7]);
    qc_requant rq;
    FILE *f = fopen(argv[1], "rb");
    int8_t *x = read_n(f, (size_t)(m * k)), *w = read_n(f, (size_t)(n * k));
    int32_t *off = read_n(f, 4 * (size_t)n), *mult = read_n(f, 4 * (size_t)n);
    int32_t *shift = read_n(f, 4 * (size_t)n), *wsum = malloc(4 * (size_t)n + 4);
    fclose(f);
    for (long j = 0; j < n; j++) {
        int64_t s = 0;
        for (long q = 0; q < k; q++) s += w[j * k + q];
        wsum[j] = (int32_t)s;
    }
    rq.multiplier = mult; rq.shift = shift;
    rq.zero_point = atoi(argv[8]); rq.qmin = atoi(argv[9]); rq.qmax = atoi(argv[10]);
    int64_t psize = qc_gemm_packed_size(n, k);
    int8_t *packed = malloc((size_t)psize);          /* exact size: ASan sees over-reads */
    qc_gemm_pack(w, n, k, packed);
    int32_t *o32[2]; int8_t *o8[2]; int64_t calls[2];
    for (int fb = 0; fb < 2; fb++) {
        qc_amx_emulate_permitted = !fb;
        o32[fb] = malloc(4 * (size_t)(m * n) + 4);
        o8[fb] = malloc((size_t)(m * n) + 1);
        long before = qc_emu_dpbssd_calls;
        if (qc_linear_i32(x, m, k, n, packed, wsum, has_off ? off : NULL, o32[fb], nt) != 0) return 3;
        if (qc_linear_i8(x, m, k, n, packed, wsum, has_off ? off : NULL, &rq, o8[fb], nt) != 0) return 3;
        calls[fb] = qc_emu_dpbssd_calls - before;
    }
    f = fopen(argv[2], "wb");
    fwrite(&psize, 8, 1, f);
    fwrite(packed, 1, (size_t)psize, f);
    for (int fb = 0; fb < 2; fb++) {
        fwrite(o32[fb], 4, (size_t)(m * n), f);
        fwrite(o8[fb], 1, (size_t)(m * n), f);
    }
    fwrite(calls, 8, 2, f);
    fwrite(qc_gemm_layout, 1, strlen(qc_gemm_layout), f);
    fclose(f);
    return 0;
}
"""


def _cc():
    return os.environ.get("CC", "cc")


def _accepts(cc, flags, tmp):
    src = tmp / "probe.c"
    src.write_text("int main(void){return 0;}\n")
    return subprocess.run([cc, *flags, str(src), "-o", str(tmp / "probe")],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver program compiled on the emulation: OpenMP and ASan/UBSan when available."""
    cc = _cc()
    if shutil.which(cc) is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("amx")
    (d / "t.c").write_text(DRIVER)
    flags = ["-O1", "-g", "-std=gnu11", "-I", str(SRC), "-I", str(HERE)]
    for extra in (["-fopenmp"], ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]):
        if _accepts(cc, flags + extra, d):
            flags += extra
    exe = d / "t"
    proc = subprocess.run([cc, *flags, str(d / "t.c"), "-o", str(exe)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return exe, d


def packed_ref(w):
    """The nr32-kg4-kp64 layout: panels of 32 columns, k in groups of 4 bytes, k padded to
    64 and columns to 32 with zeros; byte ((p·Kp/4 + g)·32 + c)·4 + j = w[32p + c, 4g + j]."""
    n, k = w.shape
    np_, kp = -(-n // 32), -(-k // 64) * 64
    full = np.zeros((np_ * 32, kp), np.int8)
    full[:n, :k] = w
    return full.reshape(np_, 32, kp // 4, 4).transpose(0, 2, 1, 3).ravel()


def make_case(m, k, n, kind, input_zp, seed):
    """x, w, col_offset (bias - input_zp · Σw, as QuantizedLinear builds it) and
    per-column requantization parameters (multiplier in [2^30, 2^31), shift -12..1)."""
    rng = np.random.default_rng(seed)
    if kind == "extreme":
        x = np.where(np.arange(m * k).reshape(m, k) % 3 == 0, 127, -128).astype(np.int8)
        w = np.where((np.arange(n)[:, None] + np.arange(k)[None, :]) % 2 == 0, -127, 127
                     ).astype(np.int8)
    else:
        x = rng.integers(-128, 128, (m, k)).astype(np.int8)
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, n)
    off = (bias - input_zp * w.astype(np.int64).sum(axis=1)).astype(np.int32)
    mult = rng.integers(1 << 30, (1 << 31) - 1, n).astype(np.int32)
    shift = rng.integers(-12, 2, n).astype(np.int32)
    return x, w, off, mult, shift


def run_driver(driver, x, w, off, mult, shift, zp, qmin, qmax, n_threads, has_off=True):
    exe, d = driver
    m, k = x.shape
    n = w.shape[0]
    tag = f"{m}_{k}_{n}_{n_threads}_{zp}_{os.getpid()}"
    inp, outp = d / f"in_{tag}", d / f"out_{tag}"
    inp.write_bytes(x.tobytes() + w.tobytes() + off.tobytes() + mult.tobytes() + shift.tobytes())
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", OMP_WAIT_POLICY="passive")
    proc = subprocess.run([str(exe), str(inp), str(outp), str(m), str(k), str(n), str(n_threads),
                           str(int(has_off)), str(zp), str(qmin), str(qmax)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = outp.read_bytes()
    psize = int(np.frombuffer(raw[:8], np.int64)[0])
    pos = 8
    packed = np.frombuffer(raw[pos:pos + psize], np.int8)
    pos += psize
    res = []
    for _ in range(2):
        o32 = np.frombuffer(raw[pos:pos + 4 * m * n], np.int32).reshape(m, n)
        pos += 4 * m * n
        o8 = np.frombuffer(raw[pos:pos + m * n], np.int8).reshape(m, n)
        pos += m * n
        res.append((o32, o8))
    calls = np.frombuffer(raw[pos:pos + 16], np.int64)
    layout = raw[pos + 16:].decode()
    inp.unlink()
    outp.unlink()
    return packed, res, calls, layout


def check(driver, m, k, n, kind="random", input_zp=0, out_zp=0, qrange=(-128, 127),
          n_threads=1, has_off=True, seed=0):
    x, w, off, mult, shift = make_case(m, k, n, kind, input_zp, seed)
    packed, res, calls, layout = run_driver(driver, x, w, off, mult, shift, out_zp, *qrange,
                                            n_threads, has_off)
    assert layout == "nr32-kg4-kp64"
    np.testing.assert_array_equal(packed, packed_ref(w))
    acc = gemm_ref(x, w, off if has_off else None)
    assert np.all((acc >= -2**31) & (acc < 2**31))      # the exactness precondition
    want8 = requantize_ref(acc, mult, shift, out_zp, *qrange)
    for (o32, o8), path in zip(res, ("amx", "fallback")):
        np.testing.assert_array_equal(o32, acc, err_msg=f"{path} int32")
        np.testing.assert_array_equal(o8, want8, err_msg=f"{path} requantized")
    # the tiles ran exactly when they should: M >= 5 and permitted; never in the fallback
    assert (calls[0] > 0) == (m >= 5 and k > 0 and n > 0), calls
    assert calls[1] == 0
    return calls


EDGES = [1, 3, 15, 16, 17, 63, 64, 65, 130]


@pytest.mark.parametrize("m", [1, 3, 4, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 130],
                         ids=lambda v: f"M{v}")
def test_rows(driver, m):
    check(driver, m, 65, 33)


@pytest.mark.parametrize("k", EDGES + [127, 128, 129, 1030], ids=lambda v: f"K{v}")
def test_depth(driver, k):
    check(driver, 17, k, 17)


@pytest.mark.parametrize("n", EDGES + [31, 32, 33, 97], ids=lambda v: f"N{v}")
def test_columns(driver, n):
    check(driver, 33, 130, n)


@pytest.mark.parametrize("m,k,n", [(5, 1, 1), (16, 64, 16), (32, 64, 32), (63, 63, 63),
                                   (65, 65, 65), (130, 130, 130), (47, 200, 70)],
                         ids=lambda v: str(v))
def test_shapes(driver, m, k, n):
    check(driver, m, k, n)


@pytest.mark.parametrize("input_zp", [-128, 0, 127], ids=lambda v: f"in_zp{v}")
@pytest.mark.parametrize("out_zp,qrange", [(-128, (-128, 127)), (127, (-128, 127)),
                                           (0, (-128, 127)), (5, (-7, 100))],
                         ids=["out_zp-128", "out_zp127", "out_zp0", "clamp-7..100"])
def test_zero_points_and_epilogue(driver, input_zp, out_zp, qrange):
    check(driver, 21, 77, 35, input_zp=input_zp, out_zp=out_zp, qrange=qrange)


def test_no_col_offset(driver):
    check(driver, 19, 70, 40, has_off=False)


@pytest.mark.parametrize("m,k,n", [(6, 4099, 35), (33, 1030, 3)], ids=lambda v: str(v))
def test_extreme_values(driver, m, k, n):
    """All products at ±128·127: partial sums far from zero, no saturation anywhere."""
    check(driver, m, k, n, kind="extreme", input_zp=-128)


def test_deep_k_small_row_blocks(driver):
    """K = 16 500: a packed row is 16 576 bytes, so a row block holds 32 rows (the
    minimum): several row blocks, each packed again."""
    check(driver, 70, 16500, 33)


@pytest.mark.parametrize("m,k,n", [(260, 130, 40), (40, 1024, 130), (40, 16500, 65)],
                         ids=["split-rows", "split-panels-shared-rows", "split-panels-own-rows"])
def test_threads(driver, m, k, n):
    """Two threads, each with its own tile configuration (the emulation's tile state is
    per thread and aborts when a thread uses tiles it did not configure)."""
    check(driver, m, k, n, n_threads=2)


def test_tile_step_count(driver):
    """One 32 x 32 block of K = 128 takes 2 tile steps of 4 tdpbssd each (the driver
    makes two calls: int32 and requantized); 17 rows still use both row tiles, 16 one."""
    assert check(driver, 32, 128, 32)[0] == 2 * 8
    assert check(driver, 17, 128, 32)[0] == 2 * 8
    assert check(driver, 16, 128, 32)[0] == 2 * 4


# ------------------------------------------------------------------ the real instructions

def _amx_skip_reason():
    if "amx" in _backend.available_targets():
        return None
    if not _backend._baseline.cpu_supports("amx"):
        return "no AMX on this CPU"
    return "the amx target was not built"


_REASON = _amx_skip_reason()
needs_amx = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@needs_amx
@pytest.mark.parametrize("m,k,n", [(1, 65, 33), (4, 130, 17), (5, 1, 1), (17, 65, 33),
                                   (33, 130, 97), (65, 1030, 63), (130, 130, 130),
                                   (300, 1024, 130), (70, 16500, 33)], ids=lambda v: str(v))
@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda v: f"t{v}")
def test_amx_hardware(m, k, n, n_threads):
    kern = _backend.load("amx")
    assert kern.GEMM_IMPL == "amx-tdpbssd" and kern.GEMM_LAYOUT == "nr32-kg4-kp64"
    x, w, off, mult, shift = make_case(m, k, n, "random", -128, 1)
    packed = np.empty(kern.packed_size(n, k), np.int8)
    kern.pack_weights(w, packed)
    np.testing.assert_array_equal(packed, packed_ref(w))
    wsum = w.astype(np.int64).sum(axis=1).astype(np.int32)
    out = np.empty((m, n), np.int32)
    assert kern.gemm_i8_i32(x, packed, n, wsum, off, out, n_threads) == 0
    acc = gemm_ref(x, w, off)
    np.testing.assert_array_equal(out, acc)
    out8 = np.empty((m, n), np.int8)
    assert kern.gemm_requant_i8(x, packed, n, wsum, off, mult, shift, 3, -100, 120, out8,
                                n_threads) == 0
    np.testing.assert_array_equal(out8, requantize_ref(acc, mult, shift, 3, -100, 120))


# ------------------------------------------------------------------ dispatch without AMX

def _subprocess_env(**extra):
    import qatcore
    root = os.path.dirname(os.path.dirname(os.path.abspath(qatcore.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


@pytest.mark.skipif(_REASON != "no AMX on this CPU", reason="this CPU has AMX")
def test_forcing_amx_without_amx_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "qatcore", "--version"], cwd="/",
                          env=_subprocess_env(QATCORE_TARGET="amx"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode > 0, (proc.returncode, proc.stderr)      # an exit, not a signal
    assert "QATCORE_TARGET" in proc.stderr and "'amx'" in proc.stderr
    status = _backend._baseline.amx_status()
    assert status != "ok" and status in proc.stderr


@pytest.mark.parametrize("target", _backend.available_targets())
def test_amx_status_agrees_with_dispatch(target):
    """Every kernel module answers the same, and "ok" exactly when amx is dispatched."""
    status = _backend.load(target).amx_status()
    assert status == _backend._baseline.amx_status()
    assert (status == "ok") == _backend._baseline.cpu_supports("amx")


@pytest.mark.skipif(_REASON != "no AMX on this CPU", reason="this CPU has AMX")
def test_amx_module_without_amx_takes_the_vnni_path():
    """Imported directly (past _backend) on a CPU without AMX, the amx module must not
    execute a tile instruction: its GEMM falls back to VNNI on the same packed weights."""
    if not _backend._baseline.cpu_supports("avx512"):
        pytest.skip("the amx module needs AVX-512 VNNI to import")
    code = (
        "import numpy as np, qatcore._kernels_amx as a\n"
        "rng = np.random.default_rng(0)\n"
        "for m, k, n in [(64, 130, 65), (3, 17, 33)]:\n"
        "    x = rng.integers(-128, 128, (m, k)).astype(np.int8)\n"
        "    w = rng.integers(-127, 128, (n, k)).astype(np.int8)\n"
        "    p = np.empty(a.packed_size(n, k), np.int8); a.pack_weights(w, p)\n"
        "    ws = w.astype(np.int64).sum(1).astype(np.int32)\n"
        "    out = np.empty((m, n), np.int32)\n"
        "    assert a.gemm_i8_i32(x, p, n, ws, None, out, 1) == 0\n"
        "    assert (out == x.astype(np.int64) @ w.T.astype(np.int64)).all()\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", env=_subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr)


def test_bench_rows_beside_amx(monkeypatch):
    """On the amx target the GEMM benchmark shows the VNNI kernel beside it.  Run here
    with the amx module forced in (without AMX it takes its VNNI fallback, so this is
    safe on any AVX-512 VNNI CPU)."""
    if not _backend._baseline.cpu_supports("avx512"):
        pytest.skip("the amx module needs AVX-512 VNNI")
    try:
        import qatcore._kernels_amx as amx
    except ImportError:
        pytest.skip("the amx target was not built")
    from qatcore.bench import gemm as _bench_gemm

    monkeypatch.setattr(_backend, "kernels", amx)
    records = _bench_gemm.run(quick=True, threads=1, repeat=2, peers=False)
    rows = {(r["shape"], r["impl"]): r for r in records}
    for m, k, n in _bench_gemm.QUICK_SHAPES:
        shape = f"({m},{k},{n})"
        assert rows[(shape, "qatcore")]["target"] == "amx"
        assert rows[(shape, "qatcore[avx512]")]["exact"] is True
