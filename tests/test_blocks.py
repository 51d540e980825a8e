"""Block-sparse masks: sparsify(block=...), SparseDense(block=...), updaters keep blocks."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, assert_unchanged, state

import dst
from dst import _select
from dst._model import masked_targets
from dst.blocks import count_units, grid_shape, is_union_of_blocks, kit_for, to_blocks


def block_mlp(block=(16, 1), sparsity=0.8, seed=0):
    """A 50-40-6 MLP: 50 and 40 inputs are not multiples of 16 (edge blocks)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((50,)), keras.layers.Dense(40, activation="relu", name="fc1"),
                              keras.layers.Dense(6, name="fc2")], name="mlp")
    if sparsity is not None:
        dst.sparsify(model, sparsity, "uniform", seed=seed, block=block)
    return model


def n_active_blocks(mask, block):
    return int(to_blocks(np, mask, block, "any").sum())


def xy(n=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 50)).astype("float32"), rng.normal(size=(n, 6)).astype("float32")


def test_sparsify_with_blocks_counts_whole_blocks():
    model = block_mlp((16, 1), 0.8)
    for path, mask in dst.get_masks(model).items():
        assert is_union_of_blocks(mask, (16, 1))
        n = int(np.prod(grid_shape(mask.shape, (16, 1))))
        assert n_active_blocks(mask, (16, 1)) == round(0.2 * n), path
        # Not the same blocks everywhere: both full and edge blocks are drawn.
    first = dst.get_masks(model)["mlp/fc1/kernel"]
    assert first[:48].any() and not is_union_of_blocks(first, (1, 2))


def test_count_units_counts_blocks_of_blocked_weights_only():
    model = block_mlp((16, 1), 0.8)
    for t in masked_targets(model):
        assert count_units(t) == n_active_blocks(t.constraint.numpy(), (16, 1))
    plain = keras.Sequential([keras.Input((50,)), keras.layers.Dense(40)])
    dst.sparsify(plain, 0.5, "uniform", seed=0)
    assert [count_units(t) for t in masked_targets(plain)] == [1000]


def test_conv_kernel_blocks_span_input_and_output_channels():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(6, 3)])
    dst.sparsify(model, 0.5, "uniform", seed=0, block=(4, 2))
    mask = next(iter(dst.get_masks(model).values()))
    assert mask.shape == (3, 3, 8, 6) and is_union_of_blocks(mask, (4, 2))
    assert n_active_blocks(mask, (4, 2)) == round(0.5 * 3 * 3 * 2 * 3)


@pytest.mark.parametrize("block, match", [
    ((64, 1), r"block=\(64, 1\) does not fit weight 'mlp/fc1/kernel' of shape \(50, 40\)"),
    ((1, 7), r"block=\(1, 7\) does not fit weight 'mlp/fc2/kernel' of shape \(40, 6\)"),
    ((0, 1), r"`block` must be two ints >= 1.*Received: block=\(0, 1\)"),
    ((16,), r"`block` must be two ints"),
    ("16x1", r"`block` must be two ints"),
])
def test_bad_block_is_refused_and_model_unchanged(block, match):
    model = block_mlp(sparsity=None)
    before = state(model)
    with pytest.raises(ValueError, match=match):
        dst.sparsify(model, 0.8, block=block)
    assert_unchanged(model, before)


class MaskRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.masks = []

    def on_train_batch_end(self, batch, logs=None):
        self.masks.append(dst.get_masks(self.model))


