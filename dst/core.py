"""Attach masks: `sparsify` (reading and setting them: `dst.masks`)."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import keras
import numpy as np

from dst import _compat
from dst import blocks as blocks_lib
from dst import distributions as dist_lib
from dst import nm as nm_lib
from dst._model import (
    Target,
    check_keras3_model,
    find_targets,
    install,
    masked_targets,
    matches,
)
from dst._validate import as_bool, as_float, as_int
from dst.masking import MaskConstraint

# An `exclude` entry of `sparsify`: a layer name or weight path, a layer class,
# or a predicate on the weight variable.
ExcludeEntry = str | type | Callable[[keras.Variable], bool]

__all__ = ["sparsify", "random_mask"]


def random_mask(shape: Sequence[int], n_active: int, rng: np.random.Generator) -> np.ndarray:
    """A bool mask of `shape` with exactly `n_active` True entries at random."""
    size = int(np.prod(shape))
    flat = np.zeros(size, dtype=bool)
    flat[rng.choice(size, size=n_active, replace=False)] = True
    return flat.reshape(shape)


_KEEP_DENSE = ("first", "last")


def _kept_dense(targets: list[Target], keep_dense) -> list[Target]:
    """The targets of the first and/or last layer holding sparsifiable weights."""
    if keep_dense is None:
        return []
    entries = [keep_dense] if isinstance(keep_dense, str) else keep_dense
    if not isinstance(entries, list | tuple) or not entries or any(
            e not in _KEEP_DENSE for e in entries):
        raise ValueError(
            "`keep_dense` must be None, 'first', 'last' or a list of them "
            f"(['first', 'last']) in dst.sparsify. Received: keep_dense={keep_dense!r}"
        )
    if not targets:
        return []
    layers = [targets[0].layer if e == "first" else targets[-1].layer for e in entries]
    return [t for t in targets if any(t.layer is layer for layer in layers)]


def _select(model, exclude, keep_dense=None) -> list[Target]:
    targets = [t for t in find_targets(model) if t.constraint is None
               or t.constraint.mask is None]
    kept = _kept_dense(targets, keep_dense)
    targets = [t for t in targets if not any(t is k for k in kept)]
    if exclude is None:
        return targets
    entries = list(exclude) if isinstance(exclude, list | tuple | set) else [exclude]
    for entry in entries:
        if not any(matches(t, entry) for t in targets):
            raise ValueError(
                f"`exclude` entry {entry!r} matches no sparsifiable weight of "
                f"model '{model.name}'. Sparsifiable weights: "
                f"{[t.path for t in targets]}."
            )
    return [t for t in targets if not any(matches(t, e) for e in entries)]


def _overridden(targets, overrides) -> dict[str, float]:
    """{path: density} of the targets that `overrides` names."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(
            "`overrides` must be a dict {layer name or weight path: sparsity} in "
            f"dst.sparsify. Received: {type(overrides).__name__}."
        )
    out, used = {}, set()
    for t in targets:
        for key, value in overrides.items():
            if key in (t.path, t.layer.name):
                out[t.path] = 1.0 - _check_sparsity(value, f"overrides[{key!r}]")
                used.add(key)
    unused = set(overrides) - used
    if unused:
        raise ValueError(
            f"`overrides` keys {sorted(unused, key=str)} match no sparsified weight "
            f"path or layer name. Weights: {sorted(t.path for t in targets)}."
        )
    return out


def _densities(targets, sparsity, distribution, erk_power_scale,
               overrides=None) -> dict[str, float]:
    fixed = _overridden(targets, overrides)
    if fixed and isinstance(distribution, Mapping):
        raise ValueError(
            "dst.sparsify takes per-weight sparsities either as a dict `distribution` "
            "or as `overrides` (with a named distribution), not both."
        )
    rest = [t for t in targets if t.path not in fixed]
    if not rest:
        return fixed
    # Overridden weights are outside the budget, as in the RigL reference: the
    # others are solved to reach `sparsity` among themselves.
    return {**_solved(rest, sparsity, distribution, erk_power_scale), **fixed}


