"""Concurrent calls on ONE object from many threads (issue 13; docs/threading.md): no
crash, no heap corruption, and a final state equal to some serial order of the calls
(checked exactly where the serial orders can be computed).  The GIL switch interval is
set to 1 µs so that threads interleave inside the Python facade as much as possible;
the kernels release the GIL, so they overlap for real."""

import itertools
import sys
import threading

import numpy as np
import pytest

from qatcore import (ChannelObserver, DynamicQuantizer, FakeQuantConfig, FakeQuantize,
                     HistogramObserver, MixedPrecision, ObserverMethod, QuantizedLinear,
                     QuantObserver)

THREADS = 8
ROUNDS = 1500       # forward+backward pairs per thread (the unlocked race shows within ~1000)


@pytest.fixture(autouse=True)
def tiny_switch_interval():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(bodies):
    """Start one thread per body at the same moment; re-raise the first exception."""
    barrier = threading.Barrier(len(bodies))
    errors = []

    def wrap(body):
        try:
            barrier.wait()
            body()
        except BaseException as exc:          # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def batches(n_batches, seed=0, size=(50, 3000)):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(rng.integers(*size))) * rng.uniform(0.1, 10))
            .astype(np.float32) for _ in range(n_batches)]


# --- observers -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", [ObserverMethod.MIN_MAX, ObserverMethod.PERCENTILE])
def test_observer_order_independent_methods(method):
    data = batches(THREADS * 6, seed=1)
    obs = QuantObserver(method)
    per_thread = [data[i::THREADS] for i in range(THREADS)]
    run_threads([lambda mine=mine: [obs.observe(b) for b in mine] for mine in per_thread])
    serial = QuantObserver(method)
    for b in data:
        serial.observe(b)
    assert obs.range() == serial.range()
    assert obs.state_dict()["count"] == serial.state_dict()["count"] == len(data)


def test_observer_mean_std_counts_add_up():
    data = batches(THREADS * 4, seed=2)
    obs = QuantObserver(ObserverMethod.MEAN_STD)
    run_threads([lambda mine=data[i::THREADS]: [obs.observe(b) for b in mine]
                 for i in range(THREADS)])
    serial = QuantObserver(ObserverMethod.MEAN_STD)
    for b in data:
        serial.observe(b)
    assert obs.state_dict()["count"] == serial.state_dict()["count"]
    np.testing.assert_allclose(obs.range(), serial.range(), rtol=1e-5)


def _interleavings(a, b):
    """Every merge of sequences a and b that keeps each one's order."""
    n = len(a) + len(b)
    for pos in itertools.combinations(range(n), len(a)):
        ia, ib, out = iter(a), iter(b), []
        for k in range(n):
            out.append(next(ia) if k in pos else next(ib))
        yield out


def test_moving_average_equals_a_serial_order():
    """Issue: 2 threads × observe on one MOVING_AVERAGE observer ended in a state no
    serial order produces. 2 threads × 2 calls: the state is one of the 6 orders."""
    data = batches(4, seed=3, size=(20, 400))
    a, b = data[:2], data[2:]
    serial_states = set()
    for order in _interleavings(a, b):
        obs = QuantObserver(ObserverMethod.MOVING_AVERAGE)
        for x in order:
            obs.observe(x)
        serial_states.add(repr(obs.state_dict()))
    assert len(serial_states) > 1
    for _ in range(800):
        obs = QuantObserver(ObserverMethod.MOVING_AVERAGE)
        run_threads([lambda: [obs.observe(x) for x in a], lambda: [obs.observe(x) for x in b]])
        assert repr(obs.state_dict()) in serial_states


def test_observer_merge_and_state_dict_under_concurrency():
    data = batches(THREADS * 3, seed=4)
    obs = QuantObserver()
    others = [QuantObserver() for _ in range(THREADS)]
    for o, b in zip(others, data):
        o.observe(b)
    states = []
    run_threads([lambda o=o, mine=data[THREADS + i::THREADS]: (
        obs.merge(o), [obs.observe(b) for b in mine], states.append(obs.state_dict()))
        for i, o in enumerate(others)])
    lo = min(float(b.min()) for b in data)
    hi = max(float(b.max()) for b in data)
    assert obs.range() == (lo, hi)
    assert all(s["count"] <= obs.state_dict()["count"] for s in states)


