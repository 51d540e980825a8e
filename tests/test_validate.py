"""dst._validate and its callers: numpy scalars are accepted, bad arguments get
clear errors, and a refused call leaves the model untouched."""

import json
import math

import keras
import numpy as np
import pytest
from conftest import assert_same_arrays, assert_unchanged, state
from keras import layers

import dst
from dst import distributions
from dst._validate import as_bool, as_float, as_int
from dst.layers import SparseDense

SHAPES = {"a": (4, 6), "b": (6, 2)}


def mlp(name="mlp"):
    return keras.Sequential(
        [keras.Input((12,)), layers.Dense(16, name="h"), layers.Dense(3, name="out")],
        name=name,
    )


def sparse_dense_model():
    band = np.abs(np.subtract.outer(np.arange(6), np.arange(3) * 2)) <= 1
    return keras.Sequential(
        [keras.Input((6,)), SparseDense(3, connectivity=band, name="sd"),
         layers.Dense(2, name="out")],
        name="sdm",
    )


# -- the helpers ----------------------------------------------------------------
def test_helpers_return_python_numbers():
    assert type(as_int(np.int64(3), "n", "f")) is int
    assert type(as_float(np.float32(0.5), "x", "f")) is float
    assert type(as_float(np.int64(2), "x", "f")) is float
    assert as_bool(np.True_, "b", "f") is True


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: as_int(True, "n", "f"), r"`n` must be an int for f\. Received: n=True of type bool"),
        (lambda: as_int(2.0, "n", "f", minimum=1), r"int >= 1 for f\. Received: n=2\.0 of type float"),
        (lambda: as_int(0, "n", "f", minimum=1), r"Received: n=0$"),
        (lambda: as_float("1", "x", "f"), r"`x` must be a finite number for f\. Received: x='1' of type str"),
        (lambda: as_float(math.nan, "x", "f", low=0), r"finite number >= 0 for f\. Received: x=nan$"),
        (lambda: as_float(1.0, "x", "f", low=0, high=1, high_open=True), r"`x` must be in \[0, 1\) for f"),
        (lambda: as_float(10**400, "x", "f"), r"finite number"),
        (lambda: as_bool("no", "b", "f"), r"`b` must be True or False for f\. Received: b='no' of type str"),
    ],
)
def test_helpers_refuse_with_clear_messages(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- numpy scalars are accepted as the numbers they hold ---------------------------
def test_sparsify_accepts_numpy_scalars():
    a = dst.sparsify(mlp("a"), np.float32(0.5), "erk", erk_power_scale=np.float64(0.5),
                     seed=np.int64(3), sparse_init=np.False_)
    b = dst.sparsify(mlp("b"), 0.5, "erk", erk_power_scale=0.5, seed=3)
    assert dst.sparsity(a) == dst.sparsity(b)
    for ma, mb in zip(dst.get_masks(a).values(), dst.get_masks(b).values()):
        np.testing.assert_array_equal(ma, mb)


def test_sparsify_accepts_numpy_distribution_values():
    model = dst.sparsify(mlp(), 0.5, {"h": np.float32(0.75), "out": np.int64(0)}, seed=0)
    masks = dst.get_masks(model)
    assert int(masks["mlp/h/kernel"].sum()) == 48
    assert int(masks["mlp/out/kernel"].sum()) == 48


def test_sparsify_accepts_numpy_densities_from_a_callable():
    model = dst.sparsify(mlp(), 0.5, lambda s, p: dict.fromkeys(s, np.float32(0.25)), seed=0)
    assert dst.sparsity(model) == 0.75


def test_sparse_dense_accepts_numpy_scalars_and_saves_python_numbers():
    layer = SparseDense(np.int64(3), density=np.float32(0.5), seed=np.int64(1), name="sd")
    keras.Sequential([keras.Input((6,)), layer])
    assert layer.units == 3 and type(layer.units) is int
    assert type(layer.density) is float and type(layer.seed) is int
    json.dumps(layer.get_config())  # numpy scalars would not serialize
    same = SparseDense(3, density=0.5, seed=1)
    keras.Sequential([keras.Input((6,)), same])
    np.testing.assert_array_equal(layer.connectivity, same.connectivity)


def test_distributions_accept_numpy_scalars():
    assert distributions.uniform(SHAPES, np.float32(0.25)) == {"a": 0.75, "b": 0.75}
    assert distributions.erk(SHAPES, np.float64(0.5), np.int64(1)) == pytest.approx(
        distributions.erk(SHAPES, 0.5, 1.0))
    assert distributions.er(SHAPES, np.float32(0.5)) == pytest.approx(distributions.er(SHAPES, 0.5))
    fn = distributions.get("erk", erk_power_scale=np.float32(0.0))
    assert fn(SHAPES, 0.5) == pytest.approx({"a": 0.5, "b": 0.5})


# -- bad arguments are refused before the model changes ------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(erk_power_scale=math.nan),
         r"`erk_power_scale` must be a finite number for dst\.sparsify\. Received: erk_power_scale=nan"),
        (dict(erk_power_scale=math.inf), r"erk_power_scale=inf"),
        (dict(erk_power_scale=np.float32("nan")), r"erk_power_scale=np\.float32\(nan\)"),
        (dict(erk_power_scale="1"), r"erk_power_scale='1' of type str"),
        (dict(erk_power_scale=True), r"erk_power_scale=True of type bool"),
        (dict(erk_power_scale=1e6), r"raw densities.*smaller \|erk_power_scale\|"),
        (dict(erk_power_scale=-1e6), r"power_scale=-1000000\.0 makes the raw ERK densities.*overflow"),
        (dict(sparsity="0.5"), r"`sparsity` must be in \[0, 1\).*sparsity='0\.5' of type str"),
        (dict(sparsity=np.float32(1.0)), r"sparsity=np\.float32\(1\.0\)"),
        (dict(seed="1"), r"`seed` must be an int >= 0 for dst\.sparsify\. Received: seed='1' of type str"),
        (dict(seed=True), r"seed=True of type bool"),
        (dict(seed=-1), r"seed=-1$"),
        (dict(seed=1.5), r"seed=1\.5 of type float"),
        (dict(sparse_init="False"), r"`sparse_init` must be True or False.*'False' of type str"),
        (dict(distribution={"h": True}), r"distribution\['mlp/h/kernel'\]=True of type bool"),
        (dict(distribution={"h": "0.5"}), r"distribution\['mlp/h/kernel'\]='0\.5' of type str"),
        (dict(distribution={"h": math.nan}), r"distribution\['mlp/h/kernel'\]=nan"),
    ],
)
def test_bad_numbers_for_sparsify_leave_the_model_untouched(kwargs, match):
    model = mlp()
    before = state(model)
    kwargs = dict(dict(sparsity=0.5), **kwargs)
    with pytest.raises(ValueError, match=match):
        dst.sparsify(model, **kwargs)
    assert_unchanged(model, before)
    assert dst.get_masks(model) == {}
    assert model.get_layer("h").kernel.constraint is None


