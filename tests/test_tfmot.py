"""dst.tfmot: TF-MOT's pruning API on Keras 3 (schedules, prune_low_magnitude,
UpdatePruningStep, strip_pruning), and side by side with TF-MOT itself."""

import os

import keras
import numpy as np
import pytest

import dst
import dst.tfmot as tfmot_sparsity
from dst.tfmot import ConstantSparsity, PolynomialDecay

SCHEDULES = {
    # TF-MOT's pruning_schedule_test.py builds them this way (sparsity fixed).
    "constant_sparsity": lambda begin, end, freq=10: ConstantSparsity(0.5, begin, end, freq),
    "polynomial_decay": lambda begin, end, freq=10: PolynomialDecay(0.2, 0.8, begin, end, 3,
                                                                     freq),
}


def _mlp(seed=0):
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(4)])
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def _data(n=160):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 16)).astype("float32"), rng.normal(size=(n, 4)).astype("float32")


def _keep(size, sparsity):
    """TF-MOT's count: max(round(size · (1 − s)), 1) in float32."""
    return max(int(np.round(np.float32(size) * (np.float32(1) - np.float32(sparsity)))), 1)


# -- schedules: TF-MOT's pruning_schedule_test.py cases -----------------------------
@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedule_step_arguments_are_checked(kind):
    make = SCHEDULES[kind]
    for begin, end, message in [(-1, 1000, "begin_step should be >= 0"),
                                (-5, 1000, "begin_step should be >= 0"),
                                (10, -5, "end_step can be -1 or >= 0"),
                                (10, 5, "begin_step should be <= end_step")]:
        with pytest.raises(ValueError, match=message):
            make(begin, end)
    for freq in (0, -1, -5):
        with pytest.raises(ValueError, match="frequency should be > 0"):
            make(10, 1000, freq)
    for begin, end in [(0, 1000), (1, 1000), (100, 1000), (0, 0), (0, 1), (0, 100), (10, 10),
                       (10, 20)]:
        make(begin, end)
    make(10, 1000, 1)


def test_schedule_sparsity_is_checked():
    makers = [lambda s: ConstantSparsity(s, 0), lambda s: PolynomialDecay(s, 0.8, 0, 10),
              lambda s: PolynomialDecay(0.2, s, 0, 10)]
    for make in makers:
        for bad in (-0.001, -1.0, -10.0, 1.0, 10.0):
            with pytest.raises(ValueError, match=r"must be in range \[0,1\)"):
                make(bad)
        for good in (0.0, 0.001, 0.5, 0.99):
            make(good)
    with pytest.raises(ValueError, match="end_step cannot be -1"):
        PolynomialDecay(0.4, 0.8, 10, -1)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedule_prunes_in_range_and_on_frequency(kind):
    schedule = SCHEDULES[kind](100, 200, 1)
    assert [schedule(s)[0] for s in (90, 99, 100, 110, 200, 201, 210)] == [
        False, False, True, True, True, False, False]
    schedule = SCHEDULES[kind](100, 200, 10)
    assert [schedule(s)[0] for s in (100, 109, 110, 111)] == [True, False, True, False]


def test_schedule_values():
    forever = ConstantSparsity(0.5, 0, -1, 10)
    assert forever(10000) == (True, 0.5) and forever(100000000) == (True, 0.5)
    constant = ConstantSparsity(0.5, 100, 200, 10)
    assert [constant(s)[1] for s in (100, 110, 200)] == [0.5, 0.5, 0.5]
    decay = PolynomialDecay(0.2, 0.8, 100, 110, 3, 2)
    np.testing.assert_allclose([decay(s)[1] for s in (100, 102, 105, 110)],
                               [0.2, 0.4928, 0.725, 0.8], rtol=1e-6)


@pytest.mark.parametrize("schedule", [ConstantSparsity(0.7, 10, 20, 10),
                                      PolynomialDecay(0.2, 0.6, 10, 20, 5, 10)])
def test_schedule_serializes(schedule):
    config = schedule.get_config()
    assert config["class_name"] == type(schedule).__name__
    back = keras.saving.deserialize_keras_object(
        config, custom_objects={"ConstantSparsity": ConstantSparsity,
                                "PolynomialDecay": PolynomialDecay})
    assert back.__dict__ == schedule.__dict__


