"""The optimizer hook shared by the JAX and PyTorch backends.

Keras' base optimizer steps the weights in `_backend_update_step(grads,
trainable_variables, learning_rate)`, after unscaling, clipping and weight
decay and before the EMA update and the constraints. dst's step runs right
after it; the gradients it stepped with are masked (`dst.backend._hook`).
"""

from __future__ import annotations

import contextlib

from dst._compat import inner_optimizer
from dst.backend._hook import SparseStep, masked_gradients

_HOOKED = "_backend_update_step"


@contextlib.contextmanager
def step_hook(optimizer, sparse: SparseStep):
    """Runs `sparse.run(step, grads)` inside each update of `optimizer`."""
    opt = inner_optimizer(optimizer)
    if _HOOKED in vars(opt):
        raise RuntimeError(
            f"Optimizer {opt.name!r} already runs a dst sparse step: two dst "
            "callbacks (or updaters) cannot drive the same optimizer at once."
        )
    original = getattr(opt, _HOOKED)
    dense: dict = {}

    def hooked(grads, trainable_variables, learning_rate):
        grads, trainable_variables = list(grads), list(trainable_variables)
        result = original(grads, trainable_variables, learning_rate)
        applied = {id(v): g for g, v in zip(grads, trainable_variables) if g is not None}
        sparse.run(opt.iterations, dict(dense) if sparse.dense else applied)
        return result

    setattr(opt, _HOOKED, hooked)
    try:
        with masked_gradients(opt, sparse, dense, variable_key):
            yield
    finally:
        delattr(opt, _HOOKED)


def variable_key(variable) -> int:
    """The id under which `step_hook` reports a keras.Variable's gradient."""
    return id(variable)


def no_autograph(fn):
    return fn
