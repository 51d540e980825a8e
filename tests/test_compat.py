"""One test per assumption dst makes about private Keras API (`dst._compat`
and the TensorFlow backend), so that a Keras upgrade that breaks one fails here."""

import keras
import numpy as np
import pytest
from keras import layers

from dst import _compat
from dst.backend import tensorflow as tf_backend


def built(optimizer, shapes=((3, 4), (4,), (4, 2))):
    variables = [keras.Variable(np.ones(s, "float32"), name=f"v{i}")
                 for i, s in enumerate(shapes)]
    optimizer.build(variables)
    return optimizer, variables


# -- optimizers ---------------------------------------------------------------
def test_inner_optimizer_unwraps_loss_scale_optimizer():
    adam = keras.optimizers.Adam()
    assert _compat.inner_optimizer(keras.optimizers.LossScaleOptimizer(adam)) is adam
    assert _compat.inner_optimizer(adam) is adam


def test_optimizer_variables_is_the_built_list():
    opt, variables = built(keras.optimizers.Adam())
    tracked = _compat.optimizer_variables(opt)
    assert [id(v) for v in tracked] == [id(v) for v in variables]
    assert tracked is _compat.optimizer_variables(opt)  # Keras' own list object


@pytest.mark.parametrize("optimizer, names", [
    (keras.optimizers.Adam(), ["_momentums", "_velocities"]),
    (keras.optimizers.SGD(momentum=0.9), ["momentums"]),
])
def test_optimizer_lists_hold_the_aligned_slots(optimizer, names):
    opt, variables = built(optimizer)
    lists = _compat.optimizer_lists(opt)
    for name in names:
        assert [tuple(s.shape) for s in lists[name]] == [tuple(v.shape) for v in variables]
        assert all(isinstance(s, keras.Variable) for s in lists[name])


def test_variable_index_finds_the_slot():
    opt, variables = built(keras.optimizers.Adam())
    momentums = _compat.optimizer_lists(opt)["_momentums"]
    for position, v in enumerate(variables):
        idx = _compat.variable_index(opt, v)
        assert idx == position
        assert tuple(momentums[idx].shape) == tuple(v.shape)


def test_ema_variables():
    opt, variables = built(keras.optimizers.Adam(use_ema=True))
    ema = _compat.ema_variables(opt)
    assert [tuple(e.shape) for e in ema] == [tuple(v.shape) for v in variables]
    assert ema is _compat.ema_variables(opt)  # an object found in optimizer_lists
    assert any(lst is ema for lst in _compat.optimizer_lists(opt).values())
    assert _compat.ema_variables(built(keras.optimizers.Adam())[0]) == []


def test_is_keras_optimizer():
    assert _compat.is_keras_optimizer(keras.optimizers.SGD())
    assert not _compat.is_keras_optimizer(object())


def test_optimizer_backend_names_the_backend_of_backend_specific_classes():
    # Keras builds the current backend's class, so compiled on PyTorch an Adam is
    # PyTorch's; generic classes elsewhere report None or their own backend.
    backend = keras.backend.backend()
    found = _compat.optimizer_backend(keras.optimizers.Adam())
    assert found in (None, backend)
    if backend == "torch":
        assert found == "torch"
    assert _compat.optimizer_backend(object()) is None


# -- layers and models --------------------------------------------------------
def nested_model():
    inner = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="deep")], name="inner")
    x = keras.Input((4,))
    return keras.Model(x, inner(layers.Dense(4, name="top")(x)), name="outer")


def test_flatten_layers_finds_nested_layers():
    model = nested_model()
    names = [lay.name for lay in _compat.flatten_layers(model)]
    assert {"top", "inner", "deep"} <= set(names) and "outer" not in names
    shallow = [lay.name for lay in _compat.flatten_layers(model, recursive=False)]
    assert "inner" in shallow and "deep" not in shallow
    assert _compat.flatten_layers(model, include_self=True)[0] is model


def test_own_trainable_variables_include_frozen_and_exclude_children():
    dense = layers.Dense(2)
    dense.build((None, 3))
    dense.trainable = False
    assert dense.trainable_variables == []
    assert [v.name for v in _compat.own_trainable_variables(dense)] == ["kernel", "bias"]
    model = nested_model()
    assert _compat.own_trainable_variables(model) == []


def test_functional_and_keras_saveable():
    x = keras.Input((2,))
    # dst checks `Functional | keras.Sequential`, so Sequential need not be one.
    assert isinstance(keras.Model(x, layers.Dense(1)(x)), _compat.Functional)
    assert issubclass(keras.layers.Layer, _compat.KerasSaveable)
    assert issubclass(keras.optimizers.Optimizer, _compat.KerasSaveable)


@pytest.mark.parametrize("layer, base", [
    (layers.Conv1D(2, 2), "BaseConv"),
    (layers.Conv2D(2, 2), "BaseConv"),
    (layers.Conv3D(2, 2), "BaseConv"),
    (layers.DepthwiseConv1D(2), "BaseDepthwiseConv"),
    (layers.DepthwiseConv2D(2), "BaseDepthwiseConv"),
    (layers.SeparableConv1D(2, 2), "BaseSeparableConv"),
    (layers.SeparableConv2D(2, 2), "BaseSeparableConv"),
    (layers.Conv1DTranspose(2, 2), "BaseConvTranspose"),
    (layers.Conv2DTranspose(2, 2), "BaseConvTranspose"),
    (layers.Conv3DTranspose(2, 2), "BaseConvTranspose"),
])
def test_conv_base_classes(layer, base):
    assert isinstance(layer, getattr(_compat, base))
    others = {"BaseConv", "BaseDepthwiseConv", "BaseSeparableConv"} - {base}
    assert not any(isinstance(layer, getattr(_compat, o)) for o in others)


