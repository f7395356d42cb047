"""qatcore.torch against real PyTorch: the custom op bit for bit vs torch's fake-quantize
ops (values and gradients), opcheck / gradcheck, the FakeQuantize module and its
state_dict, prepare_qat / convert, and a seeded QAT run on the digits."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qatcore  # noqa: E402
import qatcore.torch as qt  # noqa: E402
from qatcore import FakeQuantConfig  # noqa: E402

from reference import lsq_backward_preset_ref  # noqa: E402
from test_presets import tricky  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
F32 = np.float32


def bits(t):
    a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return a.astype(F32).view(np.uint32)


def test_import_error_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import qatcore.torch\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(qatcore.__file__).parent.parent))
    assert 'pip install "qatcore[torch]"' in out.stdout


# --- the op vs torch's ops ------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 1000, 1 << 16], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("zp,qmin,qmax", [(0, -127, 127), (37, 0, 255), (-3, -128, 127)],
                         ids=str)
def test_op_equals_torch_per_tensor(target, zp, qmin, qmax, n):
    x = torch.from_numpy(tricky(n, 0.0137))
    g = torch.from_numpy(np.random.default_rng(0).standard_normal(n).astype(F32))
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya = qt.fake_quantize(a, 0.0137, zp, qmin, qmax)
    yb = torch.fake_quantize_per_tensor_affine(b, 0.0137, zp, qmin, qmax)
    ya.backward(g)
    yb.backward(g)
    np.testing.assert_array_equal(bits(ya), bits(yb))
    np.testing.assert_array_equal(bits(a.grad), bits(b.grad))


@pytest.mark.parametrize("shape,axis", [((32, 129), 0), ((64, 10), 1), ((4, 6, 5), 1)], ids=str)
def test_op_equals_torch_per_channel(target, shape, axis):
    rng = np.random.default_rng(1)
    C = shape[axis]
    scale = torch.from_numpy(rng.uniform(0.005, 0.05, C).astype(F32))
    zp = torch.from_numpy(rng.integers(0, 60, C).astype(np.int32))
    x = torch.from_numpy(tricky(int(np.prod(shape)), 0.02).reshape(shape))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = qt.fake_quantize(a, scale, zp, 0, 255, axis=axis)
    yb = torch.fake_quantize_per_channel_affine(b, scale, zp, axis, 0, 255)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    ya.backward(g)
    yb.backward(g)
    np.testing.assert_array_equal(bits(ya), bits(yb))
    np.testing.assert_array_equal(bits(a.grad), bits(b.grad))


@pytest.mark.parametrize("numerics", ["torch", "onnx", "aprender"])
def test_op_matches_core_numerics(numerics):
    x = torch.from_numpy(tricky(5000, 0.02))
    y = qt.fake_quantize(x, 0.02, 5, 0, 255, numerics=numerics)
    ref = qatcore.fake_quantize_array(x.numpy(), 0.02, 5, 0, 255, numerics=numerics)
    np.testing.assert_array_equal(bits(y), bits(ref))


def test_op_lsq_gradients_match_oracle():
    x = torch.from_numpy(tricky(3001, 0.02)).nan_to_num(0.0)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    s = torch.tensor([0.02], requires_grad=True)
    z = torch.tensor([5.0], requires_grad=True)
    qt.fake_quantize(x, s, z, 0, 255).backward(g)
    _, ds, dz = lsq_backward_preset_ref(x.numpy(), g.numpy(), 0.02, 5.0, 0, 255, "torch")
    gs = 1 / np.sqrt(x.numel() * 255)
    assert float(s.grad) == pytest.approx(ds * gs, rel=1e-6)
    assert float(z.grad) == pytest.approx(dz * gs, rel=1e-6)
    # per channel: each channel's gradient is its own slice's per-tensor gradient
    xc = x[:3000].reshape(3, 1000)
    sc = torch.tensor([0.02, 0.03, 0.01], requires_grad=True)
    zc = torch.tensor([5.0, 0.0, 9.0], requires_grad=True)
    gc = g[:3000].reshape(3, 1000)
    qt.fake_quantize(xc, sc, zc, 0, 255, axis=0).backward(gc)
    for c in range(3):
        _, ds, dz = lsq_backward_preset_ref(xc[c].numpy(), gc[c].numpy(), float(sc[c].detach()),
                                            float(zc[c].detach()), 0, 255, "torch")
        gs = 1 / np.sqrt(1000 * 255)
        assert float(sc.grad[c]) == pytest.approx(ds * gs, rel=1e-5, abs=1e-7)
        assert float(zc.grad[c]) == pytest.approx(dz * gs, rel=1e-5, abs=1e-7)


def test_opcheck():
    op = torch.ops.qatcore.fake_quantize.default
    x = torch.randn(64, 8)
    cases = [
        (x, torch.tensor([0.05]), torch.tensor([3.0]), 0, 255, "torch", -1, -1.0),
        (x, torch.full((64,), 0.05), torch.zeros(64), -127, 127, "torch", 0, -1.0),
        (x.clone().requires_grad_(), torch.tensor([0.05], requires_grad=True),
         torch.tensor([3.0], requires_grad=True), 0, 255, "onnx", -1, -1.0),
        (x.clone().requires_grad_(), torch.full((8,), 0.05, requires_grad=True),
         torch.zeros(8), -127, 127, "aprender", 1, -1.0),
    ]
    for args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.filterwarnings("ignore:Input #")
def test_gradcheck_where_the_estimator_is_exact():
    # Outside [qmin, qmax] the clipped STE and LSQ(+) gradients are the true gradients of
    # y = (q_end - z) * s: dx = 0, ds = q_end - z, dz = -s (grad_scale=1). Inside the
    # range they are surrogates by design (checked against the formula oracle above).
    x = torch.tensor([3.0, -4.0, 10.0, -2.5, 7.0])
    s = torch.tensor([0.1], requires_grad=True)
    z = torch.tensor([1.5], requires_grad=True)
    xg = x.clone().requires_grad_()
    fn = lambda xx, ss, zz: qt.fake_quantize(xx, ss, zz, -8, 8, numerics="aprender",
                                             grad_scale=1.0)
    assert torch.autograd.gradcheck(fn, (xg, s, z), eps=1e-3, atol=1e-3, rtol=1e-3,
                                    fast_mode=False)


def test_op_under_torch_compile():
    f = torch.compile(lambda t: qt.fake_quantize(t, 0.05, 3, 0, 255) * 2, fullgraph=True,
                      backend="aot_eager")
    x = torch.randn(100)
    np.testing.assert_array_equal(bits(f(x)), bits(qt.fake_quantize(x, 0.05, 3, 0, 255) * 2))


def test_op_input_policy():
    with pytest.raises(TypeError, match="float32"):
        qt.fake_quantize(torch.ones(3, dtype=torch.float64), 0.1, 0, -127, 127)
    with pytest.raises(ValueError, match="CPU"):
        qt.fake_quantize(torch.ones(3, device="meta"), 0.1, 0, -127, 127)
    with pytest.raises(ValueError, match="scale"):
        qt.fake_quantize(torch.ones(3), -0.1, 0, -127, 127)
    with pytest.raises(ValueError, match="numerics"):
        qt.fake_quantize(torch.ones(3), 0.1, 0, -127, 127, numerics="tf")
    # a fractional (learned) zero point is rounded half to even, as torch's learnable op
    x3 = torch.tensor([0.26, -0.31, 1.0])
    assert torch.equal(qt.fake_quantize(x3, 0.1, 2.5, 0, 255), qt.fake_quantize(x3, 0.1, 2, 0, 255))
    with pytest.raises(ValueError, match="qmin"):
        qt.fake_quantize(torch.ones(3), 0.1, 0, 5, 4)
    with pytest.raises(ValueError, match="values"):
        qt.fake_quantize(torch.ones(3, 4), torch.ones(3), torch.zeros(3), -127, 127, axis=1)
    x = torch.randn(8, 6)
    nc = x.t()                                     # non-contiguous: copied once, same result
    np.testing.assert_array_equal(bits(qt.fake_quantize(nc, 0.1, 0, -127, 127)),
                                  bits(qt.fake_quantize(nc.contiguous(), 0.1, 0, -127, 127)))
    before = x.clone()
    qt.fake_quantize(x, 0.1, 0, -127, 127)
    assert torch.equal(x, before)


# --- the module -----------------------------------------------------------------------

@pytest.mark.parametrize("config", [qt.default_activation_config(), FakeQuantConfig(),
                                    FakeQuantConfig(symmetric=False, numerics="onnx",
                                                    observer="percentile")], ids=str)
def test_module_matches_core_fake_quantize(config):
    rng = np.random.default_rng(4)
    core = qatcore.FakeQuantize(config)
    mod = qt.FakeQuantize(config)
    for _ in range(3):
        x = rng.standard_normal((16, 40)).astype(F32)
        np.testing.assert_array_equal(bits(mod(torch.from_numpy(x))), bits(core.fake_quantize(x)))
    mod.disable_calibration()
    core.disable_calibration()
    assert (float(mod.scale), float(mod.zero_point)) == (core.scale, core.zero_point)
    x = rng.standard_normal(77).astype(F32) * 3
    np.testing.assert_array_equal(bits(mod(torch.from_numpy(x))), bits(core.forward(x)))


def test_module_per_channel_matches_torch_observer():
    w = torch.randn(12, 30, generator=torch.Generator().manual_seed(5))
    mod = qt.FakeQuantize(qt.default_weight_config(), axis=0)
    y = mod(w)
    obs = torch.ao.quantization.PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127,
        quant_max=127)
    obs(w)
    s, z = obs.calculate_qparams()
    np.testing.assert_array_equal(bits(mod.scale), bits(s))
    ref = torch.fake_quantize_per_channel_affine(w, s, z.to(torch.int32), 0, -127, 127)
    np.testing.assert_array_equal(bits(y), bits(ref))


@pytest.mark.parametrize("axis", [None, 0])
def test_module_state_dict_round_trip(axis):
    cfg = qt.default_weight_config() if axis == 0 else qt.default_activation_config()
    mod = qt.FakeQuantize(cfg, axis=axis, num_channels=10 if axis == 0 else None)
    g = torch.Generator().manual_seed(6)
    for _ in range(2):
        mod(torch.randn(10, 20, generator=g))
    sd = mod.state_dict()
    fresh = qt.FakeQuantize(cfg, axis=axis, num_channels=10 if axis == 0 else None)
    fresh.load_state_dict(sd)
    x = torch.randn(10, 20, generator=g) * 4           # still calibrating: same update
    np.testing.assert_array_equal(bits(fresh(x)), bits(mod(x)))
    mod.disable_calibration()
    fresh2 = qt.FakeQuantize(cfg, axis=axis, num_channels=10 if axis == 0 else None)
    fresh2.load_state_dict(mod.state_dict())
    assert not fresh2.calibrating
    np.testing.assert_array_equal(bits(fresh2(x * 3)), bits(mod(x * 3)))


def test_module_learnable_scale_trains_and_stays_positive():
    mod = qt.FakeQuantize(qt.default_activation_config().with_learnable())
    x = torch.linspace(-1, 3, 500)
    mod(x)
    mod.disable_calibration()
    assert isinstance(mod.scale, torch.nn.Parameter) and mod.zero_point.requires_grad
    opt = torch.optim.SGD(mod.parameters(), lr=1.0)
    loss = ((mod(x) - x) ** 2).sum()
    loss.backward()
    assert mod.scale.grad is not None and float(mod.scale.grad) != 0
    with torch.no_grad():
        mod.scale.fill_(-1.0)
    mod(x)
    from qatcore.fake_quantize import SCALE_FLOOR
    assert float(mod.scale.detach()) == SCALE_FLOOR
    opt.zero_grad()


def test_module_refuses_nonfinite_and_bad_config():
    mod = qt.FakeQuantize()
    with pytest.raises(ValueError, match="non-finite"):
        mod(torch.tensor([1.0, float("nan")]))
    assert int(mod.obs_count) == 0
    with pytest.raises(ValueError, match="per-channel"):
        qt.FakeQuantize(FakeQuantConfig(observer="percentile"), axis=0)
    with pytest.raises(TypeError):
        qt.FakeQuantize("int8")


# --- prepare_qat / convert ------------------------------------------------------------

def test_prepare_qat_swaps_only_linear():
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 1, 1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    qat = qt.prepare_qat(model)
    assert isinstance(model[2], torch.nn.Linear)                 # not in place
    assert isinstance(qat[0], torch.nn.Conv1d) and isinstance(qat[2], qt.QATLinear)
    assert qat[2].output_fq is None and qat[4].output_fq is not None
    frozen = qt.freeze(qt.prepare_qat(model))
    w = model[2].weight
    same = qt.prepare_qat(model, inplace=True)
    assert same is model and same[2].weight is w               # original Parameters kept
    with pytest.raises(ValueError, match="no torch.nn.Linear"):
        qt.prepare_qat(torch.nn.ReLU())
    with pytest.raises(ValueError, match="calibrating"):
        qt.convert(qt.prepare_qat(torch.nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="chain"):
        qt.convert(frozen, integer=True)        # a Conv1d is not an integer chain


def _train(model, X, y, epochs, lr, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 32):
            idx = perm[i:i + 32]
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def test_digits_qat_convert_and_state_dict():
    from qatcore.demo import load_digits, split_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        Xtr, ytr, Xte, yte = (torch.from_numpy(a) for a in split_dataset(*load_digits(), 0.2, 0))
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                    torch.nn.Dropout(0.0), torch.nn.Linear(128, 64),
                                    torch.nn.ReLU(), torch.nn.Linear(64, 10))
        _train(model, Xtr, ytr, 15, 1e-2, 1)
        model.eval()
        with torch.no_grad():
            acc_float = (model(Xte).argmax(1) == yte).float().mean().item()
        qat = qt.prepare_qat(model)
        with torch.no_grad():
            qat(Xtr)                                   # calibrate on the training set
        qt.freeze(qat)
        qat.train()
        _train(qat, Xtr, ytr, 3, 1e-4, 2)
        qat.eval()
        with torch.no_grad():
            logits = qat(Xte)
        pred_qat = logits.argmax(1)
        acc_qat = (pred_qat == yte).float().mean().item()
        assert acc_float >= 0.95
        assert acc_qat >= acc_float - 0.005, (acc_float, acc_qat)

        conv = qt.convert(qat)
        with torch.no_grad():
            pred_conv = conv(Xte).argmax(1)
        assert (pred_conv == pred_qat).float().mean().item() >= 0.995

        integer = qt.convert(qat, integer=True)
        codes = qat[0].input_fq.quantize_int8(Xte)         # the QAT input rounding, int8
        np.testing.assert_array_equal(codes, conv[0].quantize_input(Xte.numpy()))
        out_q = integer.forward_int8(codes)
        assert out_q.dtype == np.int8
        y_int = integer.forward(Xte.numpy())                  # float in, float out
        assert (np.asarray(y_int).argmax(1) == pred_qat.numpy()).mean() >= 0.995
        assert (out_q.argmax(1) == pred_qat.numpy()).mean() >= 0.995

        state = qat.state_dict()
        again = qt.prepare_qat(model)
        again.load_state_dict(state)
        again.eval()
        with torch.no_grad():
            np.testing.assert_array_equal(bits(again(Xte)), bits(logits))
    finally:
        torch.set_num_threads(threads)


def test_docstring_examples():
    import doctest

    import importlib

    attempted = 0
    for name in ("ops", "modules", "prepare", "convert"):
        module = importlib.import_module(f"qatcore.torch.{name}")
        result = doctest.testmod(module,
                                 optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, name
        attempted += result.attempted
    assert attempted > 0


@pytest.mark.parametrize("axis", [None, 1])
def test_eager_path_equals_custom_op(axis):
    # fake_quantize runs an autograd.Function in eager mode (cheaper per call) and the
    # custom op under torch.compile: same values and gradients.
    x = torch.from_numpy(tricky(40 * 7, 0.03).reshape(40, 7)).nan_to_num(0.0)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    n = 1 if axis is None else 7
    outs = []
    for use_op in (False, True):
        xa = x.clone().requires_grad_()
        s = torch.full((n,), 0.03, requires_grad=True)
        z = torch.full((n,), 4.0, requires_grad=True)
        if use_op:
            y = torch.ops.qatcore.fake_quantize(xa, s, z, 0, 255, "torch",
                                                -1 if axis is None else axis, -1.0)[0]
        else:
            y = qt.fake_quantize(xa, s, z, 0, 255, axis=axis)
        y.backward(g)
        outs.append((y.detach(), xa.grad, s.grad, z.grad))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(bits(a), bits(b))


def test_readme_pytorch_example_runs():
    import os
    import re

    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
    with open(readme, encoding="utf-8") as fh:
        text = fh.read()
    blocks = re.findall(r"```py\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no PyTorch example"
    for block in blocks:
        exec(compile(block, readme, "exec"), {})


def test_integer_chain_nested_relu6_and_refusals():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(),
                                torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU6()),
                                torch.nn.Identity(), torch.nn.Linear(16, 4))
    qat = qt.prepare_qat(model)
    x = torch.randn(300, 3, 4) * 8                        # hidden values beyond 6 (ReLU6)
    with torch.no_grad():
        qat(x)
    qt.freeze(qat)
    integer = qt.convert(qat, integer=True)
    with torch.no_grad():
        ref = qat(x)
    codes = qat[1][0].input_fq.quantize_int8(x.reshape(300, 12))
    out_q = integer.forward_int8(codes).astype(np.int32)
    out_fq = qat[3].output_fq
    ref_q = np.rint(ref.numpy() / float(out_fq.scale)) + float(out_fq.zero_point) - 128
    assert np.abs(out_q - ref_q).max() <= 2                   # a few LSB of requantization
    no_out = qt.freeze(qt.prepare_qat(model, quantize_output=False))
    with pytest.raises(ValueError, match="output quantizer"):
        qt.convert(no_out, integer=True)
    conv = qt.convert(qat)                                       # any model, float in/out
    with torch.no_grad():
        assert (conv(x).argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_demo_torch_runs_and_cli_routes():
    from qatcore.demo import torch_mlp as _demo_torch
    from qatcore.cli import main

    res = _demo_torch.run_demo(epochs=2, qat_epochs=1, measure_steps=False)
    assert [r[0] for r in res.rows] == ["float32", "PTQ int8", "QAT int8", "QAT int8"]
    assert res.agreement >= 0.98
    assert main(["demo", "--torch", "--help"]) == 0


def test_bench_torch_smoke(capsys):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench",
                        "bench_torch.py")
    spec = importlib.util.spec_from_file_location("bench_torch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "fake_quantize fwd+bwd n=1000" in out and "QAT step" in out


@pytest.mark.parametrize("observer", ["min_max", "moving_average", "percentile"])
def test_module_observer_state_round_trip(observer, tmp_path):
    cfg = qt.default_activation_config().with_observer(observer)
    mod = qt.FakeQuantize(cfg)
    g = torch.Generator().manual_seed(8)
    for _ in range(3):
        mod(torch.randn(500, generator=g))
    path = tmp_path / "fq.pt"
    torch.save(mod.state_dict(), path)
    fresh = qt.FakeQuantize(cfg)
    fresh.load_state_dict(torch.load(path))                 # weights_only: plain data
    assert fresh._observer.state_dict() == mod._observer.state_dict()
    x = torch.randn(500, generator=g) * 3
    np.testing.assert_array_equal(bits(fresh(x)), bits(mod(x)))
    assert fresh._observer.state_dict() == mod._observer.state_dict()


def test_kernel_reads_and_writes_tensor_memory(monkeypatch):
    seen = {}
    import qatcore.torch.ops as qt_ops

    real = qt_ops.fake_quantize_array

    def spy(x, *args, out=None, mask=None, **kw):
        seen["x"], seen["out"] = x.ctypes.data, out.ctypes.data
        return real(x, *args, out=out, mask=mask, **kw)

    monkeypatch.setattr(qt_ops, "fake_quantize_array", spy)
    x = torch.randn(4096, requires_grad=True)
    y = qt.fake_quantize(x, 0.02, 0, -127, 127)
    assert seen["x"] == x.data_ptr() and seen["out"] == y.data_ptr()   # no copies
