"""C export: the generated C99 runtime, compiled with the system compiler (and for 32-bit
ARM under qemu, and for Cortex-M4), is bit-exact with forward_int8."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from qatcore import QuantizedLinear
from qatcore.export.c import c_sources, write_c, write_tflite_c_array

from export_models import Chain, demo_model, random_codes, random_layer, random_model

CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
N_INPUTS = 1000
UBSAN = ["-fsanitize=undefined", "-fno-sanitize-recover=all"]
_REQUIRE = os.environ.get("QATCORE_REQUIRE_INTEGRATIONS", "") not in ("", "0")

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "@NAME@.h"

/* argv: inputs file, outputs file, sample count.  Reads int8 rows, writes int8 rows. */
int main(int argc, char **argv)
{
    static int8_t scratch[@UP@_SCRATCH_BYTES];
    int8_t in[@UP@_INPUT_SIZE], out[@UP@_OUTPUT_SIZE];
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
    """Skip when a tool is missing, except in CI (QATCORE_REQUIRE_INTEGRATIONS=1), which
    installs them (.ci/run): there a missing tool fails the test."""
    for tool in tools:
        if shutil.which(tool) is None:
            if _REQUIRE:
                pytest.fail(f"{tool} is not installed (QATCORE_REQUIRE_INTEGRATIONS=1: .ci/run "
                            f"installs it)")
            pytest.skip(f"{tool} is not installed")


def build(model, tmp_path, name="model", cc="cc", extra=()):
    """write_c + the driver, compiled with `cc`; returns the program's path."""
    h, c = write_c(model, tmp_path, name)
    driver = tmp_path / "driver.c"
    driver.write_text(DRIVER.replace("@NAME@", name).replace("@UP@", name.upper()))
    prog = tmp_path / f"driver-{cc}"
    subprocess.run([cc, *CFLAGS, *extra, str(driver), c, "-o", str(prog)], check=True,
                   capture_output=True, text=True)
    return prog


def run(prog, model, x, tmp_path, prefix=()):
    fin, fout = tmp_path / "in.bin", tmp_path / "out.bin"
    fin.write_bytes(np.ascontiguousarray(x, np.int8).tobytes())
    subprocess.run([*prefix, str(prog), str(fin), str(fout), str(len(x))], check=True,
                   capture_output=True, timeout=120)
    return np.frombuffer(fout.read_bytes(), np.int8).reshape(len(x), -1)


def assert_bit_exact(got, model, x):
    want = model.forward_int8(x)
    assert got.shape == want.shape
    bad = np.flatnonzero(got.view(np.uint8).ravel() != want.view(np.uint8).ravel())
    assert bad.size == 0, (f"{bad.size} codes differ, first at {bad[0]}: C "
                           f"{got.ravel()[bad[0]]} vs forward_int8 {want.ravel()[bad[0]]}")


@pytest.fixture(scope="module")
def demo():
    return demo_model()


SEEDS = list(range(16))


@pytest.mark.parametrize("extreme", [False, True], ids=["fitted", "extreme-scales"])
@pytest.mark.parametrize("seed", SEEDS[:8])
def test_random_models_bit_exact(seed, extreme, tmp_path):
    model = random_model(seed, extreme=extreme)
    x = random_codes(model, N_INPUTS, seed)
    assert_bit_exact(run(build(model, tmp_path), model, x, tmp_path), model, x)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("in_zp,out_zp", [(-128, 127), (127, -128), (0, 0)],
                         ids=["zp-128-127", "zp127-128", "zp0"])
@pytest.mark.parametrize("act", [None, "relu", "relu6"], ids=["none", "relu", "relu6"])
def test_one_layer_grid(per_channel, in_zp, out_zp, act, tmp_path):
    rng = np.random.default_rng(hash((per_channel, in_zp, act)) % 2**32)
    layer = random_layer(rng, 67, 33, 0.02, in_zp, per_channel, 0.1)
    x = random_codes(Chain([layer], [None], 1.0, 0), N_INPUTS, 1)
    spread = float(np.std(layer.forward_quantized(x) * np.asarray(layer.output_scale)))
    model = Chain([layer], [act], spread / 30, out_zp)
    assert_bit_exact(run(build(model, tmp_path), model, x, tmp_path), model, x)


