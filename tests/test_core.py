"""dst.sparsify, get_masks, set_masks and sparsity on every kind of weight."""

import math

import keras
import numpy as np
import pytest
from conftest import (
    assert_same_arrays,
    assert_unchanged,
    gradients,
    numpy,
    state,
    weights_of,
)
from keras import layers

import dst
from dst import distributions


def mlp(name="mlp", **dense_kwargs):
    return keras.Sequential(
        [
            keras.Input((12,)),
            layers.Dense(16, activation="tanh", name="h", bias_initializer="ones", **dense_kwargs),
            layers.Dense(3, name="out", bias_initializer="ones"),
        ],
        name=name,
    )


def data(model, n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *model.input_shape[1:])).astype("float32")
    if model.inputs[0].dtype.startswith("int"):
        x = rng.integers(0, 20, size=(n, *model.input_shape[1:])).astype("int32")
    y = rng.normal(size=(n, *model.output_shape[1:])).astype("float32")
    return x, y


def assert_masked_zero(model):
    masks = dst.get_masks(model)
    values = {w.path: w.numpy() for w in model.weights}
    assert masks, "model has no masks"
    for path, mask in masks.items():
        assert np.all(values[path][~mask] == 0.0), path
    return masks


# -- sparsify ------------------------------------------------------------------
def test_sparsify_uniform_exact_counts_and_zeros():
    model = mlp()
    before = {w.path: w.numpy() for w in model.weights}
    assert dst.sparsify(model, 0.75, "uniform", seed=0) is model
    masks = assert_masked_zero(model)
    assert sorted(masks) == ["mlp/h/kernel", "mlp/out/kernel"]
    assert all(m.dtype == bool for m in masks.values())
    assert int(masks["mlp/h/kernel"].sum()) == 48  # 0.25 * 192
    assert int(masks["mlp/out/kernel"].sum()) == 12  # 0.25 * 48
    assert dst.sparsity(model) == 0.75
    # Active weights keep their values; biases are untouched and dense.
    for path, mask in masks.items():
        np.testing.assert_array_equal(model.get_layer(path.split("/")[1]).kernel.numpy()[mask],
                                      before[path][mask])
    np.testing.assert_array_equal(model.get_layer("h").bias.numpy(), np.ones(16))
    assert len(model.weights) == 4  # the mask variables are not model weights


def test_sparsify_erk_matches_the_distribution():
    model = mlp()
    dst.sparsify(model, 0.9, seed=0)
    shapes = {"mlp/h/kernel": (12, 16), "mlp/out/kernel": (16, 3)}
    expected = distributions.active_counts(shapes, distributions.erk(shapes, 0.9))
    masks = dst.get_masks(model)
    assert {p: int(m.sum()) for p, m in masks.items()} == expected
    assert dst.sparsity(model) == pytest.approx(1 - sum(expected.values()) / 240)


def test_sparsify_dict_and_callable_distributions():
    model = dst.sparsify(mlp(), 0.5, {"out": 0.0, "mlp/h/kernel": 0.75}, seed=0)
    counts = {p: int(m.sum()) for p, m in dst.get_masks(model).items()}
    assert counts == {"mlp/h/kernel": 48, "mlp/out/kernel": 48}

    def half(shapes, sparsity):
        return dict.fromkeys(shapes, 0.5)

    model = dst.sparsify(mlp("m2"), 0.3, half, seed=0)
    counts = {p: int(m.sum()) for p, m in dst.get_masks(model).items()}
    assert counts == {"m2/h/kernel": 96, "m2/out/kernel": 24}


def test_seed_makes_masks_reproducible():
    a = dst.get_masks(dst.sparsify(mlp("a"), 0.8, seed=3))
    b = dst.get_masks(dst.sparsify(mlp("b"), 0.8, seed=3))
    c = dst.get_masks(dst.sparsify(mlp("c"), 0.8, seed=4))
    np.testing.assert_array_equal(a["a/h/kernel"], b["b/h/kernel"])
    assert not np.array_equal(a["a/h/kernel"], c["c/h/kernel"])


