"""qatcore.nn: finite-difference gradient checks, optimizers, bad input."""

import numpy as np
import pytest

from qatcore.nn import SGD, Adam, Linear, ReLU, Sequential, SoftmaxCrossEntropy


def _fd_grad(f, arr, eps=1e-6):
    """Central finite differences of scalar f() w.r.t. every element of arr (in place)."""
    g = np.zeros(arr.shape, dtype=np.float64)
    flat = arr.reshape(-1)
    gf = g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("batch", [1, 3, 8], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_gradients_match_finite_differences(batch, bias):
    rng = np.random.default_rng(batch)
    lin = Linear(5, 4, bias=bias, seed=1, dtype=np.float64)
    x = rng.normal(size=(batch, 5))
    c = rng.normal(size=(batch, 4))          # loss = sum(c * y)

    def loss():
        return float((lin.forward(x) * c).sum())

    loss()
    gx = lin.backward(c)
    np.testing.assert_allclose(lin.grad_weight, _fd_grad(loss, lin.weight), rtol=1e-7, atol=1e-8)
    if bias:
        np.testing.assert_allclose(lin.grad_bias, _fd_grad(loss, lin.bias), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gx, _fd_grad(loss, x), rtol=1e-7, atol=1e-8)


def test_softmax_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    ce = SoftmaxCrossEntropy()
    ce.forward(z, labels)
    g = ce.backward()
    np.testing.assert_allclose(g, _fd_grad(lambda: ce.forward(z, labels), z), rtol=1e-6,
                               atol=1e-9)
    # the gradient of each row sums to zero
    np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-12)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    ce = SoftmaxCrossEntropy()
    loss = ce.forward(np.array([[1e30, 0.0], [0.0, 1e30]], np.float32), [0, 0])
    assert np.isfinite(loss) and loss > 1e29 / 2
    assert np.all(np.isfinite(ce.backward()))


def test_mlp_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    model = Sequential([Linear(6, 7, seed=1, dtype=np.float64), ReLU(),
                        Linear(7, 3, seed=2, dtype=np.float64)])
    x = rng.normal(size=(5, 6))
    labels = rng.integers(0, 3, 5)
    ce = SoftmaxCrossEntropy()

    def loss():
        return ce.forward(model.forward(x), labels)

    loss()
    gx = model.backward(ce.backward())
    analytic = [g.copy() for g in model.grads()]
    for p, g in zip(model.parameters(), analytic):
        np.testing.assert_allclose(g, _fd_grad(loss, p), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gx, _fd_grad(loss, x), rtol=1e-5, atol=1e-8)


def test_relu_forward_backward():
    r = ReLU()
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.0]], np.float32)
    np.testing.assert_array_equal(r.forward(x), np.array([[0, 0, 0, 1e-30, 3]], np.float32))
    np.testing.assert_array_equal(r.backward(np.ones_like(x)), [[0, 0, 0, 1, 1]])


def test_parameters_and_grads_are_live_and_aligned():
    model = Sequential([Linear(3, 4, seed=0), ReLU(), Linear(4, 2, bias=False, seed=1)])
    ps, gs = model.parameters(), model.grads()
    assert [p.shape for p in ps] == [g.shape for g in gs] == [(4, 3), (4,), (2, 4)]
    assert ps[0] is model[0].weight and gs[0] is model[0].grad_weight
    model.forward(np.ones((2, 3), np.float32))
    model.backward(np.ones((2, 2), np.float32))
    assert any(np.any(g != 0) for g in gs)
    model.zero_grad()
    assert all(np.all(g == 0) for g in gs)


def test_linear_float32_default_and_input_conversion():
    lin = Linear(3, 2, seed=0)
    assert lin.weight.dtype == np.float32 and lin.weight.shape == (2, 3)
    assert np.all(np.abs(lin.weight) <= 1 / np.sqrt(3))
    y = lin.forward(np.ones((4, 3), np.float64))
    assert y.dtype == np.float32 and y.shape == (4, 2)
    # seeded: same seed, same weights
    np.testing.assert_array_equal(Linear(3, 2, seed=0).weight, lin.weight)


@pytest.mark.parametrize("case", ["before_forward", "wrong_shape"])
def test_linear_backward_bad_input(case):
    lin = Linear(3, 2, seed=0)
    before = [p.copy() for p in lin.grads()]
    if case == "before_forward":
        with pytest.raises(ValueError, match="before forward"):
            lin.backward(np.ones((1, 2)))
    else:
        lin.forward(np.ones((4, 3)))
        with pytest.raises(ValueError, match="grad_out"):
            lin.backward(np.ones((4, 3)))
    for b, g in zip(before, lin.grads()):
        np.testing.assert_array_equal(b, g)


def test_linear_bad_construction():
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="out_features"):
        Linear(2, 2.5)
    with pytest.raises(ValueError, match="weight"):
        Linear(2, 2, weight=np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        Linear(1, 1, weight=[[np.nan]])
    with pytest.raises(TypeError, match="dtype"):
        Linear(1, 1, dtype=np.int32)
    with pytest.raises(ValueError, match="x"):
        Linear(3, 2).forward(np.ones((2, 4)))


def test_cross_entropy_bad_input():
    ce = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="before forward"):
        ce.backward()
    with pytest.raises(ValueError, match="labels"):
        ce.forward(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="labels"):
        ce.forward(np.zeros((2, 3)), [0.0, 1.0])
    with pytest.raises(ValueError, match="non-finite"):
        ce.forward(np.array([[np.nan, 0.0]]), [0])


def test_sgd_momentum_matches_closed_form():
    p = np.array([1.0, -2.0])
    g = np.array([0.5, 1.0])
    opt = SGD([p], [g], lr=0.1, momentum=0.9)
    v = np.zeros(2)
    ref = np.array([1.0, -2.0])
    for _ in range(5):
        v = 0.9 * v + g
        ref = ref - 0.1 * v
        opt.step()
    np.testing.assert_allclose(p, ref, rtol=1e-12)


def test_adam_matches_textbook_formula():
    rng = np.random.default_rng(0)
    p = rng.normal(size=4)
    ref = p.copy()
    g = np.zeros(4)
    opt = Adam([p], [g], lr=0.01)
    m = np.zeros(4)
    v = np.zeros(4)
    for t in range(1, 8):
        g[...] = rng.normal(size=4)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref -= 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        opt.step()
    np.testing.assert_allclose(p, ref, rtol=1e-10)


def test_optimizer_after_step_hook_and_validation():
    calls = []
    p, g = np.ones(2, np.float32), np.ones(2, np.float32)
    Adam([p], [g], lr=0.1, after_step=lambda: calls.append(1)).step()
    assert calls == [1]
    with pytest.raises(ValueError, match="length"):
        SGD([p], [], lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        SGD([p], [np.ones(3)], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        Adam([p], [g], lr=0)
    with pytest.raises(ValueError, match="momentum"):
        SGD([p], [g], lr=0.1, momentum=1.0)


def test_tiny_mlp_learns():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    model = Sequential([Linear(4, 16, seed=0), ReLU(), Linear(16, 3, seed=1)])
    opt = Adam(model.parameters(), model.grads(), lr=0.03)
    ce = SoftmaxCrossEntropy()
    for _ in range(150):
        ce.forward(model(x), y)
        model.backward(ce.backward())
        opt.step()
    assert (model(x).argmax(1) == y).mean() > 0.95
