"""SRigL: RigL with constant fan-in and neuron ablation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from dst import _select
from dst._select import Array, Kit
from dst._validate import as_float
from dst.updaters.registry import register
from dst.updaters.rigl import RigL
from dst.updaters.set import fraction_count, fraction_units

__all__ = ["SRigL", "constant_fan_in"]


@register("srigl")
class SRigL(RigL):
    """RigL that keeps every output unit's fan-in equal (Lasby et al. 2024).

    "Dynamic Sparse Training with Structured Sparsity" (ICLR 2024). Output
    units are the last axis of a weight (a Dense kernel's columns, a conv
    kernel's output channels); a unit's fan-in counts its active entries
    over all other axes. At `bind` each mask is made constant fan-in
    (`constant_fan_in`). At each update step, per weight with n active
    connections now (fewer after an ablation), K = floor(f(t) · n), as the
    SRigL code counts (in float32 from f(t) rounded up to a multiple of
    2^-24, the same on every path: RigL's count, or in rare cases one more):

    1. drop the K smallest-magnitude active connections of the weight;
    2. salient connections: the kept ones and the K inactive ones with the
       largest |dense gradient|. An active unit with fewer than
       `gamma_sal` × fan-in salient connections is ablated: all its inputs
       are dropped and it never regrows (at least one unit stays);
    3. the new fan-in is min(fan-in of the weight, floor(n / units left)),
       as the SRigL code recomputes it; every unit left regrows, among its
       connections inactive after the drop, those with the largest |dense
       gradient| until it has exactly that fan-in.

    So every active unit has the same fan-in after every update, and the
    weight's count is unchanged except at an ablation, where it becomes
    units × floor(n / units) (it loses fewer than `units` connections).
    Grown connections start at 0.0 with fresh optimizer slots. Block masks
    are not supported. N:M masks (`dst.sparsify(..., n_m=)`) are, with
    `gamma_sal=0.0` only: exact N:M gives every unit the same fan-in, N/M of
    its inputs, and each group regrows what it lost (see `dst.nm`); with
    ablation `bind` refuses them.

    Args:
        update_freq: steps between updates. Defaults to 100.
        drop_fraction: α of the drop-fraction schedule, in (0, 1).
            Defaults to 0.3.
        drop_fraction_schedule: as for `SET`. Defaults to "cosine".
        drop_fraction_anchor: as for `SET`. Defaults to "begin".
        gamma_sal: the ablation threshold γ_sal, in [0, 1]; 0 never
            ablates. Defaults to 0.3 (the paper's).
        grad_accumulation_n: steps whose dense gradients are averaged into
            the grow scores, as RigL's (the SRigL code's option of that
            name). Defaults to 1.
        begin_step: first update step. Defaults to 0.
        end_step: last step that may update. Defaults to 0.75.
        seed: seed for the constant fan-in masks and tie-breaking.
            Defaults to None.

    Example:
        >>> import keras, numpy as np, dst
        >>> model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.7, "uniform", seed=0)
        >>> model.compile("sgd", "mse")
        >>> dst.updaters.SRigL(seed=0, end_step=10).bind(model)
        >>> dst.get_masks(model)[model.layers[0].kernel.path].sum(axis=0).tolist()
        [3, 3, 3, 3]

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("sgd", "mse")
        >>> cb = dst.callbacks.SRigL(update_freq=1, drop_fraction=0.5, seed=0)
        >>> _ = model.fit(np.ones((8, 8)), np.ones((8, 4)), epochs=2, verbose=0, callbacks=[cb])
        >>> fans = dst.get_masks(model)[model.layers[0].kernel.path].sum(axis=0)
        >>> len(set(fans.tolist()) - {0})  # one fan-in for every unit not ablated
        1
    """

    def __init__(self, *, update_freq: int = 100, drop_fraction: float = 0.3,
                 drop_fraction_schedule: str | Callable[[int], float] = "cosine",
                 drop_fraction_anchor: str = "begin", gamma_sal: float = 0.3,
                 grad_accumulation_n: int = 1, begin_step: int = 0,
                 end_step: int | float | None = 0.75, seed: int | None = None):
        super().__init__(update_freq=update_freq, drop_fraction=drop_fraction,
                         drop_fraction_schedule=drop_fraction_schedule,
                         drop_fraction_anchor=drop_fraction_anchor,
                         grow_candidates="after_drop", grad_accumulation_n=grad_accumulation_n,
                         begin_step=begin_step, end_step=end_step, seed=seed)
        self.gamma_sal = as_float(gamma_sal, "gamma_sal", type(self).__name__, low=0.0, high=1.0)

    def bind(self, model: keras.Model, total_steps: int | None = None, first_step: int = 0,
             optimizer: keras.optimizers.Optimizer | None = None, **kwargs: Any) -> None:
        """`Updater.bind`, then makes every mask constant fan-in (`constant_fan_in`)."""
        super().bind(model, total_steps, first_step, optimizer, **kwargs)
        for index, t in enumerate(self.targets):
            assert t.constraint is not None  # a dynamic target has a mask
            old = keras.ops.convert_to_numpy(t.constraint.mask).astype(bool)
            new = constant_fan_in(old, int(_select.salt(np, self.seed, 0, index, 3)))
            if not np.array_equal(old, new):
                self._write(index, keras.ops.convert_to_tensor(old),
                            keras.ops.convert_to_tensor(new), keras.ops.convert_to_tensor(True))

    def step_value(self, step: int, index: int) -> int:
        """f(t) in units of 2^-24, rounded up (`new_mask` takes K of the count
        active at the update, which an ablation lowers)."""
        return fraction_units(self.drop_fraction_at(step))

    supports_blocks = False

    @property
    def supports_n_m(self) -> bool:  # type: ignore[override]
        """N:M masks only without ablation (`gamma_sal=0.0`): exact N:M is then
        constant fan-in by construction."""
        return self.gamma_sal == 0.0

    def _n_m_refusal(self) -> str:
        return (f" with gamma_sal={self.gamma_sal} (an ablated unit would empty its "
                "groups; pass gamma_sal=0.0, and every unit keeps fan-in N/M of its "
                "inputs)")

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        xp = kit.xp
        shape = tuple(int(d) for d in mask.shape)
        fan_max = math.prod(shape[:-1])
        units = shape[-1]
        m = xp.reshape(mask, (fan_max, units))
        w = xp.reshape(weight, (fan_max, units))
        g = self.grow_scores(kit, w, m, xp.reshape(grad, (fan_max, units)))

        def i32(x):
            return kit.cast(x, "int32")

        def per_unit(x):
            return i32(xp.sum(i32(x), axis=0))

        n = i32(kit.count(m))
        k = xp.minimum(fraction_count(kit, value, n), n)
        kept = xp.logical_and(m, xp.logical_not(kit.select(self.drop_scores(kit, w, m, g), m, k,
                                                           salt(0))))
        inactive = xp.logical_not(m)
        top = kit.select(g, inactive, xp.minimum(k, i32(kit.count(inactive))), salt(2),
                         largest=True)
        salient = per_unit(xp.logical_or(kept, top))
        alive = per_unit(m) > 0
        count = i32(xp.sum(i32(alive)))
        fan = xp.floor_divide(n, xp.maximum(count, 1))
        low = kit.cast(salient, "float32") < kit.cast(fan, "float32") * np.float32(self.gamma_sal)
        ablate = xp.logical_and(alive, low)
        ablate = xp.logical_and(ablate, i32(xp.sum(i32(ablate))) < count)  # one unit stays
        alive = xp.logical_and(alive, xp.logical_not(ablate))
        fan = xp.minimum(fan_max, xp.floor_divide(n, xp.maximum(i32(xp.sum(i32(alive))), 1)))
        kept = xp.logical_and(kept, alive)
        need = xp.where(alive, xp.maximum(fan - per_unit(kept), 0), 0)
        grown = kit.select_columns(g, xp.logical_and(xp.logical_not(kept), alive), need,
                                   salt(1), largest=True)
        new = xp.reshape(xp.logical_or(kept, grown), shape)
        if kit is _select.NUMPY:  # for `expected_active`
            self.__dict__.setdefault("_new_masks", {})[id(mask)] = np.asarray(new)
        return new

    def expected_active(self, index: int, old: np.ndarray, step: int) -> int:
        """The old count, or units × floor(count / units) after an ablation;
        also checks that every active unit has the same fan-in."""
        new = self.__dict__.get("_new_masks", {}).pop(id(old), None)
        if new is None:
            return int(old.sum())
        shape = old.shape
        fans = new.reshape(-1, shape[-1]).sum(axis=0)
        fans = fans[fans > 0]
        if fans.size and (fans != fans[0]).any():
            raise AssertionError(
                f"SRigL produced unequal fan-ins for '{self.targets[index].path}': "
                f"{sorted(set(fans.tolist()))}."
            )
        if not fans.size:
            return 0
        return int(fans.size * min(math.prod(shape[:-1]), int(old.sum()) // fans.size))


def constant_fan_in(mask: np.ndarray, salt: int) -> np.ndarray:
    """A constant fan-in mask with about the active count of `mask`.

    Every output unit (last axis) gets fan-in max(1, floor(n / units)) for
    the n active entries of `mask` (the SRigL code's `int`), keeping its
    active entries first and filling up, or choosing among them, by the
    seeded hash of `salt`. Newly active entries start at 0.0 when an updater
    writes this mask. A mask whose active units already share one fan-in is
    returned as it is: the units with none are ablated (a run resumed or
    continued with a new `fit` keeps them ablated).

    Args:
        mask: a bool mask whose last axis is the output units.
        salt: a 32-bit tie-break salt.

    Returns:
        The new bool mask, of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    units = mask.shape[-1]
    flat = mask.reshape(-1, units)
    fans = flat.sum(axis=0)
    if fans.any() and (fans[fans > 0] == fans.max()).all():
        return mask
    fan = min(flat.shape[0], max(1, int(flat.sum()) // units))
    new = _select.NUMPY.select_columns(flat.astype(np.float32), np.ones_like(flat), fan, salt,
                                       largest=True)
    return new.reshape(mask.shape)