def test_sparsity_of_a_dense_model_is_zero():
    assert dst.sparsity(mlp()) == 0.0
    assert dst.get_masks(mlp("m2")) == {}


# -- every layer type -------------------------------------------------------------
class Custom(layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 5), name="w")
        self.b = self.add_weight(shape=(5,), name="b", initializer="ones")

    def call(self, x):
        return x @ self.w + self.b


def seq(input_shape, *stack, dtype="float32"):
    return keras.Sequential([keras.Input(input_shape, dtype=dtype), *stack], name="m")


def mha_model():
    x = keras.Input((5, 6))
    return keras.Model(x, layers.MultiHeadAttention(2, 4, name="att")(x, x), name="m")


LAYERS = {
    "Dense": (lambda: seq((6,), layers.Dense(4, name="l")), ["l/kernel"]),
    "EinsumDense": (lambda: seq((5, 6), layers.EinsumDense("abc,cd->abd", (5, 4), bias_axes="d",
                                                      name="l")), ["l/kernel"]),
    "MultiHeadAttention": (mha_model, ["att/attention_output/kernel", "att/key/kernel",
                                       "att/query/kernel", "att/value/kernel"]),
    "Conv1D": (lambda: seq((8, 3), layers.Conv1D(4, 3, name="l")), ["l/kernel"]),
    "Conv2D": (lambda: seq((6, 6, 2), layers.Conv2D(4, 3, name="l")), ["l/kernel"]),
    "Conv3D": (lambda: seq((4, 4, 4, 2), layers.Conv3D(2, 2, name="l")), ["l/kernel"]),
    "Conv2DTranspose": (lambda: seq((4, 4, 2), layers.Conv2DTranspose(3, 3, name="l")),
                        ["l/kernel"]),
    "DepthwiseConv2D": (lambda: seq((6, 6, 3), layers.DepthwiseConv2D(3, depth_multiplier=2,
                                                                 name="l")), ["l/kernel"]),
    "SeparableConv2D": (lambda: seq((6, 6, 3), layers.SeparableConv2D(4, 3, name="l")),
                        ["l/depthwise_kernel", "l/pointwise_kernel"]),
    "LSTM": (lambda: seq((5, 3), layers.LSTM(4, name="l")),
             ["l/lstm_cell/kernel", "l/lstm_cell/recurrent_kernel"]),
    "GRU": (lambda: seq((5, 3), layers.GRU(4, name="l")),  # its (2, 12) bias stays dense
            ["l/gru_cell/kernel", "l/gru_cell/recurrent_kernel"]),
    "SimpleRNN": (lambda: seq((5, 3), layers.SimpleRNN(4, name="l")),
                  ["l/simple_rnn_cell/kernel", "l/simple_rnn_cell/recurrent_kernel"]),
    "Embedding": (lambda: seq((5,), layers.Embedding(20, 4, name="l"), dtype="int32"),
                  ["l/embeddings"]),
    "Custom": (lambda: seq((6,), Custom(name="l")), ["l/w"]),
    "BatchNorm+Dense": (lambda: seq((6,), layers.BatchNormalization(name="bn"), layers.Dense(4, name="l")),
                        ["l/kernel"]),
}
NOT_RESTORED_BY_LOAD_MODEL = {"Custom"}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_every_layer_type_is_sparsified_and_stays_sparse(kind):
    build, expected = LAYERS[kind]
    model = build()
    if kind in NOT_RESTORED_BY_LOAD_MODEL:
        with pytest.warns(UserWarning, match="load_model cannot restore the masks of"):
            dst.sparsify(model, 0.5, "uniform", seed=0)
    else:
        dst.sparsify(model, 0.5, "uniform", seed=0)
    masks = assert_masked_zero(model)
    # Sequential paths start with the model name, Functional ones do not.
    assert sorted(p.removeprefix("m/") for p in masks) == sorted(expected)
    for path, mask in masks.items():
        assert int(mask.sum()) == max(1, round(0.5 * mask.size)), path
    before = {p: v.copy() for p, v in ((w.path, w.numpy()) for w in model.weights)}
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(*data(model), batch_size=8, epochs=1, verbose=0)
    assert_masked_zero(model)
    for path, mask in masks.items():  # training did move the active weights
        after = next(w for w in model.weights if w.path == path).numpy()
        assert not np.array_equal(after[mask], before[path][mask]), path


