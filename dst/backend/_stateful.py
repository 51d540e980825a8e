"""Pieces shared by the backends whose conditionals may assign variables.

On TensorFlow and PyTorch the train function reads and writes variables by
reference, so dst's state needs no threading: the plain train function runs
with the sparse step hooked into the optimizer, a conditional is
`keras.ops.cond`, and there is nothing to undo after `fit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

# Conditional branches may assign variables.
FUNCTIONAL = False


def is_traced(x: Any) -> bool:
    """Unused here: the path is chosen by `in_graph` (see `dst.backend.jax`)."""
    return False


def cond(pred: Any, true_fn: Callable, false_fn: Callable) -> Any:
    return keras.ops.cond(pred, true_fn, false_fn)


def hooked_train_function(model: keras.Model, optimizer: Any, sparse: Any,
                          step_hook: Callable) -> Callable:
    """The model's train function, called with `sparse` hooked into `optimizer`."""
    previous = model.train_function
    model.make_train_function(force=True)
    plain, model.train_function = model.train_function, previous

    def call(*args):
        with step_hook(optimizer, sparse):
            return plain(*args)

    call.function = plain  # type: ignore[attr-defined]
    return call


def read_after(model: keras.Model, result: Any, variables: list) -> list:
    """Host values of `variables` after a train-function call (a host sync)."""
    from dst._compat import to_numpy

    return [to_numpy(v) for v in variables]


def release(model: keras.Model, state: list) -> None:
    """Nothing to undo: no variable was registered for the fit."""
