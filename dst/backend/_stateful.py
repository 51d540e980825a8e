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


def resolve_jit(in_graph: bool, jit: bool | None) -> bool:
    """Whether masks are computed in-graph: as asked, else as the model runs."""
    return in_graph if jit is None else bool(jit)


def computes_in_graph(jit: bool, value: Any) -> bool:
    """Whether this update computes its masks in-graph (`keras.ops`), not on the host."""
    return jit


def guarded_update(pred: Any, step: Any, jit: bool, update: Callable, compute: Callable,
                   keep: Callable, write: Callable) -> None:
    """Runs `update(step)` (which assigns in place) where `pred` holds.

    `compute`, `keep` and `write` serve the backends whose branches cannot
    assign (`dst.backend.jax`). Under XLA, computations in an untaken branch
    that don't depend on its operands are hoisted and run every step; a loop
    that runs zero or one time with the step as its variable keeps them in.
    """
    ops = keras.ops
    if not jit:
        ops.cond(pred, lambda: update(step), lambda: None)
        return
    first = ops.cast(step, "int32")
    stop = first + ops.cast(pred, "int32")

    def body(at):
        update(at)
        return (at + 1,)

    ops.while_loop(lambda at: at < stop, body, (first,))


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


def plain_train_function(model: keras.Model, optimizer: Any, state: list) -> Callable:
    """A train function without dst (variables are read by reference here)."""
    model.make_train_function(force=True)
    return model.train_function


def read_after(model: keras.Model, result: Any, variables: list) -> list:
    """Host values of `variables` after a train-function call (a host sync)."""
    from dst._compat import to_numpy

    return [to_numpy(v) for v in variables]


def register(model: keras.Model, state: list) -> None:
    """Nothing to register: TF functions and torch read variables by reference."""


def release(model: keras.Model, state: list) -> None:
    """Nothing to undo: no variable was registered for the fit."""
