"""N:M masks: sparsify(n_m=...), the group layout, updaters keep N:M, TF-MOT's m_by_n cases."""

import os

import keras
import numpy as np
import pytest
from conftest import BACKEND, assert_unchanged, state
from hypothesis import given, settings
from hypothesis import strategies as st

import dst
from dst import _select, nm
from dst.testing import _n_m_kept

N_M = (2, 4)


def mlp(sparsity=0.5, n_m=N_M, seed=0):
    """A 12-16-4 MLP (12 and 16 inputs: whole groups of 4)."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((12,)),
                              keras.layers.Dense(16, activation="relu", name="fc1"),
                              keras.layers.Dense(4, name="fc2")], name="mlp")
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    if sparsity is not None:
        dst.sparsify(model, sparsity, seed=seed, n_m=n_m)
    return model


def xy(n=64):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, x[:, :4] * 2.0


def exact(model, n_m=N_M):
    return all(nm.is_n_m(mask, n_m) for mask in dst.get_masks(model).values())


# -- the group layout and the rule, as properties ----------------------------------------
shapes = st.sampled_from([(8, 3), (4, 1), (12, 5), (2, 3, 8, 2), (3, 4, 6), (7, 2), (5, 9)])
n_ms = st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8)])


@settings(max_examples=30, deadline=None)
@given(shape=shapes, m=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**16))
def test_groups_round_trip_along_the_input_axis(shape, m, seed):
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    groups = nm.to_groups(np, x, m)
    assert groups.shape[0] == m
    np.testing.assert_array_equal(nm.from_groups(np, groups, shape, m), x)
    # A column holds M consecutive entries of the second to last axis.
    flat = x.reshape(-1, shape[-2], shape[-1])
    if shape[-2] >= m:
        np.testing.assert_array_equal(groups[:, 0], flat[0, :m, 0])


@pytest.mark.parametrize("shape,m", [((7, 2), 4), ((2, 3, 8, 2), 4)])
def test_groups_are_the_same_in_graph(shape, m):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    ops = nm.to_groups(keras.ops, keras.ops.convert_to_tensor(x), m)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ops), nm.to_groups(np, x, m))
    back = nm.from_groups(keras.ops, ops, shape, m)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(back), x)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, n_m=n_ms, seed=st.integers(0, 2**16))
def test_random_and_top_n_masks_keep_n_per_group(shape, n_m, seed):
    rng = np.random.default_rng(seed)
    assert nm.is_n_m(nm.random_n_m_mask(shape, n_m, rng), n_m)
    scores = rng.normal(size=shape).astype("float32")
    top = nm.top_n_mask(_select.NUMPY, scores, n_m, 7)
    assert nm.is_n_m(top, n_m)
    # Each group keeps its largest magnitudes.
    kept, dropped = (nm.to_groups(np, np.abs(scores) * s, n_m[1]) for s in (top, ~top))
    assert (kept.max(axis=0, initial=0) >= dropped.max(axis=0, initial=0)).all()


@settings(max_examples=40, deadline=None)
@given(shape=shapes, n_m=n_ms, seed=st.integers(0, 2**16), swap=st.integers(0, 10),
       scored=st.booleans())
def test_structure_makes_any_swap_exactly_n_m_on_both_paths(shape, n_m, seed, swap, scored):
    """Any weights, scores and any rule's mask of the same count -> exactly N per group;
    the host and the in-graph paths choose the same entries."""
    rng = np.random.default_rng(seed)
    old = nm.random_n_m_mask(shape, n_m, rng)
    new = old.copy().ravel()
    on, off = np.flatnonzero(new), np.flatnonzero(~new)
    k = min(swap, on.size, off.size)
    new[rng.choice(on, k, replace=False)] = False
    new[rng.choice(off, k, replace=False)] = True
    new = new.reshape(shape)
    keep, grow = (rng.normal(size=shape).astype("float32") if scored else None for _ in "ab")
    out = nm.structure(_select.NUMPY, n_m, old, new, keep, grow, lambda role: role * 977)
    assert nm.is_n_m(out, n_m) and out.sum() == new.sum()
    assert (out & old & new).sum() == (old & new).sum()  # what the rule kept stays


@pytest.mark.parametrize("shape,n_m,shrink", [
    ((12, 5), (2, 4), False), pytest.param((7, 3), (1, 4), True, marks=pytest.mark.slow)])
def test_structure_is_the_same_in_graph(shape, n_m, shrink):
    """The host and the in-graph paths choose the same entries (a swap; a pruning, with a
    short group at the axis' end)."""
    rng = np.random.default_rng(0)
    old = np.ones(shape, bool) if shrink else nm.random_n_m_mask(shape, n_m, rng)
    new = rng.random(shape) < (0.6 if shrink else 0.5)
    keep, grow = rng.normal(size=shape).astype("float32"), None
    t = keras.ops.convert_to_tensor
    if not shrink:  # same count as old, chosen anywhere
        new = np.zeros(shape, bool).ravel()
        new[rng.choice(new.size, int(old.sum()), replace=False)] = True
        new = new.reshape(shape)
        grow = rng.normal(size=shape).astype("float32")
    else:
        new = new | nm.top_n_mask(_select.NUMPY, keep, n_m, 0)
    out = nm.structure(_select.NUMPY, n_m, old, new, keep, grow, lambda role: role * 977)
    assert out.sum() == new.sum() and nm.is_n_m(out, n_m, exact=not shrink)
    graph = nm.structure(_select.OPS, n_m, t(old), t(new), t(keep),
                         None if grow is None else t(grow), lambda role: t(role * 977, "int32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(graph), out)
    top = nm.top_n_mask(_select.OPS, t(keep), n_m, 7)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(top),
                                  nm.top_n_mask(_select.NUMPY, keep, n_m, 7))


@settings(max_examples=30, deadline=None)
@given(shape=shapes, n_m=n_ms, seed=st.integers(0, 2**16), fraction=st.floats(0.0, 1.0))
def test_structure_of_a_pruning_keeps_each_group_top_n(shape, n_m, seed, fraction):
    """Pruning a dense mask to a count between sum(floors) and the size: each group keeps
    its N largest magnitudes, the rest goes by global magnitude, and the count is exact."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype("float32")
    floors = int(nm.group_floors(shape, n_m).sum())
    count = floors + int(fraction * (w.size - floors))
    old = np.ones(shape, bool)
    new = _select.NUMPY.select(np.abs(w), old, count, 3, largest=True)
    out = nm.structure(_select.NUMPY, n_m, old, new, np.abs(w), None, lambda role: role)
    assert out.sum() == count and nm.is_n_m(out, n_m, exact=False)
    assert (out >= nm.top_n_mask(_select.NUMPY, w, n_m, 0)).all()
    if count == floors:
        assert nm.is_n_m(out, n_m)


# -- TF-MOT's m_by_n cases (pruning_utils_test.py): weights in TFLite's (out, in) layout ----
TFMOT_CASES = [
    ([[1.24], [1.11]], (2, 4), [[1], [1]]),
    ([[-0.49, -0.66, 0.42], [0.31, 0.63, -1.63]], (2, 4), [[1, 1, 0], [0, 1, 1]]),
    ([[-0.49, -0.66, 0.42], [0.31, 0.63, -1.63]], (1, 2), [[0, 1, 1], [0, 1, 1]]),
    ([[0.25, -1.33, 0.43, -0.11], [0.47, 0.92, -0.13, -2.23]], (2, 4),
     [[0, 1, 1, 0], [0, 1, 0, 1]]),
    ([[1.71, -0.27, -0.3, -0.61, -0.19], [-0.4, 1.12, 0.46, -1.12, 0.17]], (3, 5),
     [[1, 0, 0, 1, 0], [0, 1, 0, 1, 0]]),
]


@pytest.mark.parametrize("weights,m_by_n,expected", TFMOT_CASES)
def test_tfmot_generate_m_by_n_mask_cases(weights, m_by_n, expected):
    """A Dense kernel (in, out) is TF-MOT's (out, in) transposed; m zeros of every n."""
    kernel = np.array(weights, "float32").T
    updater = dst.tfmot.TFMOTPruning(seed=0)
    n_m = (m_by_n[1] - m_by_n[0], m_by_n[1])
    for kit in (_select.NUMPY,):
        got = updater.new_mask(nm.NMKit(kit, n_m), kit.cast(kernel, "float32"),
                               kit.cast(np.ones(kernel.shape, bool), "bool"), None,
                               kit.cast(np.array([0, 0]), "int32"), lambda role: 0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), np.array(expected).T)


# is_pruned_m_by_n cases (C_OUT: TF-MOT's (out, in) rows; at most n - m non-zeros per group).
@pytest.mark.parametrize("weight,m_by_n,expected", [
    ([[1, 2, 0, 0]], (2, 4), True), ([[1, 2, 0, 0]], (1, 2), False),
    ([[1, 0, 2, 0]], (1, 2), True), ([[1, 2, 3, 4]], (2, 4), False),
    ([[0, 0, 0, 0]], (2, 4), True), ([[1, 2, 0, 4], [0, 0, 1, 2]], (2, 4), False),
    ([[1, 2, 0, 0], [0, 0, 0, 1], [0, 2, 1, 0]], (2, 4), True),
    ([[1, 2, 3, 4, 5, 6]], (2, 4), False), ([[1, 2, 0, 0, 5, 6]], (2, 4), True),
    ([[1, 2, 0, 0, 5, 6, 7]], (2, 4), False), ([[1, 2, 0, 0, 5, 6, 0]], (2, 4), True),
])
def test_tfmot_is_pruned_m_by_n_cases(weight, m_by_n, expected):
    counts = nm.group_counts(np.array(weight).T != 0, m_by_n[1])
    assert bool((counts <= m_by_n[1] - m_by_n[0]).all()) == expected


# -- sparsify -------------------------------------------------------------------------
def test_sparsify_draws_n_of_every_m_inputs_per_unit():
    model = mlp()
    masks = dst.get_masks(model)
    assert exact(model) and dst.sparsity(model) == 0.5
    kernel = masks["mlp/fc1/kernel"]
    # Groups run along the inputs of each unit: rows 0-3 of every column hold exactly 2.
    assert (kernel[:4].sum(axis=0) == 2).all() and (kernel[4:8].sum(axis=0) == 2).all()
    assert type(model.layers[0].kernel.constraint) is nm.NMMaskConstraint
    assert not np.array_equal(kernel[:4], kernel[4:8])  # drawn per group


def test_conv_groups_run_along_input_channels():
    model = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(6, 3)])
    dst.sparsify(model, 0.75, seed=0, n_m=(1, 4))
    mask = next(iter(dst.get_masks(model).values()))
    assert mask.shape == (3, 3, 8, 6)
    assert (mask.reshape(3, 3, 2, 4, 6).sum(axis=3) == 1).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_m=(4, 4)), r"1 <= N < M .* n_m=\(4, 4\)"),
    (dict(n_m=(0, 4)), r"n_m=\(0, 4\)"),
    (dict(n_m=(2.0, 4)), r"two ints"),
    (dict(n_m=(2, 4), sparsity=0.6), r"sparsity 1 - 2/4 = 0.5; received sparsity=0.6"),
    (dict(n_m=(2, 4), block=(2, 2)), r"cannot be combined with \['block'\]"),
    (dict(n_m=(2, 4), distribution={"dense": 0.5}), r"\['distribution'\]"),
    (dict(n_m=(2, 4), overrides={"dense": 0.5}), r"\['overrides'\]"),
    (dict(n_m=(1, 8), sparsity=0.875), r"'mlp/fc1/kernel' of shape \(12, 16\).* multiple of M=8"),
])
def test_sparsify_refuses_what_contradicts_n_m(kwargs, message):
    model = mlp(None)
    before = state(model)
    kwargs = {"sparsity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        dst.sparsify(model, **kwargs)
    assert_unchanged(model, before)


def test_an_axis_that_m_does_not_divide_can_be_excluded():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(8, name="a"),
                              keras.layers.Dense(3, name="b")])
    with pytest.raises(ValueError, match=r"'.*a/kernel' of shape \(10, 8\).*`exclude=`"):
        dst.sparsify(model, 0.5, n_m=N_M)
    dst.sparsify(model, 0.5, n_m=N_M, exclude="a", seed=0)
    assert list(dst.get_masks(model)) == [model.layers[1].kernel.path] and exact(model)


