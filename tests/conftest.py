"""Shared test setup: quiet TensorFlow, seeded Keras, small helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dst  # noqa: E402

BACKEND = keras.backend.backend()
# Scripts the tests run in subprocesses, not test modules.
collect_ignore = ["scripts"]


def pytest_collection_modifyitems(config, items):
    """Skips `tensorflow_only` tests when the suite runs on another backend."""
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow only; this run: KERAS_BACKEND={BACKEND}")
    for item in items:
        # dst.export converts through TensorFlow: its doctests are TF-only too.
        if "tensorflow_only" in item.keywords or item.nodeid.startswith("dst/export.py"):
            item.add_marker(skip)


def compiled(fn):
    """`fn` compiled as the backend compiles a train step (XLA on TF and JAX)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def gradients(model, x, loss, variables=None):
    """Gradients of `loss(model(x))` for `variables` (default: all trainable),
    computed eagerly the way a custom loop on this backend computes them."""
    variables = list(model.trainable_variables if variables is None else variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss(model(x, training=True))
        return tape.gradient(value, variables)
    if BACKEND == "jax":
        import jax

        trainable = model.trainable_variables
        index = {id(v): i for i, v in enumerate(trainable)}
        ntv = [v.value for v in model.non_trainable_variables]

        def f(values):
            out, _ = model.stateless_call(values, ntv, x, training=True)
            return loss(out)

        grads = jax.grad(f)([v.value for v in trainable])
        return [grads[index[id(v)]] for v in variables]
    for v in model.trainable_variables:
        v.value.grad = None
    loss(model(x, training=True)).backward()
    return [v.value.grad for v in variables]


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def weights_of(model) -> list[np.ndarray]:
    """A copy of every weight of `model`, in order."""
    return [w.numpy().copy() for w in model.weights]


def assert_same_arrays(before, after) -> None:
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def state(model):
    """The weights and masks of `model`, to check later that nothing changed."""
    return weights_of(model), dst.get_masks(model)


def assert_unchanged(model, before) -> None:
    weights, masks = before
    assert_same_arrays(weights, weights_of(model))
    after = dst.get_masks(model)
    assert sorted(after) == sorted(masks)
    for k in masks:
        np.testing.assert_array_equal(masks[k], after[k])


def run_python(code: str, *args: str, timeout: int = 300) -> str:
    """Runs `code` in a fresh Python process; returns stdout, fails on error."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def mlp(seed=0, sparsity=0.8, distribution="uniform"):
    """A 12-16-3 MLP, sparsified unless `sparsity` is None."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3),
    ])
    if sparsity is not None:
        dst.sparsify(model, sparsity, distribution, seed=seed)
    return model


def data(n=64, seed=0):
    """Inputs (n, 12) and a linear target (n, 3) of the first 3 features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, (x[:, :3] @ rng.normal(size=(3, 3))).astype("float32")


def _record(seen: list, x) -> None:
    """Appends `x` to `seen` as numpy, also from inside a traced JAX step."""
    if BACKEND == "jax":
        import jax

        jax.debug.callback(lambda a: seen.append(np.array(a)), x)
    else:
        seen.append(np.array(x))


def recording(name, **kwargs):
    """The callback of algorithm `name` whose updater records, in
    `.updater.seen`, the `grad` each new mask is computed from (one entry per
    weight per update: the dense gradient, or SNFS' momentum)."""
    base = dst.updaters.get(name)

    def new_mask(self, kit, weight, mask, grad, value, salt):
        _record(self.seen, grad)
        return base.new_mask(self, kit, weight, mask, grad, value, salt)

    cb = dst.callbacks.get(name, **kwargs)
    cb.updater = type(f"Recording{base.__name__}", (base,), {"new_mask": new_mask})(**kwargs)
    cb.updater.seen = []
    return cb
