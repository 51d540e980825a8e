"""Shared test setup: quiet TensorFlow, seeded Keras, small helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


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


def run_python(code: str, *args: str, timeout: int = 120) -> str:
    """Runs `code` in a fresh Python process; returns stdout, fails on error."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout
