"""Property tests of the mask-update rules on plain numpy arrays."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dst import updaters
from dst.updaters.base import lowest

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(st.data(), shapes, st.booleans())
def test_lowest_picks_exactly_k_of_the_best_candidates(data, shape, largest):
    scores = data.draw(arrays(np.float32, shape, elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0])))
    candidates = data.draw(arrays(bool, shape))
    k = data.draw(st.integers(0, int(candidates.sum())))
    seed = data.draw(st.integers(0, 2**16))
    picked = lowest(scores, candidates, k, np.random.default_rng(seed), largest=largest)
    assert picked.size == k == np.unique(picked).size
    assert candidates.ravel()[picked].all()
    # Every picked score is at least as good as every candidate left out.
    left = np.setdiff1d(np.flatnonzero(candidates), picked)
    if k and left.size:
        sign = -1 if largest else 1
        assert (sign * scores.ravel()[picked]).max() <= (sign * scores.ravel()[left]).min()
    again = lowest(scores, candidates, k, np.random.default_rng(seed), largest=largest)
    assert np.array_equal(picked, again)  # seeded: the same draw


@settings(max_examples=60, deadline=None)
@given(st.data(), shapes, st.sampled_from(["set", "rigl"]), st.floats(0.01, 0.99))
def test_drop_and_grow_keep_the_count_and_are_disjoint(data, shape, name, fraction):
    mask = data.draw(arrays(bool, shape))
    weight = data.draw(arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)))
    grad = data.draw(arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)))
    cls = {"set": updaters.SET, "rigl": updaters.RigL}[name]
    up = cls(drop_fraction=fraction, drop_fraction_schedule="constant", end_step=100, seed=0)
    up.end = 100  # what bind() resolves; no model needed for new_mask
    new = up.new_mask(weight, mask, grad, 0, 0, np.random.default_rng(0))
    k = min(int(np.floor(fraction * mask.sum())), int((~mask).sum()))
    dropped, grown = mask & ~new, new & ~mask
    assert new.sum() == mask.sum()
    assert dropped.sum() == grown.sum() == k
    if k:  # dropped are the smallest magnitudes among the active
        assert np.abs(weight[dropped]).max() <= np.abs(weight[mask & new]).min(initial=np.inf)
    if name == "rigl" and k:  # grown have the largest |grad| among the inactive
        rest = ~mask & ~new
        assert np.abs(grad[grown]).min() >= np.abs(grad[rest]).max(initial=-np.inf)