# -- the TF-MOT pattern on this backend ---------------------------------------------
def _prune_dense(schedule, **kwargs):
    def apply(layer):
        if isinstance(layer, keras.layers.Dense):
            return tfmot_sparsity.prune_low_magnitude(layer, pruning_schedule=schedule, **kwargs)
        return layer
    return apply


def test_pattern_reaches_schedule_sparsity_and_strips(tmp_path):
    model = _mlp()
    schedule = PolynomialDecay(0.5, 0.8, begin_step=0, end_step=20, frequency=5)
    pruned = keras.models.clone_model(model, clone_function=_prune_dense(schedule))
    pruned.compile(keras.optimizers.Adam(0.01), "mse")
    pruned.fit(*_data(), batch_size=16, epochs=2, shuffle=False, verbose=0,
               callbacks=[tfmot_sparsity.UpdatePruningStep()])
    for layer in pruned.layers:
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert np.count_nonzero(kernel) == _keep(kernel.size, 0.8), layer.name
    final = tfmot_sparsity.strip_pruning(pruned)
    assert [layer.name for layer in final.layers] == [layer.name for layer in pruned.layers]
    assert all(layer.kernel.constraint is None for layer in final.layers)
    assert not any(type(v).__module__.startswith("dst") for layer in final.layers
                   for v in vars(layer).values())
    path = os.path.join(tmp_path, "x.keras")
    final.save(path)
    loaded = keras.models.load_model(path)
    x = _data()[0][:8]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-6)


def test_forgetting_update_pruning_step_raises():
    pruned = tfmot_sparsity.prune_low_magnitude(_mlp())
    pruned.compile("sgd", "mse")
    with pytest.raises(RuntimeError, match="requires the UpdatePruningStep callback"):
        pruned.fit(*_data(), batch_size=16, epochs=1, verbose=0)


def test_custom_schedule_subclass():
    class Steps(tfmot_sparsity.PruningSchedule):
        """Prunes at steps 3 (to 0.25) and 7 (to 0.75)."""

        def __call__(self, step):
            return step in (3, 7), {3: 0.25, 7: 0.75}.get(step, 0.0)

        def get_config(self):
            return {"class_name": "Steps", "config": {}}

    class Log(keras.callbacks.Callback):
        counts = []

        def on_train_batch_end(self, batch, logs=None):
            self.counts.append(int(np.count_nonzero(
                keras.ops.convert_to_numpy(self.model.layers[0].kernel))))

    pruned = tfmot_sparsity.prune_low_magnitude(_mlp(), pruning_schedule=Steps())
    pruned.compile(keras.optimizers.SGD(0.01), "mse")
    pruned.fit(*_data(), batch_size=16, epochs=1, shuffle=False, verbose=0,
               callbacks=[tfmot_sparsity.UpdatePruningStep(), Log()])
    size = 16 * 24
    # TF-MOT's step p is the p-th batch: steps 3 and 7 are batches 2 and 6 (from 0).
    assert Log.counts[:8] == [size, size, *[_keep(size, 0.25)] * 4, *[_keep(size, 0.75)] * 2]


def test_second_fit_continues_the_step():
    schedule = ConstantSparsity(0.6, begin_step=15, end_step=15, frequency=1)
    pruned = tfmot_sparsity.prune_low_magnitude(_mlp(), pruning_schedule=schedule)
    pruned.compile(keras.optimizers.SGD(0.01), "mse")
    for _ in range(2):  # 10 steps each: step 15 is in the second fit
        pruned.fit(*_data(), batch_size=16, epochs=1, verbose=0,
                   callbacks=[tfmot_sparsity.UpdatePruningStep()])
    assert dst.sparsity(pruned) == pytest.approx(0.6, abs=0.01)


