"""SNFS / sparse momentum (Dettmers & Zettlemoyer 2019): the cross-layer split,
the momentum buffer, and the same masks on every path."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from conftest import BACKEND, gradients, numpy

import dst
from dst._select import NUMPY, OPS
from dst.updaters.set import fraction_count, fraction_units

DROP = 0.25


def mlp3(seed=0):
    """An 8-16-16-4 MLP at 50% sparsity: kernels of 128, 256 and 64 entries."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(4),
    ])
    dst.sparsify(model, 0.5, "uniform", seed=seed)
    return model


def bound(model, jit=None, **kwargs):
    args = dict(update_freq=1, drop_fraction=DROP, drop_fraction_schedule="constant",
                end_step=100, seed=0)
    up = dst.updaters.SNFS(**{**args, **kwargs})
    up.bind(model, optimizer=keras.optimizers.SGD(0.0), jit=jit)
    return up


def masks_of(up):
    return [t.mask_constraint.numpy() for t in up.targets]


def zero_grads(up):
    return {t.path: np.zeros(t.shape, "float32") for t in up.targets}


def set_momenta(up, values):
    for variable, value in zip(up.momenta, values, strict=True):
        variable.assign(np.asarray(value, "float32"))


@pytest.mark.parametrize("scores, grown", [
    ((1.0, 2.0, 5.0), (7, 14, 35)),   # 56 dropped, split 1:2:5, no cap
    ((1.0, 1.0, 20.0), (9, 7, 40)),   # the last layer capped at its 40 free places;
                                      # 16 left split 1:1, the odd one to the first (tie)
])
def test_regrowth_counts_are_the_momentum_proportional_split_of_the_total_dropped(
        scores, grown):
    model = mlp3()
    up = bound(model)
    before = masks_of(up)
    rng = np.random.default_rng(0)
    # |momentum| = the layer's score on every active weight (so the layer mean
    # is exactly it), smaller and distinct elsewhere.
    set_momenta(up, [np.where(m, s, rng.permutation(m.size).reshape(m.shape) * 1e-4)
                     for m, s in zip(before, scores)])
    assert [int(m.sum()) for m in before] == [64, 128, 32]
    dropped = [16, 32, 8]  # floor(0.25 · active)
    assert up.update(0, zero_grads(up))
    after = masks_of(up)
    counts = [int(m.sum()) for m in after]
    assert counts == [a - d + g for a, d, g in zip([64, 128, 32], dropped, grown)]
    assert sum(grown) == sum(dropped)
    assert sum(counts) == sum(int(m.sum()) for m in before)


def test_total_is_constant_and_counts_move_toward_the_high_momentum_layer():
    model = mlp3()
    up = bound(model)
    start = [int(m.sum()) for m in masks_of(up)]
    grads = {t.path: np.full(t.shape, g, "float32")
             for t, g in zip(up.targets, (0.1, 1.0, 10.0))}
    history = [start]
    for step in range(4):
        assert up.update(step, grads)
        history.append([int(m.sum()) for m in masks_of(up)])
    assert all(sum(counts) == sum(start) for counts in history)
    last = [h[2] for h in history]
    assert last == sorted(last) and last[-1] > start[2]
    first = [h[0] for h in history]  # the lowest momentum
    assert first == sorted(first, reverse=True) and first[-1] < start[0]
    weights = {v.path: numpy(v) for v in model.trainable_variables}
    for t, m in zip(up.targets, masks_of(up)):
        assert np.all(weights[t.path][~m] == 0.0)


def test_within_a_layer_the_grown_positions_have_the_largest_momentum():
    model = mlp3()
    up = bound(model)
    before = masks_of(up)
    weights = [numpy(t.variable) for t in up.targets]
    rng = np.random.default_rng(3)
    momenta = [rng.permutation(m.size).reshape(m.shape).astype("float32") + 1.0
               for m in before]
    set_momenta(up, momenta)
    assert up.update(0, zero_grads(up))
    for old, new, w, mom in zip(before, masks_of(up), weights, momenta, strict=True):
        active = int(old.sum())
        k = int(np.floor(DROP * active))
        order = np.argsort(np.where(old, np.abs(w), np.inf).ravel(), kind="stable")
        kept = old.ravel().copy()
        kept[order[:k]] = False
        grow = int(new.sum()) - int(kept.sum())
        assert grow >= 0
        # candidates: every connection inactive after the drop
        ranked = np.argsort(np.where(kept, -np.inf, np.abs(mom).ravel()))[::-1]
        expected = kept.copy()
        expected[ranked[:grow]] = True
        np.testing.assert_array_equal(new.ravel(), expected)