@pytest.mark.parametrize("name", ["magnitude", "set", "rigl"])
def test_updaters_keep_blocks_and_exact_block_counts(name):
    block = (16, 1)
    if name == "magnitude":
        model = block_mlp(block, 0.0)
        cb = dst.callbacks.MagnitudePruning(0.8, update_freq=2, end_step=10)
    else:
        model = block_mlp(block, 0.8)
        cls = {"set": dst.callbacks.SET, "rigl": dst.callbacks.RigL}[name]
        cb = cls(update_freq=1, drop_fraction=0.5, end_step=12, seed=0)
    start = dst.get_masks(model)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    recorder = MaskRecorder()
    x, y = xy()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb, recorder])
    changed = False
    previous = start
    for masks in recorder.masks:
        for path, mask in masks.items():
            assert is_union_of_blocks(mask, block), path
            got = n_active_blocks(mask, block)
            if name == "magnitude":  # pruned blocks never come back
                assert got <= n_active_blocks(previous[path], block)
                assert not (mask & ~previous[path]).any()
            else:
                assert got == n_active_blocks(start[path], block), path
            changed |= not np.array_equal(mask, start[path])
        previous = masks
    if name == "magnitude":
        for path, mask in previous.items():
            grid = int(np.prod(grid_shape(mask.shape, block)))
            assert n_active_blocks(mask, block) == round(0.2 * grid), path
    assert changed
    for layer in model.layers:
        mask = dst.get_masks(model)[layer.kernel.path]
        assert not np.any(layer.kernel.numpy()[~mask])


def test_rigl_drops_smallest_block_norms_and_grows_largest_gradient_norms():
    model = block_mlp((4, 1), 0.5)
    up = dst.updaters.RigL(drop_fraction=0.25, drop_fraction_schedule="constant",
                           grow_candidates="before_drop", end_step=100, seed=0)
    up.bind(model, optimizer=keras.optimizers.SGD())
    rng = np.random.default_rng(3)
    mask = dst.get_masks(model)["mlp/fc1/kernel"]
    weight = np.where(mask, rng.normal(size=mask.shape), 0).astype("float32")
    grad = rng.normal(size=mask.shape).astype("float32")
    assert up.targets[0].path == "mlp/fc1/kernel"
    new = up.new_mask(kit_for(_select.NUMPY, up.targets[0]), weight, mask, grad,
                      up.step_value(0, 0),
                      lambda role: int(_select.salt(np, 0, 0, 0, role)))
    old_b, new_b = (to_blocks(np, m, (4, 1), "any") for m in (mask, new))
    w_norm, g_norm = to_blocks(np, weight, (4, 1), "norm"), to_blocks(np, grad, (4, 1), "norm")
    dropped, grown = old_b & ~new_b, new_b & ~old_b
    k = int(np.floor(0.25 * old_b.sum()))
    assert dropped.sum() == grown.sum() == k
    assert w_norm[dropped].max() <= w_norm[old_b & new_b].min()
    assert g_norm[grown].min() >= g_norm[~old_b & ~new_b].max()
    assert is_union_of_blocks(new, (4, 1))


@pytest.mark.skipif(BACKEND == "torch", reason="jit_compile=True (torch.compile) is refused "
                                               "on PyTorch (test_backends.py)")
def test_block_updates_are_the_same_under_jit():
    masks = []
    for jit in (False, True):
        model = block_mlp((16, 1), 0.8)
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit)
        x, y = xy(64)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False,
                  callbacks=[dst.callbacks.RigL(update_freq=1, end_step=3, seed=0)])
        masks.append(list(dst.get_masks(model).values()))
    for host, xla in zip(*masks):
        np.testing.assert_array_equal(host, xla)


def test_blocks_survive_save_load_and_keep_updating(tmp_path):
    model = block_mlp((4, 1), 0.8)
    model.compile("adam", "mse")
    x, y = xy(64)
    model.fit(x, y, batch_size=16, verbose=0, callbacks=[dst.callbacks.SET(update_freq=1)])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(dst.get_masks(model).values(), dst.get_masks(loaded).values()):
        np.testing.assert_array_equal(a, b)
    assert [layer.kernel.constraint.block for layer in loaded.layers] == [(4, 1), (4, 1)]
    loaded.fit(x, y, batch_size=16, verbose=0,
               callbacks=[dst.callbacks.RigL(update_freq=1, drop_fraction=0.5)])
    for mask in dst.get_masks(loaded).values():
        assert is_union_of_blocks(mask, (4, 1))


