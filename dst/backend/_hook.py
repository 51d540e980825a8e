"""What every backend's optimizer hook runs: masked gradients in, the sparse step after.

The references (RigL, SET, jaxpruner, TF-MOT) mask the gradient before the
optimizer sees it, so inactive weights add nothing to `clipnorm`,
`global_clipnorm` or the optimizer's statistics. dst does the same: under a
step hook, the optimizer's `_backend_apply_gradients(grads, variables)` (the
method that clips, decays and steps, after `apply` has unscaled the loss
scale and dropped empty gradients) receives `where(mask, grad, 0)` for every
masked trainable weight. The dense gradient, which RigL's grow score needs,
is kept aside for the sparse step that runs after the weights are stepped.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import keras

_APPLY = "_backend_apply_gradients"


@dataclasses.dataclass(frozen=True)
class SparseStep:
    """The sparse step a backend hooks into an optimizer.

    Attributes:
        run: `run(step, grads)`, called after the weights are stepped; `grads`
            is {variable_key(variable): gradient}, the dense gradients when
            `dense` is set, else the masked ones the optimizer applied.
        masks: {id(variable): bool mask variable} of the masked trainable
            weights, whose gradients the optimizer sees masked.
        dense: whether `run` needs the dense gradient (RigL).
    """

    run: Callable
    masks: dict = dataclasses.field(default_factory=dict)
    dense: bool = False


def masked(grad, mask):
    """`grad` with the entries outside `mask` set to 0 (NaN and Inf there too)."""
    ops = keras.ops
    if type(grad).__name__ == "IndexedSlices":  # TensorFlow's gradient of a lookup
        rows = ops.take(mask, grad.indices, axis=0)
        zero = ops.zeros((), grad.values.dtype)
        return type(grad)(ops.where(rows, grad.values, zero), grad.indices, grad.dense_shape)
    return ops.where(mask, grad, ops.zeros((), grad.dtype))  # a 0-d zero, broadcast


@contextlib.contextmanager
def masked_gradients(opt, sparse: SparseStep, dense: dict, key, reduce=None):
    """Under it, `opt` steps masked weights with masked gradients.

    The dense gradients of the masked weights go to `dense`, keyed by
    `key(variable)`, when `sparse.dense` is set; `reduce(list)` sums them over
    replicas where the optimizer has not yet done so (TensorFlow).
    """
    if not sparse.masks:
        yield
        return
    original = getattr(opt, _APPLY)

    def hooked(grads, trainable_variables):
        grads, variables = list(grads), list(trainable_variables)
        out, keys, values = [], [], []
        for grad, variable in zip(grads, variables):
            mask = sparse.masks.get(id(variable))
            if grad is None or mask is None:
                out.append(grad)
                continue
            if sparse.dense:
                keys.append(key(variable))
                values.append(grad)
            out.append(masked(grad, mask.value))
        if values and reduce is not None:
            values = reduce(values)
        dense.update(zip(keys, values))
        return original(out, variables)

    setattr(opt, _APPLY, hooked)
    try:
        yield
    finally:
        opt.__dict__.pop(_APPLY, None)