@pytest.mark.parametrize("ratio", [1e-12, 1e-9, 3e-7, 0.5, 1.0, 7.0, 3e4, 1e9],
                         ids=lambda r: f"mult{r:g}")
def test_multiplier_extremes(ratio, tmp_path):
    """Multipliers from flushed-to-zero (< 2^-32) to saturating left shifts."""
    rng = np.random.default_rng(7)
    layer = random_layer(rng, 1, 5, 1.0, 3, True, 1.0)
    scale = float(np.asarray(layer.output_scale).max()) / ratio
    model = Chain([layer], [None], scale, -3)
    x = random_codes(model, 256, 2)
    prog = build(model, tmp_path, extra=UBSAN)          # saturating shifts: no UB either
    assert_bit_exact(run(prog, model, x, tmp_path), model, x)


@pytest.mark.parametrize("bits", [2, 4, 7])
def test_narrow_weight_codes(bits, tmp_path):
    """Weights quantized to fewer bits (codes within +-(2^(bits-1) - 1) in int8 arrays)."""
    from qatcore import FakeQuantConfig

    rng = np.random.default_rng(bits)
    w = rng.normal(size=(31, 45)).astype(np.float32)
    layer = QuantizedLinear.from_float(w, rng.normal(size=31), 45, 31, FakeQuantConfig(bits=bits),
                                       per_channel=True)
    layer.set_input_scale(0.03, -5)
    assert np.abs(layer.weights_q).max() <= (1 << (bits - 1)) - 1
    model = Chain([layer], ["relu"], 0.05, -20)
    x = random_codes(model, N_INPUTS, bits)
    assert_bit_exact(run(build(model, tmp_path), model, x, tmp_path), model, x)


def test_input_zero_point_beyond_int8(tmp_path):
    """QuantizedLinear allows any integer input zero point; the C folds it into the
    accumulator offset."""
    rng = np.random.default_rng(11)
    layer = random_layer(rng, 40, 17, 0.01, 300, False, 0.2)
    model = Chain([layer], [None], 1.0, 0)
    x = random_codes(model, N_INPUTS, 4)
    spread = float(np.std(layer.forward_quantized(x) * np.asarray(layer.output_scale)))
    model = Chain([layer], [None], spread / 30, 0)
    assert_bit_exact(run(build(model, tmp_path), model, x, tmp_path), model, x)


def _widest_layer(sign):
    """in_features = MAX_IN_FEATURES, weights all +-127: accumulators within 1 100 of
    +-2^31 for constant -128 / 127 inputs (the int32 bound QuantizedLinear guarantees)."""
    k = QuantizedLinear.MAX_IN_FEATURES
    w = np.full((2, k), 1.0, np.float32)
    w[1] = -1.0
    layer = QuantizedLinear.from_float(w * sign, None, k, 2)
    layer.set_input_scale(1.0)
    return layer


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pos", "neg"])
def test_accumulator_at_the_int32_bound(sign, tmp_path):
    layer = _widest_layer(sign)
    x = np.stack([np.full(layer.in_features, v, np.int8) for v in (-128, 127, 0, 1)])
    acc = layer.forward_quantized(x).astype(np.int64)
    assert np.abs(acc).max() > 2 ** 31 - 1100
    for scale in (float(np.float32(2.0 ** 24)), 1.0, float(np.float32(1e12))):
        model = Chain([layer], [None], scale, 3)
        sub = tmp_path / f"s{scale:g}"
        sub.mkdir()
        assert_bit_exact(run(build(model, sub), model, x, sub), model, x)


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_no_undefined_behaviour(seed, tmp_path):
    """UBSan (signed overflow, shifts, ...) finds nothing, on random models and on the
    accumulators at the int32 bound."""
    flags = UBSAN
    model = random_model(seed, extreme=seed == 9)
    x = random_codes(model, 300, seed)
    assert_bit_exact(run(build(model, tmp_path, extra=flags), model, x, tmp_path), model, x)
    wide = Chain([_widest_layer(-1.0)], [None], 1e6, 0)
    xw = np.stack([np.full(wide.layers[0].in_features, v, np.int8) for v in (-128, 127)])
    sub = tmp_path / "wide"
    sub.mkdir()
    assert_bit_exact(run(build(wide, sub, extra=flags), wide, xw, sub), wide, xw)