# -- model structures ----------------------------------------------------------
class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.d1 = layers.Dense(8, name="d1")
        self.d2 = layers.Dense(2, name="d2")

    def call(self, x):
        return self.d2(self.d1(x))


def functional_nested_shared():
    inner = keras.Sequential([keras.Input((6,)), layers.Dense(4, name="in_d")], name="inner")
    shared = layers.Dense(6, name="shared")
    x = keras.Input((6,))
    y = inner(shared(shared(x)))
    return keras.Model(x, layers.Dense(2, name="head")(y), name="outer")


def test_functional_nested_and_shared_layers():
    model = functional_nested_shared()
    dst.sparsify(model, 0.5, "uniform", seed=0)
    masks = assert_masked_zero(model)
    assert sorted(masks) == ["head/kernel", "inner/in_d/kernel", "shared/kernel"]
    assert [int(m.sum()) for m in masks.values()] == [18, 12, 4]
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(*data(model), batch_size=8, epochs=1, verbose=0)
    assert_masked_zero(model)


def test_subclassed_model_warns_that_load_model_rebuilds_its_layers():
    model = Subclassed()
    model(np.zeros((1, 5), "float32"))
    with pytest.warns(UserWarning, match=r"sub/d1/kernel.*sub/d2/kernel"):
        dst.sparsify(model, 0.5, "uniform", seed=0)
    masks = assert_masked_zero(model)
    assert [int(m.sum()) for m in masks.values()] == [20, 8]
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(np.ones((8, 5), "float32"), np.ones((8, 2), "float32"), verbose=0)
    assert_masked_zero(model)


