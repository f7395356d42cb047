"""qatcore.torch on real CNNs: whole-graph capture (torch.fx), BatchNorm folding, the
integer graph it converts to, and the agreement of the fake-quant model with it.

Every architecture goes prepare -> seeded training steps -> freeze_bn_stats -> freeze ->
convert(integer=True) -> forward_int8, and the output codes are compared with the
fake-quant torch model's (and with a plain-numpy TFLite-arithmetic oracle,
tests/int_graph_ref.py)."""

from __future__ import annotations

import copy
import functools
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn                                   # noqa: E402
from torch.nn import functional as F                   # noqa: E402

import qatcore.torch as qt                             # noqa: E402
from qatcore.config import FakeQuantConfig             # noqa: E402
from qatcore.torch.lower import lower                  # noqa: E402

import int_graph_ref                                   # noqa: E402


# ------------------------------------------------------------------ architectures

def _cbr(i, o, k=3, s=1, p=1, g=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(i, o, k, s, p, groups=g, bias=False), nn.BatchNorm2d(o), act())


class DSCNN(nn.Module):
    """DS-CNN keyword spotter (Zhang et al. 2017, "Hello Edge"): 49x10 MFCC input,
    conv 10x4 stride 2, depthwise-separable blocks, average pool, FC 12."""

    def __init__(self, ch=64, blocks=4, classes=12):
        super().__init__()
        self.stem = _cbr(1, ch, (10, 4), (2, 2), (5, 1))
        layers = []
        for _ in range(blocks):
            layers += [_cbr(ch, ch, 3, 1, 1, g=ch), _cbr(ch, ch, 1, 1, 0)]
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d((25, 5))
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(self.drop(torch.flatten(x, 1)))


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017) with width multiplier alpha, ReLU6."""
    CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
           (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, alpha=0.25, classes=2, blocks=13):
        super().__init__()
        c = int(32 * alpha)
        layers = [_cbr(3, c, 3, 2, 1, act=nn.ReLU6)]
        for out, s in self.CFG[:blocks]:
            o = int(out * alpha)
            layers += [_cbr(c, c, 3, s, 1, g=c, act=nn.ReLU6), _cbr(c, o, 1, 1, 0, act=nn.ReLU6)]
            c = o
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.shortcut = None
        if s != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet8(nn.Module):
    """MLPerf Tiny's ResNet-8: 16/32/64 channels, 1x1 strided shortcut convolutions."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.stack = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                                   BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.stack(self.stem(x)), 1)
        return self.fc(x.view(x.size(0), -1))


class AutoEncoder(nn.Module):
    """MLPerf Tiny's anomaly-detection autoencoder shape: Linear + BatchNorm1d + ReLU."""

    def __init__(self, d=64):
        super().__init__()

        def block(i, o):
            return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]
        self.net = nn.Sequential(*block(d, 32), *block(32, 8), *block(8, 32), nn.Linear(32, d))

    def forward(self, x):
        return self.net(x)


class TorchvisionStyle(nn.Module):
    """Functional forward: F.relu(x + y), torch.cat, F.max_pool2d, grouped conv, depth
    multiplier 2, F.relu6, F.avg_pool2d, mean(dim=(2, 3)) and a flatten of a 2x2 map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.abn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw2 = nn.Conv2d(16, 32, 3, padding="same", groups=16)
        self.fc = nn.Linear(32 * 2 * 2 + 32, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(x + self.abn(self.a(x)))
        z = torch.cat([x, F.relu(self.b(x))], dim=1)
        z = F.relu6(self.grouped(z))
        z = self.dw2(z).clamp(min=0)
        g = z.mean(dim=(2, 3))
        z = F.avg_pool2d(z, 2)
        return self.fc(torch.cat([torch.flatten(z, 1), g], dim=1))


ARCHS = {
    "ds_cnn": (lambda: DSCNN(), (1, 49, 10), 16),
    "mobilenet_v1_025": (lambda: MobileNetV1(blocks=4), (3, 96, 96), 8),
    "resnet8": (lambda: ResNet8(), (3, 32, 32), 16),
    "autoencoder_bn1d": (lambda: AutoEncoder(), (64,), 32),
    "torchvision_style": (lambda: TorchvisionStyle(), (3, 8, 8), 16),
}


@functools.lru_cache(maxsize=None)
def _trained(name):
    return _train_and_freeze(name)


def _train_and_freeze(name, steps=3, seed=0):
    make, shape, batch = ARCHS[name]
    torch.manual_seed(seed)
    model = make()
    qat = qt.prepare_qat(model, torch.randn(2, *shape))
    opt = torch.optim.SGD(qat.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(seed + 1)
    qat.train()
    for step in range(steps + 2):
        if step == steps:
            qt.freeze_bn_stats(qat)
        x = torch.randn(batch, *shape, generator=g)
        out = qat(x)
        if name == "autoencoder_bn1d":
            loss = F.mse_loss(out, x)
        else:
            loss = F.cross_entropy(out, torch.randint(0, out.shape[1], (batch,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    qt.freeze(qat)
    x = torch.randn(batch, *shape, generator=g)          # a step with frozen quantizers
    loss = qat(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    qat.eval()
    return qat, shape


def _input_codes(qat, x):
    """NHWC int8 codes of x as the model's input quantizer rounds them."""
    fq = qat.get_submodule(next(n for n in qat.graph.nodes if n.op == "call_module").target)
    q = fq.quantize_int8(x)
    return q.transpose(0, 2, 3, 1) if q.ndim == 4 else q


