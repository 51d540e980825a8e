"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration."""

import math
import re

import keras
import numpy as np
import pytest
from conftest import compiled

import dst
from dst import _select, updaters
from dst.schedules import PolynomialSparsity


def _salt(role, step=0, index=0):
    return int(_select.salt(np, 0, step, index, role))


def _model(seed=0):
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(30),
                              keras.layers.Dense(5)])
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def test_the_rule_prunes_to_the_target_then_regrows_the_top_gradients():
    rng = np.random.default_rng(0)
    shape = (12, 10)
    weight = rng.permutation(np.arange(1, 121, dtype=np.float32)).reshape(shape)
    grad = rng.permutation(np.arange(1, 121, dtype=np.float32)).reshape(shape)
    mask = rng.random(shape) < 0.6
    up = updaters.GraNet(0.9, initial_sparsity=0.4, end_step=100, seed=0)
    keep, k = 30, 9
    new = up.new_mask(_select.NUMPY, weight, mask, grad, (keep, k), _salt)
    assert new.sum() == keep
    # Drop: the (active - keep + k) smallest magnitudes of the active ones.
    n_drop = int(mask.sum()) - keep + k
    dropped = mask & (np.abs(weight) <= np.sort(np.abs(weight[mask]))[n_drop - 1])
    kept = mask & ~dropped
    assert int(kept.sum()) == keep - k
    assert not (kept & ~new).any()  # every kept one stays
    # Grow: the k largest |grad| among all connections inactive after the drop.
    grown = new & ~kept
    assert grown.sum() == k
    assert np.abs(grad[grown]).min() > np.abs(grad[~kept & ~new]).max()


def test_counts_follow_the_polynomial_schedule_and_regrowth_decays_by_cosine():
    model = _model()
    up = updaters.GraNet(0.9, initial_sparsity=0.5, begin_step=0, end_step=40, update_freq=10,
                         regrowth_fraction=0.5, seed=0)
    up.bind(model)
    # A dense model is sparsified to initial_sparsity at bind.
    sizes = [t.variable.shape for t in up.targets]
    total = sum(math.prod(s) for s in sizes)
    assert sum(int(np.asarray(t.constraint.mask).sum()) for t in up.targets) == total // 2
    poly = PolynomialSparsity(0.5, 0.9, 0, 40, 3)
    for step in (0, 10, 20, 30, 40):
        counts = [up.step_value(step, i) for i in range(len(up.targets))]
        keeps = [c[0] for c in counts]
        assert keeps == [round(math.prod(s) * (1 - poly(step))) for s in sizes]
        r = 0.25 * (1 + math.cos(math.pi * step / 40))
        assert [c[1] for c in counts] == [math.floor(r * keep) for keep in keeps]
    assert up.step_value(40, 0)[1] == 0  # no regrowth at end_step


def test_fit_reaches_the_schedule_with_zeroed_regrown_weights_and_fresh_slots():
    model = _model()
    x = np.random.default_rng(1).normal(size=(64, 20)).astype("float32")
    y = np.random.default_rng(2).normal(size=(64, 5)).astype("float32")
    cb = dst.callbacks.GraNet(0.9, initial_sparsity=0.5, end_step=15, update_freq=5,
                              regrowth_fraction=0.5, seed=0)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(dst.get_masks(self.model))

    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[cb, Record()])
    up = cb.updater
    for step, masks in enumerate(seen):
        if up.is_update_step(step):
            for i, t in enumerate(up.targets):
                assert int(masks[t.path].sum()) == up.step_value(step, i)[0]
    assert dst.sparsity(model) == pytest.approx(0.9, abs=1e-3)
    for t in up.targets:  # masked weights are exactly zero
        assert not np.asarray(t.variable)[~np.asarray(t.constraint.mask)].any()


def test_regrown_connections_start_at_zero_with_reset_slots():
    model = _model()
    opt = model.optimizer
    up = updaters.GraNet(0.8, initial_sparsity=0.5, end_step=10, update_freq=10,
                         regrowth_fraction=0.5, seed=0)
    up.bind(model, optimizer=opt)
    variables = model.trainable_variables
    opt.apply([keras.ops.ones(v.shape) for v in variables], variables)  # builds the slots
    old = [np.asarray(t.constraint.mask).copy() for t in up.targets]
    rng = np.random.default_rng(3)
    grads = {t.path: rng.normal(size=t.variable.shape).astype("float32") for t in up.targets}
    assert up.update(0, grads)
    for t, before in zip(up.targets, old):
        mask = np.asarray(t.constraint.mask)
        grown = mask & ~before
        assert grown.any()
        assert not np.asarray(t.variable)[grown].any()
        for slot in opt.variables:
            if tuple(slot.shape) == tuple(t.variable.shape) and slot.path != t.variable.path:
                assert not np.asarray(slot)[grown].any(), slot.path


@pytest.mark.parametrize("step", [0, 10, 20])
def test_host_and_compiled_rule_give_the_same_mask(step):
    rng = np.random.default_rng(step)
    shape = (16, 9)
    weight = rng.normal(size=shape).astype("float32")
    grad = rng.normal(size=shape).astype("float32")
    mask = rng.random(shape) < 0.5
    up = updaters.GraNet(0.9, initial_sparsity=0.5, end_step=30, update_freq=10, seed=0)
    value = (40, 11)
    host = up.new_mask(_select.NUMPY, weight, mask, grad, value,
                       lambda role: _salt(role, step))

    def in_graph(w, m, g, v, s):
        return up.new_mask(_select.OPS, w, m, g, v,
                           lambda role: _select.salt(keras.ops, 0, s, 0, role))

    graph = compiled(in_graph)(weight, mask, grad, np.array(value, "int32"), np.int32(step))
    np.testing.assert_array_equal(host, keras.ops.convert_to_numpy(graph))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="regrowth_fraction"):
        updaters.GraNet(0.9, regrowth_fraction=1.0)
    with pytest.raises(ValueError, match="initial_sparsity"):
        updaters.GraNet(0.5, initial_sparsity=0.8)


def test_a_start_sparser_than_the_target_is_refused_since_regrowth_only_replaces():
    # Each update prunes to the schedule's count, then regrows exactly as many as it
    # drops: the default sparse start (0.5) can't come down to 0.3.
    text = re.escape(
        "`initial_sparsity` must be <= `final_sparsity` for GraNet, whose updates never add "
        "active connections. Received: initial_sparsity=0.5, final_sparsity=0.3. Pass "
        "initial_sparsity <= 0.3 (0.0 starts dense; equal values keep the sparsity constant) "
        "or raise final_sparsity."
    )
    with pytest.raises(ValueError, match=text):
        updaters.GraNet(0.3)
    with pytest.raises(ValueError, match=text):
        dst.callbacks.GraNet(0.3, seed=0)
    model = _model()
    up = updaters.GraNet(0.5, initial_sparsity=0.5, update_freq=1, end_step=4, seed=0)
    up.bind(model)
    assert {up.sparsity_schedule(step) for step in range(6)} == {0.5}
    assert dst.sparsity(model) == 0.5