def test_momentum_buffer_is_the_smoothed_dense_gradient_in_a_custom_loop():
    model = mlp3()
    up = bound(model, begin_step=50, momentum=0.8)
    rng = np.random.default_rng(0)
    expected = [np.zeros(t.shape, "float32") for t in up.targets]
    for step in range(4):
        grads = {t.path: rng.normal(size=t.shape).astype("float32") for t in up.targets}
        assert not up.update(step, grads)  # not an update step: momentum moves anyway
        expected = [0.8 * m + 0.2 * grads[t.path] for m, t in zip(expected, up.targets)]
    for variable, want in zip(up.momenta, expected, strict=True):
        np.testing.assert_allclose(numpy(variable), want, rtol=1e-5, atol=1e-6)


def test_momentum_buffer_is_the_smoothed_dense_gradient_in_fit():
    # lr = 0 and one batch: the same dense gradient g every step, so after n
    # steps from 0 the buffer is (1 − β^n) · g, at inactive positions too.
    model = mlp3()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.normal(size=(16, 4)).astype("float32")
    model.compile(keras.optimizers.SGD(0.0), "mse")
    cb = dst.callbacks.SNFS(update_freq=10, begin_step=50, end_step=60, seed=0,
                            steps_from="optimizer")  # observes only
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[cb])
    targets = cb.updater.targets
    yt = keras.ops.convert_to_tensor(y)
    grads = gradients(model, x, lambda out: keras.ops.mean((out - yt) ** 2),
                      [t.variable for t in targets])
    for t, g, m in zip(targets, grads, cb.updater.momenta, strict=True):
        want = (1 - 0.9 ** 5) * numpy(g)
        np.testing.assert_allclose(numpy(m), want, rtol=1e-4, atol=1e-6)
        assert np.abs(numpy(m)[~t.mask_constraint.numpy()]).sum() > 0  # dense


def test_momentum_is_saved_with_the_masks_and_restarts_in_a_new_fit(tmp_path):
    # Saved in the file; the first fit after loading continues it (a resumed
    # run), any other fit starts it at 0.
    model = mlp3()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.normal(size=(16, 4)).astype("float32")
    model.compile(keras.optimizers.SGD(0.0), "mse")

    def fit(model):
        cb = dst.callbacks.SNFS(update_freq=10, begin_step=50, end_step=60, seed=0,
                                steps_from="optimizer")  # observes only
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
        return [numpy(m) for m in cb.updater.momenta]

    def same(got, want):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)

    once = fit(model)  # one step from 0: (1 - 0.9) g
    assert all(np.abs(m).sum() > 0 for m in once)
    same(fit(model), once)  # a new fit: from 0 again
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    loaded.compile(keras.optimizers.SGD(0.0), "mse")
    same(fit(loaded), [m * (1 - 0.9 ** 2) / (1 - 0.9) for m in once])  # from the file: 2 steps
    same(fit(loaded), once)  # and then from 0


def _fit(jit_compile):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = rng.normal(size=(96, 4)).astype("float32")
    model = mlp3()
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit_compile)
    cb = dst.callbacks.SNFS(update_freq=3, drop_fraction=0.5, end_step=20, seed=1)
    records = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            records.append(dst.get_masks(self.model))

    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                        callbacks=[cb, Record()])
    return model, records, history


