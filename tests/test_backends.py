"""dst on every Keras backend: the same masks on TensorFlow, JAX and PyTorch,
masks that are model state inside compiled steps, and data-parallel training."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import BACKEND, assert_unchanged, data, mlp, state

import dst

SCRIPTS = Path(__file__).parent / "scripts"
BACKENDS = ("tensorflow", "jax", "torch")


def _run_script(name, *args, backend=BACKEND, env=None, timeout=300):
    full_env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                    **(env or {}))
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


AGREEMENT_METHODS = ["set", "rigl", "snfs", "srigl", "granet"]


@pytest.fixture(scope="module")
def agreement_runs(tmp_path_factory):
    """{backend: directory with one .npz per method}, one process per backend."""
    out = {}
    for backend in BACKENDS:
        folder = tmp_path_factory.mktemp(backend)
        _run_script("agreement.py", str(folder), *AGREEMENT_METHODS, backend=backend)
        out[backend] = folder
    return out


@pytest.mark.slow  # a process per backend
@pytest.mark.tensorflow_only  # runs all three backends itself
@pytest.mark.parametrize("method", AGREEMENT_METHODS)
def test_the_same_seed_gives_the_same_masks_on_every_backend(agreement_runs, method):
    runs = {backend: dict(np.load(folder / f"{method}.npz"))
            for backend, folder in agreement_runs.items()}
    reference = runs["tensorflow"]
    masks = sorted(k for k in reference if not k.endswith(":weights"))
    first = {k.split(":", 1)[1]: reference[k] for k in masks if k.startswith("0:")}
    changed = [k for k in masks if not np.array_equal(reference[k], first[k.split(":", 1)[1]])]
    assert changed, "the masks never changed: nothing was compared"
    for backend in ("jax", "torch"):
        assert sorted(runs[backend]) == sorted(reference)
        for k in masks:
            np.testing.assert_array_equal(runs[backend][k], reference[k], err_msg=f"{backend} {k}")
        for k in reference:
            if k.endswith(":weights"):
                np.testing.assert_allclose(runs[backend][k], reference[k], atol=1e-5)


def _fit(steps_per_execution, method=dst.callbacks.SET, jit_compile="auto"):
    x, y = data(n=96)
    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    dst.sparsify(model, 0.7, "uniform", seed=0)
    model.compile(keras.optimizers.SGD(0.05), "mse",
                  steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    history = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            history.append((dst.get_masks(self.model), self.model.get_weights()))

    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[method(update_freq=3, drop_fraction=0.5, end_step=20, seed=1),
                         Record()])
    return model, history


def test_a_mask_changed_inside_a_compiled_call_is_used_by_the_next_step():
    # With steps_per_execution=4, four steps run inside one compiled call with
    # no sync in between: a mask held as a trace-time constant would differ.
    if BACKEND == "torch":
        pytest.skip("Keras refuses steps_per_execution > 1 on PyTorch (it runs eagerly)")
    one = _fit(1)[1]
    four = _fit(4)[1]
    assert len(one) == len(four) == 2
    for (masks_1, weights_1), (masks_4, weights_4) in zip(one, four):
        for a, b in zip(masks_1.values(), masks_4.values(), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(weights_1, weights_4):
            np.testing.assert_allclose(a, b, atol=1e-6)

@pytest.mark.parametrize("method", [dst.callbacks.SET, dst.callbacks.RigL])
def test_an_eager_step_gives_the_masks_of_a_compiled_one(method):
    # On JAX the eager step selects on the host, the compiled one in-graph.
    eager = _fit(1, method, jit_compile=False)[1]
    auto = _fit(1, method)[1]
    for (masks_e, weights_e), (masks_a, weights_a) in zip(eager, auto, strict=True):
        for a, b in zip(masks_e.values(), masks_a.values(), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(weights_e, weights_a, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_grown_connections_train_and_dropped_ones_stay_zero():
    model = _fit(1)[0]
    masks = dst.get_masks(model)
    first = list(dst.get_masks(_fresh_sparse_model()).values())
    for layer, start in zip(model.layers, first, strict=True):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        mask = masks[layer.kernel.path]
        assert not kernel[~mask].any()  # dropped connections stay at 0
        grown = mask & ~start
        assert grown.any()
        # Grown connections start at 0 and train from the next step on.
        assert np.count_nonzero(kernel[grown]) > 0.5 * grown.sum()


def _fresh_sparse_model():
    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return dst.sparsify(model, 0.7, "uniform", seed=0)


def test_the_masks_are_not_model_state_outside_a_dst_fit():
    model = _fresh_sparse_model()
    before = len(model.non_trainable_variables)
    model.compile("sgd", "mse")
    x, y = data(n=32)
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[dst.callbacks.SET(update_freq=1, end_step=2, seed=0)])
    assert len(model.non_trainable_variables) == before
    assert model.get_weights()[0].shape == (12, 16)  # masks are not weights
    assert len(model.get_weights()) == 4


# -- data-parallel training on each backend -----------------------------------
# These spawn their own processes, each with the backend it needs, so they run
# once (in the TensorFlow suite) rather than once per backend.
@pytest.mark.slow  # a JAX process
@pytest.mark.tensorflow_only
def test_jax_data_parallel_masks_are_the_same_on_every_device_and_as_on_one():
    out = json.loads(_run_script("jax_data_parallel.py", backend="jax").strip().splitlines()[-1])
    assert out["devices"] == 2 and out["changed"]
    assert all(out["same_on_devices"])
    # RigL grew from the global batch gradient: the same masks as on one device.
    assert all(out["masks_equal"])
    assert out["max_weight_diff"] < 1e-5


@pytest.mark.slow  # three PyTorch processes
@pytest.mark.tensorflow_only
def test_torch_ddp_masks_are_the_same_on_every_rank_and_as_on_one(tmp_path):
    port = str(_free_port())
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    ranks = [subprocess.Popen([sys.executable, str(SCRIPTS / "torch_ddp.py"), str(r), "2", port,
                               str(tmp_path / f"rank{r}.npz")], env=env,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    _run_script("torch_ddp.py", "0", "1", "0", str(tmp_path / "one.npz"), backend="torch")
    for proc in ranks:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
    rank0, rank1, one = (np.load(tmp_path / f"{n}.npz") for n in ("rank0", "rank1", "one"))
    assert bool(rank0["changed"])
    masks = [k for k in rank0.files if k.startswith("mask:")]
    assert masks
    for k in masks:
        np.testing.assert_array_equal(rank0[k], rank1[k])
        np.testing.assert_array_equal(rank0[k], one[k])  # grown from the averaged gradient
    for k in rank0.files:
        if k.startswith("weight"):
            np.testing.assert_allclose(rank0[k], one[k], atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two JAX processes
@pytest.mark.tensorflow_only
def test_jax_multi_process_masks_are_the_same_in_both_processes_and_as_in_one(tmp_path):
    # Keras 3's multi-host path: jax.distributed.initialize, then DataParallel
    # over the devices of all processes (here 2 processes on 127.0.0.1).
    port = str(_free_port())
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, str(SCRIPTS / "jax_multiprocess.py"), str(p),
                               "2", port, str(tmp_path / f"p{p}.npz")], env=env,
                              stderr=subprocess.PIPE, text=True) for p in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
    _run_script("jax_multiprocess.py", "0", "1", str(_free_port()), str(tmp_path / "one.npz"),
                backend="jax")
    p0, p1, one = (np.load(tmp_path / f"{n}.npz") for n in ("p0", "p1", "one"))
    assert bool(p0["changed"])
    masks = [k for k in p0.files if k.startswith("mask:")]
    assert masks
    for k in masks:
        np.testing.assert_array_equal(p0[k], p1[k])
        np.testing.assert_array_equal(p0[k], one[k])
    for k in p0.files:
        if k.startswith("weight"):
            np.testing.assert_allclose(p0[k], one[k], atol=1e-5)


def test_gradient_accumulation_is_refused_before_anything_changes():
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), "mse")
    before = state(model)
    with pytest.raises(ValueError, match=r"does not support gradient accumulation.*"
                                         r"gradient_accumulation_steps=2"):
        model.fit(*data(), batch_size=8, verbose=0,
                  callbacks=[dst.callbacks.SET(update_freq=1, end_step=2, seed=0)])
    assert_unchanged(model, before)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is PyTorch's jit_compile")
@pytest.mark.parametrize("make, sparse", [
    (lambda: dst.callbacks.RigL(update_freq=1, end_step=2, seed=0), True),
    (lambda: dst.callbacks.GraNet(0.9, update_freq=1, seed=0), False),  # sparsifies at bind
], ids=["rigl", "granet"])
def test_torch_compile_is_refused_before_anything_changes(make, sparse):
    model = mlp(sparsity=0.8 if sparse else None)
    model.compile("sgd", "mse", jit_compile=True)
    before = state(model)
    with pytest.raises(ValueError, match=r"has jit_compile=True, which on the PyTorch "
                                         r"backend runs the train step under torch.compile"):
        model.fit(*data(), batch_size=8, verbose=0, callbacks=[make()])
    assert_unchanged(model, before)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's stateless train step only")
def test_jax_refuses_a_train_step_with_its_own_optimizer():
    model = mlp()
    model.compile("sgd", "mse")
    own = keras.optimizers.SGD(0.1)
    own.build(model.trainable_variables)
    with pytest.raises(ValueError, match=r"On the JAX backend dst drives the optimizer given "
                                         r"to `model.compile`"):
        model.fit(*data(), batch_size=8, verbose=0,
                  callbacks=[dst.callbacks.SET(update_freq=1, end_step=2, seed=0, optimizer=own)])


@pytest.mark.slow  # a new process
@pytest.mark.tensorflow_only  # spawns its own process
def test_an_unsupported_backend_is_named_in_the_error():
    env = dict(os.environ, KERAS_BACKEND="numpy", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", "import dst"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert ("dst runs on Keras 3's TensorFlow, JAX and PyTorch backends; this process runs "
            "Keras on 'numpy'") in proc.stderr
