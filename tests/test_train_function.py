"""The train function of a dst fit: the lean step between updates, the update
step only where its window may hold an update, and no per-step host sync."""

import gc
import os

import keras
import numpy as np
import pytest
from conftest import BACKEND, data, mlp

import dst

CONTROL_FLOW_TF = ("If", "StatelessIf", "While", "StatelessWhile")


class Grab(keras.callbacks.Callback):
    """Records the arguments of the first lean call and runs `check` at the
    end of the first epoch, while dst's train function is bound."""

    def __init__(self, dst_callback, check):
        super().__init__()
        self.dst_callback, self.check, self.args, self.done = dst_callback, check, None, False

    def on_epoch_begin(self, epoch, logs=None):
        function = self.dst_callback._function
        lean = function.lean

        def recording(*args):
            if self.args is None:
                self.args = args
            return lean(*args)

        function.lean, self.lean = recording, lean

    def on_epoch_end(self, epoch, logs=None):
        function = self.dst_callback._function
        function.lean = self.lean
        if not self.done:
            self.done = True
            self.check(function, self.args)


def counting(monkeypatch):
    """Counts the calls of the lean and the update programs of dst's fits."""
    calls = {"lean": 0, "full": 0}
    build = dst.backend.sparse_train_function

    def counted(model, optimizer, sparse, state):
        program = build(model, optimizer, sparse, state)
        name = "lean" if sparse.run.__name__ == "lean_step" else "full"

        def call(*args):
            calls[name] += 1
            return program(*args)

        return call

    monkeypatch.setattr(dst.backend, "sparse_train_function", counted)
    return calls


@pytest.mark.parametrize("spe", [1, pytest.param(3, marks=pytest.mark.skipif(
    BACKEND == "torch", reason="Keras' PyTorch trainer runs one step per call"))])