def test_prunes_a_list_functional_and_subclassed_model():
    dense = keras.layers.Dense(3)
    layers = tfmot_sparsity.prune_low_magnitude([keras.layers.InputLayer((4,)), dense])
    assert layers[1] is dense
    seq = keras.Sequential(layers)
    assert type(seq.layers[0].kernel.constraint).__name__ == "PruningMask"

    inputs = keras.Input((4,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dropout(0.1)(inputs)))
    pruned = tfmot_sparsity.prune_low_magnitude(functional)
    assert pruned is not functional and len(dst.get_masks(pruned)) == 1

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = keras.layers.Dense(5), keras.layers.Dense(2)

        def call(self, x):
            return self.b(self.a(x))

    sub = Sub()
    sub(np.ones((1, 4), "float32"))
    assert tfmot_sparsity.prune_low_magnitude(sub) is sub and len(dst.get_masks(sub)) == 2


def test_prunable_layer_and_registry():
    class Custom(keras.layers.Layer, tfmot_sparsity.PrunableLayer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 3))
            self.v = self.add_weight(shape=(input_shape[-1], 3))

        def call(self, x):
            return x @ self.w + x @ self.v

        def get_prunable_weights(self):
            return [self.v]

    model = keras.Sequential([keras.Input((4,)), tfmot_sparsity.prune_low_magnitude(Custom()),
                              keras.layers.Dense(2)])
    assert sorted(dst.get_masks(model)) == [model.layers[0].v.path]
    conv = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.SeparableConv2D(4, 3),
                             keras.layers.DepthwiseConv2D(3)])
    pruned = tfmot_sparsity.prune_low_magnitude(conv)
    assert [p.split("/")[-1] for p in dst.get_masks(pruned)] == ["pointwise_kernel"]


def test_bad_arguments():
    for bad in [(2,), (2, 4, 6), 3]:
        with pytest.raises(ValueError, match="sparsity_m_by_n argument must be a tuple/list"):
            tfmot_sparsity.prune_low_magnitude(keras.layers.Dense(2), sparsity_m_by_n=bad)
    with pytest.raises(ValueError, match="including element 2.0 of type"):
        tfmot_sparsity.prune_low_magnitude(keras.layers.Dense(2), sparsity_m_by_n=(2.0, 4))
    for bad in [(4, 4), (5, 4)]:  # TF-MOT's testGenerateMbyNMaskRaise cases
        with pytest.raises(ValueError, match=r"m be must smaller than n"):
            tfmot_sparsity.prune_low_magnitude(keras.layers.Dense(2), sparsity_m_by_n=bad)
    conv1d = keras.layers.Conv1D(2, 3)
    conv1d.build((None, 8, 4))
    with pytest.raises(ValueError, match=r"weight tensor with shape: \(3, 4, 2\) is not supported"):
        tfmot_sparsity.prune_low_magnitude(conv1d, sparsity_m_by_n=(2, 4))
    with pytest.raises(ValueError, match="Unsupported pooling type 'SUM'"):
        tfmot_sparsity.prune_low_magnitude(keras.layers.Dense(2), block_pooling_type="SUM")
    with pytest.raises(ValueError, match="`block_size` must be"):
        tfmot_sparsity.prune_low_magnitude(keras.layers.Dense(2), block_size=(0, 2))
    with pytest.raises(ValueError, match="must be a dst.tfmot.PruningSchedule"):
        tfmot_sparsity.prune_low_magnitude(keras.layers.Dense(2), pruning_schedule=0.5)
    with pytest.raises(TypeError, match="no wrapper layer"):
        tfmot_sparsity.prune_low_magnitude(keras.layers.Dense(2), input_shape=(3,))
    with pytest.raises(ValueError, match="can only prune an object"):
        tfmot_sparsity.prune_low_magnitude("dense")

    class Unknown(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(3, 3))

    with pytest.raises(ValueError, match="supported layer"):
        tfmot_sparsity.prune_low_magnitude(Unknown())
    conv = keras.layers.Conv2D(2, 3)
    conv.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match="Block Sparsity can only be used"):
        tfmot_sparsity.prune_low_magnitude(conv, block_size=(2, 2))
    with pytest.raises(ValueError, match="Expected model to be a `keras.Model`"):
        tfmot_sparsity.strip_pruning(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="`log_dir` must be a non-empty string"):
        tfmot_sparsity.PruningSummaries("")
    model = _mlp()
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="has no pruned weights"):
        model.fit(*_data(), verbose=0, callbacks=[tfmot_sparsity.UpdatePruningStep()])


