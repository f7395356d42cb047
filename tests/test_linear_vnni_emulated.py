"""The AVX-512 VNNI GEMM path cannot run on a CPU without VNNI; compile it on C emulations
of its six intrinsics (QC_GEMM_EMULATE_VNNI) to check the nr32-kg4 layout, the
x xor 0x80 packing and the -128·Σw correction bit for bit (slow, small shapes)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "qatcore" / "kernels"

PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef struct { int32_t v[16]; } __m512i;
static inline __m512i _mm512_setzero_si512(void) { __m512i r; memset(&r, 0, sizeof r); return r; }
static inline __m512i _mm512_loadu_si512(const void *p) { __m512i r; memcpy(&r, p, 64); return r; }
static inline void _mm512_storeu_si512(void *p, __m512i a) { memcpy(p, &a, 64); }
static inline __m512i _mm512_set1_epi32(int32_t x) { __m512i r; for (int i = 0; i < 16; i++) r.v[i] = x; return r; }
/* vpdpbusd: per 32-bit lane, src + sum of 4 (uint8 a) * (int8 b), wrapping */
static inline __m512i _mm512_dpbusd_epi32(__m512i src, __m512i a, __m512i b) {
    const uint8_t *pa = (const uint8_t *)&a; const int8_t *pb = (const int8_t *)&b;
    for (int i = 0; i < 16; i++) {
        uint32_t s = (uint32_t)src.v[i];
        for (int j = 0; j < 4; j++) s += (uint32_t)((int32_t)pa[4 * i + j] * (int32_t)pb[4 * i + j]);
        src.v[i] = (int32_t)s;
    }
    return src;
}
#define QC_GEMM_EMULATE_VNNI 1
#include "qc_gemm.h"

static uint64_t st = 88172645463325252ull;
static int rnd(int lo, int hi) { st ^= st << 13; st ^= st >> 7; st ^= st << 17; return lo + (int)(st % (uint64_t)(hi - lo + 1)); }

int main(int argc, char **argv) {
    long m = atol(argv[1]), k = atol(argv[2]), n = atol(argv[3]); int extreme = atoi(argv[4]);
    int8_t *x = malloc(m * k + 1), *w = malloc(n * k + 1);
    int32_t *ws = malloc(4 * n + 4), *off = malloc(4 * n + 4), *out = malloc(4 * m * n + 4);
    for (long i = 0; i < m * k; i++) x[i] = extreme ? (i % 3 ? -128 : 127) : rnd(-128, 127);
    for (long i = 0; i < n * k; i++) w[i] = extreme ? ((i / k) % 2 ? 127 : -127) : rnd(-127, 127);
    for (long j = 0; j < n; j++) { long s = 0; for (long q = 0; q < k; q++) s += w[j * k + q]; ws[j] = (int32_t)s; off[j] = rnd(-1000, 1000); }
    int8_t *p = malloc(qc_gemm_packed_size(n, k) + 1);
    qc_gemm_pack(w, n, k, p);
    if (strcmp(QC_GEMM_IMPL, "avx512vnni-vpdpbusd") != 0) { printf("wrong impl %s\n", QC_GEMM_IMPL); return 2; }
    if (qc_gemm_i8_i32(x, m, k, n, p, ws, off, out, 1) != 0) { printf("alloc\n"); return 3; }
    for (long i = 0; i < m; i++) for (long j = 0; j < n; j++) {
        int64_t s = off[j];
        for (long q = 0; q < k; q++) s += (int64_t)x[i * k + q] * w[j * k + q];
        if (s != out[i * n + j]) { printf("mismatch at %ld,%ld: %lld != %d\n", i, j, (long long)s, out[i * n + j]); return 1; }
    }
    printf("ok\n");
    return 0;
}
"""


@pytest.fixture(scope="module")
def vnni_emulated(tmp_path_factory):
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("vnni")
    (d / "t.c").write_text(PROGRAM)
    exe = d / "t"
    proc = subprocess.run([cc, "-O1", "-std=gnu11", "-I", str(SRC), str(d / "t.c"), "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


@pytest.mark.parametrize("m,k,n,extreme", [
    (1, 1, 1, 0), (3, 5, 33, 0), (7, 1030, 31, 0), (13, 2050, 65, 0), (100, 37, 40, 0),
    (2, 4099, 35, 1),
], ids=lambda v: str(v))
def test_vnni_path_emulated(vnni_emulated, m, k, n, extreme):
    proc = subprocess.run([str(vnni_emulated), str(m), str(k), str(n), str(extreme)],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stdout + proc.stderr
