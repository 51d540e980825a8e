"""The training setups Keras users have: each is supported exactly or refused.

One test (or more) per row of the README's "Training setups" table.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf  # tf.distribute / tf.function tests only
from conftest import BACKEND, data, gradients, mlp, numpy, recording

import dst
from dst._model import dynamic_targets


def callback(name, update_freq=2, seed=0, **kwargs):
    """The dst callback of algorithm `name` that the setups are checked with.

    SET, RigL, SRigL and SNFS replace half the active connections at each
    update until the last step of `fit`; MagnitudePruning and GraNet prune to
    0.8 by then (GraNet from the 0.5 of `start_sparsity`). `kwargs` override.
    """
    if name in ("magnitude", "granet"):
        args = dict(final_sparsity=0.8)
    else:
        args = dict(drop_fraction=0.5, end_step=1.0)
    return dst.callbacks.get(name, **{**args, "update_freq": update_freq, "seed": seed,
                                      **kwargs})


def start_sparsity(name):
    """The sparsity `mlp` starts at for algorithm `name` (None: dense)."""
    return {"magnitude": None, "granet": 0.5}.get(name, 0.8)


class MaskLog(keras.callbacks.Callback):
    """Records the masks when training starts (after dst's callback bound its
    updater, which may change them: SRigL's constant fan-in), then the
    optimizer step and the masks after every batch."""

    def __init__(self):
        super().__init__()
        self.start, self.steps, self.masks = None, [], []

    def on_train_batch_begin(self, batch, logs=None):
        if self.start is None:
            self.start = dst.get_masks(self.model)

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        while hasattr(opt, "inner_optimizer"):
            opt = opt.inner_optimizer
        self.steps.append(int(opt.iterations.numpy()))
        self.masks.append(dst.get_masks(self.model))


def changed_after(log):
    """Optimizer step counts after which masks differ from the record before."""
    out, prev = [], log.start
    for step, masks in zip(log.steps, log.masks):
        if any(not np.array_equal(prev[k], masks[k]) for k in masks):
            out.append(step)
        prev = masks
    return out


# -- steps_per_execution and jit_compile --------------------------------------
@pytest.mark.parametrize("name, k, freq", [
    ("set", 1, 3), ("set", 2, 3), ("set", 3, 2), ("set", 4, 5), ("set", 8, 3),
    ("granet", 2, 3), ("granet", 3, 2), ("srigl", 2, 3), ("srigl", 3, 2),
    ("snfs", 2, 3), ("snfs", 3, 2),
])
def test_steps_per_execution_updates_at_exactly_the_scheduled_steps(name, k, freq):
    if BACKEND == "torch" and k > 1:
        pytest.skip("Keras refuses steps_per_execution > 1 on PyTorch")
    # Every update changes the masks: a constant drop fraction, and GraNet
    # still pruning (its end far away, past this fit: counted from step 0).
    args = (dict(end_step=100, steps_from="optimizer") if name == "granet"
            else dict(drop_fraction_schedule="constant"))

    def run(k):
        model = mlp(sparsity=start_sparsity(name))
        model.compile("adam", "mse", steps_per_execution=k)
        log = MaskLog()  # with k > 1 Keras calls it once per execution
        model.fit(*data(96), batch_size=8, epochs=1, verbose=0,
                  callbacks=[callback(name, freq, **args), log])
        return model, log

    model, _ = run(k)
    k1, log = run(1)
    expected = [s + 1 for s in range(12) if s % freq == 0]
    assert changed_after(log) == expected
    # Same masks and weights with k steps per execution as with 1: nothing
    # skipped, moved or repeated (SNFS' momentum included).
    for got, want in zip(dst.get_masks(model).values(), dst.get_masks(k1).values(), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(model.weights, k1.weights, strict=True):
        np.testing.assert_allclose(numpy(got), numpy(want), rtol=1e-5, atol=1e-6)


@pytest.mark.tensorflow_only  # JAX is always compiled, PyTorch never (the host path)
@pytest.mark.parametrize("name", ["set", "rigl", "magnitude", "snfs",
                                  pytest.param("granet", marks=pytest.mark.slow),
                                  pytest.param("srigl", marks=pytest.mark.slow)])
def test_jit_compile_gives_the_same_masks_as_the_host_path(name):
    results = []
    for jit in (False, True):
        model = mlp(sparsity=start_sparsity(name))
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", jit_compile=jit)
        cb = callback(name, seed=4)
        model.fit(*data(64), batch_size=8, epochs=2, verbose=0, callbacks=[cb])
        assert cb.updater.jit is jit
        results.append((dst.get_masks(model), [w.numpy() for w in model.weights]))
    (m0, w0), (m1, w1) = results
    for a, b in zip(m0.values(), m1.values(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- mixed precision ------------------------------------------------------------
MIXED = {
    # "before_drop": every update moves k connections, so each update is
    # visible in the masks (with lr 0 and one repeated batch, "after_drop"
    # may regrow exactly what it dropped: a fixed point, not a skipped update).
    "rigl": dict(drop_fraction=0.5, drop_fraction_schedule="constant",
                 grow_candidates="before_drop", end_step=6),
    "granet": dict(final_sparsity=0.9, end_step=6),  # prunes at each update: visible
    "srigl": dict(drop_fraction=0.5, drop_fraction_schedule="constant", end_step=6,
                  gamma_sal=0.0),  # no ablation: a constant count
}


def _mixed_float16_fit(model, x, y, callbacks):
    """`fit` under mixed_float16 with a loss scale so large that the first
    steps overflow: the loss scaler skips them and halves the scale each time."""
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0), initial_scale=2.0**30)
    model.compile(opt, "mse")
    log = MaskLog()
    model.fit(np.tile(x, (6, 1)), np.tile(y, (6, 1)), batch_size=8, epochs=5, verbose=0,
              shuffle=False, callbacks=[*callbacks, log])
    assert log.steps[-1] < 30  # some steps were skipped (the scale started far too high)
    return log


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_float16_grows_from_the_unscaled_gradient_and_skipped_steps_do_not_count(name):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = mlp(sparsity=0.5)
        cb = recording(name, update_freq=3, seed=0, **MIXED[name])
        if name == "srigl":  # its masks as the callback's bind makes them (constant fan-in)
            dst.updaters.SRigL(end_step=6, seed=0).bind(model, optimizer=keras.optimizers.SGD())
        x, y = data(8)
        targets = dynamic_targets(model)
        expected = gradients(model, x, lambda out: keras.losses.MeanSquaredError()(y, out),
                             [t.variable for t in targets])
        log = _mixed_float16_fit(model, x, y, [cb])
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    # Updates happened after applied steps 0, 3 and 6 only, once each.
    assert changed_after(log) == [1, 4, 7]
    assert len(cb.updater.seen) == 3 * len(targets)
    first = {g.shape: g for g in cb.updater.seen[:2]}  # weights may come in any order
    for want in expected:  # lr 0: same batch, same grads
        grad = first[tuple(want.shape)]
        np.testing.assert_allclose(grad, numpy(want), rtol=2e-2, atol=1e-3)
        assert np.isfinite(grad).all()
    counts = [sum(int(m.sum()) for m in masks.values()) for masks in log.masks]
    if name == "granet":  # the schedule's counts, reached at its end (step 6)
        assert counts[-1] == sum(round(m.size * 0.1) for m in log.start.values())
    else:
        assert set(counts) == {sum(int(m.sum()) for m in log.start.values())}


def test_mixed_float16_snfs_smooths_the_unscaled_gradient_and_skipped_steps_do_not_count():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = mlp(sparsity=0.5)
        x, y = data(8)
        targets = dynamic_targets(model)
        expected = gradients(model, x, lambda out: keras.losses.MeanSquaredError()(y, out),
                             [t.variable for t in targets])
        cb = dst.callbacks.SNFS(update_freq=3, begin_step=3, end_step=6, drop_fraction=0.5,
                                drop_fraction_schedule="constant",
                                grow_candidates="before_drop", seed=0)
        momenta = []

        class Grab(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                opt = self.model.optimizer.inner_optimizer
                if int(opt.iterations.numpy()) == 3 and not momenta:  # before step 3's update
                    momenta.extend(numpy(m) for m in cb.updater.momenta)

        log = _mixed_float16_fit(model, x, y, [cb, Grab()])
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    # Updates after applied steps 3 and 6 only; the total count is constant.
    assert changed_after(log) == [4, 7]
    total = sum(int(m.sum()) for m in log.start.values())
    assert all(sum(int(m.sum()) for m in masks.values()) == total for masks in log.masks)
    # lr 0, one batch: after the applied steps 0, 1 and 2 (and no skipped one)
    # the buffer is (1 − 0.9³) g, g the unscaled dense gradient.
    assert [t.path for t in cb.updater.targets] == [t.path for t in targets]
    for m, g in zip(momenta, expected, strict=True):
        np.testing.assert_allclose(m, (1 - 0.9**3) * numpy(g), rtol=2e-2, atol=1e-3)
        assert np.abs(m).max() > 1e-2


# -- custom train_step ----------------------------------------------------------
class TwoOptimizers(keras.Model):
    """The keras-io GAN pattern: train_step steps its own optimizer."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def call(self, x):
        return self.inner(x)

    def compile(self, own, **kwargs):
        super().compile(**kwargs)
        self.own = own

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((self.inner(x, training=True) - y) ** 2)
        grads = tape.gradient(loss, self.inner.trainable_variables)
        self.own.apply(grads, self.inner.trainable_variables)
        return {"loss": loss}


@pytest.mark.tensorflow_only  # the train_step is written for TensorFlow
def test_custom_train_step_with_its_own_optimizer_is_refused_unless_named():
    model = TwoOptimizers(mlp())
    model.compile(keras.optimizers.Adam(0.01))
    model.build((None, 12))
    model.own.build(model.inner.trainable_variables)
    before = dst.get_masks(model)
    with pytest.raises(RuntimeError, match=r"did not step during the first batch.*optimizer="):
        model.fit(*data(), batch_size=8, verbose=0,
                  callbacks=[dst.callbacks.SET(update_freq=1, end_step=1.0, seed=0)])
    for path, mask in dst.get_masks(model).items():
        np.testing.assert_array_equal(mask, before[path])


@pytest.mark.tensorflow_only  # the train_step is written for TensorFlow
def test_custom_train_step_with_its_own_optimizer_named():
    model = TwoOptimizers(mlp())
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    model.build((None, 12))
    cb = dst.callbacks.SET(update_freq=2, drop_fraction=0.5, end_step=1.0, seed=0,
                           optimizer=model.own)
    before = dst.get_masks(model)
    model.fit(*data(), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    after = dst.get_masks(model)
    assert any(not np.array_equal(before[p], after[p]) for p in before)
    assert int(model.own.iterations.numpy()) == 8
    assert int(model.optimizer.iterations.numpy()) == 0  # the unused one: untouched
    for t in dynamic_targets(model):  # the named optimizer's slots were reset
        momentum = model.own.momentums[model.own._get_variable_index(t.variable)].numpy()
        assert np.all(t.variable.numpy()[~t.constraint.numpy()] == 0)
        assert momentum.shape == t.shape


# -- EMA ----------------------------------------------------------------------
def _assert_ema_masked(model):
    """Each sparse weight and its EMA copy are exactly 0 where masked."""
    opt = model.optimizer
    for t in dynamic_targets(model):
        mask = t.constraint.numpy()
        assert np.all(t.variable.numpy()[~mask] == 0)
        ema = opt._model_variables_moving_average[opt._get_variable_index(t.variable)]
        assert np.all(ema.numpy()[~mask] == 0)


@pytest.mark.parametrize("overwrite", [None, 3])
@pytest.mark.parametrize("name", ["set", "magnitude", "fixed", "granet", "srigl", "snfs"])
def test_ema_copies_and_final_weights_are_masked(overwrite, name):
    model = mlp(sparsity=start_sparsity(name))
    model.compile(keras.optimizers.Adam(0.01, use_ema=True, ema_overwrite_frequency=overwrite),
                  "mse")

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            _assert_ema_masked(self.model)

    cb = dst.callbacks.FixedMasks() if name == "fixed" else callback(name)
    model.fit(*data(), batch_size=8, epochs=2, verbose=0, callbacks=[cb, Check()])
    _assert_ema_masked(model)  # after finalize_variable_values (weights = EMA)
    masks = list(dst.get_masks(model).values())
    size = sum(m.size for m in masks)
    masked = 1 - sum(int(m.sum()) for m in masks) / size
    # SRigL's constant fan-in rounds each weight's count down (and ablates units).
    assert masked == pytest.approx(0.8, abs=0.01) if name != "srigl" else masked > 0.8
    assert dst.sparsity(model) == masked  # no stray non-zero (it would warn, too)
    zeros = sum(int((t.variable.numpy() == 0).sum()) for t in dynamic_targets(model))
    assert zeros >= round(masked * size)


# -- optimizers whose slots do not start at 0 -------------------------------------
@pytest.mark.parametrize("make, attr, init", [
    (lambda: keras.optimizers.Ftrl(0.05, initial_accumulator_value=0.3), "_accumulators", 0.3),
    (lambda: keras.optimizers.Adagrad(0.05, initial_accumulator_value=0.2), "_accumulators", 0.2),
])
def test_regrown_slots_are_reset_to_the_optimizers_initial_value(make, attr, init):
    model = mlp()
    opt = make()
    model.compile(opt, "mse")
    start = dst.get_masks(model)
    model.fit(*data(), batch_size=8, epochs=2, verbose=0,
              callbacks=[dst.callbacks.RigL(update_freq=5, drop_fraction=0.5, end_step=5,
                                            seed=0)])
    grew = 0
    for t in dynamic_targets(model):
        mask = t.constraint.numpy()
        grown = mask & ~start[t.path]
        slot = getattr(opt, attr)[opt._get_variable_index(t.variable)].numpy()
        # Grown at step 5 with their slot reset to `init`; the later steps then
        # moved them as the optimizer does for any weight.
        assert np.isfinite(slot).all() and np.isfinite(t.variable.numpy()).all()
        grew += int(grown.sum())
    assert grew > 0
    # Right at an update (no later step), the slots equal the initial value.
    model2 = mlp()
    opt2 = make()
    model2.compile(opt2, "mse")
    model2.fit(*data(8), batch_size=8, epochs=1, verbose=0)  # builds the optimizer
    before = dst.get_masks(model2)
    up = dst.updaters.RigL(update_freq=1, drop_fraction=0.5, end_step=10, seed=0)
    up.bind(model2)
    grads = [np.random.default_rng(1).normal(size=v.shape) for v in model2.trainable_variables]
    assert up.update(1, grads)
    for t in dynamic_targets(model2):
        grown = t.constraint.numpy() & ~before[t.path]
        assert grown.any()
        slot = getattr(opt2, attr)[opt2._get_variable_index(t.variable)].numpy()
        np.testing.assert_allclose(slot[grown], init, rtol=1e-6)


# -- non-finite values ----------------------------------------------------------
def test_non_finite_weights_skip_the_update_with_a_warning():
    # The contract is per weight: a weight whose values (or gradient) are not
    # finite keeps its mask, and its skipped updates are counted and warned
    # about. Whether the NaN reaches the next layer's gradient depends on the
    # CPU's kernels (ReLU of NaN is 0 in some fused ops), so the other weights
    # are checked against their own skip counts, not assumed skipped.
    model = mlp()
    model.compile(keras.optimizers.SGD(0.0), "mse")
    first = model.layers[0].kernel
    value = first.numpy()
    rows, cols = np.nonzero(first.constraint.numpy())
    value[rows[0], cols[0]] = np.nan  # an active weight: the forward pass is NaN
    first.assign(value)
    before = dst.get_masks(model)
    cb = dst.callbacks.SET(update_freq=1, end_step=1.0, seed=0)
    with pytest.warns(UserWarning) as caught:
        model.fit(*data(16), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    messages = [str(w.message) for w in caught]
    assert f"SET: 2 mask update(s) of '{first.path}' were skipped because its weights or " \
        "gradient were not finite (NaN or Inf); its mask and active count are unchanged." \
        in messages
    after = dst.get_masks(model)
    for t, counter in zip(cb.updater.targets, cb.updater.skipped, strict=True):
        skipped = int(numpy(counter))
        if t.path == first.path:
            assert skipped == 2  # both updates of the weight holding the NaN
        assert int(after[t.path].sum()) == int(before[t.path].sum())
        if skipped == 2:  # every update skipped: the mask is untouched
            np.testing.assert_array_equal(after[t.path], before[t.path])
        warned = any(f"of '{t.path}' were skipped" in m for m in messages)
        assert warned == (skipped > 0)


def test_terminate_on_nan_stops_training_as_usual():
    model = mlp()
    model.compile(keras.optimizers.SGD(1e30), "mse")
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = model.fit(x * 1e10, y, batch_size=8, epochs=3, verbose=0,
                         callbacks=[dst.callbacks.RigL(update_freq=1, end_step=1.0, seed=0),
                                    keras.callbacks.TerminateOnNaN()])
    assert len(hist.history.get("loss", [])) <= 1
    counts = [int(m.sum()) for m in dst.get_masks(model).values()]
    assert counts == [int(m.sum()) for m in dst.get_masks(mlp()).values()]


# -- exceptions -------------------------------------------------------------------
class Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            raise KeyboardInterrupt("boom")


def test_an_exception_inside_fit_leaves_the_optimizer_as_it_was():
    model = mlp()
    model.compile("adam", "mse")
    opt = model.optimizer
    opt.build(model.trainable_variables)
    own_before = dict(vars(opt))
    with pytest.raises(KeyboardInterrupt):
        model.fit(*data(), batch_size=8, verbose=0,
                  callbacks=[dst.callbacks.RigL(update_freq=1, end_step=1.0, seed=0), Boom()])
    assert set(vars(opt)) == set(own_before)
    assert all(vars(opt)[k] is v for k, v in own_before.items() if not k.startswith("_tracker"))
    # A later fit without dst trains with fixed masks: no update runs.
    masks = dst.get_masks(model)
    model.fit(*data(), batch_size=8, verbose=0)
    for path, mask in dst.get_masks(model).items():
        np.testing.assert_array_equal(mask, masks[path])
    # And a later fit with dst works.
    model.fit(*data(), batch_size=8, verbose=0,
              callbacks=[dst.callbacks.RigL(update_freq=1, end_step=1.0, seed=0)])
    assert any(not np.array_equal(dst.get_masks(model)[p], masks[p]) for p in masks)


# -- MagnitudePruning reaches its target ------------------------------------------------
@pytest.mark.parametrize("update_freq", [1, 7, 100, 1000])
def test_magnitude_pruning_reaches_final_sparsity_by_the_end_of_fit(update_freq):
    model = mlp(sparsity=None)
    model.compile("adam", "mse")
    model.fit(*data(80), batch_size=8, epochs=3, verbose=0,
              callbacks=[dst.callbacks.MagnitudePruning(0.9, update_freq=update_freq)])
    for mask in dst.get_masks(model).values():
        assert int(mask.sum()) == max(1, round(mask.size * 0.1))


def test_numpy_scalars_are_the_python_numbers_they_hold():
    cb = dst.callbacks.SET(update_freq=np.int64(2), end_step=np.int64(2),
                           drop_fraction=np.float32(0.25), begin_step=np.int32(0),
                           seed=np.uint8(3))
    assert cb.updater.end_step == 2 and isinstance(cb.updater.end_step, int)
    assert cb.updater.update_freq == 2 and cb.updater.seed == 3
    mp = dst.callbacks.MagnitudePruning(np.float64(0.5), power=np.int64(2),
                                        end_step=np.float32(0.5))
    assert mp.updater.final_sparsity == 0.5 and mp.updater.end_step == 0.5


@pytest.mark.parametrize("kwargs, match", [
    (dict(end_step="10"), r"`end_step` must be .*Received: end_step='10'"),
    (dict(update_freq=2.5), r"`update_freq` must be an int >= 1 for SET"),
    (dict(seed="x"), r"`seed` must be an int"),
    (dict(end_step=float("nan")), r"`end_step`.*nan"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dst.callbacks.SET(**kwargs)


def test_bad_magnitude_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"`power` must be .*Received: power='x'"):
        dst.callbacks.MagnitudePruning(0.5, power="x")


def test_updater_errors_say_what_to_pass():
    model = mlp()
    with pytest.raises(ValueError, match=r"needs the optimizer .*compile the model, or pass"):
        dst.updaters.RigL().bind(model)
    model.compile("adam", "mse")
    up = dst.updaters.RigL(update_freq=1, end_step=5)
    up.bind(model)
    grads = [None for _ in model.trainable_variables]
    with pytest.raises(ValueError, match=r"needs the gradient of every sparse weight"):
        up.update(0, grads)
    with pytest.raises(ValueError, match=r"name no sparse weight"):
        up.update(0, {"nope": np.zeros(3)})


# -- MirroredStrategy -------------------------------------------------------------
MIRRORED = textwrap.dedent("""
    import os, json, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, dst
    from dst._model import dynamic_targets

    class Rec(dst.updaters.RigL):
        def grow_scores(self, kit, weight, mask, grad):
            self.seen.append(np.array(grad))
            return super().grow_scores(kit, weight, mask, grad)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12)).astype("float32")
    y = (x[:, :3] @ rng.normal(size=(3, 3))).astype("float32")
    y[:8] *= 5  # the two replicas' halves have very different gradients
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3)])
        dst.sparsify(model, 0.8, "uniform", seed=0)
        model.compile(keras.optimizers.SGD(0.0), "mse")
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x, training=True))
    targets = dynamic_targets(model)
    expected = tape.gradient(loss, [t.variable for t in targets])
    counts = [int(t.constraint.numpy().sum()) for t in targets]
    cb = dst.callbacks.RigL(update_freq=1, drop_fraction=0.5, end_step=3, seed=0)
    cb.updater = Rec(update_freq=1, drop_fraction=0.5, end_step=3, seed=0)
    cb.updater.seen = []
    model.fit(np.tile(x, (4, 1)), np.tile(y, (4, 1)), batch_size=16, epochs=1, verbose=0,
              shuffle=False, callbacks=[cb])
    out = {"n_seen": len(cb.updater.seen), "rel_err": [], "replicas_equal": [], "counts_ok": True}
    first = {g.shape: g for g in cb.updater.seen[:2]}  # weights may come in any order
    for want in expected:
        want = want.numpy()
        g = first[want.shape]
        out["rel_err"].append(float(np.linalg.norm(g - want) / np.linalg.norm(want)))
    for t, n in zip(targets, counts):
        copies = [np.asarray(v.numpy()) for v in strategy.experimental_local_results(t.constraint.mask.value)]
        out["replicas_equal"].append(len(copies) == 2 and all(np.array_equal(copies[0], c) for c in copies))
        out["counts_ok"] &= all(int(c.sum()) == n for c in copies)
        w = [np.asarray(v.numpy()) for v in strategy.experimental_local_results(t.variable.value)]
        out["counts_ok"] &= all(np.all(c[~copies[0]] == 0) for c in w)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow  # a new process
@pytest.mark.tensorflow_only
def test_mirrored_strategy_rigl_grows_from_the_global_batch_gradient():
    proc = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                          timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    import json

    out = json.loads(line[0][len("RESULT"):])
    assert out["n_seen"] == 2 * 4  # 4 updates (steps 0..3), 2 weights, once each
    assert max(out["rel_err"]) < 1e-5, out
    assert all(out["replicas_equal"]) and out["counts_ok"], out


# -- frozen layers ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["rigl", "magnitude", "granet", "srigl", "snfs"])
def test_updaters_leave_a_frozen_sparse_layer_unchanged(name):
    model = mlp()
    model.layers[0].trainable = False  # fine-tuning: the first layer is frozen
    model.compile("adam", "mse")
    before = dst.get_masks(model)
    frozen = model.layers[0].kernel.path
    frozen_values = model.layers[0].kernel.numpy()
    cb = callback(name, **({"final_sparsity": 0.9} if name in ("magnitude", "granet") else {}))
    model.fit(*data(), batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    after = dst.get_masks(model)
    assert set(after) == set(before)  # still reported
    np.testing.assert_array_equal(after[frozen], before[frozen])
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), frozen_values)
    other = next(p for p in before if p != frozen)
    assert not np.array_equal(after[other], before[other])


def test_snfs_redistributes_among_the_trainable_layers_only():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    dst.sparsify(model, 0.5, "uniform", seed=0)
    middle = model.layers[1]  # the largest weight (256 entries, 128 active): frozen
    middle.trainable = False
    model.compile("adam", "mse")
    frozen, frozen_values = middle.kernel.path, middle.kernel.numpy()
    before = dst.get_masks(model)
    log = MaskLog()
    model.fit(*data(), batch_size=8, epochs=2, verbose=0,
              callbacks=[callback("snfs", drop_fraction_schedule="constant"), log])
    trainable = [p for p in before if p != frozen]
    start = [int(before[p].sum()) for p in trainable]
    assert start == [96, 24]
    moved = False
    for masks in log.masks:
        np.testing.assert_array_equal(masks[frozen], before[frozen])
        counts = [int(masks[p].sum()) for p in trainable]
        assert sum(counts) == sum(start)  # the budget stays among the trainable layers
        moved |= counts != start
    assert moved  # and moves between them
    np.testing.assert_array_equal(middle.kernel.numpy(), frozen_values)


def test_static_masks_with_ema_and_no_callback_are_reported_not_silent():
    model = mlp()
    model.compile(keras.optimizers.Adam(0.01, use_ema=True), "mse")
    model.fit(*data(), batch_size=8, epochs=2, verbose=0)  # no dst callback: EMA is dense
    with pytest.warns(UserWarning, match=r"non-zero where their mask is 0.*FixedMasks"):
        real = dst.sparsity(model)
    assert real < 0.8  # the real zeros, not the masks' 0.8


@pytest.mark.skipif(BACKEND == "torch", reason="jit_compile=True (torch.compile) is refused "
                                               "on PyTorch (test_backends.py)")
def test_fixed_masks_with_ema_under_jit_compile():
    model = mlp()
    model.compile(keras.optimizers.Adam(0.01, use_ema=True, ema_overwrite_frequency=2), "mse",
                  jit_compile=True)
    before = dst.get_masks(model)
    model.fit(*data(), batch_size=8, epochs=1, verbose=0, callbacks=[dst.callbacks.FixedMasks()])
    for t in dynamic_targets(model):
        np.testing.assert_array_equal(t.constraint.numpy(), before[t.path])
        assert np.all(t.variable.numpy()[~t.constraint.numpy()] == 0)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("jit", [False, True])
def test_updater_update_inside_a_tf_function(jit):
    model = mlp()
    model.compile("adam", "mse")
    model.fit(*data(8), batch_size=8, verbose=0)  # builds the optimizer
    up = dst.updaters.RigL(update_freq=1, drop_fraction=0.5, end_step=10, seed=0)
    up.bind(model, jit=jit)
    grads = [np.random.default_rng(1).normal(size=v.shape).astype("float32")
             for v in model.trainable_variables]
    before = dst.get_masks(model)
    tf.function(lambda *g: up.update(1, list(g)), jit_compile=jit)(*grads)
    eager = mlp()
    eager.compile("adam", "mse")
    eager.fit(*data(8), batch_size=8, verbose=0)
    up2 = dst.updaters.RigL(update_freq=1, drop_fraction=0.5, end_step=10, seed=0)
    up2.bind(eager)
    assert up2.update(1, grads)
    for got, want, old in zip(dst.get_masks(model).values(), dst.get_masks(eager).values(),
                              before.values()):
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, old)