def _output_codes(y, spec_tensor):
    return (np.round(y.numpy() * (np.float32(1) / np.float32(spec_tensor["scale"])))
            .astype(np.int64) + spec_tensor["zero_point"])


@pytest.fixture(params=sorted(ARCHS))
def trained(request):
    qat, shape = _trained(request.param)
    return request.param, qat, shape


def test_fake_quant_equals_integer_oracle(trained):
    name, qat, shape = trained
    spec = lower(qat)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = qat(x)
    ref = int_graph_ref.run(spec, _input_codes(qat, x))
    out = next(t for t in spec.tensors if t["name"] == spec.outputs[0])
    codes = _output_codes(y, out)
    assert np.mean(codes == ref) == 1.0, name
    if y.dim() == 2 and name != "autoencoder_bn1d":
        assert np.mean(y.numpy().argmax(1) == ref.argmax(1)) == 1.0


def test_convert_forward_int8(trained):
    name, qat, shape = trained
    model_int = qt.convert(qat, integer=True)
    from qatcore import model as M
    assert isinstance(model_int, M.QuantizedModel)
    assert model_int.input_layout == ("NCHW" if len(shape) == 3 else "NHWC")
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y = qat(x)
    out_q = model_int.forward_int8(_input_codes(qat, x))
    spec = model_int.tensors[model_int.outputs[0]]
    codes = _output_codes(y, {"scale": spec.scale, "zero_point": spec.zero_point})
    identical = np.mean(codes == out_q)
    assert identical >= 0.999, (name, identical)      # measured: 1.0 on every architecture
    # torch's NCHW float input straight into forward()
    np.testing.assert_array_equal(model_int.forward(x.numpy()), y.numpy())


# ------------------------------------------------------------------ capture

def _quantizer_inputs(gm):
    """{fx node name of each quantizer call: the node it quantizes}."""
    mods = dict(gm.named_modules())
    return {n.name: n.args[0].name for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(mods[n.target], qt.FakeQuantize)}


def test_capture_places_quantizers_only_where_the_integer_graph_stores():
    qat = qt.prepare_qat(TorchvisionStyle(), torch.randn(2, 3, 8, 8))
    assert qat.qat_left_float == []
    quantized = set(_quantizer_inputs(qat).values())
    # input, fused conv+relu, the conv+BN into the add, add+relu, conv+relu into the cat,
    # cat, grouped conv+relu6, dw conv + clamp(0), and the last cat and Linear
    assert quantized == {"x", "relu", "a", "relu_1", "relu_2", "cat", "relu6", "clamp",
                         "cat_1", "fc"}
    mods = dict(qat.named_modules())
    # the cat's inputs and output share one quantizer (CONCATENATION does not rescale)
    targets = {n.args[0].name: n.target for n in qat.graph.nodes
               if n.op == "call_module" and isinstance(mods[n.target], qt.FakeQuantize)}
    assert targets["relu_1"] == targets["relu_2"] == targets["cat"]
    # BatchNorm folded into the conv layers; no BatchNorm node left
    assert isinstance(mods["stem"], qt.QATConvBn2d) and mods["stem"].bn is not None
    assert not any(isinstance(m, nn.BatchNorm2d) and "." not in n for n, m in mods.items())
    # depth multiplier 2 / groups 4 -> DepthwiseConv2D / Conv2D with C_in // groups
    spec = None
    with torch.no_grad():
        qat(torch.randn(4, 3, 8, 8))
    qt.freeze(qat)
    spec = lower(qat)
    kinds = [k for k, _ in spec.ops]
    assert kinds.count("DepthwiseConv2D") == 1
    grouped = [kw for k, kw in spec.ops if k == "Conv2D" and kw["weights_q"].shape[3] == 4]
    assert len(grouped) == 1 and grouped[0]["activation"] == "relu6"
    assert "Mean" not in kinds and kinds.count("AveragePool2D") == 2