@pytest.mark.slow  # two fits; test_setups checks the compiled SNFS step too
def test_host_and_in_graph_paths_give_the_same_masks():
    if BACKEND == "torch":
        pytest.skip("PyTorch runs the step eagerly: masks are always computed on the host")
    _, host, _ = _fit(False)
    _, graph, _ = _fit(True)
    for masks_h, masks_g in zip(host, graph, strict=True):
        for a, b in zip(masks_h.values(), masks_g.values(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_runs_in_fit_with_a_constant_total_and_zero_inactive_weights():
    model, records, history = _fit("auto")
    total = 0.5 * (128 + 256 + 64)
    assert all(sum(int(m.sum()) for m in r.values()) == total for r in records)
    assert history.history["sparsity"] == pytest.approx([0.5, 0.5])
    counts = [int(m.sum()) for m in records[-1].values()]
    assert counts != [64, 128, 32]  # the split moved connections across layers
    masks = dst.get_masks(model)
    for v in model.trainable_variables:
        if v.path in masks:
            assert np.all(numpy(v)[~masks[v.path]] == 0.0)


def test_by_name_config_and_bad_arguments():
    cb = dst.callbacks.get("snfs", update_freq=5, momentum=0.5, seed=0)
    assert type(cb) is dst.callbacks.SNFS and cb.updater.momentum == 0.5
    assert dst.callbacks.SNFS.from_config(cb.get_config()).updater.momentum == 0.5
    with pytest.raises(ValueError, match=r"`momentum` must be in \[0, 1\) for SNFS. "
                                         r"Received: momentum=1.0"):
        dst.updaters.SNFS(momentum=1.0)


def test_block_masks_are_refused():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8)])
    dst.sparsify(model, 0.5, "uniform", block=(2, 2), seed=0)
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"SNFS does not support block masks"):
        dst.updaters.SNFS().bind(model, total_steps=10)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_shared_invariants_with_a_constant_total(optimizer):
    # The shared invariants of tests/test_callbacks.py, with the total active
    # count (not each layer's) constant: masked weights are exactly 0, grown
    # ones start at 0 with fresh optimizer slots.
    opt = {"sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
           "adam": lambda: keras.optimizers.Adam(0.01)}[optimizer]()
    model = mlp3()
    model.compile(opt, "mse")
    cb = dst.callbacks.SNFS(update_freq=2, drop_fraction=0.5, end_step=1.0, seed=1)
    records = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            up = cb.updater
            records.append(dict(
                masks=dst.get_masks(self.model),
                weights={v.path: numpy(v) for v in self.model.trainable_variables},
                slots={t.path: [numpy(s) for s in up.state.slots(i)]
                       for i, t in enumerate(up.targets)}))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.normal(size=(64, 4)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb, Spy()])
    total = 0.5 * (128 + 256 + 64)
    grown_seen = moved = 0
    prev = None
    for rec in records:
        assert sum(int(m.sum()) for m in rec["masks"].values()) == total
        for path, mask in rec["masks"].items():
            assert np.all(rec["weights"][path][~mask] == 0.0)
            if prev is not None:
                grown = mask & ~prev[path]
                if grown.any():
                    grown_seen += 1
                    assert np.all(rec["weights"][path][grown] == 0.0)
                    for slot in rec["slots"][path]:
                        assert np.all(slot[grown] == 0.0)
                moved += int(mask.sum()) != int(prev[path].sum())
        prev = rec["masks"]
    assert grown_seen > 0 and moved > 0


