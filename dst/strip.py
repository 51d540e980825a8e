"""`dst.strip`: a plain Keras model with the zeros baked in."""

from __future__ import annotations

import keras
import numpy as np

from dst import _compat
from dst._model import check_keras3_model, find_targets, install, uninstall
from dst.layers import SparseDense

__all__ = ["strip"]


def strip(model: keras.Model, *, inplace: bool = False) -> keras.Model:
    """Returns a plain Keras model without any dst object, weights masked.

    The result saves to `.keras` and loads in a Python process that never
    imports dst, with the same predictions as the sparse model. The original
    constraints users set (e.g. `kernel_constraint=MaxNorm(2)`) are kept.
    Masked weights of frozen layers (`layer.trainable = False`) are stripped
    too, and stay frozen.

    Args:
        model: a (sparsified) Keras 3 model.
        inplace: `False` (default) clones the model with
            `keras.models.clone_model` and leaves `model` sparse. `True`
            removes the masks from `model` itself and returns it: use it for
            subclassed models that cannot be cloned.

    Returns:
        A Keras model whose weights equal the masked weights of `model`.

    Raises:
        ValueError: when the model cannot be cloned (use `inplace=True`).
    """
    check_keras3_model(model, "dst.strip")
    targets = [t for t in find_targets(model, frozen=True) if t.constraint is not None]
    constraints = [t.mask_constraint for t in targets]
    # Bake the zeros in, even where a weight was assigned after its last step.
    masked = {
        id(t.variable): np.where(t.mask_constraint.numpy(), _compat.to_numpy(t.variable), 0).astype(
            t.variable.dtype
        )
        for t in targets
        if t.mask_constraint.mask is not None
    }
    weights = [masked[id(w)] if id(w) in masked else _compat.to_numpy(w)
               for w in model.weights]
    for t in targets:
        uninstall(t)
    if inplace:
        for t in targets:
            if id(t.variable) in masked:
                t.variable.assign(masked[id(t.variable)])
        return model
    try:
        clone = keras.models.clone_model(
            model, clone_function=_plain_layer, recursive=True
        )
    except Exception as err:  # noqa: BLE001 - re-raised with advice
        raise ValueError(
            f"dst.strip could not clone model '{model.name}' "
            f"({type(err).__name__}: {err}). For a subclassed model, use "
            "dst.strip(model, inplace=True)."
        ) from err
    finally:
        for t, c in zip(targets, constraints):
            install(t, c)
    _copy_weights(model, weights, clone)
    return clone


def _copy_weights(model, weights: list, clone) -> None:
    """`weights` (of `model.weights`) into the clone, matched by path.

    A quantized layer's clone may create its weights in another order than
    the original holds them (`model.quantize("float8")` adds its scales after
    the kernel; a layer built from its float8 config creates them first), so
    position alone would pair a kernel with a scale.
    """
    values = {w.path: value for w, value in zip(model.weights, weights)}
    if len(values) == len(clone.weights) and all(w.path in values for w in clone.weights):
        for w in clone.weights:
            w.assign(values[w.path])
    else:
        clone.set_weights(weights)


def _plain_layer(layer):
    config = layer.get_config()
    if isinstance(layer, SparseDense):
        for key in ("density", "connectivity", "seed", "block"):
            config.pop(key)
        return keras.layers.Dense.from_config(config)
    return layer.__class__.from_config(config)