def test_linear_only_path_unchanged():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    qat = qt.prepare_qat(mlp)
    assert isinstance(qat[0], qt.QATLinear) and not hasattr(qat, "qat_left_float")
    # the former positional order (model, activation config) still works
    qat2 = qt.prepare_qat(mlp, FakeQuantConfig(bits=8, symmetric=False, numerics="torch"))
    assert isinstance(qat2[0], qt.QATLinear)


def test_same_mlp_with_example_inputs_goes_through_the_graph():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU6(), nn.Linear(8, 3))
    qat = qt.prepare_qat(mlp, torch.randn(2, 1, 4, 4))
    with torch.no_grad():
        qat(torch.randn(16, 1, 4, 4))
    qt.freeze(qat).eval()
    spec = lower(qat)
    assert [k for k, _ in spec.ops] == ["Reshape", "FullyConnected", "FullyConnected"]
    assert spec.ops[1][1]["activation"] == "relu6"


class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.LayerNorm([4, 6, 6])
        self.fc = nn.Linear(4 * 36, 2)

    def forward(self, x):
        x = torch.tanh(self.norm(self.conv(x)))
        return self.fc(x.flatten(1))


def test_unsupported_layers_are_reported_and_refused():
    with pytest.warns(UserWarning, match="left these float"):
        qat = qt.prepare_qat(_Unsupported(), torch.randn(2, 1, 8, 8))
    assert any(s.startswith("norm (LayerNorm") for s in qat.qat_left_float)
    assert any(s.startswith("tanh (function") for s in qat.qat_left_float)
    with torch.no_grad():
        qat(torch.randn(4, 1, 8, 8))
    qt.freeze(qat)
    with pytest.raises(ValueError, match=r"node norm \(LayerNorm module 'norm'\)"):
        qt.convert(qat, integer=True)


def test_convert_refuses_calibrating_and_integer_false():
    qat = qt.prepare_qat(DSCNN(blocks=1), torch.randn(2, 1, 49, 10))
    with pytest.raises(ValueError, match="still calibrating"):
        qt.convert(qat, integer=True)
    with pytest.raises(ValueError, match="integer=True"):
        qt.convert(qat)


def test_flatten_of_nchw_permutes_the_linear_columns():
    """torch flattens C,H,W; the integer graph H,W,C: the Linear's columns follow."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    qat = qt.prepare_qat(m, torch.randn(2, 2, 4, 4))
    with torch.no_grad():
        qat(torch.randn(32, 2, 4, 4))
    qt.freeze(qat).eval()
    spec = lower(qat)
    fc = spec.ops[-1][1]
    w_torch = qat.get_submodule("3").integer_parameters()[0]
    perm = np.arange(48).reshape(3, 4, 4).transpose(1, 2, 0).ravel()
    np.testing.assert_array_equal(fc["weights_q"], w_torch[:, perm])
    x = torch.randn(16, 2, 4, 4)
    with torch.no_grad():
        y = qat(x)
    out = next(t for t in spec.tensors if t["name"] == spec.outputs[0])
    np.testing.assert_array_equal(int_graph_ref.run(spec, _input_codes(qat, x)),
                                  _output_codes(y, out))


# ------------------------------------------------------------------ BatchNorm folding

def _fine_weights():
    return FakeQuantConfig(bits=16, symmetric=True, numerics="torch")


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_bn_folding_matches_unfused_reference(affine, bias):
    """16-bit weights (quantization noise ~1e-5): the folded QAT layer computes conv -> BN
    both while training (batch statistics, running statistics updated the same) and in
    eval (running statistics), with the BatchNorm's own eps."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
    bn = nn.BatchNorm2d(6, eps=1e-3, momentum=0.3, affine=affine)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    ref = nn.Sequential(conv, bn)
    layer = qt.QATConvBn2d(*[m for m in copy.deepcopy(ref)], _fine_weights())
    x = torch.randn(8, 3, 5, 5)
    ref.train()
    layer.train()
    y_ref = ref(x)
    y = layer(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(layer.bn.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.bn.running_var, bn.running_var)
    ref.eval()
    layer.eval()
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-3, atol=2e-3)
    # and the folded weight/bias are W·γ/σ and β + (b − μ)·γ/σ
    wf, bf = layer.folded()
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if affine else torch.ones(6)
    beta = bn.bias if affine else torch.zeros(6)
    torch.testing.assert_close(wf, conv.weight * (gamma / std).reshape(-1, 1, 1, 1))
    b0 = conv.bias if bias else torch.zeros(6)
    torch.testing.assert_close(bf, beta + (b0 - bn.running_mean) * gamma / std)


