"""dst.masking: masks along every path a model takes: frozen, reloaded, set_weights, cloned."""

import json

import keras
import numpy as np
import pytest
from conftest import run_python
from keras import layers

import dst
from dst._model import dynamic_targets
from dst.masking import MaskConstraint, MaskGroup


def mlp(name="mlp", functional=False):
    if functional:
        x = keras.Input((6,))
        y = layers.Dense(2, name="out")(layers.Dense(8, name="h")(x))
        return keras.Model(x, y, name=name)
    return keras.Sequential(
        [keras.Input((6,)), layers.Dense(8, name="h"), layers.Dense(2, name="out")], name=name)


def mha(name="att_model"):
    x = keras.Input((5, 6))
    y = layers.MultiHeadAttention(2, 4, name="att")(x, x)
    return keras.Model(x, layers.Dense(2, name="head")(layers.Flatten()(y)), name=name)


def data(model, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *model.input_shape[1:])).astype("float32"),
            rng.normal(size=(n, 2)).astype("float32"))


def quiet_summary(model):
    return dst.summary(model, print_fn=lambda *_: None)


def masked_nonzero(model) -> int:
    """Non-zero entries where the mask is 0, over all masked weights."""
    return sum(int(np.count_nonzero(t.variable.numpy()[~t.constraint.numpy()]))
               for t in dst._model.masked_targets(model))


def masks_by_layer(model) -> dict:
    """get_masks keyed by "layer/weight", which does not depend on the model's name."""
    return {"/".join(p.split("/")[-2:]): m for p, m in dst.get_masks(model).items()}


# -- frozen layers ------------------------------------------------------------------
def frozen_model():
    model = dst.sparsify(mlp(), 0.75, "uniform", seed=0)
    model.get_layer("h").trainable = False
    return model


def test_frozen_layer_keeps_its_mask_in_get_masks_sparsity_and_summary():
    model = dst.sparsify(mlp(), 0.75, "uniform", seed=0)
    masks = dst.get_masks(model)
    model.get_layer("h").trainable = False
    got = dst.get_masks(model)
    assert sorted(got) == ["mlp/h/kernel", "mlp/out/kernel"]
    assert all(np.array_equal(got[p], masks[p]) for p in masks)
    assert dst.sparsity(model) == 0.75
    rows = {r["path"]: r for r in quiet_summary(model)}
    assert rows["mlp/h/kernel"]["active"] == 12
    assert rows["total"]["density"] == 0.25


def test_dynamic_targets_leave_frozen_weights_out():
    model = frozen_model()
    assert [t.path for t in dynamic_targets(model)] == ["mlp/out/kernel"]
    model.get_layer("h").trainable = True
    assert [t.path for t in dynamic_targets(model)] == ["mlp/h/kernel", "mlp/out/kernel"]


def test_frozen_masked_weight_stays_unchanged_while_the_rest_trains():
    model = frozen_model()
    before = model.get_layer("h").kernel.numpy().copy()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(*data(model), verbose=0)
    np.testing.assert_array_equal(model.get_layer("h").kernel.numpy(), before)
    assert masked_nonzero(model) == 0


def test_sparsify_leaves_an_unmasked_frozen_weight_dense():
    model = mlp()
    model.get_layer("h").trainable = False
    dst.sparsify(model, 0.5, "uniform", seed=0)
    assert sorted(dst.get_masks(model)) == ["mlp/out/kernel"]
    assert model.get_layer("h").kernel.constraint is None


LOAD_WITHOUT_DST = r"""
import json, sys
import numpy as np
import keras

path, x_path = sys.argv[1:]
model = keras.models.load_model(path)
print(json.dumps(dict(
    dst_imported="dst" in sys.modules,
    trainable=model.get_layer("h").trainable,
    pred=model.predict(np.load(x_path), verbose=0).tolist(),
)))
"""