def test_policy():
    policy = tfmot_sparsity.PruneForLatencyOnXNNPack()
    assert policy.allow_pruning(keras.layers.Conv2D(4, 1))
    assert not policy.allow_pruning(keras.layers.Conv2D(4, 3))
    assert not policy.allow_pruning(keras.layers.Dense(4))
    with pytest.raises(NotImplementedError, match="ensure_model_supports_pruning"):
        tfmot_sparsity.prune_low_magnitude(_mlp(), pruning_policy=policy)

    class DenseOnly(tfmot_sparsity.PruningPolicy):
        def allow_pruning(self, layer):
            return layer.name == "keep"

        def ensure_model_supports_pruning(self, model):
            pass

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="keep"),
                              keras.layers.Dense(2, name="skip")])
    pruned = tfmot_sparsity.prune_low_magnitude(model, pruning_policy=DenseOnly())
    assert [p.split("/")[-2] for p in dst.get_masks(pruned)] == ["keep"]


@pytest.mark.parametrize("scope", [False, True])
def test_saved_pruned_model_loads(tmp_path, scope):
    schedule = PolynomialDecay(0.3, 0.7, 0, 10, frequency=5)
    pruned = tfmot_sparsity.prune_low_magnitude(_mlp(), pruning_schedule=schedule,
                                                block_size=(2, 2), block_pooling_type="MAX")
    pruned.compile("sgd", "mse")
    pruned.fit(*_data(), batch_size=32, epochs=1, verbose=0,
               callbacks=[tfmot_sparsity.UpdatePruningStep()])
    path = os.path.join(tmp_path, "pruned.keras")
    pruned.save(path)
    if scope:
        with tfmot_sparsity.prune_scope():
            loaded = keras.models.load_model(path)
    else:
        loaded = keras.models.load_model(path)
    before, after = dst.get_masks(pruned), dst.get_masks(loaded)
    assert len(before) == len(after) == 2
    for mine, theirs in zip(before.values(), after.values()):
        np.testing.assert_array_equal(mine, theirs)
    constraint = loaded.layers[0].kernel.constraint
    assert constraint.pruning_schedule == schedule
    assert (constraint.block_size, constraint.block_pooling_type) == ((2, 2), "MAX")


def test_pruning_summaries(tmp_path):
    tf = pytest.importorskip("tensorflow")
    pruned = tfmot_sparsity.prune_low_magnitude(
        _mlp(), pruning_schedule=ConstantSparsity(0.5, 0, frequency=2))
    pruned.compile("sgd", "mse")
    pruned.fit(*_data(), batch_size=16, epochs=2, verbose=0,
               callbacks=[tfmot_sparsity.UpdatePruningStep(),
                          tfmot_sparsity.PruningSummaries(str(tmp_path))])
    folder = os.path.join(tmp_path, "metrics")
    values = {}
    for name in os.listdir(folder):
        for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                values[(value.tag, event.step)] = tf.make_ndarray(value.tensor).item()
    path = pruned.layers[0].kernel.path
    assert values[(f"{path}/sparsity", 0)] == 0.0
    assert values[(f"{path}/sparsity", 10)] == pytest.approx(0.5)
    assert values[(f"{path}/threshold", 10)] > 0.0
    with pytest.raises(ValueError, match="update_freq='epoch'"):
        tfmot_sparsity.PruningSummaries(str(tmp_path), update_freq="batch")


@pytest.mark.slow
def test_conformance_kit():
    dst.testing.check_updater(tfmot_sparsity.TFMOTPruning,
                              pruning_schedule=PolynomialDecay(0.5, 0.9, 0, 12, frequency=2))
    dst.testing.check_updater("tfmot_pruning",
                              pruning_schedule=ConstantSparsity(0.75, 0, frequency=3),
                              block_size=(2, 2), block_pooling_type="MAX")


# -- side by side with TF-MOT (tf_keras) ---------------------------------------------
def _tfmot():
    tfmot = pytest.importorskip("tensorflow_model_optimization")
    tf_keras = pytest.importorskip("tf_keras")
    return tfmot.sparsity.keras, tf_keras