def test_set_masks_refuses_a_group_below_n():
    model = mlp()
    path = model.layers[0].kernel.path
    mask = dst.get_masks(model)[path].copy()
    col = mask[:4, 0].copy()
    mask[:4, 0] = [True, False, False, False]
    with pytest.raises(ValueError, match=r"at least 2 of every 4 .* n_m=\(2, 4\). A group has 1"):
        dst.set_masks(model, {path: mask})
    mask[:4, 0] = col
    mask[:4, 1] = True  # at least N is fine (a mask during pruning to N:M)
    dst.set_masks(model, {path: mask})


def test_save_load_clone_strip_keep_the_structure(tmp_path):
    model = mlp()
    masks = dst.get_masks(model)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    clone = keras.models.clone_model(model)
    for other in (loaded, clone):
        assert [nm.n_m_of(layer.kernel.constraint) for layer in other.layers] == [N_M, N_M]
        for a, b in zip(masks.values(), dst.get_masks(other).values()):
            np.testing.assert_array_equal(a, b)
    plain = dst.strip(model)
    for layer, mask in zip(plain.layers, masks.values()):
        assert layer.kernel.constraint is None
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel) != 0, mask)


# -- updaters ---------------------------------------------------------------------------
def fit_log(model, callback, epochs=1, optimizer=None, **compile_kwargs):
    log = []

    class Log(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            log.append(dst.get_masks(self.model))

    model.compile(optimizer or keras.optimizers.Adam(0.01), "mse", **compile_kwargs)
    model.fit(*xy(), batch_size=8, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[callback, Log()])
    return log


@pytest.mark.parametrize("name,kwargs", [
    ("rigl", dict(drop_fraction=0.5)),
    pytest.param("set", dict(drop_fraction=0.5), marks=pytest.mark.slow),
    pytest.param("srigl", dict(drop_fraction=0.5, gamma_sal=0.0), marks=pytest.mark.slow),
    pytest.param("granet", dict(final_sparsity=0.5, initial_sparsity=0.5),
                 marks=pytest.mark.slow),
])
def test_updaters_keep_exact_n_m_after_every_step(name, kwargs):
    model = mlp()
    start = dst.get_masks(model)
    log = fit_log(model, dst.callbacks.get(name, update_freq=2, seed=0, **kwargs))
    for masks in log:
        assert all(nm.is_n_m(m, N_M) for m in masks.values())
    moved = sum(int((log[-1][p] != start[p]).sum()) for p in start)
    assert moved > 0  # the masks did change
    if name == "srigl":  # exact N:M is constant fan-in
        fans = log[-1]["mlp/fc1/kernel"].sum(axis=0)
        assert (fans == 6).all()


def test_magnitude_pruning_from_dense_ends_exactly_n_m():
    model = mlp(None)
    cb = dst.callbacks.MagnitudePruning(0.5, n_m=N_M, update_freq=1, end_step=5, seed=0)
    log = fit_log(model, cb)
    sizes = [int(sum(m.sum() for m in masks.values())) for masks in log]
    assert sizes[0] == 12 * 16 + 16 * 4 > sizes[1]  # s_0 = initial_sparsity = 0
    assert sizes[5:] == [(12 * 16 + 16 * 4) // 2] * 3
    assert sizes == sorted(sizes, reverse=True)
    for masks in log:
        assert all(nm.is_n_m(m, N_M, exact=False) for m in masks.values())
    assert exact(model)
    # What is kept is each group's largest magnitudes.
    for layer in model.layers:
        w = keras.ops.convert_to_numpy(layer.kernel)
        np.testing.assert_array_equal(w != 0, nm.top_n_mask(_select.NUMPY, w, N_M, 0))


@pytest.mark.parametrize("make,message", [
    (lambda: dst.updaters.MagnitudePruning(0.8, n_m=N_M), r"final_sparsity=0.5"),
    (lambda: dst.updaters.MagnitudePruning(0.5, n_m=N_M, distribution="erk"),
     r"distribution='uniform'"),
    (lambda: dst.updaters.MagnitudePruning(0.5, n_m=(2, 2)), r"1 <= N < M"),
])
def test_pruning_refuses_what_contradicts_n_m(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_pruning_an_n_m_model_checks_its_final_sparsity():
    model = mlp()
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"N:M \(2, 4\) masks end .* final_sparsity=0.5"):
        dst.updaters.MagnitudePruning(0.9).bind(model, total_steps=10)


@pytest.mark.parametrize("name,kwargs,message", [
    ("snfs", {}, r"SNFS does not support N:M masks; weights"),
    ("srigl", {}, r"SRigL does not support N:M masks with gamma_sal=0.3 .*gamma_sal=0.0"),
])
def test_updaters_that_cannot_keep_n_m_are_refused_at_bind(name, kwargs, message):
    model = mlp()
    model.compile("sgd", "mse")
    before = dst.get_masks(model)
    with pytest.raises(ValueError, match=message):
        dst.updaters.get(name)(**kwargs).bind(model, total_steps=10)
    for path, mask in dst.get_masks(model).items():
        np.testing.assert_array_equal(mask, before[path])


class GlobalSwap(dst.updaters.Updater):
    """A rule that knows nothing of groups: swap the 8 weakest for the 8 largest
    gradients, anywhere. The base keeps it N:M."""

    needs_gradients = True

    def new_mask(self, kit, weight, mask, grad, value, salt):
        xp = kit.xp
        kept = xp.logical_and(mask, xp.logical_not(kit.select(xp.abs(weight), mask, 8, salt(0))))
        grown = kit.select(xp.abs(grad), xp.logical_not(kept), 8, salt(1), largest=True)
        return xp.logical_or(kept, grown)


@pytest.mark.slow  # a dozen short fits and updates per updater
@pytest.mark.parametrize("cls,kwargs", [
    ("srigl", dict(gamma_sal=0.0)), (GlobalSwap, {}),
    ("magnitude", dict(final_sparsity=0.5)), ("granet", dict(final_sparsity=0.5)),
])
def test_n_m_invariant_of_the_kit(cls, kwargs):
    """The kit's N:M check (host = in-graph, after every step, save/load) on a rule
    written without groups and on updaters checked elsewhere with other arguments."""
    cls = dst.updaters.get(cls) if isinstance(cls, str) else cls
    _n_m_kept(cls, {"update_freq": 2, "end_step": 1.0, "seed": 0, **kwargs})


@pytest.mark.slow
def test_kit_catches_an_updater_that_breaks_n_m():
    class Leaky(dst.updaters.SET):
        n_m_by_base = False  # claims to keep N:M itself, and does not

        def new_mask(self, kit, weight, mask, grad, value, salt):
            return super().new_mask(kit.kit, weight, mask, grad, value, salt)

    with pytest.raises(AssertionError, match="groups of '.*' keep"):
        _n_m_kept(Leaky, {"update_freq": 2, "end_step": 1.0, "seed": 0, "drop_fraction": 0.5})


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason="Keras refuses steps_per_execution > 1 on PyTorch")
def test_steps_per_execution_and_mixed_precision_keep_n_m():
    def run(steps_per_execution=1):
        model = mlp()
        fit_log(model, dst.callbacks.RigL(update_freq=2, drop_fraction=0.5, seed=0),
                optimizer=keras.optimizers.SGD(0.05), steps_per_execution=steps_per_execution)
        return dst.get_masks(model)

    one, four = run(), run(4)
    for path in one:
        np.testing.assert_array_equal(one[path], four[path])
        assert nm.is_n_m(one[path], N_M)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = run()
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(nm.is_n_m(mask, N_M) for mask in mixed.values())
