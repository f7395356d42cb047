"""Deploy figures of the demo MLP: .tflite size, the TFLM arena it needs, time per sample
of forward_int8 vs LiteRT (three resolvers) and TFLM.  `PYTHONPATH=. python tools/tflite_figures.py`
(needs the export extra; run it outside the clone root or with the kernels built in place)."""
import sys, timeit, os
import numpy as np
from qatcore import demo
from qatcore.export.tflite import tflite_bytes
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tflite_micro import runtime

res = demo.run_demo(measure_steps=False)          # the default demo: seed 0, 20+5 epochs
model = res.model
print(model)
data = tflite_bytes(model)
print("tflite bytes (int8 io):", len(data), " float io:", len(tflite_bytes(model, float_io=True)))
lo, hi = 256, 1 << 20                             # smallest arena TFLM accepts
devnull = os.open(os.devnull, os.O_WRONLY); saved = os.dup(2); os.dup2(devnull, 2)
while hi - lo > 1:
    mid = (lo + hi) // 2
    try:
        runtime.Interpreter.from_bytes(data, arena_size=mid); hi = mid
    except RuntimeError:
        lo = mid
os.dup2(saved, 2)
print("TFLM arena needed:", hi, "bytes")
X, y = demo.load_digits()
xq = model.quantize_input(X[:256])
one = xq[:1]
def best(fn, n):
    return min(timeit.repeat(fn, number=n, repeat=7)) / n
t_q = best(lambda: model.forward_int8(one), 2000)
t_q64 = best(lambda: model.forward_int8(xq[:64]), 200) / 64
print(f"forward_int8: {1e6*t_q:.2f} us/sample at batch 1, {1e6*t_q64:.3f} us/sample at batch 64")
for rs in ("BUILTIN_REF", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "AUTO"):
    it = Interpreter(model_content=data, experimental_op_resolver_type=getattr(OpResolverType, rs))
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    def run():
        it.set_tensor(i, one); it.invoke(); it.get_tensor(o)
    t = best(run, 2000)
    it2 = Interpreter(model_content=data, experimental_op_resolver_type=getattr(OpResolverType, rs))
    it2.resize_tensor_input(i, [64, 64]); it2.allocate_tensors()
    def run64():
        it2.set_tensor(i, xq[:64]); it2.invoke(); it2.get_tensor(o)
    t64 = best(run64, 200) / 64
    print(f"LiteRT {rs}: {1e6*t:.2f} us/sample at batch 1, {1e6*t64:.3f} us/sample at batch 64")
tm = runtime.Interpreter.from_bytes(data, arena_size=1 << 16)
def runm():
    tm.set_input(one, 0); tm.invoke(); tm.get_output(0)
print(f"TFLM (Python wrapper, reference kernels): {1e6*best(runm, 2000):.2f} us/sample at batch 1")