@pytest.mark.parametrize("method", ["entropy", "percentile", "mse"])
def test_histogram_observer_equals_serial(method):
    data = batches(THREADS * 3, seed=5)
    h = HistogramObserver(method, bins=256)
    run_threads([lambda mine=data[i::THREADS]: [h.observe(b) for b in mine]
                 for i in range(THREADS)])
    serial = HistogramObserver(method, bins=256)
    for b in data:
        serial.observe(b)
    assert h.count == serial.count == sum(b.size for b in data)
    c1, e1 = h.histogram()
    c2, e2 = serial.histogram()
    assert np.array_equal(c1, c2) and np.array_equal(e1, e2)
    assert h.range() == serial.range()


def test_histogram_merge_concurrent_with_observe():
    data = batches(THREADS * 2, seed=6)
    h = HistogramObserver(bins=64)
    parts = []
    for b in data[THREADS:]:
        p = HistogramObserver(bins=64)
        p.observe(b)
        parts.append(p)
    run_threads([lambda x=x, p=p: (h.observe(x), h.merge(p), h.range())
                 for x, p in zip(data[:THREADS], parts)])
    serial = HistogramObserver(bins=64)
    for b in data:
        serial.observe(b)
    assert np.array_equal(h.histogram()[0], serial.histogram()[0])
    assert h.count == serial.count


def test_channel_observer_first_batch_race():
    obs = ChannelObserver("min_max", axis=0)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((4, 100)).astype(np.float32) for _ in range(THREADS)]
    run_threads([lambda x=x: obs.observe(x) for x in xs])
    assert obs.channels == 4
    allx = np.concatenate(xs, axis=1)
    assert np.array_equal(obs.ranges(), np.stack([allx.min(1), allx.max(1)], 1).astype(np.float64))


# --- FakeQuantize ----------------------------------------------------------------------------
def _reference_backward(fq_config, x, g, scale, zp):
    fq = FakeQuantize(fq_config)
    if fq_config.learnable:
        fq.initialize(scale, zp)
    else:
        fq.fake_quantize(np.array([-scale * 127, scale * 127], np.float32))
        fq.disable_calibration()
    fq.forward(x)
    return fq.backward(g), [float(v[0]) for v in fq.grads()]


@pytest.mark.parametrize("learnable", [False, True], ids=["ste", "lsq"])
def test_fake_quantize_forward_backward_from_many_threads(learnable):
    """Issue: an LSQ backward on one thread while forward runs on another on the same
    FakeQuantize died with glibc "corrupted size vs. prev_size".  Each thread uses its
    own input size, so a backward succeeds only right after its own forward, and must
    then give exactly that forward's gradient; otherwise it is a clean ValueError."""
    config = FakeQuantConfig.int8().with_learnable() if learnable else FakeQuantConfig.int8()
    fq = FakeQuantize(config)
    if learnable:
        fq.initialize(0.02)
    else:
        fq.fake_quantize(np.array([-2.54, 2.54], np.float32))
        fq.disable_calibration()
    scale = fq.scale
    rng = np.random.default_rng(8)
    sizes = [17 + 40 * i for i in range(THREADS)]
    xs = [rng.standard_normal(n).astype(np.float32) * 3 for n in sizes]
    gs = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    refs = [_reference_backward(config, x, g, scale, 0.0)[0] for x, g in zip(xs, gs)]
    outcomes = {"ok": 0, "refused": 0}
    lock = threading.Lock()

    def body(i):
        for _ in range(ROUNDS):
            fq.forward(xs[i])
            try:
                gin = fq.backward(gs[i])
            except ValueError as exc:
                assert "shape" in str(exc)
                with lock:
                    outcomes["refused"] += 1
                continue
            assert np.array_equal(gin.view(np.uint32), refs[i].view(np.uint32))
            with lock:
                outcomes["ok"] += 1

    run_threads([lambda i=i: body(i) for i in range(THREADS)])
    assert outcomes["ok"] + outcomes["refused"] == THREADS * ROUNDS and outcomes["ok"] > 0


def test_lsq_backward_gradients_belong_to_one_forward():
    """Forward+backward pairs made atomic by the caller's own lock give exactly the
    serial gradients, while other threads hammer the same quantizer's forward."""
    config = FakeQuantConfig(symmetric=False).with_learnable()
    fq = FakeQuantize(config)
    fq.initialize(0.03, 5.0)
    x = np.random.default_rng(9).standard_normal(4099).astype(np.float32)
    g = np.random.default_rng(10).standard_normal(4099).astype(np.float32)
    ref_gin, ref_grads = _reference_backward(config, x, g, 0.03, 5.0)
    pair = threading.Lock()
    noise = np.random.default_rng(11).standard_normal(513).astype(np.float32)
    results = []

    def trainer():
        for _ in range(20):
            with pair:
                fq.forward(x)
                gin = fq.backward(g)
                results.append((gin.copy(), [float(v[0]) for v in fq.grads()]))

    def hammer():
        for _ in range(60):
            with pair:
                fq.forward(noise)

    run_threads([trainer, trainer] + [hammer] * (THREADS - 2))
    for gin, grads in results:
        assert np.array_equal(gin.view(np.uint32), ref_gin.view(np.uint32))
        assert grads == ref_grads


