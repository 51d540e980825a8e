"""ER / ERK / uniform densities, by hand and as properties over random shapes."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dst import distributions

SMALL = {"a": (4, 6), "b": (6, 2)}  # ERK raw 10/24 and 8/12
SATURATING = {"conv": (3, 3, 2, 4), "fc": (8, 2)}  # ERK raw 12/72 and 10/16


def test_erk_by_hand_without_saturation():
    # N = 36, budget 18; eps = 18 / (10/24 * 24 + 8/12 * 12) = 1.
    d = distributions.erk(SMALL, 0.5)
    assert d == pytest.approx({"a": 10 / 24, "b": 8 / 12})
    assert distributions.active_counts(SMALL, d) == {"a": 10, "b": 8}


def test_erk_by_hand_with_a_layer_saturating_to_dense():
    # N = 88, budget 44; eps = 44 / (12 + 10) = 2 gives fc 1.25 > 1, so fc is
    # dense and conv gets the 44 - 16 = 28 weights left: 28 / 72.
    d = distributions.erk(SATURATING, 0.5)
    assert d == pytest.approx({"conv": 28 / 72, "fc": 1.0})
    assert d["fc"] == 1.0
    assert distributions.active_counts(SATURATING, d) == {"conv": 28, "fc": 16}


def test_er_by_hand_uses_last_two_dims():
    # ER raw: conv (2 + 4) / 8 = 0.75, fc 10 / 16; eps = 44 / (54 + 10).
    d = distributions.er(SATURATING, 0.5)
    eps = 44 / 64
    assert d == pytest.approx({"conv": 0.75 * eps, "fc": 0.625 * eps})
    assert distributions.active_counts(SATURATING, d) == {"conv": 37, "fc": 7}


def test_er_by_hand_with_saturation():
    d = distributions.er({"a": (10, 10), "b": (10, 2)}, 0.5)
    assert d == pytest.approx({"a": 0.4, "b": 1.0})


def test_erk_saturates_one_round_at_a_time():
    # Round 1: eps = 5035 / 227 makes b (raw 0.6) dense; round 2: eps = 5015 /
    # 215 makes c (raw 0.3) dense; round 3: a gets 4965 / 10000.
    shapes = {"a": (100, 100), "b": (10, 2), "c": (10, 5)}
    d = distributions.erk(shapes, 0.5)
    assert d == pytest.approx({"a": 0.4965, "b": 1.0, "c": 1.0})
    assert distributions.active_counts(shapes, d) == {"a": 4965, "b": 20, "c": 50}


def test_erk_power_scale_zero_is_uniform():
    assert distributions.erk(SATURATING, 0.7, power_scale=0.0) == pytest.approx(
        {"conv": 0.3, "fc": 0.3})
    assert distributions.get("erk", erk_power_scale=0.0)(SATURATING, 0.7) == pytest.approx(
        {"conv": 0.3, "fc": 0.3})


def test_uniform_and_sparsity_zero():
    assert distributions.uniform(SATURATING, 0.25) == {"conv": 0.75, "fc": 0.75}
    assert distributions.erk(SATURATING, 0.0) == {"conv": 1.0, "fc": 1.0}
    assert distributions.er(SATURATING, 0.0) == {"conv": 1.0, "fc": 1.0}


def test_active_counts_round_and_keep_at_least_one():
    shapes = {"a": (10, 10), "b": (2, 2)}
    assert distributions.active_counts(shapes, {"a": 0.123, "b": 0.01}) == {"a": 12, "b": 1}
    assert distributions.active_counts(shapes, {"a": 1.0, "b": 1.0}) == {"a": 100, "b": 4}


def test_get_by_name_callable_and_unknown():
    assert distributions.get("uniform") is distributions.uniform
    assert distributions.get("ER") is distributions.er
    fn = lambda shapes, s: dict.fromkeys(shapes, 1.0)  # noqa: E731
    assert distributions.get(fn) is fn
    with pytest.raises(ValueError, match=r"distribution='erx'.*\['er', 'erk', 'uniform'\]"):
        distributions.get("erx")
    with pytest.raises(ValueError, match="distribution=3"):
        distributions.get(3)


shapes_st = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=3),
    st.lists(st.integers(1, 12), min_size=2, max_size=4).map(tuple),
    min_size=1, max_size=6,
)
sparsity_st = st.floats(0.0, 0.99)


@settings(max_examples=30, deadline=None)
@given(shapes=shapes_st, sparsity=sparsity_st, name=st.sampled_from(["uniform", "er", "erk"]))
def test_solver_meets_the_target_and_stays_in_range(shapes, sparsity, name):
    d = distributions.get(name)(shapes, sparsity)
    assert set(d) == set(shapes)
    sizes = {p: math.prod(s) for p, s in shapes.items()}
    total = sum(sizes.values())
    assert all(0.0 < v <= 1.0 for v in d.values()), d
    # Before rounding, the overall density is exactly the target.
    assert sum(d[p] * sizes[p] for p in shapes) == pytest.approx((1 - sparsity) * total)
    # After rounding: within half a weight per weight, plus one per weight
    # that the at-least-one rule clipped up.
    counts = distributions.active_counts(shapes, d)
    clipped = sum(1 for p in shapes if round(d[p] * sizes[p]) < 1)
    assert all(1 <= counts[p] <= sizes[p] for p in shapes)
    achieved = sum(counts.values())
    assert abs(achieved - (1 - sparsity) * total) <= len(shapes) / 2 + clipped


@settings(max_examples=30, deadline=None)
@given(shapes=shapes_st, sparsity=sparsity_st, power=st.floats(0.0, 2.0))
def test_erk_dense_weights_are_those_with_the_largest_raw_density(shapes, sparsity, power):
    d = distributions.erk(shapes, sparsity, power_scale=power)
    raw = {p: (sum(s) / math.prod(s)) ** power for p, s in shapes.items()}
    free = [p for p in shapes if d[p] < 1.0]
    dense = [p for p in shapes if d[p] == 1.0]
    if free and dense:
        assert min(raw[p] for p in dense) >= max(raw[p] for p in free)
    # Non-dense weights share one scale: density / raw is constant.
    ratios = [d[p] / raw[p] for p in free]
    if ratios:
        assert ratios == pytest.approx([ratios[0]] * len(ratios))