# -- optimizers ------------------------------------------------------------------
OPTIMIZERS = {
    "SGD(momentum)": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "Adam": lambda: keras.optimizers.Adam(0.05),
    "AdamW(weight_decay)": lambda: keras.optimizers.AdamW(0.05, weight_decay=0.1),
    "RMSprop": lambda: keras.optimizers.RMSprop(0.05),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_masked_weights_stay_zero_under_fit(opt):
    model = dst.sparsify(mlp(), 0.8, seed=0)
    masks = dst.get_masks(model)
    before = weights_of(model)
    model.compile(OPTIMIZERS[opt](), "mse")
    model.fit(*data(model), batch_size=8, epochs=2, verbose=0)
    assert_masked_zero(model)
    assert int(model.optimizer.iterations.numpy()) == 8
    assert not np.array_equal(before[0][masks["mlp/h/kernel"]],
                              model.get_layer("h").kernel.numpy()[masks["mlp/h/kernel"]])


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_masked_weights_stay_zero_in_a_custom_loop(opt):
    model = dst.sparsify(mlp(), 0.8, seed=0)
    optimizer = OPTIMIZERS[opt]()
    x, y = data(model)
    for step in range(3):
        target = keras.ops.convert_to_tensor(y[step * 8:(step + 1) * 8])
        grads = gradients(model, x[step * 8:(step + 1) * 8],
                          lambda out, t=target: keras.ops.mean((out - t) ** 2))
        optimizer.apply(grads, model.trainable_variables)
        assert_masked_zero(model)


def test_fit_before_sparsify_retraces_so_masks_apply():
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.fit(*data(model), batch_size=8, epochs=1, verbose=0)
    dst.sparsify(model, 0.8, seed=0)
    model.fit(*data(model), batch_size=8, epochs=1, verbose=0)
    assert_masked_zero(model)


def test_dense_gradient_reaches_masked_entries():
    model = keras.Sequential([keras.Input((6,)), layers.Dense(5, name="d")], name="lin")
    dst.sparsify(model, 0.8, "uniform", seed=0)
    mask = dst.get_masks(model)["lin/d/kernel"]
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    grad = numpy(gradients(model, x, lambda out: keras.ops.sum(out ** 2) + keras.ops.sum(out),
                           [model.get_layer("d").kernel])[0])
    assert (~mask).sum() == 24
    assert np.all(grad[~mask] != 0.0)


def test_user_kernel_constraint_keeps_working():
    model = mlp(kernel_constraint=keras.constraints.NonNeg())
    dst.sparsify(model, 0.5, "uniform", seed=0)
    constraint = model.get_layer("h").kernel.constraint
    assert isinstance(constraint, dst.MaskConstraint)
    assert isinstance(constraint.inner, keras.constraints.NonNeg)
    model.compile(keras.optimizers.SGD(0.5), "mse")
    model.fit(*data(model), batch_size=8, epochs=1, verbose=0)
    kernel = model.get_layer("h").kernel.numpy()
    assert_masked_zero(model)
    assert kernel.min() == 0.0
    assert int((kernel > 0).sum()) > 0


def test_sparse_init_rescales_each_output_unit():
    model = mlp()
    dense = model.get_layer("h").kernel.numpy().copy()
    dst.sparsify(model, 0.75, "uniform", seed=0, sparse_init=True)
    mask = dst.get_masks(model)["mlp/h/kernel"]
    scale = np.sqrt(12 / np.maximum(mask.sum(axis=0), 1))
    np.testing.assert_allclose(model.get_layer("h").kernel.numpy(),
                               np.where(mask, dense * scale, 0), rtol=1e-6)


def test_sparse_init_depthwise_units_are_channel_multiplier_pairs():
    model = seq((6, 6, 3), layers.DepthwiseConv2D(3, depth_multiplier=2, name="l"))
    dense = model.get_layer("l").kernel.numpy().copy()
    dst.sparsify(model, 0.5, "uniform", seed=0, sparse_init=True)
    mask = dst.get_masks(model)["m/l/kernel"]
    scale = np.sqrt(9 / np.maximum(mask.sum(axis=(0, 1)), 1))  # fan-in 3 * 3
    np.testing.assert_allclose(model.get_layer("l").kernel.numpy(),
                               np.where(mask, dense * scale, 0), rtol=1e-6)


# -- exclude ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "exclude",
    ["out", "mlp/out/kernel", lambda v: v.shape[-1] == 3, ["out"]],
    ids=["layer name", "path", "callable", "list"],
)
def test_exclude_keeps_weights_dense(exclude):
    model = mlp()
    model_out = model.get_layer("out").kernel.numpy().copy()
    dst.sparsify(model, 0.5, exclude=exclude, seed=0)
    assert sorted(dst.get_masks(model)) == ["mlp/h/kernel"]
    np.testing.assert_array_equal(model.get_layer("out").kernel.numpy(), model_out)
    assert model.get_layer("out").kernel.constraint is None
    assert dst.sparsity(model) == 0.5


def test_exclude_by_class():
    x = keras.Input((6, 6, 2))
    y = layers.Dense(3, name="d")(layers.Flatten()(layers.Conv2D(2, 3, name="c")(x)))
    model = keras.Model(x, y, name="m")
    dst.sparsify(model, 0.5, exclude=layers.Conv2D, seed=0)
    assert sorted(dst.get_masks(model)) == ["d/kernel"]


