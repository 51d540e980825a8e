"""Every use of private Keras API in dst, in one place.

Each function states the assumption it makes about Keras internals;
`tests/test_compat.py` checks each one, so a Keras upgrade that breaks an
assumption fails there, loudly, instead of silently inside an update.
"""

from __future__ import annotations

import contextlib

import keras
from keras.src.backend.common.stateless_scope import StatelessScope
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
from keras.src.models.functional import Functional
from keras.src.saving.keras_saveable import KerasSaveable

__all__ = [
    "ATTENTION_KERNEL_CONSTRAINT",
    "BaseConv",
    "BaseConvTranspose",
    "BaseDepthwiseConv",
    "BaseSeparableConv",
    "Functional",
    "KerasSaveable",
    "LeafSaveable",
    "StatelessScope",
    "in_stateless_scope",
    "is_mapped",
    "to_numpy",
    "track_state",
    "untrack_state",
    "build_shapes",
    "optimizer_lists",
    "inner_optimizer",
    "optimizer_variables",
    "variable_index",
    "ema_variables",
    "flatten_layers",
    "own_trainable_variables",
    "is_keras_optimizer",
]

# The attribute in which `MultiHeadAttention` keeps the `kernel_constraint`
# it passes to its query/key/value/output projections and serializes in its
# `get_config`.
ATTENTION_KERNEL_CONSTRAINT = "_kernel_constraint"


class LeafSaveable(KerasSaveable):
    """A `KerasSaveable` without saveable children (dst's mask constraints).

    Keras' saving walk calls `save_own_variables` / `load_own_variables` on
    every `KerasSaveable` attribute it reaches, and uses `_obj_type()` only to
    pick the attributes to skip when it walks the object's children. "Loss"
    is an accepted type whose skip list fits a plain object.
    """

    def _obj_type(self):
        return "Loss"


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


def optimizer_lists(optimizer) -> dict[str, list]:
    """{attribute name: list} for every list attribute of the optimizer.

    Assumes built-in optimizers keep their per-variable state (Adam
    `_momentums` and `_velocities`, SGD `momentums`, ...) as list attributes
    of the instance, aligned with `optimizer_variables`.
    """
    return {name: value for name, value in vars(optimizer).items() if isinstance(value, list)}


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


def build_shapes(layer) -> dict:
    """The arguments `layer.build` was called with ({} if unknown).

    Keras records them as `_build_shapes_dict`, e.g. {"input_shape": ...}
    for a Dense layer, {"query_shape": ..., "value_shape": ...} for
    `MultiHeadAttention`.
    """
    return getattr(layer, "_build_shapes_dict", None) or {}


def strategy_scope(model):
    """The scope of the model's distribution strategy (a no-op scope without one).

    Keras' TensorFlow models expose `distribute_strategy`; optimizer state
    built outside its scope would not be distributed.
    """
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def is_keras_optimizer(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.Optimizer)


def optimizer_backend(optimizer) -> str | None:
    """The backend an optimizer class was made for, or None for a generic one.

    Assumes Keras' backend-specific optimizer classes live in
    `keras.src.backend.<backend>.optimizers` (PyTorch's, and TensorFlow's for
    some): `load_model` rebuilds the class that was saved, so a model saved on
    PyTorch comes back with PyTorch's optimizer on any backend.
    """
    parts = type(optimizer).__module__.split(".")
    if parts[:3] == ["keras", "src", "backend"] and len(parts) > 4 and parts[4] == "optimizers":
        return parts[3]
    return None


class _StateHolder:
    """Holds one dst variable in a layer's `_seed_generators` (see `track_state`)."""

    def __init__(self, variable):
        self.state = variable


def track_state(layer, variables) -> None:
    """Makes `variables` part of `layer.variables` without making them weights.

    Assumes `Layer.variables` (hence `model.non_trainable_variables`, the
    state Keras' JAX trainer threads through its jitted step) lists the
    `.state` of every entry of `layer._seed_generators`, and that nothing
    else reads that list: so the variables are threaded, sharded and synced
    as model state, but are not in `weights`, `get_weights()` or the layer's
    saved variables. Idempotent.
    """
    holders = layer._seed_generators
    have = {id(getattr(h, "state", None)) for h in holders}
    for v in variables:
        if id(v) not in have:
            holders.append(_StateHolder(v))


def untrack_state(layer, variables) -> None:
    """Undoes `track_state`."""
    ids = {id(v) for v in variables}
    holders = layer._seed_generators
    holders[:] = [h for h in holders
                  if not (isinstance(h, _StateHolder) and id(h.state) in ids)]



def in_stateless_scope() -> bool:
    """Whether a Keras `StatelessScope` is active (JAX's compiled train steps)."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope as active

    return bool(active())


def is_mapped(variable) -> bool:
    """Whether the active `StatelessScope` holds a value for `variable`."""
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    scope = get_stateless_scope()
    return scope is not None and scope.get_current_value(variable) is not None


def to_numpy(x):
    """A numpy array of a keras.Variable's (or tensor's) value, on any backend.

    Avoids `np.array(variable)`: the TensorFlow and PyTorch variables behind
    Keras' raise numpy 2's DeprecationWarning about `__array__`'s `copy`
    keyword, and torch parameters that require grad refuse `.numpy()`.
    """
    import numpy as np

    value = x.value if isinstance(x, keras.Variable) else x
    if hasattr(value, "detach"):  # torch: a copy, never a view of the parameter
        return value.detach().cpu().numpy().copy()
    if hasattr(value, "numpy"):  # TensorFlow
        return np.asarray(value.numpy())
    return np.array(value)  # JAX arrays (np.asarray would be a read-only view), numpy
