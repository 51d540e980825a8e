"""`grad_accumulation_n`: RigL, SRigL and GraNet grow from the mean dense
gradient of the n steps up to each update, computed only by the update
program, and resumed exactly from a checkpoint taken inside a window."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import BACKEND, data, gradients, mlp, numpy, recording
from test_train_function import Grab, counting

import dst
from dst._model import dynamic_targets

SCRIPTS = Path(__file__).parent / "scripts"
MSE = keras.losses.MeanSquaredError()

# Updates after optimizer steps 2 and 6 (update_freq 4): with n = 3 their
# gradients are the means over steps 0..2 and 4..6 (steps 3 and 7 count for none).
SCHEDULE = dict(update_freq=4, begin_step=2, end_step=6)
ARGS = {
    "rigl": dict(drop_fraction=0.5, drop_fraction_schedule="constant", **SCHEDULE),
    "srigl": dict(drop_fraction=0.5, drop_fraction_schedule="constant", **SCHEDULE),
    "granet": dict(final_sparsity=0.8, **SCHEDULE),
}
START = {"rigl": 0.8, "srigl": 0.8, "granet": 0.5}


class Weights(keras.callbacks.Callback):
    """The trainable values each step starts from (one step per call)."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append([numpy(v).copy() for v in self.model.trainable_variables])


def _by_hand(model, x, y, snapshots, batch=8):
    """The dense gradient of each step's batch at that step's weights, per sparse weight."""
    variables = [t.variable for t in dynamic_targets(model)]
    out = []
    for step, values in enumerate(snapshots):
        for v, value in zip(model.trainable_variables, values, strict=True):
            v.assign(value)
        xb, yb = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
        out.append([numpy(g) for g in gradients(model, xb, lambda o, yb=yb: MSE(yb, o),
                                                  variables)])
    return out


def _fit(name, n, steps_per_execution=1, jit=False, record=True):
    model = mlp(sparsity=START[name])
    model.compile(keras.optimizers.SGD(0.0), "mse", steps_per_execution=steps_per_execution,
                  jit_compile=jit)
    make = recording if record else dst.callbacks.get
    cb = make(name, grad_accumulation_n=n, seed=0, **ARGS[name])
    log = Weights()
    x, y = data(64)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[cb, log])
    return model, cb, log, (x, y)


@pytest.mark.parametrize("name, n", [("rigl", 1), ("rigl", 3), ("srigl", 3),
                                     pytest.param("granet", 3, marks=pytest.mark.slow)])
def test_grow_scores_are_the_mean_of_the_dense_gradients_of_the_last_n_steps(name, n):
    model, cb, log, (x, y) = _fit(name, n)
    assert len(log.steps) == 8
    grads = _by_hand(model, x, y, log.steps)
    seen = cb.updater.seen
    assert len(seen) == 2 * 2  # two updates, two sparse weights each
    for update, at in enumerate((2, 6)):
        got = {g.shape: g for g in seen[2 * update:2 * update + 2]}  # in any order
        for index in range(2):
            want = sum(grads[s][index] for s in range(at - n + 1, at + 1)) / n
            np.testing.assert_allclose(got[want.shape], want, rtol=1e-5, atol=1e-7)
    # The sums restart at 0 after each update (and hold nothing between windows).
    assert all(not numpy(s).any() for s in cb.updater.accumulators)
    assert len(cb.updater.accumulators) == (0 if n == 1 else 2)


def test_n_equal_1_adds_no_state_and_no_file_entry(tmp_path):
    model, cb, _, _ = _fit("rigl", 1, record=False)
    plain = dst.callbacks.RigL(seed=0, **ARGS["rigl"])
    assert cb.updater.accumulators == []
    assert len(cb.updater.state_variables()) == 1 + len(cb.updater.targets)
    model.save(tmp_path / "m.keras")
    accumulated, _, _, _ = _fit("rigl", 3, record=False)
    accumulated.save(tmp_path / "a.keras")
    import zipfile

    def names(path):
        with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as f:
            import h5py

            found = []
            h5py.File(f, "r").visit(found.append)
            return found

    assert not any("grad_accumulation" in k for k in names(tmp_path / "m.keras"))
    assert any("grad_accumulation" in k for k in names(tmp_path / "a.keras"))  # can fail
    assert plain.get_config()["grad_accumulation_n"] == 1


