"""dst.export on the JAX and PyTorch backends: CSR works, TFLite says what it needs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from conftest import BACKEND, mlp, numpy

import dst

pytestmark = pytest.mark.skipif(BACKEND == "tensorflow",
                                reason="tests/test_export.py covers TensorFlow")


def test_tflite_export_on_another_backend_names_the_backend_and_the_way_out():
    model = mlp()
    before = [numpy(v).copy() for v in model.weights]
    with pytest.raises(ValueError, match=rf"runs Keras on '{BACKEND}'.*KERAS_BACKEND=tensorflow"):
        dst.export.convert(model)
    assert all(np.array_equal(numpy(v), b) for v, b in zip(model.weights, before))


def test_npz_export_runs_on_this_backend():
    pytest.importorskip("scipy")
    model = mlp()
    runner = dst.export.load(dst.export.convert(model, format="npz"))
    x = np.random.default_rng(0).normal(size=(5, 12)).astype("float32")
    np.testing.assert_allclose(runner(x), numpy(model(x)), rtol=1e-5, atol=1e-5)
