"""Shared invariants of every dst mask-update algorithm, and each one's specifics."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from conftest import data, gradients, mlp, numpy, recording
from hypothesis import given, settings
from hypothesis import strategies as st

import dst
from dst.schedules import DropFraction, PolynomialSparsity

ALGOS = {
    "set": lambda **kw: dst.callbacks.SET(**kw),
    "rigl": lambda **kw: dst.callbacks.RigL(**kw),
}


class Spy(keras.callbacks.Callback):
    """Records masks, weights and optimizer slots right after each batch."""

    def __init__(self, dst_cb):
        super().__init__()
        self.dst_cb = dst_cb
        self.records = []

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        state = self.dst_cb.updater.state
        slots = {t.path: [keras.ops.convert_to_numpy(s) for s in state.slots(i)]
                 for i, t in enumerate(self.dst_cb.updater.targets)}
        self.records.append(dict(
            step=int(opt.iterations.numpy()) - 1,
            masks=dst.get_masks(self.model),
            weights={v.path: keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables},
            slots=slots,
        ))


@pytest.mark.parametrize("name", sorted(ALGOS))
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam", "adamw", "rmsprop"])
def test_shared_invariants(name, optimizer):
    opt = {
        "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        "adam": lambda: keras.optimizers.Adam(0.01),
        "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
        "rmsprop": lambda: keras.optimizers.RMSprop(0.01, momentum=0.5),
    }[optimizer]()
    model = mlp()
    counts = {k: int(m.sum()) for k, m in dst.get_masks(model).items()}
    model.compile(opt, "mse")
    cb = ALGOS[name](update_freq=2, drop_fraction=0.5, end_step=1.0, seed=1)
    spy = Spy(cb)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb, spy])
    updates = 0
    prev = None
    for rec in spy.records:
        for path, mask in rec["masks"].items():
            assert int(mask.sum()) == counts[path]  # active count constant
            assert np.all(rec["weights"][path][~mask] == 0.0)  # masked exactly 0
            if prev is not None:
                grown = mask & ~prev[path]
                if grown.any():
                    # regrown read exactly 0.0 and their optimizer state is 0
                    assert np.all(rec["weights"][path][grown] == 0.0)
                    for slot in rec["slots"][path]:
                        assert np.all(slot[grown] == 0.0)
                    updates += 1
                    assert rec["step"] % 2 == 0
        prev = rec["masks"]
    assert updates > 0
    assert len(spy.records[0]["slots"][next(iter(counts))]) >= 1


def _expected_mask(old, weight, grow_score, k, rule):
    """The rule of ALGORITHMS.md, written out with argsort (no ties in the data)."""
    flat_w = np.where(old, np.abs(weight), np.inf).ravel()
    dropped = np.zeros(old.size, bool)
    dropped[np.argsort(flat_w, kind="stable")[:k]] = True
    kept = old.ravel() & ~dropped
    candidates = ~kept if rule == "after_drop" else ~old.ravel()
    grown = np.zeros(old.size, bool)
    grown[np.argsort(np.where(candidates, grow_score.ravel(), -np.inf))[::-1][:k]] = True
    return (kept | grown).reshape(old.shape)


@pytest.mark.parametrize("rule", ["after_drop", "before_drop"])
def test_rigl_mask_is_exactly_the_reference_rule(rule):
    model = mlp(sparsity=0.5)
    model.compile("adam", "mse")
    model.fit(*data(), verbose=0)  # builds the optimizer
    up = dst.updaters.RigL(update_freq=1, drop_fraction=0.4, drop_fraction_schedule="constant",
                           grow_candidates=rule, end_step=10, seed=0)
    up.bind(model)
    before = dst.get_masks(model)
    weights = {v.path: numpy(v) for v in model.trainable_variables}
    rng = np.random.default_rng(1)
    # Gradients ranked so that half of the connections about to be dropped
    # have the largest |grad|: the rules then differ.
    grads = {}
    for path, old in before.items():
        g = rng.permutation(old.size).reshape(old.shape).astype("float32")
        k = int(np.floor(0.4 * old.sum()))
        weakest = np.argsort(np.where(old, np.abs(weights[path]), np.inf).ravel())[:k // 2]
        g.ravel()[weakest] = old.size + np.arange(len(weakest))
        grads[path] = g
    assert up.update(0, grads)
    after = dst.get_masks(model)
    regrown = 0
    for path, old in before.items():
        k = int(np.floor(0.4 * old.sum()))
        expected = _expected_mask(old, weights[path], np.abs(grads[path]), k, rule)
        assert np.array_equal(after[path], expected)
        dropped, grown = old & ~after[path], after[path] & ~old
        assert dropped.sum() == grown.sum() <= k
        if rule == "before_drop":
            assert dropped.sum() == k
        regrown += k - int(dropped.sum())
    assert (regrown > 0) == (rule == "after_drop")


@pytest.mark.parametrize("rule", ["after_drop", "before_drop"])
def test_set_mask_is_exactly_the_reference_rule_up_to_the_random_draw(rule):
    model = mlp(sparsity=0.5)
    model.compile("sgd", "mse")
    model.fit(*data(), verbose=0)
    up = dst.updaters.SET(update_freq=1, drop_fraction=0.3, drop_fraction_schedule="constant",
                          grow_candidates=rule, end_step=10, seed=0)
    up.bind(model)
    before = dst.get_masks(model)
    weights = {v.path: numpy(v) for v in model.trainable_variables}
    up.update(0)
    for path, old in before.items():
        new = dst.get_masks(model)[path]
        k = int(np.floor(0.3 * old.sum()))
        order = np.argsort(np.where(old, np.abs(weights[path]), np.inf).ravel())
        weakest = np.zeros(old.size, bool)
        weakest[order[:k]] = True
        weakest = weakest.reshape(old.shape)
        assert int(new.sum()) == int(old.sum())
        assert not (old & ~weakest & ~new).any()  # only the k weakest may leave
        if rule == "before_drop":
            assert np.array_equal(old & ~new, weakest)  # all of them leave
            assert not (new & weakest).any()


def test_a_connection_regrown_in_its_own_update_keeps_its_weight_and_slots():
    model = mlp(sparsity=0.5)
    model.compile("adam", "mse")
    model.fit(*data(), verbose=0)  # Adam moments are non-zero now
    path = model.layers[0].kernel.path
    up = dst.updaters.RigL(update_freq=1, drop_fraction=0.1, drop_fraction_schedule="constant",
                           end_step=10, seed=0)
    up.bind(model)
    old = dst.get_masks(model)[path]
    weight = numpy(model.layers[0].kernel)
    weakest = np.unravel_index(np.argmin(np.where(old, np.abs(weight), np.inf)), old.shape)
    grads = [np.zeros(v.shape, "float32") for v in model.trainable_variables]
    grads[0][weakest] = 1.0  # the weakest active connection has the largest |grad|
    slots_before = [numpy(s)[weakest] for s in up.state.slots(0)]
    up.update(0, grads)
    assert dst.get_masks(model)[path][weakest]
    assert numpy(model.layers[0].kernel)[weakest] == weight[weakest] != 0.0
    assert [numpy(s)[weakest] for s in up.state.slots(0)] == slots_before
    assert any(v != 0 for v in slots_before)


def test_rigl_works_with_dataset_and_generator():
    x, y = data(64)
    import tensorflow as tf  # tf.data feeds every backend's fit

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def gen():
        while True:
            for i in range(0, 64, 8):
                yield x[i:i + 8], y[i:i + 8]

    for source, kw in ((ds, {}), (gen(), {"steps_per_epoch": 8})):
        model = mlp()
        model.compile("adam", "mse")
        before = dst.get_masks(model)
        cb = dst.callbacks.RigL(update_freq=4, drop_fraction=0.3, end_step=1.0, seed=0)
        hist = model.fit(source, epochs=2, verbose=0, shuffle=False, callbacks=[cb], **kw)
        after = dst.get_masks(model)
        assert any(not np.array_equal(before[p], after[p]) for p in before)
        assert hist.history["mask_churn"][0] > 0


def test_no_update_after_end_step_and_schedule_formula():
    model = mlp()
    model.compile("adam", "mse")
    cb = dst.callbacks.SET(update_freq=3, end_step=7, seed=0)
    spy = Spy(cb)
    model.fit(*data(), batch_size=8, epochs=3, verbose=0, callbacks=[cb, spy])
    changed = [r["step"] for a, r in zip(spy.records, spy.records[1:])
               if any(not np.array_equal(a["masks"][p], r["masks"][p]) for p in a["masks"])]
    assert changed and set(changed) <= {3, 6}
    f = DropFraction(0.3, 0, 100, "cosine")
    assert f(0) == pytest.approx(0.3)
    assert f(50) == pytest.approx(0.15)
    assert f(100) == pytest.approx(0.0)
    assert DropFraction(0.3, 0, 100, "linear")(25) == pytest.approx(0.225)
    assert DropFraction(0.3, 0, 100, "constant")(99) == pytest.approx(0.3)


@pytest.mark.tensorflow_only
@settings(max_examples=40, deadline=None)
@given(st.floats(0, 0.9), st.floats(0, 0.95), st.integers(0, 300), st.integers(1, 2000),
       st.integers(1, 200), st.sampled_from([1, 2, 3]))
def test_polynomial_schedule_matches_tfmot(s_i, s_f, begin, length, freq, power):
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    end = begin + length
    ours = PolynomialSparsity(s_i, s_f, begin, end, power)
    theirs = tfmot.sparsity.keras.PolynomialDecay(s_i, s_f, begin, end, power=power, frequency=freq)
    steps = dst.schedules.UpdateSteps(begin, end, freq)
    for step in sorted({begin, begin + freq, (begin + end) // 2, end, end + freq}):
        should, value = theirs(tf.constant(step, tf.int64))
        assert bool(should) == steps(step)
        if bool(should):
            assert ours(step) == pytest.approx(float(value), abs=1e-6)


def test_magnitude_pruning_exact_counts_from_dense():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16), keras.layers.Dense(3)])
    model.compile("adam", "mse")
    cb = dst.callbacks.MagnitudePruning(0.9, update_freq=2, end_step=10, seed=0)
    spy = Spy(cb)
    model.fit(*data(), batch_size=8, epochs=2, verbose=0, callbacks=[cb, spy])
    sched = cb.updater.sparsity_schedule
    for r in spy.records:
        if r["step"] % 2 or r["step"] > 10:
            continue
        s = sched(r["step"])
        for mask in r["masks"].values():
            assert int(mask.sum()) == max(1, round(mask.size * (1 - s)))
    assert dst.sparsity(model) == pytest.approx(0.9, abs=0.01)


@pytest.mark.slow  # a teacher-student run per method
def test_teacher_student_rigl_recovers_more_than_set():
    rng = np.random.default_rng(0)
    teacher_mask = np.zeros((20, 1), bool)
    teacher_mask[rng.choice(20, 4, replace=False)] = True
    w_true = np.where(teacher_mask, rng.normal(size=(20, 1)) * 2, 0).astype("float32")
    x = rng.normal(size=(512, 20)).astype("float32")
    y = x @ w_true
    recovered = {}
    for name in ("set", "rigl"):
        hits = 0
        for seed in range(3):
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(1, use_bias=False)])
            dst.sparsify(model, 0.8, "uniform", seed=seed)
            model.compile(keras.optimizers.SGD(0.05), "mse")
            cb = ALGOS[name](update_freq=8, drop_fraction=0.5, end_step=0.8, seed=seed)
            model.fit(x, y, batch_size=32, epochs=6, verbose=0, callbacks=[cb])
            mask = next(iter(dst.get_masks(model).values()))
            hits += int((mask & teacher_mask).sum())
        recovered[name] = hits
    assert recovered["rigl"] > recovered["set"]
    assert recovered["rigl"] >= 10, recovered  # of 12: 4 teacher connections x 3 seeds


class Interrupt(keras.callbacks.Callback):
    """Stops `fit` at the end of the second epoch (after BackupAndRestore saved it)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.masks = dst.get_masks(self.model)
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("name", ["rigl", "granet", "srigl", "magnitude_dense",
                                  "granet_dense"])