def test_linear_bn1d_folding_matches_reference():
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4, eps=1e-4))
    layer = qt.QATLinearBn(*copy.deepcopy(ref), _fine_weights())
    x = torch.randn(16, 5)
    torch.testing.assert_close(layer.train()(x), ref.train()(x), rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(layer.eval()(x), ref.eval()(x), rtol=1e-3, atol=2e-3)


def test_freeze_bn_stats_keeps_running_statistics():
    qat, shape = _trained("resnet8")
    qat = copy.deepcopy(qat).train()
    qt.freeze_bn_stats(qat)
    bns = [m.bn for m in qat.modules() if isinstance(m, qt.QATConvBn2d) and m.bn is not None]
    before = [b.running_var.clone() for b in bns]
    qat(torch.randn(4, *shape))
    for b, v in zip(bns, before):
        torch.testing.assert_close(b.running_var, v)
    qt.freeze_bn_stats(qat, False)
    qat(torch.randn(4, *shape))
    assert any(not torch.equal(b.running_var, v) for b, v in zip(bns, before))


# ------------------------------------------------------------------ state, export

def test_state_dict_round_trip():
    qat, shape = _trained("torchvision_style")
    buf = io.BytesIO()
    torch.save(qat.state_dict(), buf)
    buf.seek(0)
    fresh = qt.prepare_qat(TorchvisionStyle(), torch.randn(2, *shape))
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    fresh.eval()
    x = torch.randn(8, *shape)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), qat(x), rtol=0, atol=0)
    a, b = lower(qat), lower(fresh)
    for (ka, kwa), (kb, kwb) in zip(a.ops, b.ops):
        assert ka == kb
        if "weights_q" in kwa:
            np.testing.assert_array_equal(kwa["weights_q"], kwb["weights_q"])


def test_deepcopy_keeps_quantizer_links():
    qat, shape = _trained("ds_cnn")
    twin = copy.deepcopy(qat)
    mods = dict(twin.named_modules())
    for m in twin.modules():
        if isinstance(m, qt.QATConvBn2d):
            assert any(m._input_fq is v for v in mods.values())
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), qat(x), rtol=0, atol=0)


def test_fixed_qparams_for_sigmoid_and_hardswish_quantized():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.hs = nn.Hardswish()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            x = self.hs(self.conv(x)).mean((2, 3))
            return torch.sigmoid(self.fc(x))

    qat = qt.prepare_qat(Net(), torch.randn(2, 1, 6, 6))
    assert qat.qat_left_float == []
    with torch.no_grad():
        qat(torch.randn(8, 1, 6, 6))
    qt.freeze(qat)
    qt.calibrate(qat)                           # the fixed quantizer ignores this
    fixed = [m for m in qat.modules() if isinstance(m, qt.FixedQParamsFakeQuantize)]
    assert len(fixed) == 1 and not fixed[0].calibrating
    qt.freeze(qat)
    spec = lower(qat)
    assert [k for k, _ in spec.ops] == ["Conv2D", "HardSwish", "AveragePool2D", "Reshape",
                                        "FullyConnected", "Logistic"]
    out = next(t for t in spec.tensors if t["name"] == spec.outputs[0])
    assert (out["scale"], out["zero_point"]) == (1 / 256, -128)


