"""dst.layers.SparseDense: fixed connectivity, given or drawn at random."""

import keras
import numpy as np
import pytest

import dst
from dst.layers import SparseDense

BAND = np.abs(np.subtract.outer(np.arange(6), np.arange(3) * 2)) <= 1  # (6, 3)


def built(layer, n_in):
    keras.Sequential([keras.Input((n_in,)), layer], name="s")
    return layer


def test_given_connectivity_is_the_mask():
    layer = built(SparseDense(3, connectivity=BAND.astype(int), name="sd"), 6)
    kernel = layer.kernel.numpy()
    np.testing.assert_array_equal(kernel != 0, BAND)
    assert isinstance(layer.kernel.constraint, dst.MaskConstraint)
    assert layer.kernel.constraint.fixed is True
    np.testing.assert_array_equal(layer.kernel.constraint.numpy(), BAND)


def test_random_density_is_exact_and_every_unit_has_an_input():
    layer = built(SparseDense(8, density=0.25, seed=3), 10)
    mask = layer.kernel.constraint.numpy()
    assert int(mask.sum()) == 20  # round(0.25 * 80)
    assert mask.any(axis=0).all()
    again = built(SparseDense(8, density=0.25, seed=3), 10)
    np.testing.assert_array_equal(again.kernel.constraint.numpy(), mask)
    # Too low a density still gives every unit one input.
    sparse = built(SparseDense(8, density=0.01, seed=0), 10)
    mask = sparse.kernel.constraint.numpy()
    assert int(mask.sum()) == 8
    np.testing.assert_array_equal(mask.sum(axis=0), np.ones(8))


def test_masked_entries_stay_zero_after_training_and_sparsify_leaves_them():
    model = keras.Sequential([
        keras.Input((6,)),
        SparseDense(3, connectivity=BAND, name="sd", activation="tanh"),
        keras.layers.Dense(2, name="head"),
    ], name="m")
    # Masks the head only (all ones, so that every SparseDense unit learns).
    dst.sparsify(model, 0.5, {"head": 0.0}, seed=0)
    masks = dst.get_masks(model)
    np.testing.assert_array_equal(masks["m/sd/kernel"], BAND)
    assert int(masks["m/head/kernel"].sum()) == 6
    before = model.get_layer("sd").kernel.numpy().copy()
    model.compile(keras.optimizers.Adam(0.05), "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 6)), rng.normal(size=(32, 2)), batch_size=8, verbose=0)
    after = model.get_layer("sd").kernel.numpy()
    assert np.all(after[~BAND] == 0.0)
    assert np.all(after[BAND] != before[BAND])
    assert int(BAND.sum()) == 8
    assert dst.sparsity(model) == pytest.approx(1 - (8 + 6) / 24)


def test_config_round_trip_keeps_connectivity():
    layer = built(SparseDense(3, connectivity=BAND, name="sd", use_bias=False,
                              kernel_constraint=keras.constraints.NonNeg()), 6)
    config = layer.get_config()
    assert config["density"] is None
    assert set(config["connectivity"]) == {"shape", "bits"}
    assert config["kernel_constraint"]["class_name"] == "NonNeg"
    clone = built(SparseDense.from_config(config), 6)
    np.testing.assert_array_equal(clone.connectivity, BAND)
    np.testing.assert_array_equal(clone.kernel.constraint.numpy(), BAND)
    assert isinstance(clone.kernel.constraint.inner, keras.constraints.NonNeg)
    assert clone.use_bias is False
    # A random layer's config keeps the drawn connectivity, not just the seed.
    drawn = built(SparseDense(4, density=0.5), 5)
    again = built(SparseDense.from_config(drawn.get_config()), 5)
    np.testing.assert_array_equal(again.connectivity, drawn.connectivity)


def test_keras_file_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((6,)), SparseDense(3, density=0.5, seed=1, name="sd")],
                             name="m")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    layer = loaded.get_layer("sd")
    assert type(layer) is SparseDense
    np.testing.assert_array_equal(layer.kernel.constraint.numpy(),
                                  model.get_layer("sd").kernel.constraint.numpy())
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(connectivity=np.ones((6, 4))), r"\(input_dim, 3\). Received shape: \(6, 4\)"),
        (dict(connectivity=np.ones(6)), r"Received shape: \(6,\)"),
        (dict(connectivity=np.full((6, 3), 2)), r"only 0/1 or booleans"),
        (dict(connectivity=BAND * [1, 0, 1]),
         r"leaves output units \[1\] with no input"),
        (dict(), r"exactly one of `density` or `connectivity`.*density=None"),
        (dict(density=0.5, connectivity=BAND), r"density=0\.5, connectivity=an array"),
        (dict(density=1.5), r"`density` must be in \(0, 1\].*density=1\.5"),
        (dict(density=0.0), r"density=0\.0"),
    ],
    ids=["columns", "1d", "values", "unit without input", "neither", "both",
         "density high", "density zero"],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseDense(3, **kwargs)


def test_connectivity_rows_must_match_the_input():
    layer = SparseDense(3, connectivity=BAND, name="sd")
    with pytest.raises(ValueError, match=r"'sd': `connectivity` has 6 rows but the input has 5"):
        layer.build((None, 5))
    assert not layer.built