def test_demo_mlp_bit_exact(demo, tmp_path):
    model, Xte, _ = demo
    x = np.concatenate([model.quantize_input(Xte), random_codes(model, N_INPUTS, 3)])
    assert_bit_exact(run(build(model, tmp_path, "digits_mlp"), model, x, tmp_path), model, x)


@pytest.mark.parametrize("seed", [0, 2])
def test_quantized_sequential_container(seed, tmp_path):
    """The export reads only the container interface: qatcore.QuantizedSequential works
    as the tests' own chain does, bit-exact with its own forward_int8."""
    from qatcore import QuantizedSequential

    src = random_model(seed)
    model = QuantizedSequential(src.layers, src.activations, src.output_scale,
                                src.output_zero_point)
    x = random_codes(src, N_INPUTS, seed)
    assert_bit_exact(run(build(model, tmp_path), model, x, tmp_path), model, x)


@pytest.mark.parametrize("seed", SEEDS[8:12])
def test_arm32_qemu_bit_exact(seed, tmp_path):
    """The same driver built for 32-bit ARM (hard float ABI, static) and run under qemu."""
    need_tool("arm-linux-gnueabihf-gcc", "qemu-arm")
    model = random_model(seed, extreme=seed % 2 == 1)
    x = random_codes(model, N_INPUTS, seed)
    prog = build(model, tmp_path, cc="arm-linux-gnueabihf-gcc", extra=["-static"])
    got = run(prog, model, x, tmp_path, prefix=["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"])
    assert_bit_exact(got, model, x)


def test_arm32_qemu_demo_mlp(demo, tmp_path):
    need_tool("arm-linux-gnueabihf-gcc", "qemu-arm")
    model, Xte, _ = demo
    x = model.quantize_input(Xte)
    prog = build(model, tmp_path, "digits_mlp", cc="arm-linux-gnueabihf-gcc", extra=["-static"])
    got = run(prog, model, x, tmp_path, prefix=["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"])
    assert_bit_exact(got, model, x)


def test_cortex_m4_compiles(demo, tmp_path):
    """The runtime and parameters compile for Cortex-M4 (code size in the report)."""
    need_tool("arm-none-eabi-gcc", "arm-none-eabi-size")
    model, _, _ = demo
    _, c = write_c(model, tmp_path, "digits_mlp")
    obj = tmp_path / "digits_mlp.o"
    subprocess.run(["arm-none-eabi-gcc", *CFLAGS, "-mcpu=cortex-m4", "-mthumb", "-Os", "-c",
                    c, "-o", str(obj)], check=True, capture_output=True, text=True)
    out = subprocess.run(["arm-none-eabi-size", str(obj)], check=True, capture_output=True,
                         text=True).stdout.split("\n")[1].split()
    text, data, bss = (int(v) for v in out[:3])
    weights = sum(layer.weights_q.size for layer in model.layers)
    assert text + data >= weights and bss == 0           # parameters live in flash (.rodata)


@pytest.mark.parametrize("std", ["c99", "c11", "gnu89"])
def test_compiles_under_other_standards(std, tmp_path):
    model = random_model(3)
    _, c = write_c(model, tmp_path, "m")
    flags = [f for f in CFLAGS if f != "-std=c99"]
    if std == "gnu89":
        flags.remove("-pedantic")                       # C89 has no <stdint.h> / // rules
    subprocess.run(["cc", f"-std={std}", *flags, "-c", c, "-o", str(tmp_path / "m.o")],
                   check=True, capture_output=True, text=True)


STRICT = ["-Wconversion", "-Wsign-conversion", "-Wshadow", "-Wcast-qual", "-Wcast-align",
          "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wundef", "-Wdouble-promotion",
          "-Wredundant-decls"]


@pytest.mark.parametrize("seed", [0, 1, 9])
def test_compiles_with_strict_warnings(seed, tmp_path):
    """The warnings embedded projects often turn on (conversions, prototypes, ...)."""
    _, c = write_c(random_model(seed), tmp_path, "m")
    subprocess.run(["cc", *CFLAGS, *STRICT, "-c", c, "-o", str(tmp_path / "m.o")], check=True,
                   capture_output=True, text=True)


