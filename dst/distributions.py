"""Layer-wise sparsity distributions: uniform, ER and ERK.

A distribution is a plain function with one signature::

    fn(shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, float]

mapping each weight path to its *density* (fraction of active connections),
such that the overall sparsity over all weights equals `sparsity` before
rounding. `dst.sparsify` then keeps `round(density * size)` connections per
weight.

ER and ERK follow Evci et al. 2020, "Rigging the Lottery" (RigL), and the RigL
reference code: solve a scale eps with sum(eps * raw_l * n_l) = (1 - s) * N; if
any eps * raw_l exceeds 1, the weight(s) with the largest raw density become
dense, leave the budget, and eps is solved again, one round at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import numpy as np

from dst._validate import as_float

__all__ = ["uniform", "er", "erk", "get", "active_counts", "Distribution"]

Distribution = Callable[[Mapping[str, tuple], float], dict[str, float]]


def uniform(shapes: Mapping[str, tuple], sparsity: float) -> dict[str, float]:
    """Same density `1 - sparsity` for every weight.

    The RigL paper keeps the first layer dense under uniform; dst does not, so
    that "uniform" means what it says. Use `exclude=` to keep a layer dense.

    Example:
    >>> uniform({"a": (4, 4), "b": (4, 2)}, 0.75)
    {'a': 0.25, 'b': 0.25}
    """
    sparsity = _check_sparsity(sparsity, "uniform")
    return {path: 1.0 - sparsity for path in shapes}


def _check_sparsity(sparsity, fn: str) -> float:
    return as_float(sparsity, "sparsity", f"dst.distributions.{fn}",
                    low=0, high=1, high_open=True)


def _solve(raw: Mapping[str, float], shapes, sparsity: float,
           fn: str) -> dict[str, float]:
    bad = {p: r for p, r in raw.items() if not (math.isfinite(r) and r > 0.0)}
    if bad:
        raise ValueError(
            f"dst.distributions.{fn} computed raw densities {bad}, which must be "
            "finite and > 0. Check that every shape has only positive "
            "dimensions, and use a smaller |erk_power_scale| for erk."
        )
    sizes = {p: float(np.prod(s)) for p, s in shapes.items()}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    # Each round makes at least one more weight dense, so len(shapes) + 1
    # rounds always suffice; the bound makes a spin impossible whatever `raw`.
    for _ in range(len(shapes) + 1):
        free = [p for p in shapes if p not in dense]
        if not free:
            return {p: 1.0 for p in shapes}
        left = budget - sum(sizes[p] for p in dense)
        eps = left / sum(raw[p] * sizes[p] for p in free)
        top = max(raw[p] for p in free)
        if eps * top <= 1.0:
            out = {p: 1.0 for p in dense}
            out.update({p: eps * raw[p] for p in free})
            return {p: out[p] for p in shapes}
        saturated = {p for p in free if raw[p] == top}
        if not saturated:
            break
        dense.update(saturated)
    raise ValueError(
        f"dst.distributions.{fn} could not distribute sparsity={sparsity!r} "
        f"over {dict(shapes)} with raw densities {dict(raw)}. Use "
        "distribution='uniform', or a dict {weight path: sparsity}."
    )


def er(shapes: Mapping[str, tuple], sparsity: float) -> dict[str, float]:
    """Erdős–Rényi (Mocanu et al. 2018): density ∝ (n_in + n_out)/(n_in·n_out).

    n_in and n_out are the last two dimensions of the weight.

    Example:
    Raw densities are 0.2 for "a" and 0.6 for "b"; eps = 60 / 32 would give
    "b" 1.125 > 1, so "b" becomes dense and "a" gets the 40 weights left:

    >>> d = er({"a": (10, 10), "b": (10, 2)}, 0.5)
    >>> round(d["a"], 4), round(d["b"], 4)
    (0.4, 1.0)
    """
    sparsity = _check_sparsity(sparsity, "er")
    raw = {p: _ratio(s[-2] + s[-1], s[-2] * s[-1]) for p, s in shapes.items()}
    return _solve(raw, shapes, sparsity, "er")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.inf  # inf: refused by _solve


def erk(
    shapes: Mapping[str, tuple], sparsity: float, power_scale: float = 1.0
) -> dict[str, float]:
    """Erdős–Rényi-Kernel (Evci et al. 2020): density ∝ (Σ dims / Π dims)^power.

    Args:
        shapes: weight path -> shape.
        sparsity: overall target sparsity in [0, 1).
        power_scale: exponent on the raw ERK density. Defaults to 1.0; 0.0
            gives uniform.

    Returns:
        weight path -> density in (0, 1].

    Raises:
        ValueError: `sparsity` outside [0, 1), or a `power_scale` that is not
            a finite number or so large that the raw densities overflow.

    Example:
    >>> d = erk({"conv": (3, 3, 8, 16), "fc": (64, 10)}, 0.9)
    >>> round(sum(d[p] * n for p, n in [("conv", 1152), ("fc", 640)]) / 1792, 6)
    0.1
    """
    sparsity = _check_sparsity(sparsity, "erk")
    power_scale = as_float(power_scale, "power_scale", "dst.distributions.erk")
    try:
        raw = {
            p: _ratio(sum(s), np.prod(s)) ** power_scale for p, s in shapes.items()
        }
    except OverflowError:
        raise ValueError(
            f"dst.distributions.erk: power_scale={power_scale!r} makes the raw "
            f"ERK densities of {dict(shapes)} overflow. Use a smaller "
            "|power_scale| (erk_power_scale for dst.sparsify)."
        ) from None
    return _solve(raw, shapes, sparsity, "erk")


_REGISTRY: dict[str, Distribution] = {"uniform": uniform, "er": er, "erk": erk}


def get(identifier: str | Distribution, *, erk_power_scale: float = 1.0) -> Distribution:
    """Returns a distribution function by name, or `identifier` if callable.

    Args:
        identifier: "uniform", "er", "erk", or a callable with the
            distribution signature.
        erk_power_scale: power scale bound into "erk". Defaults to 1.0.

    Raises:
        ValueError: for an unknown name (the message lists the known ones),
            or an `erk_power_scale` that is not a finite number.
    """
    erk_power_scale = as_float(erk_power_scale, "erk_power_scale",
                               "dst.distributions.get")
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _REGISTRY:
        fn = _REGISTRY[identifier.lower()]
        if fn is erk:
            return functools.partial(erk, power_scale=erk_power_scale)
        return fn
    raise ValueError(
        f"Unknown sparsity distribution: distribution={identifier!r}. "
        f"Known distributions: {sorted(_REGISTRY)}, a dict "
        "{weight path or layer name: sparsity}, or a callable "
        "(shapes, sparsity) -> {path: density}."
    )


def active_counts(
    shapes: Mapping[str, tuple], densities: Mapping[str, float]
) -> dict[str, int]:
    """Active connections per weight: round(density × size), at least 1."""
    out = {}
    for path, shape in shapes.items():
        size = int(np.prod(shape))
        out[path] = int(min(size, max(1, round(densities[path] * size))))
    return out