def _fit_side_by_side(theirs, ours, x, y):
    """Trains the TF-MOT model and the dst one alike: SGD with lr 0, the same
    batches in order, 2 epochs, each with its UpdatePruningStep."""
    pruning, tf_keras = _tfmot()
    theirs.compile(tf_keras.optimizers.SGD(0.0), "mse")
    theirs.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
               callbacks=[pruning.UpdatePruningStep()])
    ours.compile(keras.optimizers.SGD(0.0), "mse")
    ours.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
             callbacks=[tfmot_sparsity.UpdatePruningStep()])


SIDE_BY_SIDE = [
    ("ConstantSparsity", dict(target_sparsity=0.6, begin_step=3, end_step=-1, frequency=4)),
    ("ConstantSparsity", dict(target_sparsity=0.7, begin_step=0, end_step=12, frequency=5)),
    ("PolynomialDecay", dict(initial_sparsity=0.1, final_sparsity=0.85, begin_step=2,
                             end_step=17, power=3, frequency=3)),
    ("PolynomialDecay", dict(initial_sparsity=0.3, final_sparsity=0.9, begin_step=0,
                             end_step=20, power=2, frequency=4)),
]


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("block", [(1, 1), (2, 3)])
@pytest.mark.parametrize("name,args", SIDE_BY_SIDE)
def test_masks_equal_tfmot(name, args, block):
    """Same weights, same batches, SGD with lr 0: every mask equals TF-MOT's."""
    pruning, tf_keras = _tfmot()
    model = _mlp()
    reference = tf_keras.Sequential([tf_keras.Input((16,)),
                                     tf_keras.layers.Dense(24, activation="relu"),
                                     tf_keras.layers.Dense(4)])
    reference.set_weights(model.get_weights())
    theirs = pruning.prune_low_magnitude(reference, getattr(pruning, name)(**args),
                                         block_size=block, block_pooling_type="AVG")
    ours = keras.models.clone_model(model, clone_function=_prune_dense(
        getattr(tfmot_sparsity, name)(**args), block_size=block))
    x, y = _data()  # 10 steps per epoch, 2 epochs
    _fit_side_by_side(theirs, ours, x, y)
    for wrapper, layer in zip(theirs.layers, ours.layers):
        expected = wrapper.pruning_vars[0][1].numpy().astype(bool)
        np.testing.assert_array_equal(layer.kernel.constraint.numpy(), expected)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("block,pooling", [((1, 1), "AVG"), ((2, 2), "AVG"), ((3, 2), "MAX"),
                                           ((4, 1), "AVG")])