def test_compiles_as_cxx(tmp_path):
    need_tool("c++")
    _, c = write_c(random_model(5), tmp_path, "m")
    subprocess.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-x", "c++",
                    "-c", c, "-o", str(tmp_path / "m.o")], check=True, capture_output=True,
                   text=True)


def test_source_is_integer_only(demo):
    header, source = c_sources(demo[0], "digits_mlp")
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)          # comments out
    for word in ("float", "double", "malloc", "free", "math", "stdlib", "stdio"):
        assert not re.search(rf"\b{word}\b", code), word
    assert re.findall(r"#include <(\w+)\.h>", code) == ["stddef", "stdint"]
    assert "#define DIGITS_MLP_SCRATCH_BYTES 192" in header   # hidden layers 128 + 64
    assert "#define DIGITS_MLP_INPUT_SIZE 64" in header
    assert "#define DIGITS_MLP_OUTPUT_SIZE 10" in header
    assert "static const DIGITS_MLP_ALIGNED int8_t digits_mlp_l0_weights[8192]" in source


def test_header_macros(tmp_path):
    """The header's macros, read back by a C program, are the model's numbers (the float
    scales exactly their float32 values)."""
    model = random_model(1)
    first = model.layers[0]
    h, _ = write_c(model, tmp_path, "m")
    prog_c = tmp_path / "macros.c"
    prog_c.write_text('#include <stdio.h>\n#include "m.h"\nint main(void) {\n'
                      '  printf("%d %d %d %d %d %d %d %.9g %.9g\\n", M_INPUT_SIZE, M_OUTPUT_SIZE,\n'
                      '         M_NUM_LAYERS, M_INPUT_ZERO_POINT, M_INPUT_QMIN, M_INPUT_QMAX,\n'
                      '         M_OUTPUT_ZERO_POINT, (double)M_INPUT_SCALE, (double)M_OUTPUT_SCALE);\n'
                      '  return 0;\n}\n')
    subprocess.run(["cc", *CFLAGS, "-I", str(tmp_path), str(prog_c), "-o",
                    str(tmp_path / "macros")], check=True, capture_output=True, text=True)
    out = subprocess.run([str(tmp_path / "macros")], check=True, capture_output=True,
                         text=True).stdout.split()
    lo, hi = (int(v) for v in first.state_dict()["input_qrange"])
    assert [int(v) for v in out[:7]] == [first.in_features, model.layers[-1].out_features,
                                         len(model.layers), first.input_zero_point, lo, hi,
                                         model.output_zero_point]
    assert np.float32(float(out[7])) == np.float32(first.input_scale)
    assert np.float32(float(out[8])) == np.float32(model.output_scale)


