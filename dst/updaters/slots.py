"""Finding and resetting an optimizer's per-weight state (slots)."""

from __future__ import annotations

import keras
import numpy as np


def _inner(optimizer):
    while hasattr(optimizer, "inner_optimizer"):  # LossScaleOptimizer
        optimizer = optimizer.inner_optimizer
    return optimizer


def slot_variables(optimizer, variables) -> dict[int, list]:
    """{id(variable): [slot variables of the same shape]} for `variables`.

    Slots are found in the optimizer's lists aligned with its trainable
    variables (SGD momentum, Adam/AdamW m and v, RMSprop, Adagrad, ...).

    Raises:
        ValueError: when the optimizer holds weight-shaped state that cannot
            be attributed to a weight, so dst cannot reset it safely.
    """
    opt = _inner(optimizer)
    if not isinstance(opt, keras.optimizers.Optimizer):
        raise ValueError(
            f"dst cannot reset the state of optimizer {type(optimizer).__name__}: "
            "it is not a keras.optimizers.Optimizer."
        )
    if not opt.built:
        return {id(v): [] for v in variables}
    tracked = opt._trainable_variables
    aligned = [
        value for value in vars(opt).values()
        if isinstance(value, list) and len(value) == len(tracked) and value
        and all(x is None or isinstance(x, keras.Variable) for x in value)
        and value is not tracked
    ]
    found = {}
    for v in variables:
        idx = opt._get_variable_index(v)
        found[id(v)] = [
            lst[idx] for lst in aligned
            if lst[idx] is not None and tuple(lst[idx].shape) == tuple(v.shape)
        ]
    attributed = {id(s) for lst in aligned for s in lst if s is not None}
    shapes = {tuple(v.shape) for v in variables}
    stray = [
        s.path for s in opt.variables
        if tuple(s.shape) in shapes and len(s.shape) >= 2 and id(s) not in attributed
    ]
    if stray:
        raise ValueError(
            f"dst cannot reset the state of optimizer {type(opt).__name__} for "
            f"regrown connections: state {stray} is not stored per weight in "
            "the way Keras' built-in optimizers store it. Use SGD, Adam, "
            "AdamW, RMSprop, Adagrad, Adamax, Nadam, Lion or another built-in "
            "optimizer."
        )
    return found


def reset_slots(slots, grown: np.ndarray) -> None:
    """Sets the entries `grown` (a bool array) of each slot variable to 0."""
    if not grown.any() or not slots:
        return
    keep = keras.ops.convert_to_tensor(~grown)
    for slot in slots:
        slot.assign(keras.ops.where(keep, slot, keras.ops.zeros_like(slot)))
