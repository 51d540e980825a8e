"""SRigL: RigL with constant fan-in and neuron ablation."""

import keras
import numpy as np
import pytest
from conftest import compiled

import dst
from dst import _select, updaters
from dst.updaters.srigl import constant_fan_in


def _salt(role, step=0):
    return int(_select.salt(np, 0, step, 0, role))


def _case(seed, fan_max=12, units=8, fan=5):
    rng = np.random.default_rng(seed)
    shape = (fan_max, units)
    weight = rng.permutation(np.arange(1, fan_max * units + 1, dtype=np.float32)).reshape(shape)
    grad = rng.permutation(np.arange(1, fan_max * units + 1, dtype=np.float32)).reshape(shape)
    mask = constant_fan_in(rng.random(shape) < fan / fan_max, 7)
    return weight * rng.choice([-1, 1], size=shape), grad, mask


def _up(gamma_sal=0.3):
    up = updaters.SRigL(drop_fraction=0.4, drop_fraction_schedule="constant", end_step=100,
                        gamma_sal=gamma_sal, seed=0)
    up.end = 100
    return up


def test_select_columns_picks_exactly_k_per_column_host_and_compiled_alike():
    rng = np.random.default_rng(0)
    scores = rng.choice([0.0, 1.0, 2.0, np.nan], size=(9, 6)).astype(np.float32)
    candidates = rng.random((9, 6)) < 0.7
    k = np.array([0, 1, 3, 9, 2, 5], dtype=np.int32)
    host = _select.NUMPY.select_columns(scores, candidates, k, _salt(1), largest=True)
    assert host.sum(axis=0).tolist() == np.minimum(k, candidates.sum(axis=0)).tolist()
    assert not (host & ~candidates).any()
    key = np.where(np.isnan(scores), np.inf, scores)  # NaN ranks as +inf, as in select
    for j in range(6):
        left = candidates[:, j] & ~host[:, j]
        if host[:, j].any() and left.any():
            assert key[host[:, j], j].min() >= key[left, j].max()

    def in_graph(s, c, k):
        return _select.OPS.select_columns(s, c, k, _salt(1), largest=True)

    graph = compiled(in_graph)(scores, candidates, k)
    np.testing.assert_array_equal(host, keras.ops.convert_to_numpy(graph))


@pytest.mark.parametrize("seed", range(6))
def test_every_unit_keeps_the_same_fan_in_and_grows_its_top_gradients(seed):
    weight, grad, mask = _case(seed)
    fans = mask.sum(axis=0)
    assert (fans == fans[0]).all()
    up = _up(gamma_sal=0.0)  # no ablation
    new = up.new_mask(_select.NUMPY, weight, mask, grad, up.step_value(0, 0), _salt)
    assert up.expected_active(0, mask, 0) == mask.sum()
    np.testing.assert_array_equal(new.sum(axis=0), fans)
    # The layer drops its K = floor(0.4 n) smallest magnitudes (unique here) ...
    k = int(np.floor(0.4 * mask.sum()))
    kth = np.sort(np.abs(weight[mask]))[k - 1]
    kept = mask & (np.abs(weight) > kth)
    assert not (kept & ~new).any()
    # ... and each unit regrows the largest |grad| among its inactive inputs.
    for j in range(mask.shape[1]):
        grown, rest = new[:, j] & ~kept[:, j], ~new[:, j]
        if grown.any():
            assert grad[grown, j].min() > grad[rest, j].max()


def _crafted():
    weight, grad, mask = _case(0)
    weight[:, 3] *= 1e-6  # unit 3: tiny weights and tiny gradients
    grad[:, 3] *= 1e-6
    return weight, grad, mask


