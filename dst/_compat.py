"""Every use of private Keras API in dst, in one place.

Each function states the assumption it makes about Keras internals;
`tests/test_compat.py` checks each one, so a Keras upgrade that breaks an
assumption fails there, loudly, instead of silently inside an update.
"""

from __future__ import annotations

import keras
from keras.src.models.functional import Functional  # noqa: F401 - re-exported
from keras.src.saving.keras_saveable import KerasSaveable  # noqa: F401 - re-exported

__all__ = [
    "Functional",
    "KerasSaveable",
    "inner_optimizer",
    "optimizer_variables",
    "variable_index",
    "ema_variables",
    "flatten_layers",
    "own_trainable_variables",
]


def inner_optimizer(optimizer):
    """The optimizer that steps the weights: unwraps `LossScaleOptimizer`.

    Assumes wrappers expose the wrapped optimizer as `inner_optimizer`, and
    that the inner optimizer's `apply` is only called with unscaled, finite
    gradients (a skipped step never reaches it).
    """
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def optimizer_variables(optimizer) -> list:
    """The trainable variables the optimizer was built on (`_trainable_variables`).

    Returns Keras' own list object (callers compare other lists to it by identity).
    """
    return optimizer._trainable_variables


def variable_index(optimizer, variable) -> int:
    """Position of `variable` in the optimizer's per-variable lists."""
    return optimizer._get_variable_index(variable)


def ema_variables(optimizer) -> list:
    """The EMA copies aligned with `optimizer_variables` ([] without EMA)."""
    if not getattr(optimizer, "use_ema", False):
        return []
    return getattr(optimizer, "_model_variables_moving_average", None) or []


def flatten_layers(layer, *, recursive: bool = True, include_self: bool = False) -> list:
    """Sub-layers of `layer` (Keras' `_flatten_layers`)."""
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def own_trainable_variables(layer) -> list:
    """Variables created by `layer` itself as trainable (frozen or not)."""
    return list(layer._trainable_variables)


def is_keras_optimizer(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.Optimizer)
