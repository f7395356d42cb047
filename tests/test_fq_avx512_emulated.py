"""The AVX-512 fake-quantize body (qc_fq.h) cannot run on a CPU without AVX-512; compile
it on C emulations of its intrinsics (QC_FQ_EMULATE_AVX512) and check it bit for bit
against the numpy oracle: plain and masked, zero point 0 and not, NaN/±Inf/±0/ties,
odd lengths, and the streaming path with every output misalignment (its non-temporal
stores must be 64-byte aligned: the emulation aborts otherwise).  Where the CPU has
AVX-512 the same body also runs natively in tests/test_kernels.py."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from reference import fake_quantize_ref

SRC = Path(__file__).resolve().parent.parent / "qatcore" / "kernels"

PROGRAM = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef struct { float v[16]; } __m512;
typedef struct { uint32_t v[16]; } __m512i;
typedef struct { uint8_t v[32]; } __m256i;
typedef uint16_t __mmask16;
typedef uint32_t __mmask32;
#define _MM_FROUND_TO_ZERO 3
#define _MM_FROUND_NO_EXC 8
#define _CMP_EQ_OQ 0
#define MAP2(name, expr) static inline __m512 name(__m512 a, __m512 b) { \
    __m512 r; for (int i = 0; i < 16; i++) { float x = a.v[i], y = b.v[i]; r.v[i] = (expr); } return r; }
MAP2(_mm512_div_ps, x / y)
MAP2(_mm512_add_ps, x + y)
MAP2(_mm512_sub_ps, x - y)
MAP2(_mm512_mul_ps, x * y)
MAP2(_mm512_min_ps, x < y ? x : y)   /* vminps: the second operand unless a < b */
MAP2(_mm512_max_ps, x > y ? x : y)   /* vmaxps: the second operand unless a > b */
static inline __m512 _mm512_set1_ps(float x) { __m512 r; for (int i = 0; i < 16; i++) r.v[i] = x; return r; }
static inline __m512 _mm512_loadu_ps(const float *p) { __m512 r; memcpy(&r, p, 64); return r; }
static inline void _mm512_storeu_ps(float *p, __m512 a) { memcpy(p, &a, 64); }
static inline void _mm512_stream_ps(float *p, __m512 a) {
    if ((uintptr_t)p & 63) { fprintf(stderr, "misaligned stream store\n"); abort(); }
    memcpy(p, &a, 64);
}
static inline __m512i _mm512_castps_si512(__m512 a) { __m512i r; memcpy(&r, &a, 64); return r; }
static inline __m512 _mm512_castsi512_ps(__m512i a) { __m512 r; memcpy(&r, &a, 64); return r; }
static inline __m512i _mm512_ternarylogic_epi32(__m512i a, __m512i b, __m512i c, int imm) {
    __m512i r;
    for (int i = 0; i < 16; i++) {
        uint32_t v = 0;
        for (int bit = 0; bit < 32; bit++) {
            int idx = (int)((a.v[i] >> bit & 1) << 2 | (b.v[i] >> bit & 1) << 1 | (c.v[i] >> bit & 1));
            v |= (uint32_t)(imm >> idx & 1) << bit;
        }
        r.v[i] = v;
    }
    return r;
}
static inline __m512 _mm512_roundscale_ps(__m512 a, int imm) {
    if (imm != (_MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)) abort();
    __m512 r; for (int i = 0; i < 16; i++) r.v[i] = truncf(a.v[i]); return r;
}
static inline __mmask16 _mm512_cmp_ps_mask(__m512 a, __m512 b, int pred) {
    if (pred != _CMP_EQ_OQ) abort();
    __mmask16 k = 0; for (int i = 0; i < 16; i++) k |= (__mmask16)((a.v[i] == b.v[i]) << i); return k;
}
static inline __mmask32 _mm512_kunpackw(__mmask32 hi, __mmask32 lo) { return (hi & 0xFFFFu) << 16 | (lo & 0xFFFFu); }
static inline __m256i _mm256_set1_epi8(char x) { __m256i r; memset(&r, x, 32); return r; }
static inline __m256i _mm256_maskz_mov_epi8(__mmask32 k, __m256i a) {
    __m256i r; for (int i = 0; i < 32; i++) r.v[i] = (k >> i & 1) ? a.v[i] : 0; return r;
}
static inline void _mm256_storeu_si256(__m256i *p, __m256i a) { memcpy(p, &a, 32); }
static inline void _mm_sfence(void) {}
#define QC_FQ_EMULATE_AVX512 1
#include "qc_fq.h"

static float f32(const char *hex) { uint32_t u = (uint32_t)strtoul(hex, NULL, 16); float f; memcpy(&f, &u, 4); return f; }

int main(int argc, char **argv) {
    if (argc != 10) return 2;
    ptrdiff_t n = atol(argv[1]), off = atol(argv[2]);
    float scale = f32(argv[3]), zp = f32(argv[4]), qmin = f32(argv[5]), qmax = f32(argv[6]);
    int use_mask = atoi(argv[7]);
    int zp_zero = zp == 0 && copysignf(1, zp) > 0;
    float *x = aligned_alloc(64, (size_t)(n + 16) * 4);
    float *obuf = aligned_alloc(64, (size_t)(n + 32) * 4), *out = obuf + off;
    unsigned char *mask = use_mask ? malloc((size_t)n + 1) : NULL;
    FILE *f = fopen(argv[8], "rb");
    if (!f || fread(x, 4, (size_t)n, f) != (size_t)n) return 3;
    fclose(f);
    ptrdiff_t done = qc_fake_quantize_simd(x, out, mask, n, scale, zp, qmin, qmax, zp_zero);
    if (n >= 32 && done < n - 31) { fprintf(stderr, "prefix too short: %ld of %ld\n", (long)done, (long)n); return 4; }
    for (ptrdiff_t i = done; i < n; i++)
        out[i] = qc_fq_one(x[i], scale, zp, qmin, qmax, zp_zero, mask ? mask + i : NULL);
    f = fopen(argv[9], "wb");
    fwrite(out, 4, (size_t)n, f);
    if (mask) fwrite(mask, 1, (size_t)n, f);
    fclose(f);
    return 0;
}
"""