def test_update_program_runs_only_on_windows_that_may_hold_an_update(spe, monkeypatch):
    model = mlp()
    model.compile("adam", "mse", steps_per_execution=spe)
    cb = dst.callbacks.SET(update_freq=5, end_step=1.0, seed=0)
    calls = counting(monkeypatch)
    model.fit(*data(160), batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    # 20 steps, updates at steps 0, 5, 10, 15 (end_step=1.0: step 19 is the last)
    windows = [range(s, min(s + spe, 20)) for s in range(0, 20, spe)]
    want = sum(any(t % 5 == 0 for t in w) for w in windows)
    assert calls["full"] == want
    assert calls["lean"] == len(windows) - want


def test_fixed_masks_never_build_the_update_program():
    model = mlp()
    model.compile("adam", "mse")
    cb = dst.callbacks.FixedMasks()
    seen = []
    grab = Grab(cb, lambda function, args: seen.append(function.full))
    model.fit(*data(64), batch_size=8, epochs=1, verbose=0, callbacks=[cb, grab])
    assert seen == [None]


def test_callback_dispatch_stays_asynchronous_with_a_dst_callback():
    from keras.callbacks import CallbackList

    for make in (dst.callbacks.FixedMasks, lambda: dst.callbacks.RigL(seed=0),
                 lambda: dst.callbacks.SNFS(seed=0)):
        plain = CallbackList([keras.callbacks.History()])
        with_dst = CallbackList([keras.callbacks.History(), make()])
        # TensorFlow is not thread-safe for Keras: no async dispatch there at all.
        assert with_dst._async_train == plain._async_train
        assert with_dst._async_train == (BACKEND != "tensorflow")


@pytest.mark.skipif(BACKEND != "jax", reason="the lowered JAX program")
def test_lean_step_holds_no_conditional_on_jax():
    import jax

    model = mlp()
    model.compile("adam", "mse")
    cb = dst.callbacks.RigL(update_freq=4, end_step=1.0, seed=0)
    x, y = data(64)
    batch = (x[:8], y[:8])
    texts = {}

    def check(function, args):
        state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                     optimizer_variables=True, metrics_variables=True)
        full = function.full
        for name, program in (("lean", function.lean), ("full", full)):
            texts[name] = str(jax.make_jaxpr(
                lambda s, program=program: program(s, iter([batch]))[1])(tuple(state)))

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb, Grab(cb, check)])
    assert "cond[" in texts["full"]  # the check can fail: the update step branches
    assert "cond[" not in texts["lean"] and "while[" not in texts["lean"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the TensorFlow graph")
@pytest.mark.parametrize("jit", [False, True])
def test_lean_step_holds_no_conditional_on_tensorflow(jit):
    def control_flow(function, args):
        # Keras' train function calls a tf.function (held in its closure).
        traced = next(c.cell_contents for c in function.__closure__
                      if hasattr(c.cell_contents, "get_concrete_function"))
        graph = traced.get_concrete_function(*args).graph.as_graph_def()
        ops = [n.op for n in graph.node]
        ops += [n.op for f in graph.library.function for n in f.node_def]
        return sum(op in CONTROL_FLOW_TF for op in ops)

    x, y = data(64)
    args = []

    class Args(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not args:
                plain = self.model.train_function

                def record(*a):
                    if not args:
                        args.extend(a)
                    return plain(*a)

                self.model.train_function = record

    dense = mlp()
    dense.compile("adam", "mse", jit_compile=jit)
    dense.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[Args()])
    dense.train_function = None
    dense.make_train_function()  # Keras' own tf.function (the recorder replaced it)
    counts = {"dense": control_flow(dense.train_function, args)}

    model = mlp()
    model.compile("adam", "mse", jit_compile=jit)
    cb = dst.callbacks.RigL(update_freq=4, end_step=1.0, seed=0)

    def check(function, lean_args):
        counts["lean"] = control_flow(function.lean.function, lean_args)
        counts["full"] = control_flow(function.full.function, lean_args)

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb, Grab(cb, check)])
    assert counts["full"] > counts["dense"]  # the check can fail
    assert counts["lean"] == counts["dense"]


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch profiler")
def test_no_host_read_per_step_on_torch():
    from torch.profiler import profile

    def reads(steps, with_dst):
        model = mlp()
        model.compile("adam", "mse")
        callbacks = [dst.callbacks.SET(update_freq=1000, end_step=1.0, seed=0)] if with_dst \
            else []
        x, y = data(8 * steps)
        with profile() as prof:
            model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
        return sum(e.count for e in prof.key_averages()
                   if e.key in ("aten::item", "aten::_local_scalar_dense"))

    extra_8 = reads(8, True) - reads(8, False)
    extra_16 = reads(16, True) - reads(16, False)
    assert extra_16 == extra_8  # a fixed cost per fit, nothing per step


def test_two_dst_callbacks_in_one_fit_are_refused_before_anything_changes():
    model = mlp()
    model.compile("adam", "mse")
    before = dst.get_masks(model)
    weights = model.get_weights()
    with pytest.raises(ValueError, match=r"Two dst callbacks in one fit: MagnitudePruning "
                                         r"and RigL\. Only one can drive the masks"):
        model.fit(*data(32), batch_size=8, epochs=1, verbose=0,
                  callbacks=[dst.callbacks.MagnitudePruning(0.9),
                             dst.callbacks.RigL(seed=0)])
    for path, mask in dst.get_masks(model).items():
        np.testing.assert_array_equal(mask, before[path])
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    # The same callback in a later fit, alone, runs.
    model.fit(*data(32), batch_size=8, epochs=1, verbose=0,
              callbacks=[dst.callbacks.RigL(update_freq=1, end_step=1.0, seed=0)])
    assert any(not np.array_equal(m, before[p]) for p, m in dst.get_masks(model).items())


