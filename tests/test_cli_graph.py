"""`qatcore inspect` / `qatcore export` on integer graphs: an int8 .tflite made by
TensorFlow's converter (tests/data) and a saved QuantizedModel."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qatcore import QuantizedModel
from qatcore.cli import main

DATA = Path(__file__).parent / "data"
KWS = DATA / "keras_dscnn.tflite"


def _codes(model, n, seed=0):
    shape = (n, *model.tensors[model.inputs[0]].shape)
    return np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)


def test_inspect_converter_tflite(capsys):
    assert main(["inspect", str(KWS)]) == 0
    out = capsys.readouterr().out
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"):
        assert op in out
    assert "8 ops" in out and "activation arena" in out


def test_inspect_saved_graph(tmp_path, capsys):
    QuantizedModel.from_tflite(KWS).save(tmp_path / "kws.npz")
    assert main(["inspect", str(tmp_path / "kws.npz")]) == 0
    assert "QuantizedModel" in capsys.readouterr().out


def test_export_tflite_to_c_compiles_and_matches(tmp_path, capsys):
    """A converter's .tflite through the command to C, compiled, equal to forward_int8."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    assert main(["export", str(KWS), "--to", "c", "--out", str(tmp_path), "--name", "kws"]) == 0
    assert "kws.c" in capsys.readouterr().out
    model = QuantizedModel.from_tflite(KWS)
    x = _codes(model, 16)
    want = model.forward_int8(x)
    driver = tmp_path / "main.c"
    n_in, n_out = x[0].size, want[0].size
    driver.write_text(f"""#include <stdio.h>
#include <stdint.h>
#include "kws.h"
static int8_t in[{n_in}], out[{n_out}];
static unsigned char scratch[KWS_SCRATCH_BYTES + 1];
int main(void) {{
    while (fread(in, 1, sizeof in, stdin) == sizeof in) {{
        if (kws_invoke(in, out, scratch) != 0) return 1;
        fwrite(out, 1, sizeof out, stdout);
    }}
    return 0;
}}
""")
    exe = tmp_path / "kws"
    subprocess.run(["gcc", "-O2", "-std=c99", "-o", str(exe), str(driver), str(tmp_path / "kws.c"),
                    "-I", str(tmp_path)], check=True)
    got = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=True).stdout
    np.testing.assert_array_equal(np.frombuffer(got, np.int8).reshape(want.shape), want)


def test_export_graph_npz_to_tflite_and_onnx(tmp_path):
    model = QuantizedModel.from_tflite(KWS)
    model.save(tmp_path / "kws.npz")
    assert main(["export", str(tmp_path / "kws.npz"), "--to", "tflite", "-q"]) == 0
    back = QuantizedModel.from_tflite(tmp_path / "kws.tflite")
    x = _codes(model, 32, seed=1)
    np.testing.assert_array_equal(back.forward_int8(x), model.forward_int8(x))
    pytest.importorskip("onnx")
    assert main(["export", str(tmp_path / "kws.npz"), "--to", "onnx", "-q"]) == 0
    assert os.path.getsize(tmp_path / "kws.onnx") > 0


@pytest.mark.parametrize("cut", [8, 100, 1000])
def test_truncated_tflite_is_one_line(tmp_path, capsys, cut):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(KWS.read_bytes()[:cut])
    assert main(["export", str(bad), "--to", "c", "--out", str(tmp_path / "fw")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qatcore: error: export: ")
    assert not (tmp_path / "fw").exists() or not os.listdir(tmp_path / "fw")
    assert main(["inspect", str(bad)]) == 2