@pytest.fixture(scope="module")
def fq_emulated(tmp_path_factory):
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("fq512")
    (d / "t.c").write_text(PROGRAM)
    exe = d / "t"
    # -ffp-contract=off as in setup.py: a fused multiply-add would change the last bit
    proc = subprocess.run([cc, "-O1", "-std=gnu11", "-ffp-contract=off", "-I", str(SRC),
                           str(d / "t.c"), "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 40).astype(np.float32)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45,
                        0.25, 0.75, -0.25, -0.75, 12.75, -12.75], np.float32)
    x[rng.integers(0, n, min(n, 64))] = rng.choice(special, min(n, 64))
    x[: min(n, 8)] = (np.arange(min(n, 8)) + 0.5).astype(np.float32) * np.float32(0.5)  # ties
    return x


def _hex(v):
    return f"{int(np.float32(v).view(np.uint32)):08x}"


def _run(exe, tmp_path, x, scale, zp, qmin, qmax, use_mask, off=0):
    src, dst = tmp_path / "x.bin", tmp_path / "y.bin"
    x.tofile(src)
    proc = subprocess.run([str(exe), str(x.size), str(off), _hex(scale), _hex(zp), _hex(qmin),
                           _hex(qmax), str(int(use_mask)), str(src), str(dst)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    raw = dst.read_bytes()
    y = np.frombuffer(raw[: 4 * x.size], np.float32)
    mask = np.frombuffer(raw[4 * x.size:], np.uint8) if use_mask else None
    return y, mask


CASES = [(0.5, 0.0, -127.0, 127.0), (0.37, 0.0, -7.0, 7.0), (0.5, -0.0, -127.0, 127.0),
         (0.11, 3.0, 0.0, 255.0), (2.5e-3, 128.4, 0.0, 255.0), (7.0, -5.5, -8.0, 7.0)]


@pytest.mark.parametrize("n", [1, 31, 32, 33, 63, 64, 1000, 4099])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"s{c[0]}-zp{c[1]}-{c[2]:g}..{c[3]:g}")
@pytest.mark.parametrize("use_mask", [False, True], ids=["nomask", "mask"])
def test_avx512_body_emulated(fq_emulated, tmp_path, n, case, use_mask):
    x = _data(n, n)
    y, mask = _run(fq_emulated, tmp_path, x, *case, use_mask)
    y_ref, m_ref = fake_quantize_ref(x, *case)
    np.testing.assert_array_equal(y.view(np.uint32), y_ref.view(np.uint32))
    if use_mask:
        np.testing.assert_array_equal(mask, m_ref.astype(np.uint8))


@pytest.mark.parametrize("off", [0, 1, 5, 15])
@pytest.mark.parametrize("use_mask", [False, True], ids=["nomask", "mask"])
def test_avx512_body_emulated_streaming(fq_emulated, tmp_path, off, use_mask):
    n = (1 << 21) + 37          # beyond QC_FQ_STREAM_MIN: non-temporal stores
    x = _data(n, 7)
    case = (0.11, 3.0, 0.0, 255.0)
    y, mask = _run(fq_emulated, tmp_path, x, *case, use_mask, off)
    y_ref, m_ref = fake_quantize_ref(x, *case)
    np.testing.assert_array_equal(y.view(np.uint32), y_ref.view(np.uint32))
    if use_mask:
        np.testing.assert_array_equal(mask, m_ref.astype(np.uint8))
