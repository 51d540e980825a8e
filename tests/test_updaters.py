"""Property tests of the selection primitive and the mask-update rules."""

import keras
import numpy as np
from conftest import compiled
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


@settings(max_examples=60, deadline=None)
@given(st.data(), shapes, st.sampled_from(["set", "rigl"]), st.floats(0.01, 0.99))
def test_drop_and_grow_keep_the_count_and_are_disjoint(data, shape, name, fraction):
    mask = data.draw(arrays(bool, shape))
    weight = data.draw(arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)))
    grad = data.draw(arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)))
    cls = {"set": updaters.SET, "rigl": updaters.RigL}[name]
    up = cls(drop_fraction=fraction, drop_fraction_schedule="constant", end_step=100, seed=0)
    up.end = 100  # what bind() resolves; no model needed for new_mask
    k = min(int(np.floor(fraction * mask.sum())), int((~mask).sum()))
    new = up.new_mask(_select.NUMPY, weight, mask, grad, k,
                      lambda role: _salt(0, 0, 0, role))
    dropped, grown = mask & ~new, new & ~mask
    assert new.sum() == mask.sum()
    assert dropped.sum() == grown.sum() == k
    if k:  # dropped are the smallest magnitudes among the active
        assert np.abs(weight[dropped]).max() <= np.abs(weight[mask & new]).min(initial=np.inf)
    if name == "rigl" and k:  # grown have the largest |grad| among the inactive
        rest = ~mask & ~new
        assert np.abs(grad[grown]).min() >= np.abs(grad[rest]).max(initial=-np.inf)