def no_dst_objects(model):
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for value in vars(layer).values():
            assert not isinstance(value, MaskConstraint | MaskGroup), layer.name
    for w in model.weights:
        assert not isinstance(w.constraint, MaskConstraint | MaskGroup), w.path
    assert "dst" not in model.to_json()


@pytest.mark.slow  # a new process
def test_strip_removes_the_mask_of_a_frozen_layer(tmp_path):
    model = frozen_model()
    x, _ = data(model, seed=1)
    expected = model.predict(x, verbose=0)
    plain = dst.strip(model)
    no_dst_objects(plain)
    plain.save(tmp_path / "plain.keras")
    np.save(tmp_path / "x.npy", x)
    got = json.loads(run_python(LOAD_WITHOUT_DST, str(tmp_path / "plain.keras"),
                                str(tmp_path / "x.npy")).strip().splitlines()[-1])
    assert got["dst_imported"] is False
    assert got["trainable"] is False
    np.testing.assert_allclose(got["pred"], expected, rtol=1e-6)
    # The original model keeps its masks, frozen one included.
    assert sorted(dst.get_masks(model)) == ["mlp/h/kernel", "mlp/out/kernel"]


def test_strip_inplace_removes_the_mask_of_a_frozen_layer():
    model = frozen_model()
    dst.strip(model, inplace=True)
    no_dst_objects(model)
    assert dst.get_masks(model) == {}


# -- dense values written into a sparse model ---------------------------------------
@pytest.mark.parametrize("build", [mlp, lambda: mlp(functional=True), mha],
                         ids=["sequential", "functional", "mha"])
def test_load_weights_from_a_dense_file_keeps_masked_entries_zero(tmp_path, build):
    dense = build()
    dense.set_weights([np.full(w.shape, 0.5, "float32") for w in dense.weights])
    dense.save_weights(tmp_path / "dense.weights.h5")
    model = dst.sparsify(build(), 0.6, seed=0)
    masks = dst.get_masks(model)
    model.load_weights(tmp_path / "dense.weights.h5")
    assert masked_nonzero(model) == 0
    got = dst.get_masks(model)
    assert all(np.array_equal(got[p], masks[p]) for p in masks)
    for path, mask in masks.items():  # active entries hold the file's values
        value = {w.path: w for w in model.weights}[path].numpy()
        assert np.all(value[mask] == 0.5), path
    dst.sparsity(model)  # no warning: pytest turns dst's warnings into errors


def test_load_weights_zeroes_a_model_loaded_with_load_model(tmp_path):
    model = dst.sparsify(mha(), 0.6, seed=0)
    model.save(tmp_path / "m.keras")
    dense = mha()
    dense.set_weights([np.ones(w.shape, "float32") for w in dense.weights])
    dense.save_weights(tmp_path / "dense.weights.h5")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    masks = dst.get_masks(loaded)  # dst binds each mask to its weight
    loaded.load_weights(tmp_path / "dense.weights.h5")
    assert masked_nonzero(loaded) == 0
    assert all(np.array_equal(a, b) for a, b in zip(dst.get_masks(loaded).values(),
                                                    masks.values()))


def test_sparsity_and_summary_report_values_written_by_set_weights():
    model = dst.sparsify(mlp(), 0.75, "uniform", seed=0)
    model.set_weights([np.ones(w.shape, "float32") for w in model.weights])
    with pytest.warns(UserWarning, match=r"dst.sparsity: weights \['mlp/h/kernel', "
                                         r"'mlp/out/kernel'\] are non-zero where their mask"
                                         r".*dst.set_masks\(model, dst.get_masks\(model\)\)"):
        assert dst.sparsity(model) == 0.0  # the real zeros: none
    with pytest.warns(UserWarning, match=r"dst.summary: weights .*'mlp/h/kernel'"):
        rows = quiet_summary(model)
    assert rows[-1]["density"] == 1.0
    assert int(dst.get_masks(model)["mlp/h/kernel"].sum()) == 12  # masks unchanged
    dst.set_masks(model, dst.get_masks(model))
    assert dst.sparsity(model) == 0.75
    assert quiet_summary(model)[-1]["density"] == 0.25