def test_build_shapes():
    x = keras.Input((5, 4))
    dense = layers.Dense(3)
    dense(x)
    assert tuple(_compat.build_shapes(dense)["input_shape"]) == (None, 5, 4)
    mha = layers.MultiHeadAttention(2, 4)
    mha(x, keras.Input((7, 4)))
    shapes = _compat.build_shapes(mha)
    assert tuple(shapes["query_shape"]) == (None, 5, 4)
    assert tuple(shapes["value_shape"]) == (None, 7, 4)
    assert _compat.build_shapes(layers.Dense(3)) == {}


def test_attention_kernel_constraint_attribute():
    mha = layers.MultiHeadAttention(2, 4, kernel_constraint="non_neg")
    x = keras.Input((5, 4))
    mha(x, x)
    shared = getattr(mha, _compat.ATTENTION_KERNEL_CONSTRAINT)
    assert isinstance(shared, keras.constraints.NonNeg)
    for proj in (mha.query_dense, mha.key_dense, mha.value_dense, mha.output_dense):
        assert proj.kernel.constraint is shared
    replacement = keras.constraints.MaxNorm(2.0)
    object.__setattr__(mha, _compat.ATTENTION_KERNEL_CONSTRAINT, replacement)
    config = mha.get_config()["kernel_constraint"]
    assert config == keras.constraints.serialize(replacement)


def test_leaf_saveable_travels_in_weights_files(tmp_path):
    class Leaf(keras.constraints.Constraint, _compat.LeafSaveable):
        def __init__(self):
            self.value = np.zeros(3, "float32")

        def save_own_variables(self, store):
            store["value"] = self.value

        def load_own_variables(self, store):
            self.value = np.asarray(store["value"])

    def model_with_leaf():
        model = keras.Sequential([keras.Input((2,)), layers.Dense(3, name="d")])
        object.__setattr__(model.layers[0], "leaf_attr", Leaf())
        return model

    saved = model_with_leaf()
    saved.layers[0].leaf_attr.value = np.arange(3, dtype="float32")
    path = str(tmp_path / "leaf.weights.h5")
    saved.save_weights(path)
    loaded = model_with_leaf()
    loaded.load_weights(path)
    np.testing.assert_array_equal(loaded.layers[0].leaf_attr.value, [0, 1, 2])


# -- TensorFlow backend -------------------------------------------------------
def hook_calls(optimizer):
    """Patches `_distributed_tf_update_step` on `optimizer`; returns the call log."""
    calls = []
    original = getattr(optimizer, tf_backend._HOOKED)

    def hooked(distribution, grads_and_vars, learning_rate):
        grads_and_vars = list(grads_and_vars)
        calls.append(dict(
            step=int(optimizer.iterations.numpy()),
            vars=[var for _, var in grads_and_vars],
            grads=[np.asarray(distribution.experimental_local_results(g)[0])
                   for g, _ in grads_and_vars],
            lr=float(learning_rate),
        ))
        return original(distribution, grads_and_vars, learning_rate)

    setattr(optimizer, tf_backend._HOOKED, hooked)
    return calls


@pytest.mark.tensorflow_only
def test_tf_update_step_runs_once_per_apply_before_the_step_count():
    assert tf_backend._HOOKED == "_distributed_tf_update_step"
    opt, (v,) = built(keras.optimizers.SGD(0.1), shapes=((2, 2),))
    calls = hook_calls(opt)
    for step in range(2):
        opt.apply([np.full((2, 2), 1.0, "float32")], [v])
        assert len(calls) == step + 1 and calls[-1]["step"] == step
        assert int(opt.iterations.numpy()) == step + 1
    call = calls[0]
    # `variable_key`: the hook sees the backend variable of each keras.Variable.
    assert [id(var) for var in call["vars"]] == [tf_backend.variable_key(v)]
    np.testing.assert_allclose(call["grads"][0], np.ones((2, 2)))
    assert call["lr"] == pytest.approx(0.1)
    np.testing.assert_allclose(v.numpy(), np.full((2, 2), 0.8))


@pytest.mark.tensorflow_only
def test_tf_update_step_of_loss_scale_optimizer_sees_unscaled_finite_grads():
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=4.0)
    v = keras.Variable(np.ones((2, 2), "float32"))
    opt.build([v])
    calls = hook_calls(_compat.inner_optimizer(opt))
    opt.apply([np.full((2, 2), np.inf, "float32")], [v])
    assert calls == []
    opt.apply([np.full((2, 2), 2.0, "float32")], [v])  # scaled by 2.0 (halved scale)
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0]["grads"][0], np.ones((2, 2)))


def test_stateless_scope_and_is_mapped():
    v, w = keras.Variable(1.0), keras.Variable(2.0)
    assert not _compat.in_stateless_scope() and not _compat.is_mapped(v)
    with _compat.StatelessScope(state_mapping=[(v, keras.ops.convert_to_tensor(3.0))]):
        assert _compat.in_stateless_scope()
        assert _compat.is_mapped(v) and not _compat.is_mapped(w)
