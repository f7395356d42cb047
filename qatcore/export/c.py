"""C export: an integer model as dependency-free C99 source for microcontrollers.

:func:`write_c` writes ``name.h`` and ``name.c``: the parameters as ``static const``
arrays (16-byte aligned) and a small runtime that runs one sample,
``int name_invoke(const int8_t *in, int8_t *out, void *scratch)``, with integer
arithmetic only (no float, no malloc, no library call: ``<stdint.h>`` and ``<stddef.h>``
are the only headers).  It computes exactly what ``forward_int8`` of the container
computes, bit for bit (the tests check it on x86-64 and, under qemu, on 32-bit ARM):

* per output channel ``acc = Σ_i w[o, i] · x[i] + acc_offset[o]`` in int32, where
  ``acc_offset = bias_q - input_zero_point · Σ_i w[o, i]`` (the input zero point
  correction folded into the bias; the sum cannot overflow, ``QuantizedLinear`` refuses
  layers where it could);
* gemmlowp requantization, as TFLite's reference ``MultiplyByQuantizedMultiplier``
  (Jacob et al. 2018): saturating left shift by ``max(shift, 0)``,
  ``SaturatingRoundingDoublingHighMul`` with the Q31 multiplier, ``RoundingDivideByPOT``
  by ``max(-shift, 0)`` — the *double* rounding of TFLite's reference kernels and TFLM,
  not the single rounding of CMSIS-NN built with ``CMSIS_NN_USE_SINGLE_ROUNDING``;
* ``+ output_zero_point``, clamped to the layer's output range: [-128, 127] narrowed by a
  fused ReLU (at the zero point) or ReLU6 (also at ``zp + rint(6 / scale)``).

The hidden layers' outputs alternate between two regions of the caller's scratch buffer
(``NAME_SCRATCH_BYTES`` = the widest even-numbered plus the widest odd-numbered hidden
layer, int8, no alignment needed); the last layer writes ``out``.

:func:`write_tflite_c_array` writes a ``.tflite`` flatbuffer as the ``.cc``/``.h`` pair
TensorFlow Lite Micro's ``generate_cc_arrays.py`` writes
(``alignas(16) const unsigned char g_<name>_model_data[]``).
"""

from __future__ import annotations

import os
from typing import Any, List, Tuple

import numpy as np

from .._files import write_files_atomic
from ._common import ModelPlan, PathLike, check_directory, check_name, plan_model

__all__ = ["write_c", "write_tflite_c_array", "c_sources"]

_INT32_MIN = -(1 << 31)

# gemmlowp helpers shared with the graph export (qatcore.export.c_graph), with @P@ for the
# lower-case prefix and @M@ for the upper-case one.
C_SRDHM = r"""/* SaturatingRoundingDoublingHighMul(a, b): round(a * b / 2^31), ties away from zero. */
static int32_t @P@_srdhm(int32_t a, int32_t b)
{
    int64_t ab, nudge;
    if (a == b && a == INT32_MIN)
        return INT32_MAX;
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* C99 division truncates */
}

"""

C_FLOOR_SHIFT = r"""/* floor(x / 2^e): C99 leaves >> of a negative value implementation-defined. */
static int32_t @P@_floor_shift(int32_t x, int e)
{
    return x >= 0 ? (x >> e) : ~((~x) >> e);
}

"""

C_RDBPOT = r"""/* RoundingDivideByPOT(x, e): x / 2^e rounded to nearest, ties away from zero. */
static int32_t @P@_rdbpot(int32_t x, int e)
{
    int32_t mask = (int32_t)(((int64_t)1 << e) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return @P@_floor_shift(x, e) + (remainder > threshold ? 1 : 0);
}

"""

C_REQUANTIZE = r"""/* MultiplyByQuantizedMultiplier; the left shift saturates to int32 (shift <= 30). */
static int32_t @P@_requantize(int32_t x, int32_t multiplier, int32_t shift)
{
    int left = shift > 0 ? (int)shift : 0, right = shift > 0 ? 0 : (int)-shift;
    int64_t v = (int64_t)x * ((int64_t)1 << left);
    if (v > INT32_MAX)
        v = INT32_MAX;
    if (v < INT32_MIN)
        v = INT32_MIN;
    return @P@_rdbpot(@P@_srdhm((int32_t)v, multiplier), right);
}

"""