# -- errors leave the model untouched -----------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sparsity=1.0), r"`sparsity` must be in \[0, 1\).*sparsity=1\.0"),
        (dict(sparsity=-0.1), r"sparsity=-0\.1"),
        (dict(sparsity=1.2), r"sparsity=1\.2"),
        (dict(sparsity="0.5"), r"sparsity='0\.5'"),
        (dict(sparsity=True), r"sparsity=True"),
        (dict(sparsity=float("nan")), r"sparsity=nan"),
        (dict(sparsity=0.5, distribution="foo"),
         r"distribution='foo'.*Known distributions: \['er', 'erk', 'uniform'\]"),
        (dict(sparsity=0.5, exclude=["h", "out"]), r"no sparsifiable weight left after exclude"),
        (dict(sparsity=0.5, exclude=["h", "nope"]), r"`exclude` entry 'nope' matches no"),
        (dict(sparsity=0.5, distribution={"nope": 0.5}), r"keys \['nope'\] match no"),
        (dict(sparsity=0.5, distribution={"h": 1.5}),
         r"distribution\['mlp/h/kernel'\]=1\.5"),
        (dict(sparsity=0.5, distribution=lambda s, p: dict.fromkeys(s, 1.5)),
         r"density 1\.5 to weight 'mlp/h/kernel'"),
    ],
)
def test_bad_sparsify_arguments_leave_the_model_untouched(kwargs, match):
    model = mlp()
    before = state(model)
    with pytest.raises(ValueError, match=match):
        dst.sparsify(model, **kwargs)
    assert_unchanged(model, before)
    assert model.get_layer("h").kernel.constraint is None


def test_numpy_sparsity_is_accepted():
    model = dst.sparsify(mlp(), np.float32(0.5), "uniform", seed=0)
    assert dst.sparsity(model) == 0.5
    model = dst.sparsify(mlp("m2"), np.int64(0), "uniform", seed=0)
    assert dst.sparsity(model) == 0.0


def test_bad_exclude_type_is_a_type_error():
    model = mlp()
    before = state(model)
    with pytest.raises(TypeError, match=r"Received: 3 of type int"):
        dst.sparsify(model, 0.5, exclude=3)
    assert_unchanged(model, before)


def test_unbuilt_model_is_refused():
    model = keras.Sequential([layers.Dense(3)], name="lazy")
    with pytest.raises(ValueError, match=r"model 'lazy' is not built"):
        dst.sparsify(model, 0.5)
    assert not model.built


def test_model_without_sparsifiable_weights_is_refused():
    model = seq((6,), layers.BatchNormalization())
    before = state(model)
    with pytest.raises(ValueError, match=r"Model 'm' has no sparsifiable weight left\."):
        dst.sparsify(model, 0.5)
    assert_unchanged(model, before)


def test_non_model_is_refused():
    with pytest.raises(TypeError, match=r"needs a keras.Model. Received: Dense"):
        dst.sparsify(layers.Dense(3), 0.5)


def test_legacy_tf_keras_model_is_refused():
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(TypeError, match=r"dst.sparsify needs a Keras 3 model.*legacy tf_keras"):
        dst.sparsify(model, 0.5)
    assert_same_arrays(before, model.get_weights())
    assert model.layers[-1].kernel.constraint is None


def test_already_sparsified_model_is_refused():
    model = dst.sparsify(mlp(), 0.5, seed=0)
    before = state(model)
    with pytest.raises(ValueError, match=r"Model 'mlp' is already sparsified.*dst.set_masks"):
        dst.sparsify(model, 0.9, seed=1)
    assert_unchanged(model, before)


# -- get_masks / set_masks --------------------------------------------------------
def test_get_masks_returns_copies():
    model = dst.sparsify(mlp(), 0.5, seed=0)
    masks = dst.get_masks(model)
    masks["mlp/h/kernel"][:] = False
    assert int(dst.get_masks(model)["mlp/h/kernel"].sum()) > 0


def test_set_masks_zeroes_newly_masked_weights():
    model = dst.sparsify(mlp(), 0.5, "uniform", seed=0)
    old = dst.get_masks(model)["mlp/h/kernel"]
    kernel = model.get_layer("h").kernel.numpy()
    new = np.zeros((12, 16), "int64")
    new[:, :4] = 1  # 0/1 ints are accepted
    dst.set_masks(model, {"mlp/h/kernel": new})
    masks = dst.get_masks(model)
    np.testing.assert_array_equal(masks["mlp/h/kernel"], new.astype(bool))
    got = model.get_layer("h").kernel.numpy()
    np.testing.assert_array_equal(got, np.where(new & old, kernel, 0))
    assert int(masks["mlp/out/kernel"].sum()) == 24  # not named, unchanged
    assert dst.sparsity(model) == 1 - (48 + 24) / 240
    # The ITOP record keeps both the old and the new connections.
    record = model.get_layer("h").kernel.constraint.ever_active
    np.testing.assert_array_equal(record, old | new.astype(bool))