def test_seeded_run_is_reproducible_and_survives_backup_and_restore(tmp_path, name):
    # "_dense": started on a dense model, which the callback sparsifies (the
    # documented usage of pruning); the checkpoint holds its masks.
    x, y = data(64)
    make = {
        "rigl": lambda: dst.callbacks.RigL(update_freq=3, end_step=1.0, seed=5),
        "granet": lambda: dst.callbacks.GraNet(0.9, update_freq=3, seed=5),
        "magnitude_dense": lambda: dst.callbacks.MagnitudePruning(0.9, update_freq=3,
                                                                  end_step=1.0),
        "granet_dense": lambda: dst.callbacks.GraNet(0.9, update_freq=3, end_step=1.0,
                                                     seed=5),
        # gamma_sal: SRigL ablates units before the interruption (they must stay ablated)
        "srigl": lambda: dst.callbacks.SRigL(update_freq=3, end_step=1.0, gamma_sal=0.5,
                                             seed=5),
    }[name]

    sparsity = {"granet": 0.5, "magnitude_dense": None, "granet_dense": None}.get(name, 0.8)

    def run(callbacks_extra=(), epochs=4):
        model = mlp(seed=0, sparsity=sparsity)
        model.compile(keras.optimizers.Adam(0.01), "mse")
        model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False,
                  callbacks=[*callbacks_extra[:1], make(), *callbacks_extra[1:]])
        return model

    def masks(model):  # paths differ between model instances; order does not
        return list(dst.get_masks(model).values())

    first, second = run(), run()
    a, b = masks(first), masks(second)
    assert all(np.array_equal(m, n) for m, n in zip(a, b, strict=True))
    assert dst.sparsity(first) > 0.5  # the schedule pruned

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, Interrupt()])
    # BackupAndRestore first in the list: it loads the checkpoint before the
    # dst callback's own hooks run.
    resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    c = masks(resumed)
    assert all(np.array_equal(m, n) for m, n in zip(a, c, strict=True))
    for w, v in zip(first.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(w, v, rtol=1e-5, atol=1e-6)


def test_snfs_resumes_from_backup_with_its_momentum(tmp_path):
    # The masks, the weights and SNFS' momentum buffers are restored exactly
    # (the buffers are saved with the masks), and the resumed run goes on with
    # a constant total and masked weights at exactly 0.
    x, y = data(64)

    def make():
        return dst.callbacks.SNFS(update_freq=3, drop_fraction=0.5, end_step=1.0, seed=5)

    model = mlp(seed=0)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    counts = [int(m.sum()) for m in dst.get_masks(model).values()]
    total = sum(counts)
    interrupt, first = Interrupt(), make()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False,
                  callbacks=[first, keras.callbacks.BackupAndRestore(str(tmp_path / "b")),
                             interrupt])
    assert [int(m.sum()) for m in interrupt.masks.values()] != counts  # SNFS moved some
    momenta = [numpy(m).copy() for m in first.updater.momenta]  # as in the checkpoint
    assert all(m.any() for m in momenta)

    cb, seen = make(), []

    class Check(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not seen:  # the first batch of the resumed run, after `cb` bound
                assert int(self.model.optimizer.iterations.numpy()) == 16
                for got, want in zip(dst.get_masks(self.model).values(),
                                     interrupt.masks.values(), strict=True):
                    np.testing.assert_array_equal(got, want)
                for got, want in zip(self.model.get_weights(), model.get_weights(), strict=True):
                    np.testing.assert_array_equal(got, want)
                for got, want in zip(cb.updater.momenta, momenta, strict=True):
                    np.testing.assert_array_equal(numpy(got), want)

        def on_train_batch_end(self, batch, logs=None):
            masks = dst.get_masks(self.model)
            seen.append(masks)
            assert sum(int(m.sum()) for m in masks.values()) == total
            for v in self.model.trainable_variables:
                if v.path in masks:
                    assert np.all(numpy(v)[~masks[v.path]] == 0.0)

    resumed = mlp(seed=0)
    resumed.compile(keras.optimizers.Adam(0.01), "mse")
    resumed.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False,
                callbacks=[cb, keras.callbacks.BackupAndRestore(str(tmp_path / "b")), Check()])
    assert len(seen) == 16  # epochs 2 and 3 only
    assert any(not np.array_equal(a, b) for a, b in zip(seen[-1].values(),
                                                        interrupt.masks.values(), strict=True))


