"""Figures of the C export for the demo MLP: Cortex-M4 flash (arm-none-eabi-size of
name.c at -mcpu=cortex-m4 -mthumb -Os), RAM (scratch bytes), and time per sample of the C
runtime on this machine (cc -O2, best of 20 passes over the test split) next to
forward_int8 (batch 1 and the whole split, 1 thread).

    PYTHONPATH=. python tools/c_export_figures.py

Timing figures are noisy on a shared machine."""

import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import qatcore  # noqa: E402
from qatcore import _backend  # noqa: E402
from qatcore.export.c import write_c  # noqa: E402

from export_models import demo_model  # noqa: E402

TIMER = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "digits_mlp.h"
int main(int argc, char **argv)
{
    static int8_t scratch[DIGITS_MLP_SCRATCH_BYTES];
    static int8_t in[4096 * DIGITS_MLP_INPUT_SIZE], out[4096 * DIGITS_MLP_OUTPUT_SIZE];
    long n, k, r;
    double best = 1e30;
    FILE *f;
    if (argc != 3 || (f = fopen(argv[1], "rb")) == NULL)
        return 2;
    n = strtol(argv[2], NULL, 10);
    if (n > 4096 || fread(in, DIGITS_MLP_INPUT_SIZE, (size_t)n, f) != (size_t)n)
        return 3;
    for (r = 0; r < 20; r++) {
        struct timespec a, b;
        double t;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (k = 0; k < n; k++)
            digits_mlp_invoke(in + k * DIGITS_MLP_INPUT_SIZE, out + k * DIGITS_MLP_OUTPUT_SIZE,
                              scratch);
        clock_gettime(CLOCK_MONOTONIC, &b);
        t = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
        if (t < best)
            best = t;
    }
    printf("%.0f\n", best / (double)n);
    return fwrite(out, 1, (size_t)n * DIGITS_MLP_OUTPUT_SIZE, stderr) == 0;
}
"""


def main() -> None:
    model, Xte, _ = demo_model()
    x = model.quantize_input(Xte)
    with tempfile.TemporaryDirectory() as d:
        h, c = write_c(model, d, "digits_mlp")
        scratch = [line for line in open(h) if "_SCRATCH_BYTES" in line and "#define" in line]
        obj = os.path.join(d, "m4.o")
        subprocess.run(["arm-none-eabi-gcc", "-std=c99", "-mcpu=cortex-m4", "-mthumb", "-Os",
                        "-c", c, "-o", obj], check=True)
        size = subprocess.run(["arm-none-eabi-size", "-A", obj], check=True,
                              capture_output=True, text=True).stdout
        sections = {p[0]: int(p[1]) for p in (l.split() for l in size.splitlines())
                    if len(p) >= 2 and p[0].startswith(".") and p[1].isdigit()}
        weights = sum(layer.weights_q.size for layer in model.layers)
        print(f"Cortex-M4 -Os: .text {sections.get('.text', 0)} B (runtime code), .rodata "
              f"{sections.get('.rodata', 0)} B (parameters; int8 weights {weights} B), "
              f".data {sections.get('.data', 0)} B, .bss {sections.get('.bss', 0)} B")
        print(f"RAM: {scratch[0].split()[-1]} B scratch (+ caller's in/out buffers)")
        timer = os.path.join(d, "timer.c")
        open(timer, "w").write(TIMER)
        prog = os.path.join(d, "timer")
        subprocess.run(["cc", "-std=c99", "-O2", "-I", d, timer, c, "-o", prog], check=True)
        fin = os.path.join(d, "in.bin")
        open(fin, "wb").write(x.tobytes())
        res = subprocess.run([prog, fin, str(len(x))], check=True, capture_output=True)
        got = np.frombuffer(res.stderr, np.int8).reshape(len(x), -1)
        assert np.array_equal(got, model.forward_int8(x)), "C output differs from forward_int8"
        print(f"C runtime (cc -O2, {platform.machine()}): {int(res.stdout)} ns/sample")
    qatcore.set_num_threads(1)
    best1 = min(_timed(lambda: [model.forward_int8(x[i:i + 1]) for i in range(len(x))])
                for _ in range(5)) / len(x)
    bestn = min(_timed(lambda: model.forward_int8(x)) for _ in range(20)) / len(x)
    print(f"forward_int8 ({_backend.kernels.__name__}, 1 thread): batch 1 "
          f"{best1 * 1e9:.0f} ns/sample, batch {len(x)} {bestn * 1e9:.0f} ns/sample")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
