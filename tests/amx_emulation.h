/* Test-only C emulation of the Intel AMX intrinsics qc_amx.h uses (and of the six AVX-512
 * VNNI intrinsics its small-M path uses), so that tests/test_gemm_amx_emulated.py compiles
 * the same qc_amx.h on any CPU.  Semantics from the Intel SDM (AMX chapter, TILELOADD,
 * TDPBSSD, TILESTORED, TILEZERO, LDTILECFG, TILERELEASE):
 *   - tile state is per thread; LDTILECFG zeroes every tile, TILERELEASE returns to the
 *     unconfigured state, and a tile instruction without a configuration faults (#UD):
 *     here it aborts, so a thread that forgets _tile_loadconfig fails the test;
 *   - TILELOADD reads rows x colsb bytes (row r at base + r * stride) and zeroes the rest
 *     of the tile; TILESTORED writes rows x colsb bytes;
 *   - TDPBSSD: C[m][n] += sum over k-groups g < A.colsb/4 and j < 4 of
 *     int8 A[m][4g + j] * int8 B[g][4n + j], in int32 that wraps (no saturation); the
 *     shapes must agree (A.rows == C.rows, A.colsb == 4 * B.rows, B.colsb == C.colsb) and
 *     the three tiles must differ, else #UD (here: abort).
 * Reads and writes touch exactly the bytes the hardware would, so AddressSanitizer sees
 * any access past the packed buffers.
 */
#ifndef QC_AMX_EMULATION_H
#define QC_AMX_EMULATION_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ AVX-512 VNNI */
typedef struct { int32_t v[16]; } __m512i;
static inline __m512i _mm512_setzero_si512(void) { __m512i r; memset(&r, 0, sizeof r); return r; }
static inline __m512i _mm512_loadu_si512(const void *p) { __m512i r; memcpy(&r, p, 64); return r; }
static inline void _mm512_storeu_si512(void *p, __m512i a) { memcpy(p, &a, 64); }
static inline __m512i _mm512_set1_epi32(int32_t x) {
    __m512i r;
    for (int i = 0; i < 16; i++) r.v[i] = x;
    return r;
}
/* vpdpbusd: per 32-bit lane, src + sum of 4 (uint8 a) * (int8 b), wrapping */
static inline __m512i _mm512_dpbusd_epi32(__m512i src, __m512i a, __m512i b) {
    const uint8_t *pa = (const uint8_t *)&a;
    const int8_t *pb = (const int8_t *)&b;
    for (int i = 0; i < 16; i++) {
        uint32_t s = (uint32_t)src.v[i];
        for (int j = 0; j < 4; j++) s += (uint32_t)((int32_t)pa[4 * i + j] * (int32_t)pb[4 * i + j]);
        src.v[i] = (int32_t)s;
    }
    return src;
}
#define QC_GEMM_EMULATE_VNNI 1

/* ------------------------------------------------------------------ AMX */
static _Thread_local struct {
    int configured;
    uint8_t rows[8];
    uint16_t colsb[8];
    uint8_t data[8][16][64];
} qc_emu_tiles;

/* Calls of each emulated instruction, for the tests' sanity checks (all threads). */
static long qc_emu_dpbssd_calls;

static void qc_emu_fail(const char *what, int t) {
    fprintf(stderr, "AMX emulation: %s (tile %d)\n", what, t);
    fflush(stderr);
    abort();
}

static void qc_emu_check(int t) {
    if (!qc_emu_tiles.configured) qc_emu_fail("tile instruction without a tile configuration", t);
    if (t < 0 || t > 7) qc_emu_fail("no such tile", t);
    if (qc_emu_tiles.rows[t] == 0 || qc_emu_tiles.colsb[t] == 0) qc_emu_fail("tile not configured", t);
}