def _solved(targets, sparsity, distribution, erk_power_scale) -> dict[str, float]:
    shapes = {t.path: t.shape for t in targets}
    if isinstance(distribution, Mapping):
        out = {}
        used = set()
        for t in targets:
            s = sparsity
            for key, value in distribution.items():
                if key in (t.path, t.layer.name):
                    s = value
                    used.add(key)
            out[t.path] = 1.0 - _check_sparsity(s, f"distribution[{t.path!r}]")
        unused = set(distribution) - used
        if unused:
            raise ValueError(
                f"`distribution` keys {sorted(unused, key=str)} match no sparsified "
                f"weight path or layer name. Weights: {sorted(shapes)}."
            )
        return out
    fn = dist_lib.get(distribution, erk_power_scale=erk_power_scale)
    densities = fn(dict(shapes), sparsity)
    name = (repr(distribution) if isinstance(distribution, str)
            else getattr(distribution, "__qualname__", repr(distribution)))
    if not isinstance(densities, Mapping):
        raise TypeError(
            f"Distribution {name} must return a dict {{weight path: density}} "
            f"for dst.sparsify. Received: {type(densities).__name__}."
        )
    missing = sorted(set(shapes) - set(densities))
    extra = sorted(set(densities) - set(shapes), key=str)
    if missing or extra:
        found = ([f"no density for weight paths {missing}"] if missing else []) + (
            [f"densities for unknown paths {extra}"] if extra else [])
        raise ValueError(
            f"Distribution {name} returned {' and '.join(found)} in "
            "dst.sparsify. It must return exactly one density per path of the "
            f"shapes it is given: {sorted(shapes)}."
        )
    out = {}
    for path in shapes:
        d = densities[path]
        real = isinstance(d, numbers.Real) and not isinstance(d, bool)
        if not real or not 0.0 < d <= 1.0:
            raise ValueError(
                f"Distribution {name} gave density {d!r} to weight '{path}'; "
                "densities must be numbers in (0, 1]."
                + ("" if real else f" Received type {type(d).__name__}.")
            )
        out[path] = float(d)
    return out


def _check_sparsity(value, name: str = "sparsity") -> float:
    """`value` as a float in [0, 1), numpy scalars included, or a ValueError."""
    return as_float(value, name, "dst.sparsify", low=0, high=1, high_open=True)