@pytest.mark.parametrize(
    ("distribution", "match"),
    [
        (lambda s, p: {"mlp/h/kernel": 0.5},
         r"<lambda> returned no density for weight paths \['mlp/out/kernel'\] in dst\.sparsify"),
        (lambda s, p: {**dict.fromkeys(s, 0.5), "mlp/typo": 0.5},
         r"returned densities for unknown paths \['mlp/typo'\].*exactly one density per path"),
        (lambda s, p: {"mlp/h/kernel": 0.5, "x": 0.5},
         r"no density for weight paths \['mlp/out/kernel'\] and densities for unknown paths \['x'\]"),
        (lambda s, p: dict.fromkeys(s, "0.5"),
         r"density '0\.5' to weight 'mlp/h/kernel'; densities must be numbers in \(0, 1\]\. "
         r"Received type str"),
        (lambda s, p: dict.fromkeys(s, None), r"density None to weight 'mlp/h/kernel'"),
        (lambda s, p: dict.fromkeys(s, True), r"density True to weight 'mlp/h/kernel'"),
        (lambda s, p: dict.fromkeys(s, math.nan), r"density nan to weight 'mlp/h/kernel'"),
        (lambda s, p: dict.fromkeys(s, 0.0), r"density 0\.0 to weight 'mlp/h/kernel'"),
    ],
    ids=["missing", "extra", "missing and extra", "str", "None", "bool", "nan", "zero"],
)
def test_bad_distribution_callable_output_is_a_clear_error(distribution, match):
    model = mlp()
    before = state(model)
    with pytest.raises(ValueError, match=match):
        dst.sparsify(model, 0.5, distribution)
    assert_unchanged(model, before)
    assert dst.get_masks(model) == {}