def test_torch_onnx_export_of_a_frozen_qat_model(tmp_path):
    """torch.onnx.export (TorchScript exporter) writes the quantizers as QuantizeLinear /
    DequantizeLinear; onnxruntime then predicts as the QAT model does. Wrapping the
    GraphModule (nn.Sequential) lets dynamic_axes through (the exporter reads
    ``model.graph`` as a TorchScript graph)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    qat, shape = _trained("resnet8")
    path = tmp_path / "resnet8_qat.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Sequential(qat), (torch.randn(1, *shape),), str(path),
                          dynamo=False, opset_version=13, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = qat(x).numpy()
    y_onnx = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    assert np.mean(y_onnx.argmax(1) == y.argmax(1)) >= 0.9    # measured 1.0
    step = qat.get_submodule("fc_fq").scale.item()
    # a few output steps: float conv / average in onnxruntime vs integer requantization
    assert np.abs(y_onnx - y).max() <= 6 * step
    assert qat.state_dict()                            # the extra state is back to a dict
    assert isinstance(qat.get_submodule("x_fq").get_extra_state(), dict)


def test_tflite_in_tflm_bit_exact(trained, tmp_path):
    """convert -> .tflite (qatcore.export) -> TensorFlow Lite Micro: the same int8 codes as
    forward_int8, which are the fake-quant model's codes."""
    runtime = pytest.importorskip("tflite_micro", reason="tflite-micro not installed").runtime
    name, qat, shape = trained
    model_int = qt.convert(qat, integer=True)
    path = tmp_path / f"{name}.tflite"
    model_int.to_tflite(path)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(9))
    x_q = _input_codes(qat, x)
    expected = model_int.forward_int8(x_q)
    interp = runtime.Interpreter.from_file(str(path))
    for i in range(len(x_q)):
        interp.set_input(x_q[i:i + 1], 0)
        interp.invoke()
        np.testing.assert_array_equal(interp.get_output(0).reshape(expected[i:i + 1].shape),
                                      expected[i:i + 1])


def test_cnn_demo_smoke():
    from qatcore.demo import torch_cnn as _demo_torch_cnn

    res = _demo_torch_cnn.run_demo(epochs=2, qat_epochs=1, tflm=False)
    assert [r[0] for r in res.rows] == ["float32", "PTQ int8", "QAT int8", "QAT int8"]
    assert res.argmax_agreement == 1.0 and res.code_agreement == 1.0
    assert res.accuracies["qat_int"] > 0.5
    assert "integer-only" in res.table()


class _HardSwishSigmoidSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.hs = nn.Hardswish()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.hs(self.bn(self.conv(x)))
        x = torch.sigmoid(self.conv2(x)).mean((2, 3))
        return torch.softmax(self.fc(x), dim=-1)


def test_hardswish_sigmoid_softmax_agree_with_the_engine():
    torch.manual_seed(0)
    qat = qt.prepare_qat(_HardSwishSigmoidSoftmax(), torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        qat(torch.randn(64, 3, 8, 8))
    qt.freeze(qat).eval()
    model_int = qt.convert(qat, integer=True)
    assert [type(op).__name__ for op in model_int.ops] == [
        "Conv2D", "HardSwish", "Conv2D", "Logistic", "AveragePool2D", "Reshape",
        "FullyConnected", "Softmax"]
    x = torch.randn(128, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = qat(x)
    out_q = model_int.forward_int8(_input_codes(qat, x))
    codes = _output_codes(y, {"scale": 1 / 256, "zero_point": -128})
    assert np.mean(codes == out_q) >= 0.99            # measured 1.0


def test_cnn_without_example_inputs_records_the_shape_at_the_first_forward():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    qat = qt.prepare_qat(model)                 # a Conv2d: whole-graph capture anyway
    assert qat.qat_input_shapes is None
    with pytest.raises(ValueError, match="input shape is unknown"):
        lower(qt.freeze(copy.deepcopy(qat)))
    with torch.no_grad():
        qat(torch.randn(8, 1, 6, 6))
    assert qat.qat_input_shapes == [(1, 6, 6)]
    qt.freeze(qat).eval()
    model_int = qt.convert(qat, integer=True)
    assert model_int.input_shape == (None, 6, 6, 1)


def test_cnn_demo_cli_routes(monkeypatch):
    """`qatcore demo --torch --cnn` runs qatcore.demo.torch_cnn.main with the other args."""
    from qatcore.cli import main
    from qatcore.demo import torch_cnn

    seen = []
    monkeypatch.setattr(torch_cnn, "main", lambda argv: seen.append(argv) or 0)
    assert main(["demo", "--torch", "--cnn", "--epochs", "1"]) == 0
    assert seen == [["--epochs", "1"]]