def sparsify(
    model: keras.Model,
    sparsity: float,
    distribution: str | Mapping[str, float] | Callable = "erk",
    *,
    exclude: ExcludeEntry | Iterable[ExcludeEntry] | None = None,
    erk_power_scale: float = 1.0,
    seed: int | None = None,
    sparse_init: bool = False,
    block: tuple[int, int] | None = None,
    keep_dense: str | Sequence[str] | None = None,
    overrides: Mapping[str, float] | None = None,
    n_m: tuple[int, int] | None = None,
) -> keras.Model:
    """Attaches a random binary mask to every sparsifiable weight of `model`.

    A sparsifiable weight is a trainable weight with ndim >= 2, other than a
    bias, outside a normalization layer (Dense, EinsumDense, Conv*, DepthwiseConv2D, both
    kernels of SeparableConv2D, RNN kernels and recurrent kernels, Embedding,
    custom layers), wherever it sits in the model. Biases stay dense. Masked
    weights are set to 0.0 now and after every optimizer step. The gradient
    of a masked weight stays dense (RigL grows from it); under a dst
    callback the optimizer is handed it masked, as in the references.

    Custom layers can say which weights are prunable, before these rules: a
    layer (or model) that defines a method `dst_prunable_weights(self) ->
    list[keras.Variable]` gets exactly the weights it returns masked, among
    its own and its sublayers' weights (`[]`: none of them). The weights it
    returns must be its trainable weights; anything else is an error naming
    the layer.

    Args:
        model: a built Keras 3 model. It is changed in place and returned.
        sparsity: fraction of zeros over all sparsified weights, in [0, 1).
        distribution: "uniform", "er", "erk", a dict
            {weight path or layer name: sparsity} (weights not named get
            `sparsity`), or a callable (shapes, sparsity) -> {path: density}.
            Defaults to "erk".
        exclude: layer names, layer classes, weight paths or a callable
            (variable) -> bool, alone or in a list; matches stay dense.
            Defaults to None.
        erk_power_scale: exponent on ERK's raw densities. Defaults to 1.0.
        seed: seed for the random masks. Defaults to None.
        sparse_init: rescale active weights so each output unit's variance
            matches its actual fan-in (Evci et al. 2022, "Gradient flow in
            sparse neural networks"). Defaults to False.
        block: block shape over the kernel's (input, output) axes, so masks
            are unions of whole blocks (see `dst.blocks`). Defaults to None.
        keep_dense: "first", "last" or ["first", "last"]: the first and/or
            last layer that holds sparsifiable weights stays dense (no mask),
            outside the sparsity budget, as the RigL reference keeps the first
            conv (ImageNet) or the logits layer (MNIST). `sparsity` is then the
            sparsity of the other weights. Defaults to None (every layer is
            masked, so `sparsity` is the sparsity of all sparsifiable weights
            and "uniform" means uniform: the choice that never leaves a layer
            dense unasked).
        overrides: {layer name or weight path: sparsity} fixed for those
            weights, with a named `distribution` ("erk", "er", "uniform" or a
            callable) solved for `sparsity` over the remaining weights, as the
            RigL reference's `custom_sparsity_map`. Defaults to None.
        n_m: (N, M): in every group of M consecutive entries along each
            weight's input axis (the second to last: a Dense kernel's inputs
            for each output unit, a conv kernel's input channels for each
            output channel and position; the reduction axis that the 2:4
            kernels of cuSPARSELt and XLA expect, and TF-MOT's
            `sparsity_m_by_n` axis), exactly N are active, drawn at random
            (see `dst.nm`). Every weight then has sparsity 1 − N/M, so
            `sparsity` must be that value and a named `distribution` has no
            effect; a dict or callable `distribution`, `overrides` and
            `block` are refused, and so is a weight whose input axis is not a
            multiple of M (leave it out with `exclude=`). Updaters keep the
            structure. Defaults to None.

    Returns:
        The same model object, now sparse.

    Numbers may be numpy scalars (`np.float32(0.9)`, `np.int64(0)`); bools,
    strings, NaN and infinities are refused. Every check runs before the model
    changes.

    Raises:
        ValueError: bad sparsity, erk_power_scale, seed or sparse_init,
            unknown distribution, a distribution whose densities are missing,
            extra or not in (0, 1], unbuilt model, nothing left to sparsify,
            an `exclude` entry that matches nothing, a `block` that is not
            two ints >= 1 or is longer than a weight's axis, an `n_m` that is
            not (N, M) with 1 <= N < M, contradicts `sparsity`, `distribution`,
            `overrides` or `block`, or does not divide a weight's input axis,
            or a model that is
            already sparsified (dst refuses to re-sparsify; use
            `dst.set_masks` to change masks or `dst.strip` to start over).
        TypeError: a legacy tf_keras model, a distribution callable that
            does not return a dict, or a `dst_prunable_weights()` that does
            not return a list of keras.Variable.

    Examples:
        >>> import keras, dst
        >>> model = keras.Sequential(
        ...     [keras.Input((8,)), keras.layers.Dense(4, name="fc")], name="mlp")
        >>> model = dst.sparsify(model, 0.75, "uniform", seed=0)
        >>> int(dst.get_masks(model)["mlp/fc/kernel"].sum())
        8
    """
    check_keras3_model(model, "dst.sparsify")
    sparsity = _check_sparsity(sparsity)
    erk_power_scale = as_float(erk_power_scale, "erk_power_scale", "dst.sparsify")
    if seed is not None:
        seed = as_int(seed, "seed", "dst.sparsify", minimum=0)
    sparse_init = as_bool(sparse_init, "sparse_init", "dst.sparsify")
    block = blocks_lib.check_block(block, "dst.sparsify")
    n_m = nm_lib.check_n_m(n_m, "dst.sparsify")
    if n_m is not None:
        _check_n_m_arguments(n_m, sparsity, distribution, overrides, block)
    if any(not t.mask_constraint.fixed for t in masked_targets(model)):
        raise ValueError(
            f"Model '{model.name}' is already sparsified. dst.sparsify refuses "
            "to re-sparsify a model, so that masks are never replaced by "
            "accident. Use dst.set_masks(model, masks) to change the masks, "
            "or dst.strip(model) to get a plain model and sparsify that."
        )
    targets = _select(model, exclude, keep_dense)
    if not targets:
        raise ValueError(
            f"Model '{model.name}' has no sparsifiable weight left"
            + (f" after exclude={exclude!r}" if exclude is not None else "")
            + (f" after keep_dense={keep_dense!r}" if keep_dense is not None else "")
            + ". dst sparsifies trainable weights with ndim >= 2 outside "
            "normalization layers, biases excepted."
        )
    if block is not None:
        for t in targets:
            blocks_lib.check_fits(t.shape, block, t.path, "dst.sparsify")
    if n_m is not None:
        for t in targets:
            nm_lib.check_fits(t.shape, n_m, t.path, "dst.sparsify")
    densities = _densities(targets, sparsity, distribution, erk_power_scale, overrides)
    grids = {t.path: blocks_lib.grid_shape(t.shape, block) if block else t.shape
             for t in targets}
    counts = dist_lib.active_counts(grids, densities)
    rng = np.random.default_rng(seed)
    for t in targets:
        if n_m is not None:
            mask = nm_lib.random_n_m_mask(t.shape, n_m, rng)
            constraint = nm_lib.NMMaskConstraint(inner=t.variable.constraint, n_m=n_m)
        elif block is None:
            mask = random_mask(t.shape, counts[t.path], rng)
            constraint = MaskConstraint(inner=t.variable.constraint)
        else:
            mask = blocks_lib.random_block_mask(t.shape, block, counts[t.path], rng)
            constraint = blocks_lib.BlockMaskConstraint(inner=t.variable.constraint,
                                                        block=block)
        constraint.attach(mask)
        install(t, constraint)
        value = _compat.to_numpy(t.variable)
        if sparse_init:
            value = _sparse_init(value, mask, _n_out_axes(t))
        t.variable.assign(np.where(mask, value, 0).astype(value.dtype))
    _warn_unsaved(targets)
    _reset_train_function(model)
    return model