def test_logs_have_sparsity_churn_itop_and_instance_is_reusable():
    model = mlp()
    model.compile("adam", "mse")
    cb = dst.callbacks.SET(update_freq=2, end_step=1.0, seed=0)
    for _ in range(2):
        hist = model.fit(*data(), batch_size=8, epochs=2, verbose=0, callbacks=[cb])
        assert hist.history["sparsity"] == pytest.approx([0.8, 0.8], abs=0.01)
        assert all(0 < c <= 0.3 for c in hist.history["mask_churn"])
        assert hist.history["itop"][1] >= hist.history["itop"][0] > 0.2


def test_custom_training_loop_with_updater():
    model = mlp()
    opt = keras.optimizers.Adam(0.01)
    up = dst.updaters.RigL(update_freq=2, end_step=20, seed=0)
    up.bind(model, optimizer=opt)
    x, y = data()
    counts = {p: int(m.sum()) for p, m in dst.get_masks(model).items()}
    updated = 0
    for step in range(8):
        target = keras.ops.convert_to_tensor(y[step * 8:(step + 1) * 8])
        grads = gradients(model, x[step * 8:(step + 1) * 8],
                          lambda out, t=target: keras.ops.mean((out - t) ** 2))
        opt.apply(grads, model.trainable_variables)
        updated += up.update(step, grads)
    assert updated == 4
    assert {p: int(m.sum()) for p, m in dst.get_masks(model).items()} == counts