@pytest.mark.skipif(BACKEND == "torch", reason="Keras refuses steps_per_execution > 1 on PyTorch")
@pytest.mark.parametrize("k", [2, 3])
def test_steps_per_execution_accumulates_the_same_steps(k):
    one, cb1, _, _ = _fit("rigl", 3)
    many, cbk, _, _ = _fit("rigl", 3, steps_per_execution=k)
    assert len(cbk.updater.seen) == len(cb1.updater.seen) == 4
    for update in (0, 2):  # the weights of an update may come in any order
        want = {g.shape: g for g in cb1.updater.seen[update:update + 2]}
        for got in cbk.updater.seen[update:update + 2]:
            np.testing.assert_allclose(got, want[got.shape], rtol=1e-6, atol=1e-8)
    for a, b in zip(dst.get_masks(many).values(), dst.get_masks(one).values(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.tensorflow_only  # JAX is always compiled, PyTorch never
def test_jit_compile_accumulates_as_the_host_path():
    host, _, _, _ = _fit("rigl", 3, record=False)
    xla, cb, _, _ = _fit("rigl", 3, jit=True, record=False)
    assert cb.updater.jit
    for a, b in zip(dst.get_masks(xla).values(), dst.get_masks(host).values(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spe", [1, pytest.param(3, marks=pytest.mark.skipif(
    BACKEND == "torch", reason="Keras' PyTorch trainer runs one step per call"))])
