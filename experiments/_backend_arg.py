"""`--backend` for the benchmark scripts, read before Keras is imported (Keras
fixes its backend on import)."""

from __future__ import annotations

import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def backend_from_argv() -> str | None:
    """The `--backend` value on the command line, or None."""
    for i, arg in enumerate(sys.argv):
        if arg == "--backend" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


def select_backend() -> None:
    """Sets KERAS_BACKEND from `--backend` (when it names one) and quiets TF's C++ log."""
    if backend_from_argv() in BACKENDS:
        os.environ["KERAS_BACKEND"] = str(backend_from_argv())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