# The runtime.
_RUNTIME = (r"""
/* ------------------------------------------------------------------ runtime
 * Integer only (no float, no malloc).  gemmlowp fixed-point arithmetic as TFLite's
 * reference MultiplyByQuantizedMultiplier (Jacob et al. 2018): double rounding. */

"""
            + C_SRDHM + C_FLOOR_SHIFT + C_RDBPOT + C_REQUANTIZE + r"""/* y[o] = clamp(requantize(sum_i w[o, i] * x[i] + acc_offset[o]) + zp, act_min, act_max) */
static void @P@_fully_connected(const @P@_layer_t *layer, const int8_t *x, int8_t *y)
{
    int32_t o, i;
    for (o = 0; o < layer->out_features; o++) {
        const int8_t *w = layer->weights + (size_t)o * (size_t)layer->in_features;
        const int32_t c = layer->per_channel ? o : 0;
        int32_t acc = layer->acc_offset != NULL ? layer->acc_offset[o] : 0;
        int64_t v;
        for (i = 0; i < layer->in_features; i++)
            acc += (int32_t)w[i] * (int32_t)x[i];
        v = (int64_t)@P@_requantize(acc, layer->multiplier[c], layer->shift[c])
            + layer->output_zero_point;
        if (v < layer->act_min)
            v = layer->act_min;
        if (v > layer->act_max)
            v = layer->act_max;
        y[o] = (int8_t)v;
    }
}

int @P@_invoke(const int8_t *in, int8_t *out, void *scratch)
{
    int8_t *buffer = (int8_t *)scratch;
    const int8_t *x = in;
    int k;
    if (in == NULL || out == NULL || (@M@_NUM_LAYERS > 1 && scratch == NULL))
        return -1;
    for (k = 0; k < @M@_NUM_LAYERS; k++) {
        int8_t *y = k == @M@_NUM_LAYERS - 1 ? out : buffer + (k % 2) * @M@_ODD_OFFSET;
        @P@_fully_connected(&@P@_layers[k], x, y);
        x = y;
    }
    return 0;
}
""")

_ALIGN = r"""/* 16-byte alignment for the parameter arrays: C11 _Alignas, else the compiler's own
 * spelling (accepted by gcc/clang with -std=c99 -pedantic), else none. */
#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define @M@_ALIGNED _Alignas(16)
#elif defined(__GNUC__) || defined(__clang__)
#define @M@_ALIGNED __attribute__((aligned(16)))
#elif defined(_MSC_VER)
#define @M@_ALIGNED __declspec(align(16))
#else
#define @M@_ALIGNED
#endif
"""


def _version() -> str:
    from .._version import __version__
    return __version__


def _sub(text: str, name: str) -> str:
    return text.replace("@P@", name).replace("@M@", name.upper())


def _c_int(v: int) -> str:
    v = int(v)
    return "(-2147483647 - 1)" if v == _INT32_MIN else str(v)


def _array(ctype: str, cname: str, values: np.ndarray, per_line: int, macro: str) -> str:
    vals = [_c_int(v) for v in np.asarray(values).ravel()]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    body = ",\n    ".join(lines)
    return (f"static const {macro}_ALIGNED {ctype} {cname}[{len(vals)}] = {{\n"
            f"    {body}\n}};\n")


def _macro_int(v: int) -> str:
    return f"({int(v)})" if int(v) < 0 else str(int(v))


def _float_literal(v: float) -> str:
    return f"{float(np.float32(v))!r}f"


def _scratch_bytes(plan: ModelPlan) -> Tuple[int, int]:
    """(offset of the odd layers' outputs, scratch size): hidden layer k's output goes to
    scratch + (k % 2) * offset, so consecutive layers never overlap."""
    hidden = [int(lp.weights_q.shape[0]) for lp in plan.layers[:-1]]
    even = max(hidden[0::2], default=0)
    odd = max(hidden[1::2], default=0)
    return even, even + odd