@pytest.mark.tensorflow_only
def test_the_compiled_split_with_caps_equals_the_host_one():
    # The capped case of the split, under XLA (tf.function(jit_compile=True))
    # and on the host, from the same crafted momenta and weights.
    from conftest import compiled

    results = []
    for jit in (False, True):
        model = mlp3()
        up = bound(model, jit=jit)
        rng = np.random.default_rng(5)
        momenta = [np.where(m, s * (1 + 0.1 * rng.random(m.shape)), rng.random(m.shape))
                   for m, s in zip(masks_of(up), (1.0, 1.0, 20.0))]
        set_momenta(up, momenta)
        grads = {t.path: rng.normal(size=t.shape).astype("float32") for t in up.targets}
        for step in range(3):
            def run(s=step, up=up, grads=grads):
                return up.update(s, grads)

            (compiled(run) if jit else run)()
        results.append(masks_of(up))
    counts = [int(m.sum()) for m in results[0]]
    assert counts[2] == 64 and sum(counts) == 224  # the capped layer filled up
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_gradient_is_not_smoothed_in_and_a_non_finite_weight_skips_all():
    model = mlp3()
    up = bound(model, begin_step=1)
    grads = zero_grads(up)
    first = up.targets[0]
    grads[first.path] = np.ones(first.shape, "float32")
    grads[first.path][0, 0] = np.nan
    assert not up.update(0, grads)
    m = numpy(up.momenta[0])
    assert m[0, 0] == 0.0 and np.all(m.ravel()[1:] == np.float32(0.1))
    # A weight that is not finite: the cross-layer update skips every weight.
    before = masks_of(up)
    w = numpy(first.variable)
    w[before[0]] = np.nan
    first.variable.assign(w)
    assert up.update(1, zero_grads(up))
    for a, b in zip(before, masks_of(up), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [int(numpy(s)) for s in up.skipped] == [1, 1, 1]


def test_before_drop_grows_only_where_nothing_was_active():
    model = mlp3()
    up = bound(model, grow_candidates="before_drop")
    before = masks_of(up)
    rng = np.random.default_rng(2)
    set_momenta(up, [rng.random(m.shape) for m in before])
    assert up.update(0, zero_grads(up))
    after = masks_of(up)
    assert sum(int(m.sum()) for m in after) == sum(int(m.sum()) for m in before)
    dropped = sum(int((b & ~a).sum()) for a, b in zip(after, before))
    assert dropped == 16 + 32 + 8  # disjoint drop and growth: every dropped one leaves


MIRRORED = """
import os, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, dst

rng = np.random.default_rng(0)
x = rng.normal(size=(16, 8)).astype("float32")
y = rng.normal(size=(16, 4)).astype("float32")
y[:8] *= 5  # the two replicas' halves have very different gradients
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    dst.sparsify(model, 0.5, "uniform", seed=0)
    model.compile(keras.optimizers.SGD(0.0), "mse")
with tf.GradientTape() as tape:
    loss = keras.losses.MeanSquaredError()(y, model(x, training=True))
cb = dst.callbacks.SNFS(update_freq=2, drop_fraction=0.5, begin_step=3, end_step=3, seed=0)
expected = None
class Grab(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        global expected
        if batch == 2:  # before the update at step 3: momentum = (1 - 0.9^3) g
            expected = [np.array(m.numpy()) for m in cb.updater.momenta]
kernels = [layer.kernel for layer in model.layers]  # the sparse weights, in order
grads = tape.gradient(loss, kernels)
model.fit(np.tile(x, (4, 1)), np.tile(y, (4, 1)), batch_size=16, epochs=1, verbose=0,
          shuffle=False, callbacks=[cb, Grab()])
out = {"rel_err": [], "replicas_equal": True, "counts": []}
assert [t.variable.path for t in cb.updater.targets] == [k.path for k in kernels]
for m, g in zip(expected, grads):
    want = (1 - 0.9 ** 3) * g.numpy()
    out["rel_err"].append(float(np.linalg.norm(m - want) / np.linalg.norm(want)))
for t in cb.updater.targets:
    copies = [np.asarray(v.numpy()) for v in
              strategy.experimental_local_results(t.constraint.mask.value)]
    out["replicas_equal"] &= all(np.array_equal(copies[0], c) for c in copies)
    out["counts"].append(int(copies[0].sum()))
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow  # a new process
@pytest.mark.tensorflow_only
def test_mirrored_strategy_smooths_the_global_gradient_and_replicas_agree():
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                          timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    assert max(out["rel_err"]) < 1e-5, out
    assert out["replicas_equal"] and sum(out["counts"]) == 224, out
    assert out["counts"] != [64, 128, 32], out  # the update at step 3 moved connections


@pytest.mark.parametrize("kit", [NUMPY, OPS], ids=["host", "ops"])
def test_drop_count_is_not_one_short_when_the_product_is_an_integer(kit):
    # 0.3 is below 3/10 in binary: rounding f(t) down to 2^-24 units dropped 2 of 10.
    for fraction, n in [(0.3, 10), (0.1, 30), (0.7, 100), (0.25, 4), (0.3, 11), (0.99, 1000)]:
        got = int(numpy(fraction_count(kit, fraction_units(fraction), np.int32(n))))
        assert got == math.floor(fraction * n), (fraction, n, got)