def test_set_masks_can_mask_an_unmasked_weight():
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.fit(*data(model), batch_size=8, epochs=1, verbose=0)  # traced without masks
    mask = np.random.default_rng(0).random((16, 3)) < 0.5
    dst.set_masks(model, {"mlp/out/kernel": mask})
    assert list(dst.get_masks(model)) == ["mlp/out/kernel"]
    assert isinstance(model.get_layer("out").kernel.constraint, dst.MaskConstraint)
    assert dst.sparsity(model) == 1 - mask.sum() / 48
    model.fit(*data(model), batch_size=8, epochs=1, verbose=0)
    assert_masked_zero(model)


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"mlp/h/kernel": np.ones((12, 16)), "mlp/nope": np.ones((2, 2))},
         r"no sparsifiable weight 'mlp/nope' in model 'mlp'"),
        ({"mlp/h/kernel": np.ones((12, 16)), "mlp/out/kernel": np.ones((3, 16))},
         r"'mlp/out/kernel' has shape \(3, 16\), expected \(16, 3\)"),
        ({"mlp/h/kernel": np.ones((12, 16)), "mlp/out/kernel": np.full((16, 3), 2)},
         r"'mlp/out/kernel' must hold only 0/1.*\[2, 2, 2, 2, 2\]"),
        ({"mlp/h/kernel": np.ones((12, 16)), "mlp/out/kernel": np.full((16, 3), 0.5)},
         r"values such as \[0\.5"),
    ],
    ids=["key", "shape", "value", "fraction"],
)
def test_bad_set_masks_leave_the_model_untouched(masks, match):
    model = dst.sparsify(mlp(), 0.5, seed=0)
    before = state(model)
    with pytest.raises(ValueError, match=match):
        dst.set_masks(model, masks)
    assert_unchanged(model, before)


def test_set_masks_needs_a_mapping():
    model = dst.sparsify(mlp(), 0.5, seed=0)
    before = state(model)
    with pytest.raises(TypeError, match=r"needs a dict \{weight path: mask\}.*Received: list"):
        dst.set_masks(model, [np.ones((12, 16))])
    assert_unchanged(model, before)


def test_total_counts_are_exact_for_many_sparsities():
    for i, s in enumerate([0.0, 0.1, 0.5, 0.95, 0.99]):
        model = dst.sparsify(mlp(f"m{i}"), s, "uniform", seed=i)
        counts = [int(m.sum()) for m in dst.get_masks(model).values()]
        assert counts == [max(1, round((1 - s) * 192)), max(1, round((1 - s) * 48))]
        assert math.isclose(dst.sparsity(model), 1 - sum(counts) / 240)


# -- the prunable-weights protocol for custom layers ----------------------------------
class TwoKernels(keras.layers.Layer):
    """Two 2-D kernels; `declare` is what `dst_prunable_weights` returns."""

    def __init__(self, declare="a", **kwargs):
        super().__init__(**kwargs)
        self.declare = declare

    def build(self, input_shape):
        self.kernel_a = self.add_weight(shape=(input_shape[-1], 6), name="kernel_a")
        self.kernel_b = self.add_weight(shape=(input_shape[-1], 6), name="kernel_b")
        self.scale = self.add_weight(shape=(6,), name="scale")
        self.frozen = self.add_weight(shape=(2, 2), name="frozen", trainable=False)

    def call(self, x):
        return x @ self.kernel_a + x @ self.kernel_b * self.scale

    def dst_prunable_weights(self):
        if self.declare == "a":
            return [self.kernel_a]
        if self.declare == "a+scale":
            return [self.kernel_a, self.scale]
        return self.declare(self) if callable(self.declare) else self.declare


