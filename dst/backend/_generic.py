"""The optimizer hook shared by the JAX and PyTorch backends.

Keras' base optimizer steps the weights in `_backend_update_step(grads,
trainable_variables, learning_rate)`, after unscaling, clipping and weight
decay and before the EMA update and the constraints. dst's step runs right
after it.
"""

from __future__ import annotations

import contextlib

from dst._compat import inner_optimizer

_HOOKED = "_backend_update_step"


@contextlib.contextmanager
def step_hook(optimizer, fn):
    """Runs `fn(step, grads)` inside each update of `optimizer`."""
    opt = inner_optimizer(optimizer)
    if _HOOKED in vars(opt):
        raise RuntimeError(
            f"Optimizer {opt.name!r} already runs a dst sparse step: two dst "
            "callbacks (or updaters) cannot drive the same optimizer at once."
        )
    original = getattr(opt, _HOOKED)

    def hooked(grads, trainable_variables, learning_rate):
        grads, trainable_variables = list(grads), list(trainable_variables)
        result = original(grads, trainable_variables, learning_rate)
        fn(opt.iterations, {id(v): g for g, v in zip(grads, trainable_variables)
                            if g is not None})
        return result

    setattr(opt, _HOOKED, hooked)
    try:
        yield
    finally:
        delattr(opt, _HOOKED)


def variable_key(variable) -> int:
    """The id under which `step_hook` reports a keras.Variable's gradient."""
    return id(variable)


def no_autograph(fn):
    return fn