@pytest.mark.parametrize("name", ["", "1abc", "_x", "a-b", "a b", "é", "x" * 25, "a\n"])
def test_bad_name(name, tmp_path):
    with pytest.raises(ValueError, match="name"):
        write_c(random_model(0), tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    model = random_model(0)
    with pytest.raises(TypeError, match="name"):
        write_c(model, tmp_path, 3)
    with pytest.raises(ValueError, match="directory"):
        write_c(model, tmp_path / "missing", "m")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="directory"):
        write_c(model, tmp_path / "file", "m")
    with pytest.raises(TypeError, match="directory"):
        write_c(model, 3, "m")
    with pytest.raises(TypeError, match="container"):
        write_c(object(), tmp_path, "m")
    bad = Chain(model.layers, ["gelu"] * len(model.layers), 1.0, 0)
    with pytest.raises(ValueError, match="activations"):
        write_c(bad, tmp_path, "m")
    layer = QuantizedLinear.from_float(np.ones((2, 3)), None, 3, 2)
    with pytest.raises(ValueError, match="chain"):
        write_c(Chain([layer, layer], [None, None], 1.0, 0), tmp_path, "m")
    with pytest.raises(ValueError, match="output_zero_point"):
        write_c(Chain([layer], [None], 1.0, 200), tmp_path, "m")
    float_zp = Chain([layer], [None], 1.0, 0)
    float_zp.output_zero_point = 1.5
    with pytest.raises(TypeError, match="output_zero_point"):
        write_c(float_zp, tmp_path, "m")
    nan_scale = Chain([layer], [None], 1.0, 0)
    nan_scale.output_scale = float("nan")
    with pytest.raises(ValueError, match="output_scale"):
        write_c(nan_scale, tmp_path, "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_directory(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="not writable"):
            write_c(random_model(0), tmp_path, "m")
    finally:
        tmp_path.chmod(0o700)


def test_overwrites_atomically(tmp_path):
    model = random_model(1)
    h, c = write_c(model, tmp_path, "m")
    first = open(c).read()
    h2, c2 = write_c(random_model(2), tmp_path, "m")
    assert (h, c) == (h2, c2) and open(c).read() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.c", "m.h"]


# ---------------------------------------------------------------- .tflite as a C array

def _fake_tflite(n):
    rng = np.random.default_rng(n)
    body = rng.integers(0, 256, size=n).astype(np.uint8).tobytes()
    return b"\x1c\x00\x00\x00TFL3" + body


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000], ids=lambda n: f"n{n}")
def test_tflite_c_array_round_trip(size, tmp_path):
    """The .cc/.h pair compiles as C++ and holds the bytes, 16-byte aligned."""
    need_tool("c++")
    data = _fake_tflite(size)
    h, cc = write_tflite_c_array(data, tmp_path, "digits")
    assert os.path.basename(h) == "digits_model_data.h"
    text = open(cc).read()
    assert "alignas(16) const unsigned char g_digits_model_data[] = {" in text
    assert f"const unsigned int g_digits_model_data_size = {len(data)};" in text
    main = tmp_path / "main.cc"
    main.write_text('#include <cstdio>\n#include <cstdint>\n#include "digits_model_data.h"\n'
                    "int main(int, char **argv) {\n"
                    "  if (reinterpret_cast<std::uintptr_t>(g_digits_model_data) % 16) return 3;\n"
                    "  std::FILE *f = std::fopen(argv[1], \"wb\");\n"
                    "  std::fwrite(g_digits_model_data, 1, g_digits_model_data_size, f);\n"
                    "  return std::fclose(f);\n}\n")
    prog = tmp_path / "prog"
    subprocess.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", str(main), cc, "-o",
                    str(prog)], check=True, capture_output=True, text=True)
    subprocess.run([str(prog), str(tmp_path / "out.tflite")], check=True)
    assert (tmp_path / "out.tflite").read_bytes() == data


def test_tflite_c_array_of_a_real_model(tmp_path):
    """tflite-micro's own sine_float.tflite survives the round trip through the C array,
    and TFLM runs the bytes read back."""
    need_tool("c++")
    tflm = pytest.importorskip("tflite_micro")
    from tflite_micro import runtime

    src = os.path.join(os.path.dirname(tflm.__file__), "python", "tflite_micro",
                       "sine_float.tflite")
    data = open(src, "rb").read()
    _, cc = write_tflite_c_array(data, tmp_path, "sine")
    main = tmp_path / "main.cc"
    main.write_text('#include <cstdio>\n#include "sine_model_data.h"\n'
                    "int main(int, char **argv) {\n"
                    "  std::FILE *f = std::fopen(argv[1], \"wb\");\n"
                    "  std::fwrite(g_sine_model_data, 1, g_sine_model_data_size, f);\n"
                    "  return std::fclose(f);\n}\n")
    prog = tmp_path / "prog"
    subprocess.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", str(main), cc, "-o",
                    str(prog)], check=True, capture_output=True, text=True)
    subprocess.run([str(prog), str(tmp_path / "back.tflite")], check=True)
    assert (tmp_path / "back.tflite").read_bytes() == data
    interp = runtime.Interpreter.from_file(str(tmp_path / "back.tflite"))
    interp.set_input(np.array([[1.0]], np.float32), 0)
    interp.invoke()
    assert abs(float(np.ravel(interp.get_output(0))[0]) - np.sin(1.0)) < 0.1


def test_tflite_c_array_bad_input(tmp_path):
    with pytest.raises(TypeError, match="tflite_bytes"):
        write_tflite_c_array("TFL3", tmp_path, "m")
    with pytest.raises(ValueError, match="TFLite"):
        write_tflite_c_array(b"\x00" * 64, tmp_path, "m")
    with pytest.raises(ValueError, match="name"):
        write_tflite_c_array(_fake_tflite(4), tmp_path, "9m")
    assert list(tmp_path.iterdir()) == []


def test_docstring_examples():
    import doctest
    import importlib

    module = importlib.import_module("qatcore.export.c")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