_ELSEWHERE = keras.layers.Dense(2, name="elsewhere")
_ELSEWHERE.build((3,))


def _two_kernels_model(declare="a"):
    return keras.Sequential([keras.Input((4,)), TwoKernels(declare, name="two"),
                             keras.layers.Dense(3, name="out")], name="m")


def test_a_layer_declares_its_prunable_weights():
    model = _two_kernels_model()
    with pytest.warns(UserWarning, match=r"cannot restore the masks of \['m/two/kernel_a'\]"):
        dst.sparsify(model, 0.5, "uniform", seed=0)
    masks = dst.get_masks(model)
    assert list(masks) == ["m/two/kernel_a", "m/out/kernel"]  # kernel_b: declared dense
    assert [int(m.sum()) for m in masks.values()] == [12, 9]
    assert model.get_layer("two").kernel_b.constraint is None
    assert int((numpy(model.get_layer("two").kernel_b) != 0).sum()) == 24


@pytest.mark.filterwarnings("ignore:keras.models.load_model cannot restore")
def test_declared_weights_replace_the_heuristics_of_that_layer():
    model = _two_kernels_model("a+scale")  # a 1-D weight, masked because declared
    dst.sparsify(model, 0.5, "uniform", seed=0)
    assert sorted(dst.get_masks(model)) == ["m/out/kernel", "m/two/kernel_a", "m/two/scale"]
    assert int(dst.get_masks(model)["m/two/scale"].sum()) == 3


def test_a_layer_declaring_no_weights_covers_its_sublayers_too():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(5, name="inner")

        def call(self, x):
            return self.inner(x)

        def dst_prunable_weights(self):
            return []

    model = keras.Sequential([keras.Input((4,)), Block(name="block"),
                              keras.layers.Dense(3, name="out")], name="m")
    dst.sparsify(model, 0.5, "uniform", seed=0)
    assert sorted(dst.get_masks(model)) == ["m/out/kernel"]
    only = keras.Sequential([keras.Input((4,)), Block(name="block")], name="m")
    with pytest.raises(ValueError, match=r"has no sparsifiable weight left"):
        dst.sparsify(only, 0.5)


@pytest.mark.filterwarnings("ignore:keras.models.load_model cannot restore")
@pytest.mark.parametrize("declare, error, match", [
    (None, TypeError, r"TwoKernels 'two'\.dst_prunable_weights\(\) must return a list of the "
                      r"layer's keras\.Variable weights \(\[\] for none\)\. Received: NoneType"),
    (lambda layer: layer.kernel_a, TypeError, r"TwoKernels 'two'\.dst_prunable_weights\(\) "
                                              r"must return a list.*Received: Variable"),
    (lambda layer: [layer.kernel_a.value], TypeError, r"TwoKernels 'two'\.dst_prunable_weights"
                                                      r"\(\) must return keras\.Variable weights "
                                                      r"of the layer\. Received an item of type"),
    (lambda layer: ["kernel_a"], TypeError, r"Received an item of type str: 'kernel_a'"),
    (lambda layer: [_ELSEWHERE.kernel], ValueError, r"TwoKernels 'two'\.dst_prunable_weights\(\) "
                                              r"returned 'elsewhere/kernel', which is not a "
                                              r"weight of that layer"),
    (lambda layer: [layer.frozen], ValueError, r"returned 'm/two/frozen', which dst cannot mask: "
                                               r"it is not trainable"),
])
def test_a_bad_declaration_is_an_error_naming_the_layer(declare, error, match):
    model = _two_kernels_model(declare)
    with pytest.raises(error, match=match):
        dst.sparsify(model, 0.5, "uniform")
    assert all(v.constraint is None for v in model.weights)  # nothing changed


