"""MagnitudePruning: schedules it accepts reach their final sparsity exactly."""

import re

import keras
import numpy as np
import pytest

import dst
from dst.schedules import PolynomialSparsity


def _model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def _fit(model, cb, steps=6):
    x = np.random.default_rng(0).normal(size=(8 * steps, 8)).astype("float32")
    model.fit(x, x[:, :4], batch_size=8, verbose=0, callbacks=[cb])


def _active(model):
    return {path: int(mask.sum()) for path, mask in dst.get_masks(model).items()}


REFUSED = re.escape(
    "`initial_sparsity` must be <= `final_sparsity` for MagnitudePruning, whose updates never "
    "add active connections. Received: initial_sparsity=0.9, final_sparsity=0.5. Pass "
    "initial_sparsity <= 0.5 (0.0 starts dense; equal values keep the sparsity constant) "
    "or raise final_sparsity."
)


@pytest.mark.parametrize("make", [dst.updaters.MagnitudePruning, dst.callbacks.MagnitudePruning],
                         ids=["updater", "callback"])
def test_initial_sparsity_above_final_is_refused(make):
    with pytest.raises(ValueError, match=REFUSED):
        make(0.5, initial_sparsity=0.9)


def test_the_refusal_comes_from_the_constructor_before_the_model_changes():
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=REFUSED):
        _fit(model, dst.callbacks.MagnitudePruning(0.5, initial_sparsity=0.9, update_freq=1))
    with pytest.raises(ValueError, match=REFUSED):
        dst.callbacks.get({"class_name": "magnitude",
                           "config": {"final_sparsity": 0.5, "initial_sparsity": 0.9}})
    assert dst.get_masks(model) == {}
    assert int(model.optimizer.iterations) == 0
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_a_gradual_schedule_reaches_the_exact_final_sparsity():
    model = _model()
    cb = dst.callbacks.MagnitudePruning(0.75, initial_sparsity=0.25, update_freq=2, end_step=5,
                                        seed=0)
    _fit(model, cb)
    sizes = {path: mask.size for path, mask in dst.get_masks(model).items()}
    assert _active(model) == {path: size // 4 for path, size in sizes.items()}
    assert dst.sparsity(model) == 0.75


def test_equal_initial_and_final_sparsity_is_a_constant_schedule():
    up = dst.updaters.MagnitudePruning(0.5, initial_sparsity=0.5, update_freq=1, end_step=4)
    up.bind(_model())
    assert {up.sparsity_schedule(step) for step in range(6)} == {0.5}
    model = _model()
    _fit(model, dst.callbacks.MagnitudePruning(0.5, initial_sparsity=0.5, update_freq=1,
                                               end_step=4, seed=0))
    assert dst.sparsity(model) == 0.5


@pytest.mark.parametrize("begin", [0, 2])
def test_a_schedule_that_begins_and_ends_at_one_step_prunes_to_final_there(begin):
    assert PolynomialSparsity(0.0, 0.8, begin, begin)(begin) == 0.8
    assert PolynomialSparsity(0.2, 0.8, 3, 3)(2) == pytest.approx(0.2)
    model = _model()
    _fit(model, dst.callbacks.MagnitudePruning(0.75, update_freq=1, begin_step=begin,
                                               end_step=begin, seed=0))
    assert dst.sparsity(model) == 0.75


@pytest.mark.parametrize("make", [
    lambda: dst.callbacks.MagnitudePruning(0.5, update_freq=1),
    lambda: dst.callbacks.GraNet(0.5, initial_sparsity=0.5, update_freq=1, seed=0),
], ids=["magnitude", "granet"])
def test_a_model_already_sparser_than_the_target_is_refused(make):
    model = dst.sparsify(_model(), 0.9, "uniform", seed=0)
    masks, weights = dst.get_masks(model), model.get_weights()
    with pytest.raises(ValueError, match=r"is already at sparsity 0\.9\d*, above "
                                         r"final_sparsity=0\.5, and pruning never regrows"):
        _fit(model, make())
    for path, mask in dst.get_masks(model).items():
        np.testing.assert_array_equal(mask, masks[path])
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