def test_a_wrongly_shaped_gradient_changes_no_mask():
    model = mlp()
    model.compile("adam", "mse")
    model.fit(*data(8), batch_size=8, epochs=1, verbose=0)  # builds the optimizer
    up = dst.updaters.RigL(update_freq=1, end_step=10, seed=0)
    up.bind(model)
    before = dst.get_masks(model)
    grads = [np.ones(v.shape, "float32") for v in model.trainable_variables]
    last = [i for i, v in enumerate(model.trainable_variables) if len(v.shape) == 2][-1]
    path = model.trainable_variables[last].path
    grads[last] = np.ones((3, 2), "float32")
    with pytest.raises(ValueError, match=rf"RigL\.update: the gradient of '{path}' has shape "
                                         r"\(3, 2\), expected \(\d+, \d+\) \(the weight's "
                                         r"shape\)\. No mask was changed\."):
        up.update(0, grads)
    for p, mask in dst.get_masks(model).items():
        np.testing.assert_array_equal(mask, before[p])


def test_a_hook_called_outside_fit_says_where_the_callback_runs():
    cb = dst.callbacks.RigL(seed=0)
    for hook in ("on_train_batch_begin", "on_epoch_begin", "on_epoch_end"):
        with pytest.raises(RuntimeError, match=rf"RigL\.{hook} was called outside model\.fit: "
                                               r".*updater\.attach\(\)"):
            getattr(cb, hook)(0)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile")
def test_jit_compile_from_a_saved_file_names_its_origin_and_the_fix():
    model = mlp()
    model.compile("adam", "mse", jit_compile=True)
    with pytest.raises(ValueError, match=r"keeps the setting it was saved with .*Set "
                                         r"`.*\.jit_compile = False`"):
        model.fit(*data(16), batch_size=8, epochs=1, verbose=0,
                  callbacks=[dst.callbacks.RigL(seed=0)])
    model.jit_compile = False  # the one line the message gives
    model.fit(*data(16), batch_size=8, epochs=1, verbose=0,
              callbacks=[dst.callbacks.RigL(seed=0)])


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's stateless train step")
def test_train_on_batch_under_attach_is_refused_on_jax():
    model = mlp()
    model.compile("adam", "mse")
    model.optimizer.build(model.trainable_variables)
    up = dst.updaters.SET(update_freq=1, end_step=10, seed=0)
    up.bind(model)
    before = dst.get_masks(model)
    with up.attach(), pytest.raises(RuntimeError, match=r"dst on JAX: this optimizer step runs "
                                                        r"inside a Keras train step built "
                                                        r"without dst"):
        model.train_on_batch(*data(8))
    for path, mask in dst.get_masks(model).items():
        np.testing.assert_array_equal(mask, before[path])


def test_fits_of_one_model_reuse_the_lean_program_unless_it_observes():
    model = mlp()
    model.compile("adam", "mse")
    seen = []

    def fit(cb):
        grab = Grab(cb, lambda function, args: seen.append(function.lean))
        model.fit(*data(32), batch_size=8, epochs=1, verbose=0, callbacks=[cb, grab])
        return seen[-1]

    first = fit(dst.callbacks.SET(update_freq=2, seed=0))
    assert fit(dst.callbacks.RigL(update_freq=2, seed=0)) is first  # no new trace
    assert fit(dst.callbacks.FixedMasks()) is first
    snfs = dst.callbacks.SNFS(update_freq=2, seed=0)
    assert fit(snfs) is not first  # its momentum is its own
    model.compile("sgd", "mse")  # a new optimizer: a new program
    assert fit(dst.callbacks.SET(update_freq=2, seed=0)) is not first


@pytest.mark.parametrize("name", ["set", "rigl",
                                  pytest.param("magnitude", marks=pytest.mark.slow)])