def c_sources(model: Any, name: str) -> Tuple[str, str]:
    """The text of ``name.h`` and ``name.c`` for `model` (see :func:`write_c`)."""
    name = check_name(name)
    plan = plan_model(model)
    up = name.upper()
    odd_offset, scratch = _scratch_bytes(plan)
    n = len(plan.layers)
    sizes = " -> ".join([str(plan.in_features)] + [str(lp.weights_q.shape[0])
                                                  for lp in plan.layers])
    header = f"""/* {name}.h -- integer model exported by qatcore {_version()} (qatcore.export.c.write_c).
 *
 * Fully connected int8 layers {sizes}; integer-only C99 runtime in {name}.c.
 *
 *   static int8_t scratch[{up}_SCRATCH_BYTES];
 *   int8_t in[{up}_INPUT_SIZE], out[{up}_OUTPUT_SIZE];
 *   {name}_invoke(in, out, scratch);            returns 0, or -1 on a NULL pointer
 *
 * Reentrant (no static state): concurrent callers each need their own scratch.
 * A batch is a loop over samples (rows are contiguous, in and out must not overlap):
 *
 *   for (n = 0; n < batch; n++)
 *       {name}_invoke(x + n * {up}_INPUT_SIZE, y + n * {up}_OUTPUT_SIZE, scratch);
 *
 * Codes: real = (code - ZERO_POINT) * SCALE.  The float scales are for the caller's own
 * (de)quantization; the runtime never reads them.
 */
#ifndef {up}_QATCORE_H
#define {up}_QATCORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define {up}_INPUT_SIZE {plan.in_features}
#define {up}_OUTPUT_SIZE {plan.out_features}
#define {up}_NUM_LAYERS {n}
/* int8 scratch (no alignment needed); at least 1 so that an array of it is valid C. */
#define {up}_SCRATCH_BYTES {max(scratch, 1)}
#define {up}_INPUT_ZERO_POINT {_macro_int(plan.input_zero_point)}
#define {up}_INPUT_QMIN {_macro_int(plan.input_qrange[0])}
#define {up}_INPUT_QMAX {_macro_int(plan.input_qrange[1])}
#define {up}_INPUT_SCALE {_float_literal(plan.input_scale)}
#define {up}_OUTPUT_ZERO_POINT {_macro_int(plan.output_zero_point)}
#define {up}_OUTPUT_SCALE {_float_literal(plan.output_scale)}

int {name}_invoke(const int8_t *in, int8_t *out, void *scratch);

#ifdef __cplusplus
}}
#endif

#endif /* {up}_QATCORE_H */
"""
    parts: List[str] = [
        f"/* {name}.c -- integer model exported by qatcore; see {name}.h. */\n"
        f'#include <stddef.h>\n#include <stdint.h>\n\n#include "{name}.h"\n\n',
        _sub(_ALIGN, name),
        f"\n/* hidden layer k writes scratch + (k % 2) * {up}_ODD_OFFSET */\n"
        f"#define {up}_ODD_OFFSET {odd_offset}\n\n",
        f"typedef struct {{\n"
        f"    const int8_t *weights;       /* (out_features, in_features), row-major */\n"
        f"    const int32_t *acc_offset;   /* bias_q - input_zero_point * row sums, or NULL */\n"
        f"    const int32_t *multiplier;   /* Q31, per channel or one */\n"
        f"    const int32_t *shift;        /* left shift if > 0, rounding right shift if < 0 */\n"
        f"    int32_t in_features, out_features, per_channel;\n"
        f"    int32_t output_zero_point, act_min, act_max;\n"
        f"}} {name}_layer_t;\n\n",
    ]
    entries = []
    for k, lp in enumerate(plan.layers):
        out_f, in_f = lp.weights_q.shape
        pre = f"{name}_l{k}"
        act = lp.activation or "none"
        scales = (f"per-channel weight scales" if lp.per_channel else
                  f"weight scale {float(lp.weight_scale[0])!r}")
        parts.append(f"/* layer {k}: {in_f} -> {out_f}, {scales};\n"
                     f" * input scale {lp.input_scale!r}, zero point {lp.input_zero_point};\n"
                     f" * output scale {lp.output_scale!r}, zero point "
                     f"{lp.output_zero_point}; activation {act}: codes clamped to "
                     f"[{lp.act_min}, {lp.act_max}] */\n")
        parts.append(_array("int8_t", f"{pre}_weights", lp.weights_q, 16, up))
        if np.any(lp.acc_offset != 0):
            parts.append(_array("int32_t", f"{pre}_acc_offset", lp.acc_offset, 8, up))
            offset = f"{pre}_acc_offset"
        else:
            offset = "NULL"
        parts.append(_array("int32_t", f"{pre}_multiplier", lp.multiplier, 8, up))
        parts.append(_array("int32_t", f"{pre}_shift", lp.shift, 16, up))
        parts.append("\n")
        entries.append(f"    {{{pre}_weights, {offset}, {pre}_multiplier, {pre}_shift, "
                       f"{in_f}, {out_f}, {int(lp.per_channel)}, {lp.output_zero_point}, "
                       f"{lp.act_min}, {lp.act_max}}}")
    parts.append(f"static const {name}_layer_t {name}_layers[{up}_NUM_LAYERS] = {{\n"
                 + ",\n".join(entries) + "\n};\n")
    parts.append(_sub(_RUNTIME, name))
    return header, "".join(parts)