def test_a_training_step_clears_the_set_weights_warning():
    model = dst.sparsify(mlp(), 0.75, "uniform", seed=0)
    model.set_weights([np.ones(w.shape, "float32") for w in model.weights])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(*data(model), verbose=0)
    assert dst.sparsity(model) == 0.75


# -- clone_model ----------------------------------------------------------------------
@pytest.mark.parametrize("build", [mlp, lambda: mlp(functional=True), mha],
                         ids=["sequential", "functional", "mha"])
def test_clone_model_is_sparse_with_the_same_masks(build):
    model = dst.sparsify(build(), 0.7, seed=0)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(*data(model), verbose=0)
    clone = keras.models.clone_model(model)
    want, got = masks_by_layer(model), masks_by_layer(clone)
    assert sorted(got) == sorted(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert [t.constraint.fixed for t in dst._model.masked_targets(clone)] == [False] * len(want)

    clone.set_weights(model.get_weights())
    assert dst.sparsity(clone) == pytest.approx(dst.sparsity(model))
    clone.compile(keras.optimizers.Adam(0.05), "mse")
    clone.fit(*data(model, seed=1), verbose=0)
    assert masked_nonzero(clone) == 0
    assert any(np.count_nonzero(w) for w in clone.get_weights())
    plain = dst.strip(clone)
    no_dst_objects(plain)


def test_clone_warns_until_its_fresh_weights_are_masked():
    model = dst.sparsify(mlp(), 0.75, "uniform", seed=0)
    clone = keras.models.clone_model(model)  # new, dense initial values
    with pytest.warns(UserWarning, match="non-zero where their mask is 0"):
        dst.sparsity(clone)
    dst.set_masks(clone, dst.get_masks(clone))
    assert dst.sparsity(clone) == 0.75


@pytest.mark.parametrize("name", ["rigl", "granet", "srigl", "snfs"])
def test_a_clone_taken_mid_run_continues_the_run_exactly(name):
    # 16 steps in two fits of 8; the last update at step 12 (GraNet: 13). One run
    # split over two fits: its steps count from the optimizer's step 0.
    anchored = dict(seed=0, steps_from="optimizer")
    make = {
        "rigl": lambda: dst.callbacks.RigL(update_freq=2, drop_fraction=0.5, end_step=13,
                                           **anchored),
        "granet": lambda: dst.callbacks.GraNet(0.9, update_freq=2, end_step=13, **anchored),
        "srigl": lambda: dst.callbacks.SRigL(update_freq=2, drop_fraction=0.5, end_step=13,
                                             gamma_sal=0.0, **anchored),  # no ablation
        "snfs": lambda: dst.callbacks.SNFS(update_freq=2, drop_fraction=0.5, end_step=13,
                                           **anchored),
    }[name]
    keras.utils.set_random_seed(0)
    model = dst.sparsify(mlp(), 0.5, "uniform", seed=0)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x, y = data(model, n=32)
    fit = dict(batch_size=4, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, callbacks=[make()], **fit)  # the first half of the run
    at_clone = list(masks_by_layer(model).values())

    clone = keras.models.clone_model(model)
    assert all(np.array_equal(a, b) for a, b in
               zip(masks_by_layer(clone).values(), at_clone, strict=True))
    clone.set_weights(model.get_weights())
    clone.compile(keras.optimizers.Adam(0.01), "mse")
    clone.optimizer.build(clone.trainable_variables)
    for mine, theirs in zip(clone.optimizer.variables, model.optimizer.variables, strict=True):
        mine.assign(keras.ops.convert_to_numpy(theirs))  # step 8, and the moments (a copy:
        # on JAX the model's next fit donates, so deletes, the arrays it holds)

    class Log(keras.callbacks.Callback):
        """The masks once dst's callback bound (first batch), then after each batch."""

        def __init__(self):
            super().__init__()
            self.start, self.masks = None, []

        def on_train_batch_begin(self, batch, logs=None):
            if self.start is None:
                self.start = list(masks_by_layer(self.model).values())

        def on_train_batch_end(self, batch, logs=None):
            self.masks.append(list(masks_by_layer(self.model).values()))

    log = Log()
    model.fit(x, y, callbacks=[make()], **fit)  # the second half, on the model
    clone.fit(x, y, callbacks=[make(), log], **fit)  # and on its clone
    assert all(np.array_equal(a, b) for a, b in zip(log.start, at_clone, strict=True))
    for a, b in zip(masks_by_layer(clone).values(), masks_by_layer(model).values(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(clone.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(log.masks[-1], at_clone))  # updated
    counts = [[int(m.sum()) for m in masks] for masks in log.masks]
    if name == "granet":  # the schedule's 0.9 at its end, step 13
        assert counts[-1] == [5, 2]
    elif name == "snfs":  # the total
        assert {sum(c) for c in counts} == {sum(int(m.sum()) for m in at_clone)}
    else:
        assert all(c == [int(m.sum()) for m in at_clone] for c in counts)
    assert masked_nonzero(clone) == 0


def test_loaded_weights_mask_wins_over_the_config_mask(tmp_path):
    model = dst.sparsify(mha(), 0.7, seed=0)
    clone = keras.models.clone_model(model)
    other = dst.sparsify(mha("other"), 0.7, seed=1)
    other.save_weights(tmp_path / "other.weights.h5")
    clone.load_weights(tmp_path / "other.weights.h5")
    want, got = masks_by_layer(other), masks_by_layer(clone)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert not all(np.array_equal(got[k], masks_by_layer(model)[k]) for k in want)
    assert masked_nonzero(clone) == 0


def test_mask_constraint_config_round_trips():
    inner = keras.constraints.MaxNorm(2.0)
    mask = np.random.default_rng(0).random((5, 7)) < 0.3
    c = MaskConstraint(inner, fixed=True, mask=mask)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(c)))
    back = keras.saving.deserialize_keras_object(config)
    assert type(back) is MaskConstraint and back.fixed is True
    assert isinstance(back.inner, keras.constraints.MaxNorm)
    np.testing.assert_array_equal(back.numpy(), mask)
    np.testing.assert_array_equal(back.ever_active, mask)  # the record restarts
    assert back.get_config() == c.get_config()
    assert MaskConstraint().get_config()["mask"] is None
    assert MaskConstraint.from_config(MaskConstraint().get_config()).mask is None


def test_mask_group_config_round_trips():
    masks = {"query/kernel": np.eye(6, 8, dtype=bool), "value/kernel": np.eye(8, 6, dtype=bool)}
    group = MaskGroup(keras.constraints.NonNeg(),
                      members={k: MaskConstraint(mask=m) for k, m in masks.items()})
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(group)))
    back = keras.saving.deserialize_keras_object(config)
    assert isinstance(back.inner, keras.constraints.NonNeg)
    assert sorted(back.members) == sorted(masks)
    for key, mask in masks.items():
        np.testing.assert_array_equal(back.members[key].numpy(), mask)
    assert back.get_config() == group.get_config()


# -- legacy tf_keras models ---------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("dst.get_masks", dst.get_masks),
        ("dst.sparsity", dst.sparsity),
        ("dst.summary", lambda m: dst.summary(m, print_fn=lambda *_: None)),
    ],
)
def test_readers_refuse_a_legacy_tf_keras_model(name, call):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2, name="d")])
    with pytest.raises(TypeError, match=rf"{name} needs a Keras 3 model.*legacy tf_keras"):
        call(model)


def test_readers_accept_an_unbuilt_model():
    model = keras.Sequential([layers.Dense(2)])
    assert dst.get_masks(model) == {}
    assert dst.sparsity(model) == 0.0
