"""Read and set masks: `get_masks`, `set_masks`, `sparsity`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import keras
import numpy as np

from dst import blocks as blocks_lib
from dst import nm as nm_lib
from dst._model import (
    Target,
    check_keras3_model,
    count_active,
    find_targets,
    install,
    masked_targets,
)
from dst.core import _reset_train_function
from dst.masking import MaskConstraint

__all__ = ["get_masks", "set_masks", "sparsity"]


def get_masks(model: keras.Model) -> dict[str, np.ndarray]:
    """Returns {weight path: bool mask} for every masked weight of `model`.

    Weights frozen after sparsification (`layer.trainable = False`) keep
    their masks and are included.

    Args:
        model: a Keras 3 model.

    Returns:
        A dict of numpy bool arrays (copies); empty for a model without masks.

    Raises:
        TypeError: a legacy tf_keras model, or not a Keras model.

    Examples:
        >>> import keras, dst
        >>> m = keras.Sequential(
        ...     [keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="mlp")
        >>> dst.get_masks(dst.sparsify(m, 0.5, seed=1))["mlp/fc/kernel"].shape
        (3, 2)
    """
    check_keras3_model(model, "dst.get_masks", built=False)
    return {t.path: t.mask_constraint.numpy() for t in masked_targets(model)}


def set_masks(model: keras.Model, masks: Mapping[str, np.ndarray]) -> None:
    """Replaces masks; newly masked weights are set to 0.0.

    Every key, shape and value is checked before anything changes. A key may
    also name a sparsifiable weight that has no mask yet: it gets one. This
    restores masks that `keras.models.load_model` cannot (see the warning of
    `dst.sparsify`), from `dst.get_masks` output saved beside the model.

    Masks saved before `keras.models.load_model` are accepted although the
    paths of a nested model change on loading: when some keys are not weight
    paths of `model` but the masks' count and shapes, in order, equal those
    of its masked weights (or else of all its sparsifiable weights), the
    masks are matched by weight order, with a `UserWarning` that says so.

    Args:
        model: a Keras 3 model.
        masks: {weight path: array of 0/1 or bool}, keyed like
            `dst.get_masks(model)`.

    Raises:
        ValueError: an unknown key (when the masks cannot be matched by
            order either), wrong shape, values other than 0/1, a mask
            with no active entry, or the kernel of a `dst.layers.SparseDense`
            (its connectivity is fixed).
        TypeError: `masks` is not a mapping, or a legacy tf_keras model.

    Examples:
        >>> import keras, numpy as np, dst
        >>> m = keras.Sequential(
        ...     [keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="mlp")
        >>> dst.set_masks(m, {"mlp/fc/kernel": np.eye(3, 2)})
        >>> dst.sparsity(m)
        0.6666666666666667
    """
    check_keras3_model(model, "dst.set_masks")
    if not isinstance(masks, Mapping):
        raise TypeError(
            "dst.set_masks needs a dict {weight path: mask}, like the one "
            f"dst.get_masks returns. Received: {type(masks).__name__}."
        )
    targets = {t.path: t for t in find_targets(model)}
    if any(path not in targets for path in masks):
        masks = _match_by_order(model, masks, targets)
    checked = {}
    for path, mask in masks.items():
        constraint = targets[path].constraint
        if constraint is not None and constraint.fixed:
            layer = targets[path].layer
            raise ValueError(
                f"dst.set_masks cannot change '{path}': the connectivity of "
                f"{type(layer).__name__} '{layer.name}' is fixed and saved in "
                "its config. Build a new dst.layers.SparseDense(units, "
                "connectivity=mask) instead."
            )
        arr = np.asarray(mask)
        if arr.shape != targets[path].shape:
            raise ValueError(
                f"dst.set_masks: mask for '{path}' has shape {arr.shape}, "
                f"expected {targets[path].shape}."
            )
        if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
            bad = arr[~np.isin(arr, (0, 1))].ravel()[:5]
            raise ValueError(
                f"dst.set_masks: mask for '{path}' must hold only 0/1 or "
                f"booleans. Received values such as {bad.tolist()}."
            )
        if arr.size and not arr.any():
            raise ValueError(
                f"dst.set_masks: mask for '{path}' has no active entry. A weight "
                "whose every connection is masked is dead and can never "
                "regrow; keep at least one entry True."
            )
        block = blocks_lib.block_of(constraint)
        if block is not None and not blocks_lib.is_union_of_blocks(arr, block):
            raise ValueError(
                f"dst.set_masks: mask for '{path}' must be a union of whole {block} "
                "blocks: the weight was sparsified with block="
                f"{block}. Set every block entirely to 0 or to 1."
            )
        n_m = nm_lib.n_m_of(constraint)
        if n_m is not None and not nm_lib.is_n_m(arr.astype(bool), n_m, exact=False):
            low = int(nm_lib.group_counts(arr.astype(bool), n_m[1]).min())
            raise ValueError(
                f"dst.set_masks: mask for '{path}' must keep at least {n_m[0]} of every "
                f"{n_m[1]} consecutive entries along its input axis (the second to last): "
                f"the weight was sparsified with n_m={n_m}. A group has {low}."
            )
        checked[path] = arr.astype(bool)
    installed = False
    for path, mask in checked.items():
        t = targets[path]
        if t.constraint is None:
            install(t, MaskConstraint(inner=t.variable.constraint))
            installed = True
        apply_mask(t, mask)
    if installed:
        _reset_train_function(model)


def _match_by_order(model, masks: Mapping[str, np.ndarray],
                    targets: dict[str, Target]) -> dict[str, np.ndarray]:
    """Masks re-keyed by weight order, for keys that are not this model's paths.

    `keras.models.load_model` may rename paths (a nested model's weights lose
    the outer model's name), while the weights keep their order. So when the
    masks' count and shapes, in order, equal those of the masked weights (or,
    failing that, of all sparsifiable weights), the i-th mask goes to the i-th
    weight, and a warning says so. Keys that are paths must keep their weight.
    """
    unknown = [path for path in masks if path not in targets]
    shapes = [tuple(np.shape(m)) for m in masks.values()]
    masked = [t for t in targets.values()
              if t.constraint is not None and t.constraint.mask is not None]
    for candidates in (masked, list(targets.values())):
        if [t.shape for t in candidates] != shapes:
            continue
        pairs = list(zip(masks, (t.path for t in candidates)))
        moved = [(old, new) for old, new in pairs if old in targets and old != new]
        if moved:
            raise ValueError(
                f"dst.set_masks: no sparsifiable weight '{unknown[0]}' in model "
                f"'{model.name}', and matching the masks by weight order would give the "
                f"mask keyed '{moved[0][0]}', a weight of the model, to '{moved[0][1]}'. "
                "Key the masks by this model's paths (dst.get_masks(model) shows them), "
                "or pass them in the model's weight order."
            )
        warnings.warn(
            f"dst.set_masks: {len(unknown)} of {len(masks)} mask keys are not weight "
            f"paths of model '{model.name}' (e.g. '{unknown[0]}'), as after "
            "keras.models.load_model of a nested model. The masks' count and shapes "
            "match the model's weights in order, so they are matched by weight "
            f"order: {', '.join(f'{old!r} -> {new!r}' for old, new in pairs if old != new)}.",
            UserWarning,
            stacklevel=3,
        )
        return {new: masks[old] for old, new in pairs}
    raise ValueError(
        f"dst.set_masks: no sparsifiable weight '{unknown[0]}' in model '{model.name}', "
        "and the masks cannot be matched by weight order either: their shapes "
        f"{shapes} are not those of the model's masked weights "
        f"{[t.shape for t in masked]} nor of its sparsifiable weights "
        f"{[t.shape for t in targets.values()]}, in order. Sparsifiable weights: "
        f"{sorted(targets)}."
    )


def apply_mask(target: Target, mask: np.ndarray) -> None:
    """Sets a target's mask and zeroes the weights it masks."""
    constraint = target.mask_constraint
    constraint.attach(mask)
    constraint.variable = target.variable
    constraint.zero_masked()


def sparsity(model: keras.Model) -> float:
    """Fraction of inactive entries, over all masked weights together.

    An entry is active when its mask is 1 or its weight is non-zero. Masked
    entries are 0.0 after every optimizer step and after `load_weights`, but
    `model.set_weights` and `variable.assign` cannot be intercepted: values
    they write where the mask is 0 count as active (so the result is the
    weights' real sparsity) until `dst.set_masks(model, dst.get_masks(model))`
    or the next optimizer step zeroes them, and a warning names those weights.
    Frozen masked weights (`layer.trainable = False`) are included.

    Args:
        model: a Keras 3 model.

    Returns:
        A float in [0, 1]; 0.0 for a model without masks.

    Raises:
        TypeError: a legacy tf_keras model, or not a Keras model.

    Examples:
        >>> import keras, dst
        >>> m = keras.Sequential(
        ...     [keras.Input((4,)), keras.layers.Dense(2, name="fc")], name="mlp")
        >>> dst.sparsity(dst.sparsify(m, 0.75, "uniform", seed=0))
        0.75
    """
    check_keras3_model(model, "dst.sparsity", built=False)
    targets = masked_targets(model)
    total = sum(int(np.prod(t.shape)) for t in targets)
    if total == 0:
        return 0.0
    return 1.0 - sum(count_active(targets, "dst.sparsity")) / total