def test_a_callback_reused_by_fits_of_one_length_reuses_its_update_program(name):
    make = {
        "set": lambda seed=0: dst.callbacks.SET(update_freq=2, drop_fraction=0.3,
                                                end_step=1.0, seed=seed),
        "rigl": lambda seed=0: dst.callbacks.RigL(update_freq=2, drop_fraction=0.3,
                                                  end_step=1.0, seed=seed),
        "magnitude": lambda seed=0: dst.callbacks.MagnitudePruning(
            0.9, initial_sparsity=0.8, update_freq=2, end_step=1.0, seed=seed),
    }[name]

    def run(mode):
        model = mlp()
        model.compile("adam", "mse")
        cb, programs = make(), []
        for _ in range(3):  # `for epoch: model.fit(epochs=1)`: three fits of 8 steps
            if mode != "reused":
                cb = make()
            if mode == "uncached":  # what each fit would build without the caches
                for key in ("_dst_update_program", "_dst_lean_program", "_dst_last_updater"):
                    vars(model).pop(key, None)
            grab = Grab(cb, lambda function, args: programs.append(function.full))
            model.fit(*data(64), batch_size=8, epochs=1, verbose=0, shuffle=False,
                      callbacks=[cb, grab])
        return model, programs

    reused, programs = run("reused")
    assert programs[0] is not None
    assert all(p is programs[0] for p in programs)  # built (and traced) once
    equal, equal_programs = run("equal")  # a new, equal callback per fit
    assert all(p is equal_programs[0] for p in equal_programs)
    uncached, uncached_programs = run("uncached")
    assert len({id(p) for p in uncached_programs}) == 3
    for model in (reused, equal):
        for a, b in zip(dst.get_masks(model).values(), dst.get_masks(uncached).values(),
                        strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(model.get_weights(), uncached.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_new_callback_with_other_arguments_builds_its_own_program():
    model = mlp()
    model.compile("adam", "mse")
    programs = []

    def fit(cb):
        grab = Grab(cb, lambda function, args: programs.append(function.full))
        model.fit(*data(64), batch_size=8, epochs=1, verbose=0, callbacks=[cb, grab])
        return cb

    first = fit(dst.callbacks.SET(update_freq=2, end_step=1.0, seed=0))
    other = fit(dst.callbacks.SET(update_freq=2, end_step=1.0, seed=1))  # other draws
    assert other.updater is not first.updater and programs[1] is not programs[0]
    third = fit(dst.callbacks.SET(update_freq=3, end_step=1.0, seed=1))  # another schedule
    assert third.updater is not other.updater and programs[2] is not programs[1]


@pytest.mark.parametrize("name", ["SET", "RigL"])
def test_new_callbacks_without_a_seed_reuse_the_program_with_their_own_draws(name):
    make = getattr(dst.callbacks, name)

    def run(seeds):
        model = mlp()
        model.compile("adam", "mse")
        programs, used = [], []
        for seed in seeds:
            if seed is not None:  # the reference: explicit seeds, nothing cached
                for key in ("_dst_update_program", "_dst_lean_program", "_dst_last_updater"):
                    vars(model).pop(key, None)
            cb = make(update_freq=2, drop_fraction=0.3, end_step=1.0, seed=seed)
            grab = Grab(cb, lambda function, args: programs.append(function.full))
            model.fit(*data(64), batch_size=8, epochs=1, verbose=0, shuffle=False,
                      callbacks=[cb, grab])
            used.append(cb.updater.seed)
        return model, programs, used

    fresh, programs, seeds = run([None, None, None])
    assert all(p is programs[0] for p in programs)  # built (and traced) once
    assert len(set(seeds)) == 3  # each callback drew its own seed
    reference, reference_programs, _ = run(seeds)
    assert len({id(p) for p in reference_programs}) == 3
    for a, b in zip(dst.get_masks(fresh).values(), dst.get_masks(reference).values(),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # sixteen fits
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmRSS")
def test_repeated_fits_with_a_new_equal_callback_keep_no_memory():
    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    model = mlp()
    model.compile("adam", "mse")
    x, y = data(64)
    memory = []
    for _ in range(16):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[dst.callbacks.SET(update_freq=4, end_step=1.0, seed=0)])
        gc.collect()
        memory.append(rss_mib())
    assert (memory[-1] - memory[4]) / 11 < 0.3, memory