@pytest.mark.parametrize("method", [ObserverMethod.MIN_MAX, ObserverMethod.MOVING_AVERAGE])
def test_calibrating_small_batches_with_backward(method):
    """Small calibrating batches take the fused kernel, which writes the STE mask a
    concurrent backward reads: each backward gets g where its forward's mask is 1 and 0
    elsewhere, with the right shape, or a clean shape error."""
    fq = FakeQuantize(FakeQuantConfig(observer=method))
    rng = np.random.default_rng(15)
    sizes = [9 + 13 * i for i in range(THREADS)]
    xs = [rng.standard_normal(n).astype(np.float32) * (i + 1) for i, n in enumerate(sizes)]
    gs = [rng.uniform(1, 2, n).astype(np.float32) for n in sizes]

    def body(i):
        for _ in range(ROUNDS // 3):
            fq.fake_quantize(xs[i])
            try:
                gin = fq.backward(gs[i])
            except ValueError as exc:
                assert "shape" in str(exc)
                continue
            assert gin.shape == gs[i].shape
            assert np.all((gin == gs[i]) | (gin == 0))

    run_threads([lambda i=i: body(i) for i in range(THREADS)])
    assert fq.observer.state_dict()["count"] == THREADS * (ROUNDS // 3)


def test_calibrating_fake_quantize_from_many_threads():
    data = batches(THREADS * 4, seed=12)
    fq = FakeQuantize()
    outs = {}

    def body(i):
        for j, b in enumerate(data[i::THREADS]):
            outs[(i, j)] = fq.fake_quantize(b)

    run_threads([lambda i=i: body(i) for i in range(THREADS)])
    lo = min(float(b.min()) for b in data)
    hi = max(float(b.max()) for b in data)
    assert fq.observer.range() == (lo, hi)
    ref = FakeQuantize()
    ref.fake_quantize(np.array([lo, hi], np.float32))
    assert (fq.scale, fq.zero_point) == (ref.scale, ref.zero_point)
    assert len(outs) == len(data)


# --- QuantizedLinear, DynamicQuantizer, MixedPrecision -------------------------------------
def test_quantized_linear_forward_with_concurrent_set_input_scale():
    """A forward concurrent with set_input_scale uses the old or the new input state,
    never a mix; the packed weights are shared by all forwards."""
    rng = np.random.default_rng(13)
    w = rng.standard_normal((16, 200)).astype(np.float32)
    layer = QuantizedLinear.from_float(w, rng.standard_normal(16), 200, 16)
    x = rng.standard_normal((9, 200)).astype(np.float32)
    xq = rng.integers(-128, 128, (9, 200)).astype(np.int8)
    settings = [(0.05, 0), (0.02, 7)]
    refs = []
    for s, z in settings:
        layer.set_input_scale(s, zero_point=z)
        refs.append((layer.forward(x), layer.forward_quantized(xq),
                     layer.forward_int8(xq, 0.5, 0)))
    bad = []

    def reader():
        for _ in range(30):
            y, acc, y8 = layer.forward(x), layer.forward_quantized(xq), layer.forward_int8(xq, 0.5, 0)
            if not any(np.array_equal(y, r[0]) for r in refs) or \
                    not any(np.array_equal(acc, r[1]) for r in refs) or \
                    not any(np.array_equal(y8, r[2]) for r in refs):
                bad.append(1)

    def writer():
        for k in range(60):
            layer.set_input_scale(*settings[k % 2])

    run_threads([reader] * (THREADS - 1) + [writer])
    assert not bad


def test_dynamic_quantizer_from_many_threads():
    dq = DynamicQuantizer(FakeQuantConfig(symmetric=False))
    data = batches(THREADS, seed=14)
    refs = [dq.quantize(b) for b in data]
    bad = []

    def body(i):
        for _ in range(20):
            q, s, z = dq.quantize(data[i])
            if not (np.array_equal(q, refs[i][0]) and (s, z) == refs[i][1:]):
                bad.append(i)

    run_threads([lambda i=i: body(i) for i in range(THREADS)])
    assert not bad


def test_mixed_precision_update_from_many_threads():
    mp = MixedPrecision()
    run_threads([lambda: [mp.update(False) for _ in range(1000)] for _ in range(THREADS)])
    # 8000 clean steps: four doublings, no step left over, in every serial order.
    assert (mp.loss_scale, mp.steps_since_overflow) == (65536.0 * 16, 0)