def test_a_prunable_weights_attribute_that_is_not_a_method_is_an_error():
    model = _two_kernels_model()
    layer = model.get_layer("two")
    object.__setattr__(layer, "dst_prunable_weights", ["kernel_a"])
    with pytest.raises(TypeError, match=r"`dst_prunable_weights` of TwoKernels 'two' must be a "
                                        r"method returning a list"):
        dst.sparsify(model, 0.5)


def _mlp4():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((20,)), layers.Dense(30, name="fc1"),
                             layers.Dense(30, name="fc2"), layers.Dense(5, name="out")],
                            name="m")


def test_keep_dense_leaves_first_or_last_layer_unmasked_and_outside_the_budget():
    for keep, dense_layers in [("first", {"fc1"}), ("last", {"out"}),
                               (["first", "last"], {"fc1", "out"})]:
        model = dst.sparsify(_mlp4(), 0.9, "erk", keep_dense=keep, seed=0)
        masks = dst.get_masks(model)
        assert {p.split("/")[1] for p in masks} == {"fc1", "fc2", "out"} - dense_layers
        # The rest is solved as if the kept layers did not exist.
        shapes = {p: m.shape for p, m in masks.items()}
        want = dst.distributions.active_counts(shapes, dst.distributions.erk(shapes, 0.9))
        assert {p: int(m.sum()) for p, m in masks.items()} == want
        for layer in model.layers:
            if layer.name in dense_layers:
                kernel = keras.ops.convert_to_numpy(layer.kernel)
                assert np.count_nonzero(kernel) == kernel.size


def test_erk_with_overrides_solves_the_rest_as_the_reference():
    model = dst.sparsify(_mlp4(), 0.8, "erk", overrides={"out": 0.0, "m/fc1/kernel": 0.5},
                         seed=0)
    masks = dst.get_masks(model)
    assert int(masks["m/out/kernel"].sum()) == 150  # sparsity 0: all active
    assert int(masks["m/fc1/kernel"].sum()) == 300  # 0.5 of 600
    # fc2 alone is the rest: ERK over one weight is its sparsity.
    assert int(masks["m/fc2/kernel"].sum()) == round(0.2 * 900)
    # Two free weights: densities are ERK's over those two only.
    model = dst.sparsify(_mlp4(), 0.8, "erk", overrides={"fc1": 0.95}, seed=0)
    masks = dst.get_masks(model)
    rest = {p: masks[p].shape for p in ("m/fc2/kernel", "m/out/kernel")}
    want = dst.distributions.active_counts(rest, dst.distributions.erk(rest, 0.8))
    assert {p: int(masks[p].sum()) for p in rest} == want
    assert int(masks["m/fc1/kernel"].sum()) == 30


@pytest.mark.parametrize("kwargs, error", [
    (dict(keep_dense="middle"), r"`keep_dense` must be None, 'first', 'last'"),
    (dict(keep_dense=["first", "lst"]), r"Received: keep_dense=\['first', 'lst'\]"),
    (dict(overrides={"fc9": 0.5}), r"`overrides` keys \['fc9'\] match no sparsified"),
    (dict(overrides={"fc1": 1.5}), r"overrides\['fc1'\]"),
    (dict(overrides=[("fc1", 0.5)]), r"`overrides` must be a dict"),
    (dict(distribution={"fc1": 0.5}, overrides={"fc2": 0.5}), r"not both"),
])
def test_keep_dense_and_overrides_refuse_bad_input_and_leave_the_model_as_it_was(kwargs,
                                                                                  error):
    model = _mlp4()
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    kwargs = {"distribution": "erk", **kwargs}
    with pytest.raises((ValueError, TypeError), match=error):
        dst.sparsify(model, 0.8, **kwargs)
    assert dst.get_masks(model) == {}
    for v, b in zip(model.weights, before):
        assert np.array_equal(keras.ops.convert_to_numpy(v), b)


def test_keep_dense_of_a_single_layer_model_leaves_nothing_and_says_so():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(2, name="only")])
    with pytest.raises(ValueError, match=r"no sparsifiable weight left after keep_dense='last'"):
        dst.sparsify(model, 0.5, keep_dense="last")