def test_rule_equals_tfmot_on_the_same_weights(block, pooling):
    """dst's mask of a weight equals the one TF-MOT's Pruning computes from it."""
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl

    pruning, _ = _tfmot()
    rng = np.random.default_rng(3)
    updater = tfmot_sparsity.TFMOTPruning(seed=0)
    for shape in [(16, 24), (15, 7)]:
        for sparsity in (0.0, 0.3, 0.5, 0.77, 0.95):
            weight = rng.normal(size=shape).astype("float32")
            variables = [(tf.Variable(weight), tf.Variable(np.ones(shape, "float32")),
                          tf.Variable(0.0))]
            schedule = pruning.ConstantSparsity(sparsity, 0)
            impl = pruning_impl.Pruning(lambda: tf.constant(1, tf.int64), variables, schedule,
                                        block, pooling)
            _, expected = impl._maybe_update_block_mask(variables[0][0])
            units = (np.prod(shape) if block == (1, 1) else
                     np.prod([-(-s // b) for s, b in zip(shape, block)]))
            value = (tfmot_sparsity.pruning.keep_count(int(units), sparsity),
                     ("AVG", "MAX").index(pooling))
            kit = dst._select.NUMPY
            if block != (1, 1):
                kit = dst.blocks.BlockKit(kit, block)
            ours = updater.new_mask(kit, weight, np.ones(shape, bool), None, value,
                                    lambda role: 0)
            np.testing.assert_array_equal(ours, expected.numpy().astype(bool),
                                          err_msg=f"{shape} {sparsity}")


# The other layers TF-MOT prunes, side by side: name -> (input shape, the model's layers from
# (keras module, custom layer class)). Each model ends in a Dense(20) head, pruned too;
# DepthwiseConv2D is in TF-MOT's registry with no prunable weight, so there only the head is.
# Every rank-2 weight has at least two (1, 16) and (4, 4) blocks along each axis (see
# test_one_block_across_an_axis_fails_in_tfmot), and Embedding's (50, 24) table is divided by
# neither block.
LAYERS = {
    "conv2d": ((8, 8, 3), lambda k, _: [k.layers.Conv2D(6, 3, activation="relu"),
                                        k.layers.Flatten(), k.layers.Dense(20)]),
    "depthwise_conv2d": ((8, 8, 3), lambda k, _: [k.layers.DepthwiseConv2D(3),
                                                  k.layers.Flatten(), k.layers.Dense(20)]),
    "embedding": ((10,), lambda k, _: [k.layers.Embedding(50, 24),
                                       k.layers.GlobalAveragePooling1D(), k.layers.Dense(20)]),
    "prunable_layer": ((16,), lambda k, custom: [custom(24), k.layers.ReLU(),
                                                 k.layers.Dense(20)]),
}


def _prunable_layers(pruning, tf_keras):
    """A tiny Dense-like layer pruned through `PrunableLayer` (its kernel, not its bias): TF-MOT's
    mixin on tf_keras, and dst's on Keras 3."""
    class Theirs(tf_keras.layers.Layer, pruning.PrunableLayer):
        def __init__(self, units):
            super().__init__()
            self.units = units

        def build(self, input_shape):
            self.kernel = self.add_weight("kernel", (input_shape[-1], self.units))
            self.bias = self.add_weight("bias", (self.units,), initializer="zeros")

        def call(self, x):
            return x @ self.kernel + self.bias

        def get_prunable_weights(self):
            return [self.kernel]

    class Ours(keras.layers.Layer, tfmot_sparsity.PrunableLayer):
        def __init__(self, units):
            super().__init__()
            self.units = units

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def call(self, x):
            return x @ self.kernel + self.bias

        def get_prunable_weights(self):
            return [self.kernel]

    return Theirs, Ours


def _layer_models(kind):
    """(Keras 3 model with random normal weights, the same tf_keras model with its weights,
    inputs, targets): 160 samples, 10 batches of 16."""
    pruning, tf_keras = _tfmot()
    theirs_layer, ours_layer = _prunable_layers(pruning, tf_keras)
    shape, layers = LAYERS[kind]
    dtype = "int32" if kind == "embedding" else "float32"
    model = keras.Sequential([keras.Input(shape, dtype=dtype), *layers(keras, ours_layer)])
    reference = tf_keras.Sequential([tf_keras.Input(shape, dtype=dtype),
                                     *layers(tf_keras, theirs_layer)])
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    reference.set_weights(model.get_weights())
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 50, size=(160, *shape)).astype(dtype) if kind == "embedding" else
         rng.normal(size=(160, *shape)).astype(dtype))
    return model, reference, x, rng.normal(size=(160, 20)).astype("float32")


def _masks_side_by_side(kind, name, args, **kwargs):
    """Prunes the whole model with TF-MOT and with dst (same weights, same batches, SGD with lr 0,
    2 epochs of 10 steps); returns [(layer, TF-MOT's mask, dst's mask)] for each pruned weight."""
    pruning, tf_keras = _tfmot()
    model, reference, x, y = _layer_models(kind)
    theirs = pruning.prune_low_magnitude(reference, getattr(pruning, name)(**args), **kwargs)
    ours = tfmot_sparsity.prune_low_magnitude(model, getattr(tfmot_sparsity, name)(**args),
                                              **kwargs)
    _fit_side_by_side(theirs, ours, x, y)
    masks = []
    for wrapper, layer in zip(theirs.layers, ours.layers):
        expected = [mask.numpy().astype(bool) for _, mask, _ in wrapper.pruning_vars]
        got = [weight.constraint.numpy() for weight in layer.weights
               if isinstance(weight.constraint, tfmot_sparsity.pruning.PruningMask)]
        assert len(got) == len(expected), layer.name
        masks += [(layer.name, e, g) for e, g in zip(expected, got)]
    assert masks and not any(expected.all() for _, expected, _ in masks)  # all pruned
    return masks


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name,args", [SIDE_BY_SIDE[0], SIDE_BY_SIDE[2]])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_masks_equal_tfmot(kind, name, args):
    """Conv2D, DepthwiseConv2D, Embedding and a PrunableLayer, unstructured: the masks equal
    TF-MOT's, and the same weights are pruned."""
    masks = _masks_side_by_side(kind, name, args)
    assert len(masks) == (1 if kind == "depthwise_conv2d" else 2)
    for layer, expected, got in masks:
        np.testing.assert_array_equal(got, expected, err_msg=layer)


@pytest.mark.tensorflow_only
@pytest.mark.slow  # 24 side-by-side pairs of fits (tf_keras and Keras 3)
@pytest.mark.parametrize("block,pooling", [((1, 16), "AVG"), ((4, 4), "MAX"), ((1, 16), "MAX"),
                                           ((4, 4), "AVG")])
@pytest.mark.parametrize("name,args", [SIDE_BY_SIDE[1], SIDE_BY_SIDE[3]])
@pytest.mark.parametrize("kind", ["depthwise_conv2d", "embedding", "prunable_layer"])
def test_layer_block_masks_equal_tfmot(kind, name, args, block, pooling):
    """Blocks where TF-MOT takes them: rank-2 weights (Embedding's table, the PrunableLayer's
    kernel, the Dense heads; DepthwiseConv2D prunes nothing, so takes any block)."""
    for layer, expected, got in _masks_side_by_side(kind, name, args, block_size=block,
                                                    block_pooling_type=pooling):
        np.testing.assert_array_equal(got, expected, err_msg=layer)


def _m_by_n_models(kind):
    """A Conv2D (8 input channels, rank 4) and a Dense head (whose 216 inputs are not a
    multiple of 5), or an MLP; Keras 3 and tf_keras with the same weights."""
    pruning, tf_keras = _tfmot()

    def layers(k):
        if kind == "conv2d":
            return [k.layers.Conv2D(6, 3, activation="relu"), k.layers.Flatten(),
                    k.layers.Dense(4)]
        return [k.layers.Dense(24, activation="relu"), k.layers.Dense(4)]

    shape = (5, 5, 8) if kind == "conv2d" else (16,)
    model = keras.Sequential([keras.Input(shape), *layers(keras)])
    reference = tf_keras.Sequential([tf_keras.Input(shape), *layers(tf_keras)])
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    reference.set_weights(model.get_weights())
    rng = np.random.default_rng(1)
    return (model, reference, rng.normal(size=(160, *shape)).astype("float32"),
            rng.normal(size=(160, 4)).astype("float32"))


class _MaskLog:
    """The masks of every pruned weight after every batch: dst's and TF-MOT's."""

    def __init__(self):
        self.ours, self.theirs = [], []

    def callbacks(self, tf_keras):
        log = self

        class Ours(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                log.ours.append(list(dst.get_masks(self.model).values()))

        class Theirs(tf_keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                log.theirs.append([m.numpy().astype(bool) for layer in self.model.layers
                                   for _, m, _ in getattr(layer, "pruning_vars", [])])

        return Ours(), Theirs()


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("kind,m_by_n", [
    ("conv2d", (3, 5)),  # short groups at the end of both input axes (8 and 54 inputs)
    pytest.param("conv2d", (2, 4), marks=pytest.mark.slow),
    pytest.param("mlp", (1, 4), marks=pytest.mark.slow)])
def test_m_by_n_masks_equal_tfmot(kind, m_by_n):
    """sparsity_m_by_n side by side with TF-MOT: same weights, same batches, SGD with lr 0,
    2 epochs; the masks are equal after every batch (TF-MOT makes them at its pruning step 1
    and keeps them, whatever the schedule says)."""
    pruning, tf_keras = _tfmot()
    model, reference, x, y = _m_by_n_models(kind)
    schedule = dict(target_sparsity=0.9, begin_step=3, frequency=2)
    theirs = pruning.prune_low_magnitude(reference, pruning.ConstantSparsity(**schedule),
                                         sparsity_m_by_n=m_by_n)
    ours = tfmot_sparsity.prune_low_magnitude(model, ConstantSparsity(**schedule),
                                              sparsity_m_by_n=m_by_n)
    log = _MaskLog()
    ours_cb, theirs_cb = log.callbacks(tf_keras)
    theirs.compile(tf_keras.optimizers.SGD(0.0), "mse")
    theirs.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
               callbacks=[pruning.UpdatePruningStep(), theirs_cb])
    ours.compile(keras.optimizers.SGD(0.0), "mse")
    ours.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
             callbacks=[tfmot_sparsity.UpdatePruningStep(), ours_cb])
    assert len(log.ours) == len(log.theirs) == 20 and len(log.ours[0]) == 2
    for batch, (mine, expected) in enumerate(zip(log.ours, log.theirs)):
        for got, want in zip(mine, expected, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"batch {batch}")
    m, n = m_by_n
    for mask in log.ours[-1]:
        counts = dst.nm.group_counts(mask, n)
        assert counts.max() == n - m and mask.mean() < 1
    constraint = ours.layers[0].kernel.constraint
    assert constraint.sparsity_m_by_n == m_by_n and dst.nm.n_m_of(constraint) == (n - m, n)


def test_m_by_n_mask_is_saved_with_its_structure(tmp_path):
    pruned = tfmot_sparsity.prune_low_magnitude(_mlp(), sparsity_m_by_n=(2, 4))
    pruned.compile("sgd", "mse")
    pruned.fit(*_data(), batch_size=32, epochs=1, verbose=0,
               callbacks=[tfmot_sparsity.UpdatePruningStep()])
    path = os.path.join(tmp_path, "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    for mine, theirs in zip(dst.get_masks(pruned).values(), dst.get_masks(loaded).values()):
        np.testing.assert_array_equal(mine, theirs)
        assert dst.nm.is_n_m(theirs, (2, 4))
    assert loaded.layers[0].kernel.constraint.sparsity_m_by_n == (2, 4)


@pytest.mark.tensorflow_only
def test_conv2d_blocks_are_refused_as_tfmot_does():
    """TF-MOT refuses block_size for a weight that is not rank 2 (Conv2D's kernel), when the
    wrapper builds; dst when it attaches the mask. Same message."""
    pruning, _ = _tfmot()
    model, reference, _, _ = _layer_models("conv2d")
    message = "Block Sparsity can only be used for layers which have 2-dimensional weights"
    with pytest.raises(ValueError, match=message):
        pruning.prune_low_magnitude(reference, block_size=(1, 16))
    with pytest.raises(ValueError, match=message):
        tfmot_sparsity.prune_low_magnitude(model, block_size=(1, 16))


@pytest.mark.tensorflow_only
def test_one_block_across_an_axis_fails_in_tfmot():
    """TF-MOT squeezes the pooled block magnitudes (`factorized_pool` ends in `tf.squeeze`), so a
    weight with a single block along an axis (Embedding(50, 8) with (1, 16) blocks) fails at the
    first pruning step; dst prunes it, whole rows here."""
    pruning, tf_keras = _tfmot()
    args = dict(target_sparsity=0.6, begin_step=1, frequency=100)
    x = np.random.default_rng(1).integers(0, 50, size=(32, 10)).astype("int32")
    y = np.zeros((32, 10, 8), "float32")
    theirs = pruning.prune_low_magnitude(
        tf_keras.Sequential([tf_keras.Input((10,), dtype="int32"),
                             tf_keras.layers.Embedding(50, 8)]),
        pruning.ConstantSparsity(**args), block_size=(1, 16))
    theirs.compile(tf_keras.optimizers.SGD(0.0), "mse")
    with pytest.raises(ValueError, match="Input tensor must be rank 2"):
        theirs.fit(x, y, batch_size=16, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    ours = tfmot_sparsity.prune_low_magnitude(
        keras.Sequential([keras.Input((10,), dtype="int32"), keras.layers.Embedding(50, 8)]),
        ConstantSparsity(**args), block_size=(1, 16))
    ours.compile(keras.optimizers.SGD(0.0), "mse")
    ours.fit(x, y, batch_size=16, verbose=0, callbacks=[tfmot_sparsity.UpdatePruningStep()])
    mask = ours.layers[0].embeddings.constraint.numpy()
    assert (mask.all(axis=1) | ~mask.any(axis=1)).all()
    assert mask.all(axis=1).sum() == _keep(50, 0.6)
