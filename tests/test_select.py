"""dst._select: property tests of the selection primitive and the mask-update rules."""

import math

import keras
import numpy as np
import pytest
from conftest import compiled, numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dst import _select, updaters

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))
scores_of = st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, np.inf, np.nan])


def _salt(seed, step=0, index=0, role=0):
    return int(_select.salt(np, seed, step, index, role))


@settings(max_examples=60, deadline=None)
@given(st.data(), shapes, st.booleans())
def test_select_picks_exactly_k_of_the_best_candidates(data, shape, largest):
    scores = data.draw(arrays(np.float32, shape, elements=scores_of))
    candidates = data.draw(arrays(bool, shape))
    k = data.draw(st.integers(0, int(candidates.sum())))
    seed = data.draw(st.integers(0, 2**32 - 1))
    picked = _select.NUMPY.select(scores, candidates, k, _salt(seed), largest=largest)
    assert picked.shape == shape and int(picked.sum()) == k
    assert not (picked & ~candidates).any()
    # Every picked score is at least as good as every candidate left out
    # (NaN ranks as +inf).
    key = np.where(np.isnan(scores), np.inf, np.abs(scores))
    left = candidates & ~picked
    if k and left.any():
        if largest:
            assert key[picked].min() >= key[left].max()
        else:
            assert key[picked].max() <= key[left].min()
    again = _select.NUMPY.select(scores, candidates, k, _salt(seed), largest=largest)
    assert np.array_equal(picked, again)  # seeded: the same draw


def test_ties_are_broken_by_the_seed_not_by_position():
    candidates = np.ones(1000, dtype=bool)
    picks = [np.flatnonzero(_select.NUMPY.select(None, candidates, 10, _salt(s)))
             for s in range(50)]
    assert len({tuple(p) for p in picks}) == 50
    # Not biased towards low indices: the mean picked index is near the middle.
    assert 400 < np.mean(np.concatenate(picks)) < 600


@settings(max_examples=25, deadline=None)
@given(st.data(), shapes, st.booleans(), st.integers(0, 10_000))
def test_host_and_compiled_selection_are_identical(data, shape, largest, step):
    scores = data.draw(arrays(np.float32, shape, elements=scores_of))
    candidates = data.draw(arrays(bool, shape))
    k = data.draw(st.integers(0, int(candidates.sum())))
    host = _select.NUMPY.select(scores, candidates, k, _salt(3, step, 2, 1), largest=largest)

    def in_graph(s, c, k, step):
        return _select.OPS.select(s, c, k, _select.salt(keras.ops, 3, step, 2, 1),
                                  largest=largest)

    graph = compiled(in_graph)(scores, candidates, np.int32(k), np.int32(step))
    assert np.array_equal(host, keras.ops.convert_to_numpy(graph))


@settings(max_examples=80, deadline=None)
@given(st.data(), shapes, st.sampled_from(["set", "rigl"]), st.floats(0.01, 0.99),
       st.sampled_from(["after_drop", "before_drop"]))
def test_drop_and_grow_keep_the_count(data, shape, name, fraction, rule):
    mask = data.draw(arrays(bool, shape))
    weight = data.draw(arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)))
    grad = data.draw(arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)))
    cls = {"set": updaters.SET, "rigl": updaters.RigL}[name]
    up = cls(drop_fraction=fraction, drop_fraction_schedule="constant", end_step=100, seed=0,
             grow_candidates=rule)
    up.end = 100  # what bind() resolves; no model needed for new_mask
    wanted = int(np.floor(fraction * mask.sum()))
    room = int(mask.sum()) if rule == "after_drop" else int((~mask).sum())
    k = min(wanted, room)
    new = up.new_mask(_select.NUMPY, weight, mask, grad, wanted,
                      lambda role: _salt(0, 0, 0, role))
    dropped, grown = mask & ~new, new & ~mask
    assert new.sum() == mask.sum()
    assert dropped.sum() == grown.sum()
    if rule == "before_drop":
        assert dropped.sum() == k  # disjoint: exactly k move
    else:
        assert dropped.sum() <= k  # some dropped ones may be regrown
    if k:
        # Only the k weakest active connections may leave: every active one
        # stronger than the k-th smallest magnitude stays.
        kth = np.sort(np.abs(weight[mask]))[k - 1]
        assert not (mask & ~new & (np.abs(weight) > kth)).any()
    if name == "rigl" and k:  # grown have the largest |grad| of the candidates left out
        rest = ~mask & ~new
        assert np.abs(grad[grown]).min(initial=np.inf) >= np.abs(grad[rest]).max(initial=-np.inf)


def test_drop_fraction_anchor_and_callable_schedule():
    begin, end = 100, 400
    at_begin = updaters.SET(drop_fraction=0.4, begin_step=begin, end_step=end)
    at_zero = updaters.SET(drop_fraction=0.4, begin_step=begin, end_step=end,
                           drop_fraction_anchor="zero")
    for up in (at_begin, at_zero):
        up.end = end  # what bind() resolves
    assert at_begin.drop_fraction_at(begin) == pytest.approx(0.4)
    # The RigL reference's cosine decay counts from step 0.
    assert at_zero.drop_fraction_at(begin) == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)))
    assert at_zero.drop_fraction_at(end) == at_begin.drop_fraction_at(end) == pytest.approx(0)

    custom = updaters.RigL(drop_fraction_schedule=lambda step: 0.5 if step < 10 else 0.1,
                           end_step=100)
    custom.end, custom.active = 100, [40]
    assert [custom.step_value(s, 0) for s in (0, 9, 10)] == [20, 20, 4]
    bad = updaters.SET(drop_fraction_schedule=lambda step: 1.0, end_step=100)
    bad.end, bad.active = 100, [40]
    with pytest.raises(ValueError, match=r"returned 1.0 at step 3; it must return a fraction"):
        bad.step_value(3, 0)
    with pytest.raises(ValueError, match="grow_candidates"):
        updaters.SET(grow_candidates="disjoint")
    with pytest.raises(ValueError, match="drop_fraction_anchor"):
        updaters.SET(drop_fraction_anchor="start")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), step=st.integers(0, 2**31 - 1),
       index=st.integers(0, 50), role=st.integers(0, 3))
def test_a_seed_read_from_a_tensor_gives_the_host_salt(seed, step, index, role):
    # Compiled steps read the seed from an int32 variable (its low 32 bits).
    ops = keras.ops
    got = _select.salt(ops, ops.convert_to_tensor(_select.as_int32(seed), "int32"),
                       ops.convert_to_tensor(step, "int32"), index, role)
    assert int(np.asarray(numpy(got)).astype(np.int64)) & 0xFFFFFFFF == _salt(seed, step, index,
                                                                             role)