def dense_n_m(model: keras.Model, n_m: tuple[int, int], who: str) -> None:
    """Gives every sparsifiable weight of a model without masks an all-ones
    N:M mask: the start of gradual pruning to N:M (each group keeps at least
    N, see `dst.nm`)."""
    targets = _select(model, None)
    for t in targets:
        nm_lib.check_fits(t.shape, n_m, t.path, who)
    for t in targets:
        constraint = nm_lib.NMMaskConstraint(inner=t.variable.constraint, n_m=n_m)
        constraint.attach(np.ones(t.shape, dtype=bool))
        install(t, constraint)
    _warn_unsaved(targets)
    _reset_train_function(model)


def _check_n_m_arguments(n_m, sparsity, distribution, overrides, block) -> None:
    """Refuses arguments that contradict N:M masks (before the model changes)."""
    implied = 1.0 - n_m[0] / n_m[1]
    if abs(sparsity - implied) > 1e-6:
        raise ValueError(
            f"dst.sparsify: n_m={n_m} keeps {n_m[0]} of every {n_m[1]} connections, so "
            f"every weight has sparsity 1 - {n_m[0]}/{n_m[1]} = {implied:g}; received "
            f"sparsity={sparsity!r}. Pass sparsity={implied:g}, or, to prune a dense "
            f"model gradually to N:M, dst.callbacks.MagnitudePruning({implied:g}, "
            f"n_m={n_m})."
        )
    contradictions = [name for name, given in (
        ("distribution", not isinstance(distribution, str)), ("overrides", overrides is not None),
        ("block", block is not None)) if given]
    if contradictions:
        raise ValueError(
            f"dst.sparsify: n_m={n_m} fixes the structure and the sparsity of every "
            f"weight, so it cannot be combined with {contradictions}. Leave weights dense "
            "with `exclude=` or `keep_dense=` instead."
        )


def _reset_train_function(model) -> None:
    if getattr(model, "train_function", None) is not None:
        model.train_function = None  # retrace so the optimizer applies the masks


def _n_out_axes(target: Target) -> int:
    """How many trailing kernel axes index output units (2 for depthwise)."""
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    if isinstance(target.layer, depthwise) or target.variable.name == "depthwise_kernel":
        return 2  # (..., in_channels, multiplier): one unit per pair
    return 1


def _sparse_init(value: np.ndarray, mask: np.ndarray, n_out: int = 1) -> np.ndarray:
    """Scales each output unit's active weights by sqrt(dense / active fan-in)."""
    units = value.shape[-n_out:]
    fan_in_dense = value.size // int(np.prod(units))
    active = mask.reshape(-1, *units).sum(axis=0)
    scale = np.sqrt(fan_in_dense / np.maximum(active, 1))
    return (value * scale).astype(value.dtype)


def _warn_unsaved(targets: Iterable[Target]) -> None:
    lost = [t.path for t in targets if not t.in_config]
    if lost:
        warnings.warn(
            "keras.models.load_model cannot restore the masks of "
            f"{lost}: their layer's config does not carry a constraint for "
            "them. model.save_weights / load_weights into a model sparsified "
            "the same way restores them; after load_model, call "
            "dst.set_masks(model, masks) with masks saved from dst.get_masks.",
            stacklevel=3,
        )