def test_update_program_runs_only_on_windows_that_may_hold_an_accumulated_step(spe,
                                                                             monkeypatch):
    model = mlp()
    model.compile("adam", "mse", steps_per_execution=spe)
    cb = dst.callbacks.RigL(update_freq=5, grad_accumulation_n=3, end_step=1.0, seed=0)
    calls = counting(monkeypatch)
    model.fit(*data(160), batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    # 20 steps, updates at 0, 5, 10, 15; accumulated steps 0, 3-5, 8-10, 13-15
    windows = [range(s, min(s + spe, 20)) for s in range(0, 20, spe)]
    accumulated = {0} | {t for u in (5, 10, 15) for t in range(u - 2, u + 1)}
    want = sum(any(t in accumulated for t in w) for w in windows)
    assert calls["full"] == want
    assert calls["lean"] == len(windows) - want


def _operations(jaxpr) -> int:
    """The equations of a jaxpr, those of the jaxprs it calls included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(inner, "eqns"):
                    total += _operations(inner)
    return total


@pytest.mark.skipif(BACKEND != "jax", reason="the lowered JAX program")
def test_the_lean_program_is_unchanged_by_accumulation_on_jax():
    import jax

    x, y = data(64)
    batch = (x[:8], y[:8])

    def equations(n):
        model = mlp()
        model.compile("adam", "mse")
        cb = dst.callbacks.RigL(update_freq=4, grad_accumulation_n=n, end_step=1.0, seed=0)
        out = {}

        def check(function, args):
            state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                         optimizer_variables=True, metrics_variables=True)
            for name in ("lean", "full"):
                program = getattr(function, name)
                out[name] = _operations(jax.make_jaxpr(
                    lambda s, p=program: p(s, iter([batch]))[1])(tuple(state)).jaxpr)

        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb, Grab(cb, check)])
        return out

    one, three = equations(1), equations(3)
    assert three["lean"] == one["lean"]  # not one more operation between windows
    assert three["full"] > one["full"]  # the check can fail: the update program accumulates


def test_mixed_float16_accumulates_unscaled_gradients_of_applied_steps_only():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = mlp(sparsity=0.5)
        x, y = data(8)
        targets = dynamic_targets(model)
        expected = gradients(model, x, lambda out: MSE(y, out), [t.variable for t in targets])
        cb = recording("rigl", update_freq=3, begin_step=3, end_step=6, grad_accumulation_n=2,
                       drop_fraction=0.5, drop_fraction_schedule="constant",
                       grow_candidates="before_drop", seed=0)
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0),
                                                  initial_scale=2.0**30)
        model.compile(opt, "mse")
        model.fit(np.tile(x, (6, 1)), np.tile(y, (6, 1)), batch_size=8, epochs=5, verbose=0,
                  shuffle=False, callbacks=[cb])
        assert int(numpy(opt.inner_optimizer.iterations)) < 30  # some steps were skipped
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    # Updates after applied steps 3 and 6; the first one's score is the mean of
    # applied steps 2 and 3, of one batch at one weight: the unscaled gradient
    # (a skipped step would make it infinite, a sum twice as large).
    assert len(cb.updater.seen) == 2 * len(targets)
    first = {g.shape: g for g in cb.updater.seen[:2]}
    for want in expected:
        grad = first[tuple(want.shape)]
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(grad, numpy(want), rtol=2e-2, atol=1e-3)
    assert sum(int(numpy(s).sum() != 0) for s in cb.updater.skipped) == 0


class Interrupt(keras.callbacks.Callback):
    """Stops `fit` at the end of the second epoch (after BackupAndRestore saved it)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_inside_a_window_exactly(tmp_path):
    # 4 steps per epoch, updates at 0, 4 and 8: the window of the update at
    # step 8 (steps 6, 7, 8) spans the interruption after step 7.
    x, y = data(32)

    def make():
        return dst.callbacks.RigL(update_freq=4, grad_accumulation_n=3, end_step=1.0,
                                  drop_fraction=0.5, seed=5)

    def fit(model, callbacks):
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False, callbacks=callbacks)

    whole = mlp(seed=0)
    whole.compile(keras.optimizers.Adam(0.01), "mse")
    fit(whole, [make()])

    interrupted, first = mlp(seed=0), make()
    interrupted.compile(keras.optimizers.Adam(0.01), "mse")
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(interrupted, [keras.callbacks.BackupAndRestore(str(tmp_path / "b")), first,
                          Interrupt()])
    sums = [numpy(s).copy() for s in first.updater.accumulators]  # as in the checkpoint
    assert all(s.any() for s in sums)  # steps 6 and 7 were added

    cb, checked = make(), []

    class Check(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not checked:  # the first batch of the resumed run, after `cb` bound
                assert int(numpy(self.model.optimizer.iterations)) == 8
                for got, want in zip(cb.updater.accumulators, sums, strict=True):
                    np.testing.assert_array_equal(numpy(got), want)
                checked.append(True)

    resumed = mlp(seed=0)
    resumed.compile(keras.optimizers.Adam(0.01), "mse")
    fit(resumed, [keras.callbacks.BackupAndRestore(str(tmp_path / "b")), cb, Check()])
    assert checked
    for a, b in zip(dst.get_masks(resumed).values(), dst.get_masks(whole).values(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(resumed.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_custom_loop_update_accumulates_on_the_host():
    model = mlp()
    opt = keras.optimizers.SGD(0.0)
    cb = recording("rigl", update_freq=2, begin_step=2, end_step=2, grad_accumulation_n=2,
                   drop_fraction=0.5, seed=0)
    updater = cb.updater
    updater.bind(model, optimizer=opt)
    x, y = data(24)
    variables = [t.variable for t in updater.targets]
    by_hand = []
    for step in range(3):
        xb, yb = x[8 * step:8 * step + 8], y[8 * step:8 * step + 8]
        grads = gradients(model, xb, lambda o, yb=yb: MSE(yb, o))
        by_hand.append(gradients(model, xb, lambda o, yb=yb: MSE(yb, o), variables))
        opt.apply(grads, model.trainable_variables)
        assert updater.update(step, grads) == (step == 2)
    with pytest.raises(ValueError, match=r"needs `grads`.*grad_accumulation_n - 1 steps"):
        fresh = dst.updaters.RigL(update_freq=2, begin_step=2, end_step=2, grad_accumulation_n=2,
                                  seed=0)
        fresh.bind(mlp(), optimizer=keras.optimizers.SGD(0.0))
        fresh.update(1)
    got = {g.shape: g for g in updater.seen}
    for i, v in enumerate(variables):
        want = (numpy(by_hand[1][i]) + numpy(by_hand[2][i])) / 2
        np.testing.assert_allclose(got[tuple(v.shape)], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make, match", [
    (lambda: dst.callbacks.RigL(grad_accumulation_n=0),
     r"`grad_accumulation_n` must be an int >= 1 for RigL\. Received: grad_accumulation_n=0"),
    (lambda: dst.updaters.SRigL(grad_accumulation_n=2.0),
     r"`grad_accumulation_n` must be an int >= 1 for SRigL\. Received: grad_accumulation_n=2\.0"),
    (lambda: dst.callbacks.GraNet(0.9, update_freq=4, grad_accumulation_n=5),
     r"`grad_accumulation_n` must be at most `update_freq` \(4\) for GraNet: the windows of "
     r"two updates would overlap\. Received: grad_accumulation_n=5"),
])
def test_bad_grad_accumulation_n_is_refused_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _parallel(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "accumulation_parallel.py")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a new process
@pytest.mark.tensorflow_only  # spawns its own process (once, in the TensorFlow suite)
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_data_parallel_accumulates_the_global_batch_gradients(backend):
    out = _parallel(backend)
    assert out["replicas"] == 2 and out["n_seen"] == 2
    assert max(out["rel_err"]) < 1e-5, out
    assert out["replicas_equal"] and out["changed"], out


@pytest.mark.slow  # the conformance kit: several fits
@pytest.mark.parametrize("name, kwargs", [("rigl", {}), ("srigl", {}),
                                          ("granet", dict(final_sparsity=0.9))])
def test_accumulating_updaters_pass_the_conformance_kit(name, kwargs):
    from dst.testing import check_updater

    check_updater(name, grad_accumulation_n=2, **kwargs)
