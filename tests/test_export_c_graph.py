"""C export of the integer graph (qatcore.export.c_graph): the generated C99, compiled with
gcc -O2 on x86-64 and for 32-bit ARM (run under qemu), is bit-exact with
``QuantizedModel.forward_int8(rounding="gemmlowp")`` and with TFLM running the .tflite of
the same model (qatcore.export.tflite_graph); the scratch arena is no larger than TFLM's
smallest working arena, and the Cortex-M4 code + constants are reported beside the .tflite
size.

Many inputs go through one C program run (a binary file of samples in, one of outputs out).
"""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from qatcore.export.c_graph import c_sources, plan_arena, write_c

import tflite_graph_models as G

pytestmark = pytest.mark.skipif(not G.HAVE_ENGINE, reason="the integer graph engine is needed")

CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
UBSAN = ["-fsanitize=undefined", "-fno-sanitize-recover=all"]
QEMU = ["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]
N_OP = 300          # random inputs per single-op model
N_MODEL = 1000      # random inputs per whole model (x86-64 and ARM)
_REQUIRE = os.environ.get("QATCORE_REQUIRE_INTEGRATIONS", "") not in ("", "0")

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "@NAME@.h"

/* argv: inputs file, outputs file, sample count.  A sample is the graph inputs one after
 * the other (int8), its result the outputs one after the other. */
int main(int argc, char **argv)
{
    static int8_t scratch[@UP@_SCRATCH_BYTES];
    static int8_t in[@UP@_INPUT_SIZE], out[@UP@_OUTPUT_SIZE];
    FILE *fi, *fo;
    long n, k;
    if (argc != 4)
        return 2;
    if (@NAME@_invoke(NULL, out, scratch) != -1 || @NAME@_invoke(in, NULL, scratch) != -1)
        return 7;
    n = strtol(argv[3], NULL, 10);
    fi = fopen(argv[1], "rb");
    fo = fopen(argv[2], "wb");
    if (fi == NULL || fo == NULL)
        return 3;
    for (k = 0; k < n; k++) {
        if (fread(in, 1, @UP@_INPUT_SIZE, fi) != @UP@_INPUT_SIZE)
            return 4;
        if (@NAME@_invoke(in, out, scratch) != 0)
            return 5;
        if (fwrite(out, 1, @UP@_OUTPUT_SIZE, fo) != @UP@_OUTPUT_SIZE)
            return 6;
    }
    fclose(fi);
    return fclose(fo) != 0;
}
"""


def need_tool(*tools):
    for tool in tools:
        if shutil.which(tool) is None:
            if _REQUIRE:
                pytest.fail(f"{tool} is not installed (QATCORE_REQUIRE_INTEGRATIONS=1)")
            pytest.skip(f"{tool} is not installed")


def build(model, d, name="m", cc="cc", extra=()):
    d.mkdir(parents=True, exist_ok=True)
    _, c = write_c(model, d, name)
    driver = d / "driver.c"
    driver.write_text(DRIVER.replace("@NAME@", name).replace("@UP@", name.upper()))
    prog = d / f"driver-{cc}"
    r = subprocess.run([cc, *CFLAGS, *extra, str(driver), c, "-o", str(prog)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[:4000]
    return prog


def run(prog, model, xs, d, prefix=()):
    """Outputs of the C program for the inputs `xs` (one array per graph input)."""
    n = len(xs[0])
    fin, fout = d / "in.bin", d / "out.bin"
    fin.write_bytes(np.concatenate([x.reshape(n, -1) for x in xs], axis=1).tobytes())
    subprocess.run([*prefix, str(prog), str(fin), str(fout), str(n)], check=True,
                   capture_output=True, timeout=300)
    out = np.frombuffer(fout.read_bytes(), np.int8).reshape(n, -1)
    res, o = [], 0
    for t in model.outputs:
        shape = model.tensors[t].shape
        size = int(np.prod(shape))
        res.append(out[:, o:o + size].reshape(n, *shape))
        o += size
    return res


def forward(model, xs):
    y = model.forward_int8(xs if len(xs) > 1 else xs[0], rounding="gemmlowp")
    return list(y) if isinstance(y, (list, tuple)) else [y]


def tflm_run(model, xs):
    tflm = pytest.importorskip("tflite_micro")
    from qatcore.export.tflite_graph import tflite_bytes

    n = len(xs[0])
    it = tflm.runtime.Interpreter.from_bytes(tflite_bytes(model, batch_size=n),
                                             arena_size=1 << 26)
    for i, x in enumerate(xs):
        it.set_input(x, i)
    it.invoke()
    return [np.asarray(it.get_output(i)).reshape(n, *model.tensors[t].shape)
            for i, t in enumerate(model.outputs)]


def assert_equal(got, want, what):
    for k, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (what, k, g.shape, w.shape)
        bad = np.flatnonzero(g.ravel() != w.ravel())
        assert bad.size == 0, (f"output {k}: {bad.size} of {g.size} codes differ from {what}, "
                               f"first at {bad[0]}: C {g.ravel()[bad[0]]} vs {w.ravel()[bad[0]]}")


def _tflm_differs(model):
    """TFLM's RELU6 clamps the input codes and ignores the output's scale (micro
    activations.cc); LiteRT and forward_int8 requantize.  Equal where the scales are."""
    for op in model.ops:
        if type(op).__name__ == "Relu" and op.max_value is not None:
            a, b = model.tensors[op.inputs[0]], model.tensors[op.output]
            if np.float32(a.scale) != np.float32(b.scale) or a.zero_point != b.zero_point:
                return True
    return False


# ------------------------------------------------------------------------- the models

def sample_inputs(shapes, n, seed):
    """Random int8 codes with a per-sample level and spread (N(mu, sigma) with mu, sigma
    drawn per sample; a quarter of the samples uniform over the whole range): pooled
    features then vary from sample to sample, as real inputs make them."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        mu = rng.uniform(-110, 110, (n,) + (1,) * len(shape))
        sigma = rng.uniform(2, 90, (n,) + (1,) * len(shape))
        x = mu + sigma * rng.standard_normal((n, *shape))
        uniform = rng.random(n) < 0.25
        x[uniform] = rng.integers(-128, 128, (int(uniform.sum()), *shape))
        out.append(np.clip(np.round(x), -128, 127).astype(np.int8))
    return out


_KEEP = {"Reshape", "AveragePool2D", "MaxPool2D", "Pad", "Concatenation"}


def calibrated(g, outputs, name, n=256):
    """The builder's graph with each op's output (scale, zero point) measured on
    :func:`sample_inputs` (0.1 / 99.9 percentiles of the real values, op by op in graph
    order, as a post-training calibration would), so that codes neither saturate nor
    collapse deep in the graph; each softmax gets a beta that spreads its input's code
    range over ~10."""
    ops = list(g.ops)
    xs = dict(zip(g.inputs, sample_inputs([g.tensors[t].shape for t in g.inputs], n, 7)))
    for k, op in enumerate(ops):
        kind, t = op.kind, op.output
        shape = g.tensors[t].shape
        if kind in ("Softmax", "Logistic"):
            if kind == "Softmax":
                s_in = g.tensors[op.inputs[0]].scale
                ops[k] = G.Rec(G.Softmax, op.inputs[0], t, beta=float(10.0 / (255 * s_in)))
            continue
        if kind in _KEEP:
            src = g.tensors[op.inputs[0]]
            g.tensors[t] = G.TensorSpec(t, shape, src.scale, src.zero_point)
            continue
        scale = g.tensors[t].scale
        for _ in range(12):
            g.tensors[t] = G.TensorSpec(t, shape, scale, 0)
            probe = g._model(ops[:k + 1], [t])
            q = forward(probe, [xs[i] for i in probe.inputs])[0].astype(np.float64)
            if np.mean(np.abs(q) >= 127) < 0.001:
                break
            scale *= 4
        real = q * scale
        lo, hi = np.percentile(real, [0.1, 99.9])
        if op.get("activation") is not None or kind == "Relu":
            lo = 0.0
        lo, hi = min(lo, 0.0), max(hi, lo + 1e-3)
        s = float(np.float32((hi - lo) / 255))
        zp = int(np.clip(np.round(-128 - lo / s), -128, 127))
        g.tensors[t] = G.TensorSpec(t, shape, s, zp)
    return g._model(ops, outputs, name)


def ds_cnn_like(seed):
    """Keyword spotting: conv(10x4, stride 2, relu) -> 3 x (depthwise 3x3 relu ->
    pointwise relu) -> average pool -> reshape -> fc 12 -> softmax, on 25 x 10 x 1."""
    g = G.GraphBuilder(seed, (25, 10, 1), 0.1, -128)
    a = g.conv("x", 24, kernel=(10, 4), stride=(2, 2), activation="relu")
    for _ in range(3):
        a = g.depthwise(a, activation="relu")
        a = g.conv(a, 24, kernel=(1, 1), activation="relu")
    h, w, c = g.spec(a).shape
    p = g.pool(a, "avg", pool=(h, w), stride=(1, 1))
    r = g.reshape(p, (c,))
    logits = g.fc(r, 12)
    return calibrated(g, [g.softmax(logits), logits, a], "ds_cnn")


def resnet_like(seed):
    """ResNet block: conv -> [conv relu -> conv] + identity -> add(relu) -> [conv stride 2
    relu -> conv] + 1x1 stride-2 conv -> add(relu) -> mean -> fc 10 -> softmax."""
    g = G.GraphBuilder(seed, (16, 16, 3), 0.03, 2)
    a = g.conv("x", 8, activation="relu")
    b = g.conv(g.conv(a, 8, activation="relu"), 8)
    a2 = g.add(a, b, activation="relu")
    c = g.conv(g.conv(a2, 16, stride=(2, 2), activation="relu"), 16)
    skip = g.conv(a2, 16, kernel=(1, 1), stride=(2, 2))
    d = g.add(c, skip, activation="relu")
    logits = g.fc(g.mean(d), 10)
    return calibrated(g, [g.softmax(logits), logits, d], "resnet")


def mobilenet_like(seed):
    """MobileNet v1/v3 block: conv stride 2 relu6 -> depthwise relu6 -> pointwise relu6 ->
    depthwise stride 2 (explicit padding) -> pointwise -> hard_swish -> depthwise x2
    multiplier -> max pool -> mean -> fc 10 -> softmax."""
    g = G.GraphBuilder(seed, (24, 24, 3), 0.02, -10)
    a = g.conv("x", 8, stride=(2, 2), activation="relu6")
    a = g.conv(g.depthwise(a, activation="relu6"), 16, kernel=(1, 1), activation="relu6")
    a = g.depthwise(a, stride=(2, 2), padding=(0, 1, 0, 1), activation="relu6")
    a = hs = g.hard_swish(g.conv(a, 16, kernel=(1, 1)))
    a = g.depthwise(a, multiplier=2, activation="relu")
    a = g.pool(a, "max", pool=(2, 2), stride=(2, 2))
    logits = g.fc(g.mean(a), 10)
    return calibrated(g, [g.softmax(logits), logits, hs], "mobilenet")


MODELS = {"ds_cnn": ds_cnn_like, "resnet": resnet_like, "mobilenet": mobilenet_like,
          "mixed": G.mixed_net, "small_cnn": G.small_cnn}
WHOLE = ["ds_cnn", "resnet", "mobilenet"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """model, inputs, forward_int8's outputs, TFLM's, and the x86-64 C program's."""
    cache = {}

    def get(key):
        if key not in cache:
            model = MODELS[key](3)
            xs = sample_inputs([model.tensors[t].shape for t in model.inputs], N_MODEL, 11)
            d = tmp_path_factory.mktemp(key)
            got = run(build(model, d, key), model, xs, d)
            cache[key] = (model, xs, forward(model, xs), tflm_run(model, xs), got, d)
        return cache[key]
    return get


# ------------------------------------------------------------------------- per op

@pytest.mark.parametrize("op", G.SINGLE_OPS)
def test_single_op_bit_exact(op, tmp_path):
    model = G._single(op)(5)
    xs = G.random_inputs(model, N_OP, 6)
    got = run(build(model, tmp_path), model, xs, tmp_path)
    assert_equal(got, forward(model, xs), "forward_int8")
    if _tflm_differs(model):
        return
    assert_equal(got, tflm_run(model, xs), "TFLM")


# ------------------------------------------------------------------------- whole models

@pytest.mark.parametrize("key", WHOLE + ["mixed", "small_cnn"])
def test_model_bit_exact_x86(key, whole):
    model, xs, want, tflm_out, got, _ = whole(key)
    assert_equal(got, want, "forward_int8")
    if not _tflm_differs(model):
        assert_equal(got, tflm_out, "TFLM")
    if key in WHOLE:    # outputs: probabilities, logits, a deep intermediate tensor
        assert [len(np.unique(v)) > n for v, n in zip(got, (2, 20, 100))] == [True] * 3


@pytest.mark.parametrize("op", G.SINGLE_OPS)
def test_single_op_arm32_qemu(op, tmp_path):
    need_tool("arm-linux-gnueabihf-gcc", "qemu-arm")
    model = G._single(op)(5)
    xs = G.random_inputs(model, N_OP, 6)
    prog = build(model, tmp_path, cc="arm-linux-gnueabihf-gcc", extra=["-static"])
    assert_equal(run(prog, model, xs, tmp_path, prefix=QEMU), forward(model, xs),
                 "forward_int8 (ARM)")


@pytest.mark.parametrize("key", WHOLE + ["mixed"])
def test_model_bit_exact_arm32_qemu(key, whole, tmp_path):
    """The same program built for 32-bit ARM (hard float ABI, static), run under qemu."""
    need_tool("arm-linux-gnueabihf-gcc", "qemu-arm")
    model, xs, want, _, _, _ = whole(key)
    prog = build(model, tmp_path, key, cc="arm-linux-gnueabihf-gcc", extra=["-static"])
    assert_equal(run(prog, model, xs, tmp_path, prefix=QEMU), want, "forward_int8 (ARM)")


@pytest.mark.parametrize("key", ["mobilenet", "mixed"])
def test_no_undefined_behaviour(key, whole, tmp_path):
    """UBSan finds nothing (signed overflow, shifts, ...) on the whole models, and on
    single ops at extreme zero points."""
    model, xs, want, _, _, _ = whole(key)
    n = 200
    got = run(build(model, tmp_path, key, extra=UBSAN), model, [x[:n] for x in xs], tmp_path)
    assert_equal(got, [w[:n] for w in want], "forward_int8 (UBSan)")


def extreme_graph(ratio, zp_in, zp_out, seed=0):
    """Every arithmetic op side by side on the same inputs at zero points at the ends of
    the range, each output scale `ratio` times the builder's guess (1e-7: multipliers
    above one, saturating left shifts; 1e7: multipliers flushed towards zero); LOGISTIC and
    SOFTMAX get an input scale `ratio` times 0.05 instead."""
    g = G.GraphBuilder(seed, (7, 6, 5), 0.05, zp_in)
    g.input("y", (7, 6, 5), 0.35, -zp_in // 2)
    g.input("z", (24,), float(np.float32(max(0.05 * ratio, 1e-6))), zp_in)
    outs = [g.fc("x", 9), g.conv("x", 4, stride=(2, 1)), g.depthwise("x", multiplier=3),
            g.add("x", "y"), g.mul("x", "y"), g.mean("x", axes=(0, 2)),
            g.relu("x", rescale=2.0)]
    for t in outs:
        s = g.tensors[t]
        scale = s.scale * (max(ratio, 1e-3) if t == outs[3] else ratio)
        g.tensors[t] = G.TensorSpec(t, s.shape, scale, zp_out)
    outs += [g.hard_swish("x"), g.logistic("z"), g.softmax("z")]
    return g.model(outs, name="extreme", calibrate=False)


@pytest.mark.parametrize("zp_in,zp_out", [(-128, 127), (127, -128)], ids=["zp-128", "zp127"])
@pytest.mark.parametrize("ratio", [1e-7, 1e-3, 20.0, 1e7], ids=lambda r: f"x{r:g}")
def test_extreme_scales_and_zero_points(ratio, zp_in, zp_out, tmp_path):
    """Bit-exact with forward_int8, no undefined behaviour (UBSan).  TFLM agrees too except
    where a multiplier above 2^31 makes its unsaturated left shift wrap (ratio 1e-7)."""
    model = extreme_graph(ratio, zp_in, zp_out)
    xs = G.random_inputs(model, N_OP, 3)
    got = run(build(model, tmp_path, extra=UBSAN), model, xs, tmp_path)
    assert_equal(got, forward(model, xs), "forward_int8")
    if ratio >= 1e-3:
        assert_equal(got, tflm_run(model, xs), "TFLM")


DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("fixture", ["keras_cnn", "keras_dscnn", "keras_resnet"])
def test_converter_made_tflite_compiled_to_c(fixture, tmp_path):
    """A .tflite from TensorFlow's converter, read by QuantizedModel.from_tflite and
    exported to C, computes what TFLM computes running the original file (its float
    QUANTIZE / DEQUANTIZE ends, where it has them, applied around the int8 codes)."""
    from qatcore.model import QuantizedModel
    tflm = pytest.importorskip("tflite_micro")

    path = os.path.join(DATA, f"{fixture}.tflite")
    model = QuantizedModel.from_tflite(path)
    xs = sample_inputs([model.tensors[t].shape for t in model.inputs], N_OP, 4)
    got = run(build(model, tmp_path), model, xs, tmp_path)
    assert_equal(got, forward(model, xs), "forward_int8")
    it = tflm.runtime.Interpreter.from_file(path, arena_size=1 << 22)
    spec_in = model.tensors[model.inputs[0]]
    spec_out = model.tensors[model.outputs[0]]
    float_in = it.get_input_details(0)["dtype"] == np.float32
    float_out = it.get_output_details(0)["dtype"] == np.float32
    want = []
    for x in xs[0]:
        x = x[None]
        if float_in:
            x = (x.astype(np.float32) - np.float32(spec_in.zero_point)) * np.float32(spec_in.scale)
        it.set_input(x, 0)
        it.invoke()
        want.append(np.asarray(it.get_output(0)).reshape(got[0].shape[1:]))
    want = np.stack(want)
    mine = got[0]
    if float_out:
        mine = (mine.astype(np.float32) - np.float32(spec_out.zero_point)) * np.float32(
            spec_out.scale)
    assert_equal([mine], [want], f"TFLM running {fixture}.tflite")


# ------------------------------------------------------------------------- embedded

def _tflm_min_arena(data, xs):
    """The smallest arena (16-byte steps) with which TFLM allocates and invokes."""
    from tflite_micro import runtime

    def works(n):
        try:
            it = runtime.Interpreter.from_bytes(data, arena_size=n)
            for i, x in enumerate(xs):
                it.set_input(x, i)
            it.invoke()
            return True
        except Exception:
            return False
    lo, hi = 0, 1 << 20
    assert works(hi)
    while hi - lo > 16:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    return hi


def _cortex_m4_size(c, d):
    obj = d / "m4.o"
    subprocess.run(["arm-none-eabi-gcc", *CFLAGS, "-mcpu=cortex-m4", "-mthumb", "-Os", "-c",
                    c, "-o", str(obj)], check=True, capture_output=True, text=True)
    out = subprocess.run(["arm-none-eabi-size", str(obj)], check=True, capture_output=True,
                         text=True).stdout.split("\n")[1].split()
    return tuple(int(v) for v in out[:3])            # text (+ rodata), data, bss


@pytest.mark.parametrize("key", WHOLE)
def test_flash_and_ram_vs_tflm(key, whole, tmp_path):
    """RAM: the C scratch arena plus the caller's in/out buffers <= TFLM's smallest arena
    (which holds the activations, inputs and outputs included, and TFLM's own structures).
    Flash: Cortex-M4 .text + .rodata of the C export <= the .tflite size + 8 KB (the
    issue's target; the .tflite still needs the TFLM interpreter besides)."""
    need_tool("arm-none-eabi-gcc", "arm-none-eabi-size")
    pytest.importorskip("tflite_micro")
    from qatcore.export.tflite_graph import tflite_bytes

    model, xs, _, _, _, d = whole(key)
    header, _ = c_sources(model, key)
    scratch = int(re.search(rf"#define {key.upper()}_SCRATCH_BYTES (\d+)", header).group(1))
    io = int(re.search(rf"#define {key.upper()}_INPUT_SIZE (\d+)", header).group(1)) + \
        int(re.search(rf"#define {key.upper()}_OUTPUT_SIZE (\d+)", header).group(1))
    data = tflite_bytes(model)
    arena = _tflm_min_arena(data, [x[:1] for x in xs])
    text, rw, bss = _cortex_m4_size(str(d / f"{key}.c"), tmp_path)
    print(f"\n{key}: C flash {text + rw} B (.text+.rodata {text}, .data {rw}, .bss {bss}); "
          f".tflite {len(data)} B; C RAM scratch {scratch} + io {io} B; TFLM min arena "
          f"{arena} B")
    assert rw == 0 and bss == 0
    assert scratch + io <= arena
    assert text <= len(data) + 8192


# ------------------------------------------------------------------------- the arena

def _lifetimes(model):
    produced = {op.output: k for k, op in enumerate(model.ops)}
    last = {}
    for k, op in enumerate(model.ops):
        for t in op.inputs:
            last[t] = k
    return produced, last


@pytest.mark.parametrize("key", WHOLE + ["mixed"])
def test_arena_plan_never_overlaps_live_tensors(key, whole):
    """Read the plan back from the generated calls: two tensors that are alive at the same
    time (reshape aliases followed) never share a byte, and everything fits in the arena."""
    model = whole(key)[0]
    header, source = c_sources(model, "m")
    size = int(re.search(r"#define M_SCRATCH_BYTES (\d+)", header).group(1))
    calls = source[source.index("int m_invoke_io("):]
    offsets = {int(v) for v in re.findall(r"arena \+ (\d+)", calls)}
    assert offsets and max(offsets) < size
    sizes = {t: int(np.prod(s.shape)) for t, s in model.tensors.items()}
    total = sum(sizes[op.output] for op in model.ops if op.output not in model.outputs)
    assert size < total                 # reuse happens
    assert size <= model.arena_bytes(1)   # the engine's plan (graph outputs included)


def test_plan_arena_first_fit():
    sizes = {"a": 100, "b": 50, "c": 100, "d": 10}
    life = {"a": (0, 1), "b": (1, 2), "c": (2, 3), "d": (3, 3)}
    offsets, total = plan_arena(sizes, life)
    assert offsets["a"] == 0 and offsets["c"] == 0          # a is dead when c is written
    assert offsets["b"] == 100 and total == 150
    assert offsets["d"] == 100                              # b is dead at op 3
    for x in sizes:
        for y in sizes:
            if x < y and life[x][0] <= life[y][1] and life[y][0] <= life[x][1]:
                assert (offsets[x] + sizes[x] <= offsets[y]
                        or offsets[y] + sizes[y] <= offsets[x])


def test_reshape_is_an_alias(whole):
    model = whole("ds_cnn")[0]
    _, source = c_sources(model, "m")
    assert "RESHAPE" in source and "same memory" in source and "m_copy" not in source


# ------------------------------------------------------------------------- the source

def test_source_is_integer_only(whole):
    header, source = c_sources(whole("mobilenet")[0], "m")
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    for word in ("float", "double", "malloc", "free", "math", "stdlib", "stdio"):
        assert not re.search(rf"\b{word}\b", code), word
    assert re.findall(r"#include <(\w+)\.h>", code) == ["stddef", "stdint"]
    assert "int m_invoke(const int8_t *in, int8_t *out, void *scratch);" in header
    assert "double rounding" in header


STRICT = ["-Wconversion", "-Wsign-conversion", "-Wcast-align", "-Wshadow", "-Wcast-qual", "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wundef",
          "-Wdouble-promotion", "-Wredundant-decls"]


@pytest.mark.parametrize("key", ["mobilenet", "mixed"])
def test_compiles_strict_and_as_cxx(key, whole, tmp_path):
    _, c = write_c(whole(key)[0], tmp_path, "m")
    subprocess.run(["cc", *CFLAGS, *STRICT, "-c", c, "-o", str(tmp_path / "m.o")], check=True,
                   capture_output=True, text=True)
    need_tool("c++")
    subprocess.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-x", "c++",
                    "-c", c, "-o", str(tmp_path / "mx.o")], check=True, capture_output=True,
                   text=True)


def test_only_the_kernels_used():
    _, source = c_sources(G._single("fc")(0), "m")
    assert "m_fully_connected" in source
    for fn in ("m_conv", "m_softmax", "m_exp_on_negative_values", "m_hard_swish"):
        assert fn + "(" not in source


def test_multi_io_entry_points(whole, tmp_path):
    """name_invoke_io with one pointer per tensor gives what name_invoke gives."""
    model, xs, want, _, _, _ = whole("mixed")
    h, c = write_c(model, tmp_path, "m")
    main = tmp_path / "io.c"
    sizes_in = [int(np.prod(model.tensors[t].shape)) for t in model.inputs]
    sizes_out = [int(np.prod(model.tensors[t].shape)) for t in model.outputs]
    ni, no = len(sizes_in), len(sizes_out)
    decl = "".join(f"static int8_t x{i}[{n}];\n" for i, n in enumerate(sizes_in))
    decl += "".join(f"static int8_t y{i}[{n}];\n" for i, n in enumerate(sizes_out))
    main.write_text(
        '#include <stdio.h>\n#include "m.h"\n' + decl
        + "static int8_t scratch[M_SCRATCH_BYTES];\n"
        "int main(int argc, char **argv) {\n"
        f"  const int8_t *ins[{ni}]; int8_t *outs[{no}]; FILE *f = fopen(argv[1], \"rb\"), *g;\n"
        "  (void)argc;\n"
        + "".join(f"  ins[{i}] = x{i}; if (fread(x{i}, 1, sizeof x{i}, f) != sizeof x{i}) "
                  f"return 3;\n" for i in range(ni))
        + "".join(f"  outs[{i}] = y{i};\n" for i in range(no))
        + "  if (m_invoke_io(ins, outs, scratch) != 0) return 4;\n"
        "  g = fopen(argv[2], \"wb\");\n"
        + "".join(f"  fwrite(y{i}, 1, sizeof y{i}, g);\n" for i in range(no))
        + f"  outs[{no - 1}] = NULL; if (m_invoke_io(ins, outs, scratch) != -1) return 5;\n"
        "  return fclose(g);\n}\n")
    prog = tmp_path / "io"
    subprocess.run(["cc", *CFLAGS, "-I", str(tmp_path), str(main), c, "-o", str(prog)],
                   check=True, capture_output=True, text=True)
    (tmp_path / "in.bin").write_bytes(b"".join(x[0].tobytes() for x in xs))
    subprocess.run([str(prog), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True)
    out = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.int8)
    assert np.array_equal(out, np.concatenate([w[0].ravel() for w in want]))


def test_to_c_delegate(tmp_path):
    model = G.ds_cnn(1)
    h, c = model.to_c(tmp_path, "kws")
    assert os.path.basename(h) == "kws.h" and os.path.basename(c) == "kws.c"
    assert "int kws_invoke(" in open(h).read()


def test_errors_write_nothing(tmp_path):
    model = G.resnet_block(0)
    with pytest.raises(ValueError, match="name"):
        write_c(model, tmp_path, "1abc")
    with pytest.raises(TypeError, match="QuantizedModel"):
        write_c(object(), tmp_path, "m")
    with pytest.raises(ValueError, match="directory"):
        write_c(model, tmp_path / "missing", "m")

    class Unknown:
        inputs, output = ("x",), "y"
    bad = G.GraphBuilder(0, (4,))
    bad.tensors["y"] = G.TensorSpec("y", (4,), 1.0, 0)

    class Fake:
        tensors = bad.tensors
        ops = [Unknown()]
        inputs, outputs = ["x"], ["y"]
    with pytest.raises(ValueError, match=r"op 0 \(Unknown\) has no C kernel"):
        write_c(Fake(), tmp_path, "m")
    assert list(tmp_path.iterdir()) == []


def test_overwrites_atomically(tmp_path):
    write_c(G.resnet_block(0), tmp_path, "m")
    first = (tmp_path / "m.c").read_text()
    write_c(G.resnet_block(1), tmp_path, "m")
    assert (tmp_path / "m.c").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.c", "m.h"]


def test_tensor_names_cannot_break_the_source(tmp_path):
    """Names come from files: comment delimiters and control characters in them never
    reach the C text."""
    name = "x */ int evil; /* \n\u00e9"
    g = G.GraphBuilder(0, (6, 6, 2), name=name)
    y = g.conv(name, 3)
    model = g.model(g.softmax(g.fc(y, 4)), calibrate=False)
    header, source = c_sources(model, "m")
    assert "evil" in source and "*/ int evil" not in source + header
    xs = G.random_inputs(model, 50, 0)
    assert_equal(run(build(model, tmp_path), model, xs, tmp_path), forward(model, xs),
                 "forward_int8")


def test_inconsistent_shapes_refused(tmp_path):
    """A duck-typed model whose tensor shapes disagree with its ops is refused (the C
    loops would index out of bounds)."""
    model = G.small_cnn(0)

    class Fake:
        tensors = dict(model.tensors)
        ops, inputs, outputs = model.ops, model.inputs, model.outputs
    t = model.ops[1].output
    Fake.tensors[t] = G.TensorSpec(t, (13, 12, 8), 0.1, 0)
    with pytest.raises(ValueError, match=r"op 1 \(DepthwiseConv2D\): the shapes"):
        write_c(Fake(), tmp_path, "m")
    assert list(tmp_path.iterdir()) == []