def test_distribution_callable_must_return_a_dict():
    model = mlp()
    before = state(model)
    with pytest.raises(TypeError, match=r"must return a dict \{weight path: density\}.*Received: list"):
        dst.sparsify(model, 0.5, lambda s, p: [0.5, 0.5])
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(density="0.5"), r"`density` must be in \(0, 1\] for SparseDense\. Received: density='0\.5' of type str"),
        (dict(density=True), r"density=True of type bool"),
        (dict(density=math.nan), r"density=nan"),
        (dict(density=0.5, seed="1"), r"`seed` must be an int >= 0 for SparseDense\. Received: seed='1'"),
        (dict(density=0.5, seed=True), r"seed=True of type bool"),
    ],
)
def test_bad_numbers_for_sparse_dense(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseDense(3, **kwargs)


@pytest.mark.parametrize(
    ("units", "match"),
    [("3", r"units='3' of type str"), (True, r"units=True of type bool"),
     (0, r"`units` must be an int >= 1 for SparseDense\. Received: units=0"),
     (3.0, r"units=3\.0 of type float")],
)
def test_bad_units_for_sparse_dense(units, match):
    with pytest.raises(ValueError, match=match):
        SparseDense(units, density=0.5)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: distributions.uniform(SHAPES, 1.0),
         r"`sparsity` must be in \[0, 1\) for dst\.distributions\.uniform\. Received: sparsity=1\.0"),
        (lambda: distributions.er(SHAPES, "0.5"), r"dst\.distributions\.er\. .*'0\.5' of type str"),
        (lambda: distributions.erk(SHAPES, math.nan), r"dst\.distributions\.erk\. Received: sparsity=nan"),
        (lambda: distributions.erk(SHAPES, 0.5, math.nan),
         r"`power_scale` must be a finite number for dst\.distributions\.erk\. Received: power_scale=nan"),
        (lambda: distributions.erk(SHAPES, 0.5, True), r"power_scale=True of type bool"),
        (lambda: distributions.get("erk", erk_power_scale=math.inf),
         r"`erk_power_scale` must be a finite number for dst\.distributions\.get"),
    ],
)
def test_bad_numbers_for_distributions(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_erk_solver_cannot_spin_forever():
    # NaN raw densities used to loop forever: `raw[p] == top` never held.
    with pytest.raises(ValueError, match=r"raw densities \{'a': nan\}, which must be finite and > 0"):
        distributions._solve({"a": math.nan, "b": 1.0}, SHAPES, 0.5, "erk")
    with pytest.raises(ValueError, match=r"raw densities \{'b': 0\.0\}"):
        distributions._solve({"a": 1.0, "b": 0.0}, SHAPES, 0.5, "erk")


# -- set_masks ----------------------------------------------------------------------
def test_set_masks_refuses_an_all_false_mask():
    model = dst.sparsify(mlp(), 0.5, seed=0)
    before = state(model)
    masks = {"mlp/h/kernel": np.ones((12, 16)), "mlp/out/kernel": np.zeros((16, 3))}
    with pytest.raises(ValueError, match=r"mask for 'mlp/out/kernel' has no active entry.*can never regrow"):
        dst.set_masks(model, masks)
    assert_unchanged(model, before)


def test_set_masks_refuses_an_all_false_mask_for_an_unmasked_weight():
    model = mlp()
    before = state(model)
    with pytest.raises(ValueError, match=r"'mlp/h/kernel' has no active entry"):
        dst.set_masks(model, {"mlp/h/kernel": np.zeros((12, 16), bool)})
    assert_unchanged(model, before)
    assert dst.get_masks(model) == {}
    assert model.get_layer("h").kernel.constraint is None


def test_set_masks_refuses_a_sparse_dense_kernel():
    model = sparse_dense_model()
    before = state(model)
    layer = model.get_layer("sd")
    with pytest.raises(ValueError, match=r"cannot change 'sdm/sd/kernel'.*SparseDense 'sd' is fixed.*"
                                         r"dst\.layers\.SparseDense\(units, connectivity=mask\) instead"):
        dst.set_masks(model, {"sdm/out/kernel": np.ones((3, 2)),
                              "sdm/sd/kernel": np.ones((6, 3))})
    assert_unchanged(model, before)
    assert layer.kernel.constraint.fixed
    assert model.get_layer("out").kernel.constraint is None


# -- legacy tf_keras models ---------------------------------------------------------
@pytest.fixture
def legacy_model():
    import tf_keras

    return tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2, name="d")])


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("dst.sparsify", lambda m: dst.sparsify(m, 0.5)),
        ("dst.set_masks", lambda m: dst.set_masks(m, {"d/kernel": np.ones((4, 2))})),
    ],
)
def test_legacy_tf_keras_model_is_refused(legacy_model, name, call):
    before = [w.copy() for w in legacy_model.get_weights()]
    with pytest.raises(TypeError, match=rf"{name} needs a Keras 3 model.*legacy tf_keras.*"
                                        r"pip install 'keras>=3'"):
        call(legacy_model)
    assert_same_arrays(before, legacy_model.get_weights())
    assert legacy_model.get_layer("d").kernel.constraint is None
