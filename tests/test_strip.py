"""dst.strip: a plain Keras model that loads where dst is not installed."""

import json

import keras
import numpy as np
import pytest
from conftest import run_python
from keras import layers

import dst


def sparse_model():
    x = keras.Input((6, 6, 2))
    y = layers.Conv2D(3, 3, name="conv", kernel_constraint=keras.constraints.NonNeg())(x)
    y = layers.Flatten()(y)
    y = dst.layers.SparseDense(8, density=0.3, seed=0, activation="relu", name="sd")(y)
    y = layers.Dense(2, name="head")(y)
    model = keras.Model(x, y, name="m")
    dst.sparsify(model, 0.7, seed=0)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 6, 6, 2)).astype("float32"),
            rng.normal(size=(n, 2)).astype("float32"))


def no_dst_objects(model, config=True):
    for layer in model._flatten_layers(include_self=True, recursive=True):
        assert not type(layer).__module__.startswith("dst"), type(layer)
        assert not any(k.startswith("_dst_mask_") for k in vars(layer))
        for value in vars(layer).values():
            assert not isinstance(value, dst.MaskConstraint)
    for w in model.weights:
        assert not isinstance(w.constraint, dst.MaskConstraint), w.path
    if config:
        assert "dst" not in model.to_json()


LOAD_WITHOUT_DST = r"""
import json, sys
import numpy as np
import keras

path, x_path, out = sys.argv[1:]
model = keras.models.load_model(path)
pred = model.predict(np.load(x_path), verbose=0)
np.save(out + ".npy", pred)
json.dump(
    dict(
        dst_imported="dst" in sys.modules,
        sd_class=type(model.get_layer("sd")).__name__,
        sd_module=type(model.get_layer("sd")).__module__,
        conv_constraint=type(model.get_layer("conv").kernel.constraint).__name__,
        zeros=[int((w.numpy() == 0).sum()) for w in model.weights],
    ),
    open(out, "w"),
)
"""


@pytest.mark.slow  # a new process
def test_stripped_model_loads_without_dst_with_equal_predictions(tmp_path):
    model = sparse_model()
    masks = dst.get_masks(model)
    x, _ = data(seed=1)
    expected = model.predict(x, verbose=0)
    plain = dst.strip(model)
    assert plain is not model
    no_dst_objects(plain)
    np.testing.assert_array_equal(plain.predict(x, verbose=0), expected)
    plain.save(tmp_path / "plain.keras")
    np.save(tmp_path / "x.npy", x)

    run_python(LOAD_WITHOUT_DST, str(tmp_path / "plain.keras"), str(tmp_path / "x.npy"),
               str(tmp_path / "out.json"))
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["dst_imported"] is False
    assert got["sd_class"] == "Dense"
    assert got["sd_module"].startswith("keras.")
    assert got["conv_constraint"] == "NonNeg"
    np.testing.assert_array_equal(np.load(tmp_path / "out.json.npy"), expected)
    # Each masked weight keeps at least its masked entries at zero.
    zeros = dict(zip([w.path for w in model.weights], got["zeros"]))
    for path, mask in masks.items():
        assert zeros[path] >= int((~mask).sum()), path

    # The original model is still sparse and still trains sparse.
    assert {p: m.sum() for p, m in dst.get_masks(model).items()} == {
        p: m.sum() for p, m in masks.items()}
    assert isinstance(model.get_layer("conv").kernel.constraint, dst.MaskConstraint)
    model.fit(*data(), batch_size=8, epochs=1, verbose=0)
    values = {w.path: w.numpy() for w in model.weights}
    assert all(np.all(values[p][~m] == 0) for p, m in masks.items())


def test_strip_turns_sparse_dense_into_dense():
    model = keras.Sequential([keras.Input((5,)),
                              dst.layers.SparseDense(3, density=0.4, seed=1, name="sd",
                                                     activation="tanh")], name="s")
    plain = dst.strip(model)
    layer = plain.get_layer("sd")
    assert type(layer) is layers.Dense
    assert layer.activation is keras.activations.tanh
    assert layer.kernel.constraint is None
    np.testing.assert_array_equal(layer.kernel.numpy(), model.get_layer("sd").kernel.numpy())
    assert int((layer.kernel.numpy() != 0).sum()) == 6  # round(0.4 * 15)


def test_strip_bakes_in_zeros_assigned_after_the_last_step():
    model = dst.sparsify(
        keras.Sequential([keras.Input((4,)), layers.Dense(4, name="d")], name="s"), 0.5, seed=0)
    mask = dst.get_masks(model)["s/d/kernel"]
    model.get_layer("d").kernel.assign(np.ones((4, 4), "float32"))  # bypasses the constraint
    plain = dst.strip(model)
    np.testing.assert_array_equal(plain.get_layer("d").kernel.numpy(), mask.astype("float32"))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.d1 = layers.Dense(6, name="d1")
        self.d2 = layers.Dense(2, name="d2")

    def call(self, x):
        return self.d2(self.d1(x))


def sparse_subclassed():
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    with pytest.warns(UserWarning, match="load_model cannot restore"):
        dst.sparsify(model, 0.5, seed=0)
    return model


def test_strip_subclassed_needs_inplace_and_leaves_the_model_sparse():
    model = sparse_subclassed()
    masks = dst.get_masks(model)
    with pytest.raises(ValueError, match=r"could not clone model 'sub'.*inplace=True"):
        dst.strip(model)
    got = dst.get_masks(model)
    assert list(got) == list(masks)
    assert all(np.array_equal(got[p], masks[p]) for p in masks)
    assert isinstance(model.d1.kernel.constraint, dst.MaskConstraint)


def test_strip_inplace_removes_masks_from_the_model_itself():
    model = sparse_subclassed()
    masks = dst.get_masks(model)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    assert dst.strip(model, inplace=True) is model
    no_dst_objects(model, config=False)
    assert dst.get_masks(model) == {}
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), expected)
    assert all(np.all(model.get_layer(p.split("/")[1]).kernel.numpy()[~m] == 0)
               for p, m in masks.items())
    # A stripped model is plain again, so it can be sparsified anew.
    with pytest.warns(UserWarning, match="load_model cannot restore"):
        dst.sparsify(model, 0.9, "uniform", seed=1)
    assert [int(m.sum()) for m in dst.get_masks(model).values()] == [2, 1]