static void _tile_loadconfig(const void *config) {
    const uint8_t *c = (const uint8_t *)config;
    memset(&qc_emu_tiles, 0, sizeof qc_emu_tiles);
    if (c[0] == 0)
        return;                         /* palette 0: initialized (unconfigured) state */
    if (c[0] != 1 || c[1] != 0) qc_emu_fail("palette must be 1 and start_row 0", -1);
    for (int t = 0; t < 8; t++) {
        uint16_t colsb;
        memcpy(&colsb, c + 16 + 2 * t, 2);
        uint8_t rows = c[48 + t];
        if (rows > 16 || colsb > 64) qc_emu_fail("tile shape beyond 16 rows x 64 bytes", t);
        if ((rows == 0) != (colsb == 0)) qc_emu_fail("half-configured tile", t);
        qc_emu_tiles.rows[t] = rows;
        qc_emu_tiles.colsb[t] = colsb;
    }
    qc_emu_tiles.configured = 1;
}

static void _tile_release(void) { memset(&qc_emu_tiles, 0, sizeof qc_emu_tiles); }

static void qc_emu_loadd(int t, const void *base, long stride) {
    qc_emu_check(t);
    memset(qc_emu_tiles.data[t], 0, sizeof qc_emu_tiles.data[t]);
    for (int r = 0; r < qc_emu_tiles.rows[t]; r++)
        memcpy(qc_emu_tiles.data[t][r], (const uint8_t *)base + (long)r * stride, qc_emu_tiles.colsb[t]);
}

static void qc_emu_stored(int t, void *base, long stride) {
    qc_emu_check(t);
    for (int r = 0; r < qc_emu_tiles.rows[t]; r++)
        memcpy((uint8_t *)base + (long)r * stride, qc_emu_tiles.data[t][r], qc_emu_tiles.colsb[t]);
}

static void qc_emu_zero(int t) {
    qc_emu_check(t);
    memset(qc_emu_tiles.data[t], 0, sizeof qc_emu_tiles.data[t]);
}

static void qc_emu_dpbssd(int c, int a, int b) {
    qc_emu_check(c);
    qc_emu_check(a);
    qc_emu_check(b);
    if (c == a || c == b || a == b) qc_emu_fail("tdpbssd operands must be distinct tiles", c);
    if (qc_emu_tiles.rows[a] != qc_emu_tiles.rows[c] || qc_emu_tiles.colsb[a] != 4 * qc_emu_tiles.rows[b] ||
        qc_emu_tiles.colsb[b] != qc_emu_tiles.colsb[c] || qc_emu_tiles.colsb[c] % 4 != 0)
        qc_emu_fail("tdpbssd shapes disagree", c);
    __atomic_fetch_add(&qc_emu_dpbssd_calls, 1, __ATOMIC_RELAXED);
    for (int m = 0; m < qc_emu_tiles.rows[c]; m++)
        for (int n = 0; n < qc_emu_tiles.colsb[c] / 4; n++) {
            int32_t acc;
            memcpy(&acc, &qc_emu_tiles.data[c][m][4 * n], 4);
            uint32_t s = (uint32_t)acc;
            for (int g = 0; g < qc_emu_tiles.colsb[a] / 4; g++)
                for (int j = 0; j < 4; j++)
                    s += (uint32_t)((int32_t)(int8_t)qc_emu_tiles.data[a][m][4 * g + j] *
                                    (int32_t)(int8_t)qc_emu_tiles.data[b][g][4 * n + j]);
            acc = (int32_t)s;
            memcpy(&qc_emu_tiles.data[c][m][4 * n], &acc, 4);
        }
}

#define _tile_loadd(t, base, stride) qc_emu_loadd((t), (base), (long)(stride))
#define _tile_stored(t, base, stride) qc_emu_stored((t), (base), (long)(stride))
#define _tile_zero(t) qc_emu_zero(t)
#define _tile_dpbssd(c, a, b) qc_emu_dpbssd((c), (a), (b))
#define QC_AMX_EMULATE 1

#endif