def write_c(model: Any, directory: PathLike, name: str) -> Tuple[str, str]:
    """Write `model` as C99 source: ``name.h`` and ``name.c`` in `directory`.

    The parameters become ``static const`` 16-byte aligned arrays (int8 weights
    row-major ``(out, in)``, int32 accumulator offsets = bias codes with the input zero
    point correction folded in, Q31 multipliers and shifts per channel or per tensor,
    output zero points and activation clamps); the runtime is integer-only C99 without
    malloc and computes what ``model.forward_int8`` computes, bit for bit:
    ``int name_invoke(const int8_t *in, int8_t *out, void *scratch)`` for one sample,
    with ``NAME_INPUT_SIZE``, ``NAME_OUTPUT_SIZE`` and ``NAME_SCRATCH_BYTES`` defined in
    the header (the header's comment shows the batch loop).

    Parameters
    ----------
    model : integer-model container
        ``.layers`` (QuantizedLinear), ``.activations``, ``.output_scale``,
        ``.output_zero_point`` (``qatcore.QuantizedSequential``).
    directory : path
        An existing, writable directory.
    name : str
        The C prefix and file stem: a letter, then letters, digits or ``_``, at most 24
        characters (``name_invoke`` stays within C99's 31 significant characters).

    Returns
    -------
    (h_path, c_path) : tuple of str

    Raises
    ------
    TypeError, ValueError
        A bad `name` or `directory`, or a model the runtime cannot run; nothing is written.

    Notes
    -----
    Both files are written to temporary files first and renamed into place.  The code
    compiles with ``cc -std=c99 -Wall -Wextra -Werror -pedantic`` (and for Cortex-M with
    ``arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os``).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from qatcore import QuantizedLinear
    >>> from qatcore.export.c import write_c
    >>> layer = QuantizedLinear.from_float([[1.0, -0.5]], None, 2, 1)
    >>> layer.set_input_scale(0.1)
    >>> class Model:                     # any container with these four attributes
    ...     layers, activations, output_scale, output_zero_point = [layer], [None], 0.05, 0
    >>> with tempfile.TemporaryDirectory() as d:
    ...     h, c = write_c(Model(), d, "tiny")
    ...     "int tiny_invoke(const int8_t *in, int8_t *out, void *scratch);" in open(h).read()
    True
    """
    directory = check_directory(directory)
    header, source = c_sources(model, name)
    h_path = os.path.join(directory, f"{name}.h")
    c_path = os.path.join(directory, f"{name}.c")
    write_files_atomic([(h_path, header), (c_path, source)])
    return h_path, c_path


def write_tflite_c_array(tflite_bytes: bytes, directory: PathLike, name: str
                         ) -> Tuple[str, str]:
    """Write a ``.tflite`` flatbuffer as C++ source for TensorFlow Lite Micro.

    The pair TFLM's ``tensorflow/lite/micro/tools/generate_cc_arrays.py`` writes for
    ``name.tflite``: ``name_model_data.cc`` with
    ``alignas(16) const unsigned char g_name_model_data[] = {0x.., ...};`` and
    ``const unsigned int g_name_model_data_size = N;``, and ``name_model_data.h``
    declaring both ``extern`` (plus an include guard).

    Parameters
    ----------
    tflite_bytes : bytes
        The flatbuffer (its file identifier ``TFL3`` is checked).
    directory : path
        An existing, writable directory.
    name : str
        As for :func:`write_c`.

    Returns
    -------
    (h_path, cc_path) : tuple of str

    Raises
    ------
    TypeError, ValueError
        Not bytes, not a TFLite flatbuffer, bad `name` or `directory`; nothing is written.
    """
    if not isinstance(tflite_bytes, (bytes, bytearray, memoryview)):
        raise TypeError(f"tflite_bytes must be bytes, got {type(tflite_bytes).__name__}")
    data = bytes(tflite_bytes)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("tflite_bytes is not a TFLite flatbuffer (no 'TFL3' identifier at "
                         "bytes 4..8)")
    name = check_name(name)
    directory = check_directory(directory)
    array = f"g_{name}_model_data"
    stem = f"{name}_model_data"
    guard = f"{stem.upper()}_H_"
    hexes = [f"0x{b:02x}" for b in data]
    body = ",\n".join(",".join(hexes[i:i + 16]) for i in range(0, len(hexes), 16))
    cc = (f"// {stem}.cc -- {name}.tflite as a C array (qatcore; the layout of TFLM's "
          f"generate_cc_arrays.py).\n"
          f"#include <cstdint>\n\n#include \"{stem}.h\"\n\n"
          f"alignas(16) const unsigned char {array}[] = {{\n{body}\n}};\n"
          f"const unsigned int {array}_size = {len(data)};\n")
    h = (f"// {stem}.h -- {name}.tflite as a C array (qatcore).\n"
         f"#ifndef {guard}\n#define {guard}\n\n#include <cstdint>\n\n"
         f"extern const unsigned char {array}[];\n"
         f"extern const unsigned int {array}_size;\n\n#endif  // {guard}\n")
    h_path = os.path.join(directory, f"{stem}.h")
    cc_path = os.path.join(directory, f"{stem}.cc")
    write_files_atomic([(h_path, h), (cc_path, cc)])
    return h_path, cc_path