@pytest.mark.parametrize("kwargs, match", [
    (dict(drop_fraction=1.0), r"`drop_fraction` must be in \(0, 1\) for (SET|RigL). Received: drop_fraction=1.0"),
    (dict(drop_fraction=0), r"drop_fraction=0"),
    (dict(update_freq=0), r"`update_freq` must be an int >= 1 for (SET|RigL). Received: update_freq=0"),
    (dict(begin_step=10, end_step=5), r"`end_step` must not be before `begin_step`.*end_step=5"),
    (dict(drop_fraction_schedule="exp"), r"drop_fraction_schedule='exp'"),
])
def test_bad_arguments(kwargs, match):
    for cls in (dst.callbacks.SET, dst.callbacks.RigL):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


def test_bad_final_sparsity_and_unsparsified_model():
    with pytest.raises(ValueError, match=r"`final_sparsity` must be in \[0, 1\) for MagnitudePruning. Received: final_sparsity=1.0"):
        dst.callbacks.MagnitudePruning(1.0)
    model = mlp(sparsity=None)
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match=r"has no masks. Call dst.sparsify"):
        model.fit(*data(), verbose=0, callbacks=[dst.callbacks.RigL()])


class StashSGD(keras.optimizers.SGD):
    """An optimizer keeping weight-shaped state outside per-variable lists."""

    def build(self, variables):
        super().build(variables)
        self.stash = {id(v): self.add_variable_from_reference(v, "stash") for v in variables}


