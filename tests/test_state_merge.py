"""QuantObserver.merge (bit-exact against one observer over the whole sequence) and the
state_dict / from_state / load_state_dict round trips of QuantObserver and FakeQuantize."""

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qatcore import FakeQuantConfig, FakeQuantize, ObserverMethod, QuantObserver

METHODS = list(ObserverMethod)


def f32_bits(values):
    return np.array(values, dtype=np.float32).view(np.uint32).tolist()


def snapshot(obs):
    """Everything that defines an observer, bit for bit."""
    lo, hi = obs.range()
    return (obs.method, obs.count, f32_bits([lo, hi]) if obs.count else None,
            f32_bits(list(obs._history)), obs.state_dict())


def qparams_bits(obs, config):
    return f32_bits(obs.compute_qparams(config))


# --- merge: property tests -----------------------------------------------------------
finite32 = st.floats(min_value=-2.0**100, max_value=2.0**100, width=32, allow_nan=False)
batch = st.lists(finite32, min_size=0, max_size=40).map(lambda v: np.array(v, dtype=np.float32))
batches = st.lists(batch, min_size=0, max_size=12)


def observe_all(method, seq):
    obs = QuantObserver(method)
    for x in seq:
        obs.observe(x)
    return obs


def cut(seq, points):
    points = sorted(set(p % (len(seq) + 1) for p in points))
    bounds = [0] + points + [len(seq)]
    return [seq[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
@settings(max_examples=60, deadline=None)
@given(seq=batches, points=st.lists(st.integers(0, 12), max_size=5), tree=st.randoms(use_true_random=False))
def test_merge_of_parts_equals_one_observer(method, seq, points, tree):
    whole = observe_all(method, seq)
    parts = [observe_all(method, p) for p in cut(seq, points)]

    left = copy.copy(parts[0])          # a left fold, in batch order
    for p in parts[1:]:
        assert left.merge(copy.copy(p)) is left
    assert snapshot(left) == snapshot(whole)

    # Any grouping (a random tree over the parts, in order) gives the same bits.
    nodes = [copy.copy(p) for p in parts]
    while len(nodes) > 1:
        i = tree.randrange(len(nodes) - 1)
        nodes[i].merge(nodes.pop(i + 1))
    assert snapshot(nodes[0]) == snapshot(whole)
    for cfg in (FakeQuantConfig(bits=8), FakeQuantConfig(bits=4, symmetric=False)):
        assert qparams_bits(nodes[0], cfg) == qparams_bits(whole, cfg)


@pytest.mark.parametrize("method", [m for m in METHODS if m is not ObserverMethod.MOVING_AVERAGE],
                         ids=lambda m: m.value)
@settings(max_examples=40, deadline=None)
@given(seq=batches, points=st.lists(st.integers(0, 12), max_size=4), order=st.randoms(use_true_random=False))
def test_merge_in_any_order_gives_the_same_range(method, seq, points, order):
    whole = observe_all(method, seq)
    parts = [observe_all(method, p) for p in cut(seq, points)]
    order.shuffle(parts)
    acc = QuantObserver(method)
    for p in parts:
        acc.merge(p)
    assert acc.count == whole.count
    assert acc.range() == whole.range()              # == : only a zero's sign may differ
    for cfg in (FakeQuantConfig(bits=8), FakeQuantConfig(bits=3, symmetric=False)):
        assert qparams_bits(acc, cfg) == qparams_bits(whole, cfg)


def test_moving_average_merge_replays_in_order(rng):
    seq = [rng.normal(size=100).astype(np.float32) * (1 + i) for i in range(30)]
    whole = observe_all("moving_average", seq)
    a, b = observe_all("moving_average", seq[:17]), observe_all("moving_average", seq[17:])
    ab = copy.copy(a).merge(b)
    assert snapshot(ab) == snapshot(whole)
    ba = copy.copy(b).merge(a)          # the other order is another sequence of batches
    assert snapshot(ba) == snapshot(observe_all("moving_average", seq[17:] + seq[:17]))
    assert ba.range() != whole.range()


def test_merge_continues_exactly(rng):
    """After a merge the observer keeps observing as if it had seen everything."""
    seq = [rng.normal(size=50).astype(np.float32) for _ in range(10)]
    for method in METHODS:
        a = observe_all(method, seq[:4]).merge(observe_all(method, seq[4:7]))
        for x in seq[7:]:
            a.observe(x)
        assert snapshot(a) == snapshot(observe_all(method, seq))


def test_merge_edge_cases(rng):
    x = rng.normal(size=10).astype(np.float32)
    a = observe_all("moving_average", [x])
    before = snapshot(a)
    a.merge(QuantObserver("moving_average"))          # empty: no-op
    assert snapshot(a) == before
    a.merge(a)                                        # itself: its batches twice
    assert snapshot(a) == snapshot(observe_all("moving_average", [x, x]))
    with pytest.raises(ValueError, match="cannot merge a min_max observer into a moving_average"):
        a.merge(QuantObserver("min_max"))
    with pytest.raises(TypeError, match="QuantObserver"):
        a.merge({"method": "moving_average"})
    assert snapshot(a) == snapshot(observe_all("moving_average", [x, x]))


def test_copy_does_not_share_the_history(rng):
    a = observe_all("moving_average", [rng.normal(size=5)])
    b = copy.copy(a)
    b.observe(rng.normal(size=5))
    assert a.count == 1 and len(a._history) == 2 and len(b._history) == 4


# --- state_dict round trips --------------------------------------------------------
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
@settings(max_examples=30, deadline=None)
@given(seq=batches, more=batches)
def test_observer_state_round_trips_through_json(method, seq, more):
    obs = observe_all(method, seq)
    text = json.dumps(obs.state_dict(), allow_nan=False)
    back = QuantObserver.from_state(json.loads(text))
    assert snapshot(back) == snapshot(obs)
    other = QuantObserver(method)
    other.load_state_dict(json.loads(text))
    assert snapshot(other) == snapshot(obs)
    for x in more:                      # the loaded observer continues exactly
        obs.observe(x)
        back.observe(x)
    assert snapshot(back) == snapshot(obs)


def test_observer_state_keeps_negative_zero():
    obs = QuantObserver()
    obs.observe(np.array([-0.0, -0.0], dtype=np.float32))
    back = QuantObserver.from_state(json.loads(json.dumps(obs.state_dict())))
    assert f32_bits(back.range()) == f32_bits(obs.range()) == [0x80000000] * 2


def _trained(config, rng, calibrate=True, freeze=True):
    fq = FakeQuantize(config)
    if calibrate:
        for _ in range(3):
            fq.fake_quantize(rng.normal(size=(4, 25)).astype(np.float32))
    if freeze:
        fq.disable_calibration()
    return fq


FQ_CONFIGS = [FakeQuantConfig(), FakeQuantConfig(bits=4, symmetric=False, observer="moving_average"),
              FakeQuantConfig(observer="percentile").with_learnable(),
              FakeQuantConfig(bits=6, symmetric=False, observer="mean_std").with_learnable()]


@pytest.mark.parametrize("config", FQ_CONFIGS, ids=repr)
@pytest.mark.parametrize("phase", ["fresh", "calibrating", "frozen"])
def test_fake_quantize_state_round_trips(config, phase, rng):
    fq = _trained(config, rng, calibrate=phase != "fresh", freeze=phase == "frozen")
    if config.learnable and phase == "frozen":
        fq.parameters()[0][0] *= np.float32(1.5)       # a learned step
    state = json.loads(json.dumps(fq.state_dict(), allow_nan=False))
    back = FakeQuantize.from_state(state)
    assert back.state_dict() == fq.state_dict()
    assert (back.config, back.calibrating) == (fq.config, fq.calibrating)
    assert f32_bits([back.scale, back.zero_point]) == f32_bits([fq.scale, fq.zero_point])
    x = rng.normal(size=(3, 40)).astype(np.float32) * 2
    assert np.array_equal(back.fake_quantize(x).view(np.uint32), fq.fake_quantize(x).view(np.uint32))
    assert back.state_dict() == fq.state_dict()


def test_fake_quantize_load_updates_parameters_in_place(rng):
    cfg = FakeQuantConfig(symmetric=False).with_learnable()
    src, dst = _trained(cfg, rng), FakeQuantize(cfg)
    params = dst.parameters()
    dst.load_state_dict(src.state_dict())
    assert params[0][0] == np.float32(src.scale) and params[1][0] == np.float32(src.zero_point)
    assert dst.parameters()[0] is params[0]


# --- rejected states ---------------------------------------------------------------
def _ma_state(rng):
    return observe_all("moving_average", [rng.normal(size=8) for _ in range(3)]).state_dict()


BAD_OBSERVER = [
    ("format", lambda s: s.update(format="qatcore-observer/0")),
    ("method", lambda s: s.update(method="median")),
    ("method", lambda s: s.update(method=3)),
    ("count", lambda s: s.update(count=-1)),
    ("count", lambda s: s.update(count=2.0)),
    ("count", lambda s: s.update(count=True)),
    ("range", lambda s: s.update(range=None)),
    ("range", lambda s: s.update(range=[1.0])),
    ("range", lambda s: s.update(range=[float("nan"), 1.0])),
    ("range", lambda s: s.update(range=[-float("inf"), 1.0])),
    ("range", lambda s: s.update(range=[0.1, 1.0])),          # 0.1 is not a float32 value
    ("range", lambda s: s.update(range=[2.0, 1.0])),
    ("range", lambda s: s.update(range=["0", 1.0])),
    ("range", lambda s: s.update(range=[1e39, 1e40])),
    ("batch_ranges", lambda s: s["batch_ranges"].pop()),
    ("batch_ranges", lambda s: s.update(batch_ranges="x")),
    ("batch_ranges", lambda s: s["batch_ranges"].__setitem__(0, [1.0, -1.0])),
    ("batch_ranges", lambda s: s["batch_ranges"].__setitem__(0, [1.0])),
    ("range", lambda s: s["batch_ranges"].__setitem__(1, [-5.0, 5.0])),   # inconsistent
    ("range", lambda s: s.update(range=[float(np.nextafter(np.float32(s["range"][0]), np.float32(0))),
                                        s["range"][1]])),
    ("unknown", lambda s: s.update(extra=1)),
    ("missing", lambda s: s.pop("count")),
    ("missing", lambda s: s.pop("batch_ranges")),
]


@pytest.mark.parametrize("what,mutate", BAD_OBSERVER, ids=[f"{w}-{i}" for i, (w, _) in enumerate(BAD_OBSERVER)])
def test_bad_observer_state_is_rejected_and_changes_nothing(what, mutate, rng):
    state = _ma_state(rng)
    mutate(state)
    with pytest.raises(ValueError, match="bad state"):
        QuantObserver.from_state(state)
    target = observe_all("moving_average", [rng.normal(size=4)])
    before = snapshot(target)
    with pytest.raises(ValueError, match="bad state"):
        target.load_state_dict(state)
    assert snapshot(target) == before


def test_observer_state_other_rejections(rng):
    mm = observe_all("min_max", [rng.normal(size=4)]).state_dict()
    with pytest.raises(ValueError, match="batch_ranges belongs to moving_average"):
        QuantObserver.from_state(dict(mm, batch_ranges=[]))
    with pytest.raises(ValueError, match="must be null when count is 0"):
        QuantObserver.from_state(dict(mm, count=0))
    with pytest.raises(ValueError, match="the state is for min_max, this observer uses percentile"):
        QuantObserver("percentile").load_state_dict(mm)
    with pytest.raises(TypeError, match="must be a dict"):
        QuantObserver.from_state([("method", "min_max")])


def _fq_state(rng, config=FakeQuantConfig(bits=8, symmetric=False)):
    return _trained(config, rng).state_dict()


BAD_FQ = [
    ("format", lambda s: s.update(format="x")),
    ("config", lambda s: s["config"].update(bits=17)),
    ("config", lambda s: s["config"].update(bits="8")),
    ("config", lambda s: s["config"].update(symmetric=1)),
    ("config", lambda s: s["config"].pop("learnable")),
    ("config", lambda s: s.update(config=None)),
    ("calibrating", lambda s: s.update(calibrating="no")),
    ("scale", lambda s: s.update(scale=0.0)),
    ("scale", lambda s: s.update(scale=-1.0)),
    ("scale", lambda s: s.update(scale=float("nan"))),
    ("scale", lambda s: s.update(scale=s["scale"] * 1.0000001)),   # not float32 / not qparams
    ("scale", lambda s: s.update(scale=float(np.float32(s["scale"]) * np.float32(2)))),
    ("zero_point", lambda s: s.update(zero_point=float("inf"))),
    ("ste", lambda s: s.update(ste="sigmoid")),
    ("observer", lambda s: s["observer"].update(method="percentile")),
    ("observer", lambda s: s["observer"].update(count=-3)),
    ("observer", lambda s: s.update(observer=None)),
    ("unknown", lambda s: s.update(mask=[1, 0])),
]


@pytest.mark.parametrize("what,mutate", BAD_FQ, ids=[f"{w}-{i}" for i, (w, _) in enumerate(BAD_FQ)])
def test_bad_fake_quantize_state_is_rejected_and_changes_nothing(what, mutate, rng):
    state = _fq_state(rng)
    mutate(state)
    with pytest.raises((ValueError, TypeError)):
        FakeQuantize.from_state(state)
    target = _trained(FakeQuantConfig(bits=8, symmetric=False), rng, freeze=False)
    before = target.state_dict()
    with pytest.raises((ValueError, TypeError)):
        target.load_state_dict(state)
    assert target.state_dict() == before


def test_fake_quantize_symmetric_zero_point_and_config_mismatch(rng):
    state = _fq_state(rng, FakeQuantConfig().with_learnable())
    with pytest.raises(ValueError, match="must be 0 for a symmetric config"):
        FakeQuantize.from_state(dict(state, zero_point=1.0))
    with pytest.raises(ValueError, match="differs from this FakeQuantize"):
        FakeQuantize(FakeQuantConfig()).load_state_dict(state)
    assert math.isfinite(FakeQuantize.from_state(state).scale)