def test_set_masks_refuses_masks_that_break_blocks():
    model = block_mlp((4, 1), 0.5)
    before = state(model)
    bad = dst.get_masks(model)
    bad["mlp/fc1/kernel"] = np.eye(50, 40, dtype=bool)
    with pytest.raises(ValueError, match=r"union of whole \(4, 1\) blocks"):
        dst.set_masks(model, bad)
    assert_unchanged(model, before)


def test_sparse_dense_with_blocks():
    layer = dst.layers.SparseDense(20, density=0.5, block=(16, 1), seed=0)
    model = keras.Sequential([keras.Input((50,)), layer])
    assert is_union_of_blocks(layer.connectivity, (16, 1))
    assert n_active_blocks(layer.connectivity, (16, 1)) == round(0.5 * 4 * 20)
    assert layer.connectivity.any(axis=0).all()
    clone = keras.models.clone_model(model)
    assert clone.layers[0].block == (16, 1)
    np.testing.assert_array_equal(clone.layers[0].connectivity, layer.connectivity)
    with pytest.raises(ValueError, match=r"union of whole \(4, 1\) blocks"):
        dst.layers.SparseDense(3, connectivity=np.eye(8, 3), block=(4, 1))
    with pytest.raises(ValueError, match=r"block=\(16, 1\) does not fit"):
        keras.Sequential([keras.Input((8,)), dst.layers.SparseDense(3, density=0.5,
                                                                     block=(16, 1))])


def test_strip_removes_block_constraints():
    model = block_mlp((4, 1), 0.8)
    plain = dst.strip(model)
    assert "dst" not in str(plain.get_config())
    x, _ = xy(8)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def same_shape_mixed_blocks(seed=0):
    """Two (30, 30) kernels: 'blocked' with block=(4, 1) (edge blocks of 2), 'plain' unstructured."""
    keras.utils.set_random_seed(seed)
    blocked = keras.Sequential([keras.Input((30,)), keras.layers.Dense(30, activation="relu",
                                                                        name="blocked")], name="a")
    plain = keras.Sequential([keras.Input((30,)), keras.layers.Dense(30, name="plain")], name="b")
    dst.sparsify(blocked, 0.75, "uniform", seed=seed, block=(4, 1))
    dst.sparsify(plain, 0.75, "uniform", seed=seed)
    return keras.Sequential([keras.Input((30,)), blocked, plain], name="mixed")


@pytest.mark.parametrize("name", ["set", "rigl"])
def test_same_shape_weights_keep_their_own_block_structure(name):
    """Block information comes with the weight, not from its shape: a blocked
    and an unstructured kernel of one shape each keep their structure and
    exact counts, on the host path and in XLA, which pick the same masks."""
    cls = {"set": dst.callbacks.SET, "rigl": dst.callbacks.RigL}[name]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(96, 30)).astype("float32"), rng.normal(size=(96, 30)).astype("float32")
    runs = []
    # torch.compile (jit_compile=True on PyTorch) is refused (test_backends.py).
    for jit in (False,) if BACKEND == "torch" else (False, True):
        model = same_shape_mixed_blocks()
        blocked, plain = (layer.layers[0].kernel.path for layer in model.layers)
        start = dst.get_masks(model)
        assert n_active_blocks(start[blocked], (4, 1)) == round(0.25 * 8 * 30) == 60
        assert int(start[plain].sum()) == round(0.25 * 900) == 225
        model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=jit)
        recorder = MaskRecorder()
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False,
                  callbacks=[cls(update_freq=1, drop_fraction=0.5, end_step=5, seed=0), recorder])
        for masks in recorder.masks:
            assert is_union_of_blocks(masks[blocked], (4, 1))
            assert n_active_blocks(masks[blocked], (4, 1)) == 60
            assert int(masks[plain].sum()) == 225
            assert not is_union_of_blocks(masks[plain], (4, 1))
        final = recorder.masks[-1]
        assert not np.array_equal(final[blocked], start[blocked])
        assert not np.array_equal(final[plain], start[plain])
        runs.append(final)
    for path in runs[0]:
        np.testing.assert_array_equal(runs[0][path], runs[-1][path], err_msg=path)