def test_optimizer_with_unattributable_state_raises():
    model = mlp()
    model.compile(StashSGD(0.1), "mse")
    with pytest.raises(ValueError, match=r"cannot reset the state of optimizer StashSGD"):
        model.fit(*data(), batch_size=8, verbose=0,
                  callbacks=[dst.callbacks.SET(update_freq=2, end_step=1.0, seed=0)])


def test_end_step_fraction_is_of_this_fits_steps():
    model = mlp()
    model.compile("adam", "mse")
    cb = dst.callbacks.SET(update_freq=1, end_step=0.5, seed=0)
    model.fit(*data(64), batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    assert cb.updater.end == 7  # 16 steps; the last update step is step 7
    model.fit(*data(64), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert cb.updater.end == 16 + 3  # second fit begins at step 16 and has 8 steps


def test_rigl_leaves_the_optimizer_as_it_was_after_fit():
    model = mlp()
    model.compile("adam", "mse")
    model.fit(*data(), batch_size=8, verbose=0,
              callbacks=[dst.callbacks.RigL(update_freq=2, end_step=1.0, seed=0)])
    assert "apply" not in vars(model.optimizer)
    assert "_distributed_tf_update_step" not in vars(model.optimizer)
    assert model.train_function is None  # retraced without the sparse step next time


def test_rigl_in_fit_sees_the_dense_gradient_of_the_current_batch():
    model = mlp()
    model.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: weights stay put
    x, y = data(16)
    expected = gradients(model, x, lambda out: keras.losses.MeanSquaredError()(y, out),
                         [t.variable for t in dst._model.dynamic_targets(model)])
    before = list(dst.get_masks(model).values())
    cb = recording("rigl", update_freq=1, end_step=0, seed=0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    assert len(cb.updater.seen) == len(expected) == 2
    seen = {g.shape: g for g in cb.updater.seen}  # weights may be computed in any order
    for want, mask in zip(expected, before):
        grad = seen[tuple(want.shape)]
        np.testing.assert_allclose(grad, numpy(want), rtol=1e-5, atol=1e-7)
        assert np.abs(grad[~mask]).max() > 0  # dense: masked entries get a gradient


@pytest.mark.parametrize("cls, kwargs", [
    (dst.callbacks.SET, dict(update_freq=7, drop_fraction=0.2, seed=3)),
    (dst.callbacks.RigL, dict(drop_fraction_schedule="linear", end_step=50)),
    (dst.callbacks.MagnitudePruning, dict(final_sparsity=0.7, power=2, distribution="erk")),
])
def test_get_config_round_trip(cls, kwargs):
    config = cls(**kwargs).get_config()
    assert {k: config[k] for k in kwargs} == kwargs
    assert cls.from_config(config).get_config() == config


@pytest.mark.parametrize("name", ["magnitude", "granet", "set", "rigl"])
def test_a_fresh_callback_in_a_second_fit_ramps_from_that_fits_start(name):
    make = {
        "magnitude": lambda **kw: dst.callbacks.MagnitudePruning(
            0.9, initial_sparsity=0.5, update_freq=1, end_step=1.0, **kw),
        "granet": lambda **kw: dst.callbacks.GraNet(0.9, initial_sparsity=0.5, update_freq=1,
                                                    end_step=1.0, seed=0, **kw),
        "set": lambda **kw: dst.callbacks.SET(update_freq=1, drop_fraction=0.3, end_step=1.0,
                                              seed=0, **kw),
        "rigl": lambda **kw: dst.callbacks.RigL(update_freq=1, drop_fraction=0.3,
                                                end_step=1.0, seed=0, **kw),
    }[name]
    model = mlp(sparsity=None if name in ("magnitude", "granet") else 0.8)
    model.compile("adam", "mse")
    model.fit(*data(64), batch_size=8, epochs=2, verbose=0)  # 16 steps without dst

    def value(up, step):  # the scheduled sparsity, or the drop fraction
        if name in ("magnitude", "granet"):
            return up.sparsity_schedule(step)
        return up.drop_fraction_at(step)

    first = {"magnitude": 0.5, "granet": 0.5, "set": 0.3, "rigl": 0.3}[name]
    cb = make()
    model.fit(*data(64), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert (cb.updater.begin, cb.updater.end) == (16, 23)
    assert value(cb.updater, 16) == pytest.approx(first)  # ramps from its own start
    if name in ("magnitude", "granet"):
        assert dst.sparsity(model) == pytest.approx(0.9, abs=0.02)

    # steps_from="optimizer": begin_step counts from the optimizer's step 0.
    cb = make(steps_from="optimizer")
    model.fit(*data(64), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert (cb.updater.begin, cb.updater.end) == (0, 31)
    assert value(cb.updater, 24) != pytest.approx(first)


def test_steps_from_is_checked():
    with pytest.raises(ValueError, match=r"`steps_from` must be one of \['fit', 'optimizer'\] "
                                         r"for RigL\. Received: steps_from='epoch'"):
        dst.callbacks.RigL(steps_from="epoch")


def _fit_refused(model, cb, match):
    """`fit` with `cb` raises `match`; masks, weights and the step are unchanged."""
    masks, weights = dst.get_masks(model), model.get_weights()
    with pytest.raises(ValueError, match=match):
        model.fit(*data(96), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    after = dst.get_masks(model)
    assert after.keys() == masks.keys()
    for path, mask in after.items():
        np.testing.assert_array_equal(mask, masks[path])
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(numpy(model.optimizer.iterations)) == 0


@pytest.mark.parametrize("name, args", [
    ("MagnitudePruning", dict(final_sparsity=0.9)),
    ("GraNet", dict(final_sparsity=0.9)),
])
def test_a_pruning_schedule_longer_than_the_fit_is_refused_before_anything_changes(name, args):
    # 96 examples in batches of 8: steps 0 to 11. Counted from the fit, end_step=12
    # could never be reached, so the model would end short of final_sparsity.
    model = mlp(sparsity=None if name == "MagnitudePruning" else 0.5)
    model.compile("adam", "mse")
    cb = getattr(dst.callbacks, name)(**args, update_freq=1, end_step=12, seed=0)
    _fit_refused(model, cb, rf"{name}: end_step=12 is after the last step of this fit, "
                            r"which has 12 steps \(steps 0 to 11\), so training would end "
                            r"before the schedule reaches its target\. .*steps_from='optimizer'")
    # The last step is allowed, and reaches the target exactly.
    cb = getattr(dst.callbacks, name)(**args, update_freq=1, end_step=11, seed=0)
    model.fit(*data(96), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert dst.sparsity(model) == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("name", ["SET", "RigL", "MagnitudePruning"])
def test_a_first_update_after_the_fit_is_refused(name):
    model = mlp() if name != "MagnitudePruning" else mlp(sparsity=None)
    model.compile("adam", "mse")
    args = dict(final_sparsity=0.9, end_step=1.0) if name == "MagnitudePruning" else {}
    cb = getattr(dst.callbacks, name)(**args, begin_step=12, seed=0)
    _fit_refused(model, cb, rf"{name}: begin_step=12 is after the last step of this fit, "
                            r"which has 12 steps \(steps 0 to 11\), so no mask would ever "
                            r"be updated\.")


def test_a_schedule_counted_from_the_optimizer_may_span_several_fits():
    # Counted from step 0, the schedule continues in the next fit: not refused.
    model = mlp(sparsity=None)
    model.compile("adam", "mse")
    cb = dst.callbacks.MagnitudePruning(0.9, update_freq=1, end_step=23, steps_from="optimizer")
    model.fit(*data(96), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert dst.sparsity(model) < 0.9
    model.fit(*data(96), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert dst.sparsity(model) == pytest.approx(0.9, abs=0.01)


def test_a_custom_loop_bound_with_its_length_is_checked_too():
    model = mlp(sparsity=None)
    model.compile("adam", "mse")
    model.optimizer.build(model.trainable_variables)
    up = dst.updaters.MagnitudePruning(0.9, end_step=20)
    with pytest.raises(ValueError, match=r"end_step=20 is after the last step of this fit, "
                                         r"which has 10 steps"):
        up.bind(model, total_steps=10)
    assert dst.get_masks(model) == {}
    up.bind(model)  # the length unknown: nothing to check
