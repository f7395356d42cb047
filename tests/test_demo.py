"""qatcore demo: its pieces on a tiny subset, and the whole command once."""

import sys

import numpy as np
import pytest

from qatcore import FakeQuantConfig, QuantizedSequential
from qatcore.demo import mlp as demo


@pytest.fixture(scope="module")
def digits():
    return demo.load_digits()


@pytest.fixture(scope="module")
def tiny(digits):
    X, y = digits
    Xtr, ytr, Xte, yte = demo.split_dataset(X, y, 0.2, seed=0)
    return Xtr[:400], ytr[:400], Xte[:120], yte[:120]


def test_load_digits(digits):
    X, y = digits
    assert X.shape == (1797, 64) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y)[:3], [178, 182, 177])


def test_load_digits_without_file_or_sklearn(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(RuntimeError, match="scikit-learn"):
        demo.load_digits(str(tmp_path / "missing.csv.gz"))


def test_split_is_stratified_and_seeded(digits):
    X, y = digits
    a = demo.split_dataset(X, y, 0.2, seed=3)
    b = demo.split_dataset(X, y, 0.2, seed=3)
    c = demo.split_dataset(X, y, 0.2, seed=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[3], c[3]) or not np.array_equal(a[2], c[2])
    Xtr, ytr, Xte, yte = a
    assert len(ytr) + len(yte) == 1797 and 355 <= len(yte) <= 365
    assert np.all(np.abs(np.bincount(yte) - 0.2 * np.bincount(y)) <= 1)


@pytest.mark.parametrize("bits,lsq", [(8, False), (4, False), (8, True)],
                         ids=["int8", "int4", "int8-lsq"])
def test_pipeline_on_a_tiny_subset(tiny, bits, lsq):
    res = demo.run_demo(bits=bits, epochs=3, qat_epochs=1, seed=0, lsq=lsq, data=tiny,
                        measure_steps=False)
    names = [row[0] for row in res.rows]
    assert names[0] == "float32" and names[1].startswith("PTQ") and len(res.rows) == 4
    acc = res.accuracies
    assert acc["float"] > 0.85                      # 3 epochs on 400 samples
    assert acc["ptq"] > 0.75 and acc["qat_sim"] > 0.75
    assert abs(acc["qat_int"] - acc["qat_sim"]) <= 0.02
    assert res.agreement >= 0.98
    assert all(t > 0 for *_, t in res.rows)
    assert "accuracy" in res.table() and "PTQ" in res.table()


def test_pipeline_is_deterministic(tiny):
    a = demo.run_demo(bits=4, epochs=2, qat_epochs=1, seed=5, data=tiny, measure_steps=False)
    b = demo.run_demo(bits=4, epochs=2, qat_epochs=1, seed=5, data=tiny, measure_steps=False)
    assert a.accuracies == b.accuracies and a.agreement == b.agreement


def _tiny_qat_model(tiny, bits=8):
    Xtr, ytr, _, _ = tiny
    model = demo.build_mlp(0)
    demo.train(model, Xtr, ytr, epochs=2, lr=1e-2)
    qat = demo.build_qat_model(model, FakeQuantConfig(bits=bits), FakeQuantConfig(bits=8))
    demo.calibrate(qat, Xtr)
    for fq in demo._activation_quants(qat) + demo._weight_quants(qat):
        fq.disable_calibration()
    return model, qat


def test_integer_only_matches_simulated_logits(tiny):
    _, qat = _tiny_qat_model(tiny)
    Xtr, Xte = tiny[0], tiny[2]
    qint = demo.convert(qat, Xtr)
    assert isinstance(qint, QuantizedSequential)
    assert qint.activations == ["relu", "relu", None]
    out = qint.forward_int8(qint.quantize_input(Xte))
    assert out.dtype == np.int8 and out.shape == (len(Xte), 10)
    # dequantized int8 logits are the simulated logits, up to a few output LSB of
    # requantization rounding in the hidden layers
    logits_int = qint.dequantize_output(out)
    logits_sim = qat.forward(Xte)
    assert np.max(np.abs(logits_int - logits_sim)) < 0.05 * np.max(np.abs(logits_sim))
    np.testing.assert_array_equal(demo.predict_int(qint, Xte), out.argmax(axis=1))


def test_integer_model_is_the_public_container(tiny, tmp_path):
    res = demo.run_demo(bits=8, epochs=2, qat_epochs=1, seed=0, data=tiny, measure_steps=False)
    assert isinstance(res.model, QuantizedSequential)
    path = tmp_path / "mlp.npz"
    res.model.save(path)
    again = QuantizedSequential.load(path)
    x = again.quantize_input(tiny[2])
    np.testing.assert_array_equal(again.forward_int8(x), res.model.forward_int8(x))


def test_demo_uses_the_public_api_only():
    import inspect

    src = inspect.getsource(demo)
    assert "_backend" not in src and "ctypes" not in src
    assert "threadpool_limits(1, \"blas\")" in src


def test_blas_limit_without_threadpoolctl(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    with demo._single_threaded_blas(quiet=False):
        pass
    assert "threadpoolctl is not installed" in capsys.readouterr().err
    with demo._single_threaded_blas(quiet=True):
        pass
    assert capsys.readouterr().err == ""


def test_step_times_leave_models_untouched(tiny):
    model, qat = _tiny_qat_model(tiny)
    before = [p.copy() for p in qat.parameters()]
    t = demo.step_times([model, qat], tiny[0], tiny[1], steps=3, repeats=1)
    assert len(t) == 2 and all(v > 0 for v in t)
    for b, p in zip(before, qat.parameters()):
        np.testing.assert_array_equal(b, p)


def test_lsq_optimizer_groups(tiny):
    Xtr = tiny[0]
    model = demo.build_mlp(0)
    lsq = FakeQuantConfig(bits=4).with_learnable()
    qat = demo.build_qat_model(model, lsq, FakeQuantConfig(bits=8).with_learnable())
    demo.calibrate(qat, Xtr)
    for fq in demo._activation_quants(qat) + demo._weight_quants(qat):
        fq.disable_calibration()
    opt = demo.lsq_optimizer(qat, 1e-3, 1e-2)
    assert len(opt.groups) == 6 and len(opt.main.params) == 6
    opt.lr = 5e-4
    for o, base in opt.groups:
        assert o.lr == pytest.approx(base / 2)


def test_cli_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--bits", "3"])
    assert exc.value.code == 2
    assert demo.main(["--epochs", "0", "--quiet"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_progress_goes_to_stderr_unless_quiet(capsys):
    assert demo.main(["--epochs", "1", "--qat-epochs", "1", "--bits", "4"]) == 0
    out, err = capsys.readouterr()
    assert "[float] epoch 1/1" in err and "[QAT int4] epoch 1/1" in err
    assert "PTQ int4" in out and "integer-only" in out and "epoch" not in out
    assert demo.main(["--epochs", "1", "--qat-epochs", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_whole_demo(capsys):
    """The full default run (about 5 s here; the issue allows the CI a minute)."""
    assert demo.main(["--quiet"]) == 0
    out = capsys.readouterr().out
    assert "target" not in out                        # written for users, not for us
    assert "integer-only vs simulated QAT predictions agree" in out
    lines = [line for line in out.splitlines() if line.startswith(("float32", "PTQ", "QAT"))]
    assert len(lines) == 4


def test_save_option(capsys, tmp_path):
    path = tmp_path / "mlp.npz"
    assert demo.main(["--epochs", "1", "--qat-epochs", "0", "--quiet", "--save", str(path)]) == 0
    assert f"integer model saved to {path}" in capsys.readouterr().out
    model = QuantizedSequential.load(path)
    assert (model.in_features, model.out_features) == (64, 10)
    assert demo.main(["--quiet", "--save", str(tmp_path / "no" / "m.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err