def test_a_unit_with_tiny_weights_and_gradients_is_ablated_and_its_budget_redistributed():
    weight, grad, mask = _crafted()
    up = _up()
    value = up.step_value(0, 0)
    new = up.new_mask(_select.NUMPY, weight, mask, grad, value, _salt)
    fans = new.sum(axis=0)
    assert fans[3] == 0
    alive = fans[fans > 0]
    assert alive.size == 7 and (alive == alive[0]).all()
    assert alive[0] == mask.sum() // 7  # the SRigL code's floor(n / units)
    assert up.expected_active(0, mask, 0) == new.sum() == 7 * (mask.sum() // 7)
    # Without the tiny unit, nothing is ablated.
    weight, grad, mask = _case(0)
    new = up.new_mask(_select.NUMPY, weight, mask, grad, value, _salt)
    np.testing.assert_array_equal(new.sum(axis=0), mask.sum(axis=0))


@pytest.mark.parametrize("tiny", [False, True])
def test_host_and_compiled_rule_give_the_same_mask(tiny):
    weight, grad, mask = _crafted() if tiny else _case(1)
    up = _up()
    value = up.step_value(0, 0)
    host = up.new_mask(_select.NUMPY, weight, mask, grad, value, lambda role: _salt(role, 5))

    def in_graph(w, m, g, v, s):
        return up.new_mask(_select.OPS, w, m, g, v,
                           lambda role: _select.salt(keras.ops, 0, s, 0, role))

    graph = compiled(in_graph)(weight, mask, grad, np.int32(value), np.int32(5))
    np.testing.assert_array_equal(host, keras.ops.convert_to_numpy(graph))


def test_fit_keeps_constant_fan_in_on_dense_and_conv_kernels():
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3),
                              keras.layers.Flatten(), keras.layers.Dense(5)])
    dst.sparsify(model, 0.7, "erk", seed=0)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6, 6, 2)).astype("float32"), rng.normal(size=(32, 5))
    cb = dst.callbacks.SRigL(update_freq=2, drop_fraction=0.5, end_step=20, gamma_sal=0.0,
                             seed=0)  # no ablation: the count is exactly constant
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(dst.get_masks(self.model))

    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[cb, Record()])
    first = seen[0]
    assert any(not np.array_equal(first[p], seen[-1][p]) for p in first)
    for masks in seen:
        for path, mask in masks.items():
            fans = mask.reshape(-1, mask.shape[-1]).sum(axis=0)
            fans = fans[fans > 0]
            assert (fans == fans[0]).all(), path
            assert mask.sum() == first[path].sum()


def test_bind_keeps_a_mask_whose_active_units_share_one_fan_in():
    # A run resumed, or continued by a second `fit`, binds again: units that
    # SRigL ablated stay ablated, and the count stays (before the fix, bind
    # spread the 9 connections as 2 per unit over all 4 units).
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    dst.sparsify(model, 0.5, "uniform", seed=0)
    path = model.layers[0].kernel.path
    mask = np.zeros((6, 4), bool)
    mask[:3, 0] = mask[2:5, 2] = mask[[0, 3, 5], 3] = True  # unit 1 ablated
    dst.set_masks(model, {path: mask})
    model.compile("sgd", "mse")
    dst.updaters.SRigL(end_step=10, seed=0).bind(model)
    np.testing.assert_array_equal(dst.get_masks(model)[path], mask)
    np.testing.assert_array_equal(constant_fan_in(mask, 7), mask)
    uneven = mask.copy()
    uneven[5, 0] = True  # fan-ins 4, 0, 3, 3: made constant, every unit again
    assert constant_fan_in(uneven, 7).sum(axis=0).tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("alive", [8, 5])
def test_the_drop_count_is_of_the_connections_active_at_the_update(alive):
    # After an ablation a weight has fewer connections: K = floor(f · n) of
    # those, as the SRigL code counts, not of the count at `bind` (when `fit`
    # began), which made K larger than RigL's and a resumed run differ.
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8)])
    dst.sparsify(model, 7 / 12, "uniform", seed=0)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    up = updaters.SRigL(update_freq=1, drop_fraction=0.4, drop_fraction_schedule="constant",
                        end_step=10, gamma_sal=0.0, seed=0)
    up.bind(model)  # fan-in 5 on each of the 8 units: 40 active
    kernel = model.layers[0].kernel
    mask = dst.get_masks(model)[kernel.path]
    assert mask.sum(axis=0).tolist() == [5] * 8
    mask[:, alive:] = False  # the units from `alive` on, as if ablated since
    dst.set_masks(model, {kernel.path: mask})
    weight, grad, _ = _case(2)
    kernel.assign(np.where(mask, weight, 0.0))
    assert up.update(0, {kernel.path: grad})
    k = int(np.floor(0.4 * mask.sum()))
    kept = mask.ravel().copy()
    kept[np.argsort(np.where(mask, np.abs(weight), np.inf), axis=None)[:k]] = False
    expected = kept.reshape(mask.shape).copy()
    for j in range(alive):  # each unit regrows its top |grad| back to fan-in 5
        free = np.where(expected[:, j], -np.inf, np.abs(grad[:, j]))
        expected[np.argsort(-free)[:5 - expected[:, j].sum()], j] = True
    np.testing.assert_array_equal(dst.get_masks(model)[kernel.path], expected)
