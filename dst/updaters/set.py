"""SET: drop the weakest connections, regrow as many at random."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from dst._select import Array, Kit
from dst._validate import as_float
from dst.schedules import DROP_FRACTION_SCHEDULES, DropFraction
from dst.updaters.base import Updater, floor_fraction
from dst.updaters.registry import register

__all__ = ["SET", "GROW_CANDIDATES", "fraction_count", "fraction_units"]

#: Where SET and RigL may grow: among the connections inactive after the drop
#: (the references'), or only among those inactive before the update.
GROW_CANDIDATES = ("after_drop", "before_drop")
_ANCHORS = ("begin", "zero")

#: Updaters whose drop count depends on an in-graph active count (SNFS, SRigL)
#: get f(t) from the host as an integer number of 2^-24 units.
FRACTION_UNIT = 2**24


def fraction_units(fraction: float) -> int:
    """f in units of 2^-24, rounded up (exact in float32 for f <= 1)."""
    return int(math.ceil(fraction * FRACTION_UNIT))


def fraction_count(kit: Kit, units: Any, n: Any) -> Any:
    """floor(f · n) as int32, in float32, from `units` = `fraction_units(f)` and
    an in-graph count n < 2^24: the host's floor(f · n), or in rare cases one
    more (f rounded up, then a float32 product), the same on every path. A
    product f · n that is an integer (0.3 · 10) is never one short."""
    fraction = kit.cast(units, "float32") * np.float32(1.0 / FRACTION_UNIT)
    return kit.cast(kit.xp.floor(fraction * kit.cast(n, "float32")), "int32")


@register("set")
class SET(Updater):
    """Sparse Evolutionary Training (Mocanu et al. 2018, Nature Communications).

    At each update step t, for each weight: drop the k = floor(f(t) · n)
    active connections of lowest `drop_scores` (magnitude; n: the weight's
    active count at `bind`), then grow k connections chosen by `grow_scores`
    (uniformly at random for SET) among the candidates given by `grow_candidates`:

    - "after_drop" (the default, as in the SET, RigL and jaxpruner
      references): every connection inactive after the drop, including the
      ones just dropped. A connection dropped and regrown in the same update
      keeps its weight and its optimizer state; the net change can be less
      than k.
    - "before_drop": only the connections inactive before the update, so the
      dropped and the grown sets are disjoint and exactly k connections move
      (dst's only rule up to version 0.1).

    Newly grown weights start at 0.0 with their optimizer state reset to its
    initial value. Each weight's active count is unchanged, and asserted.

    Magnitude is the common modern form of SET's drop rule (the paper drops
    the smallest positive and the largest negative weights).

    Block masks (`dst.sparsify(..., block=...)`): the same rule on the grid of
    blocks, with block L2 norms of the weights (and of the gradient, RigL);
    counts are in blocks (see `dst.blocks`).

    Args:
        update_freq: steps between updates. Defaults to 100.
        drop_fraction: α, the fraction replaced at the schedule's origin, in
            (0, 1). Defaults to 0.3.
        drop_fraction_schedule: "cosine" (α/2 · (1 + cos(π p))), "linear"
            (α · (1 − p)), "constant" (α), where p = (t − t0)/(end − t0) runs
            from 0 at the origin t0 to 1 at the last update step; or any
            callable `step -> fraction` in [0, 1), called with the optimizer
            step on the host (then `drop_fraction` and `drop_fraction_anchor`
            are unused). Defaults to "cosine".
        drop_fraction_anchor: the schedule's origin t0: "begin" (`begin_step`,
            so the first update replaces α) or "zero" (the step `begin_step`
            counts from: the start of the fit by default, as the RigL
            reference anchors its cosine decay at the start of training;
            with `begin_step > 0` the first update then replaces less than
            α). Defaults to "begin".
        grow_candidates: "after_drop" or "before_drop", see above. Defaults to
            "after_drop".
        begin_step: first update step. Defaults to 0.
        end_step: last step that may update: an int, or a float in (0, 1]
            meaning that fraction of the fit's total steps. Defaults to 0.75.
        seed: seed for the random draws. Defaults to None.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("adam", "mse")
        >>> cb = dst.callbacks.SET(update_freq=2, seed=0)
        >>> h = model.fit(np.ones((32, 8)), np.ones((32, 4)), epochs=2, verbose=0, callbacks=[cb])
        >>> round(h.history["sparsity"][-1], 2)
        0.5
    """

    def __init__(self, *, update_freq: int = 100, drop_fraction: float = 0.3,
                 drop_fraction_schedule: str | Callable[[int], float] = "cosine",
                 drop_fraction_anchor: str = "begin", grow_candidates: str = "after_drop",
                 begin_step: int = 0, end_step: int | float | None = 0.75,
                 seed: int | None = None):
        who = type(self).__name__
        drop_fraction = as_float(drop_fraction, "drop_fraction", who,
                                 low=0.0, high=1.0, low_open=True, high_open=True)
        if not callable(drop_fraction_schedule) and \
                drop_fraction_schedule not in DROP_FRACTION_SCHEDULES:
            raise ValueError(
                f"`drop_fraction_schedule` must be one of {list(DROP_FRACTION_SCHEDULES)} "
                f"or a callable step -> fraction. Received: "
                f"drop_fraction_schedule={drop_fraction_schedule!r}"
            )
        for name, value, allowed in (("drop_fraction_anchor", drop_fraction_anchor, _ANCHORS),
                                     ("grow_candidates", grow_candidates, GROW_CANDIDATES)):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)} for {who}. "
                                 f"Received: {name}={value!r}")
        super().__init__(update_freq=update_freq, begin_step=begin_step,
                         end_step=end_step, seed=seed)
        self.drop_fraction = drop_fraction
        self.drop_fraction_schedule = drop_fraction_schedule
        self.drop_fraction_anchor = drop_fraction_anchor
        self.grow_candidates = grow_candidates

    def drop_fraction_at(self, step: int) -> float:
        """f(t), the drop fraction at `step`."""
        schedule = self.drop_fraction_schedule
        if callable(schedule):
            value = schedule(step)
            try:
                fraction = float(value)
            except (TypeError, ValueError):
                fraction = math.nan
            if not 0.0 <= fraction < 1.0:
                raise ValueError(
                    f"{type(self).__name__}: the drop_fraction_schedule callable returned "
                    f"{value!r} at step {step}; it must return a fraction in [0, 1)."
                )
            return fraction
        origin = self.begin if self.drop_fraction_anchor == "begin" else self.origin
        return DropFraction(self.drop_fraction, origin, self.end, schedule)(step)

    def step_value(self, step: int, index: int) -> int:
        """k, the connections to drop (and grow) at `step`: floor(f(t) · n) for
        the n connections the weight had active at `bind` (SET keeps n)."""
        return floor_fraction(self.drop_fraction_at(step), self.active[index])

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        xp = kit.xp
        active = kit.count(mask)
        after_drop = self.grow_candidates == "after_drop"
        room = active if after_drop else math.prod(mask.shape) - active
        k = xp.minimum(kit.cast(value, "int32"), kit.cast(room, "int32"))
        dropped = kit.select(self.drop_scores(kit, weight, mask, grad), mask, k, salt(0))
        kept = xp.logical_and(mask, xp.logical_not(dropped))
        candidates = xp.logical_not(kept if after_drop else mask)
        grown = kit.select(self.grow_scores(kit, weight, mask, grad), candidates, k, salt(1),
                           largest=True)
        return xp.logical_or(kept, grown)
