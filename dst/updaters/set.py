"""SET: drop the weakest connections, regrow as many at random."""

from __future__ import annotations

import math

from dst._validate import as_float
from dst.blocks import blockwise, counted_in_blocks
from dst.schedules import DROP_FRACTION_SCHEDULES, DropFraction
from dst.updaters.base import Updater, floor_fraction
from dst.updaters.registry import register

__all__ = ["SET"]


@register("set")
class SET(Updater):
    """Sparse Evolutionary Training (Mocanu et al. 2018, Nature Communications).

    At each update step t, for each weight: drop the k = floor(f(t) · active)
    active connections of smallest magnitude, then grow k connections among
    those that were inactive before this update (so drop and grow are
    disjoint), chosen by `grow_scores` (uniformly at random for SET). Grown
    weights start at 0.0 with their optimizer state reset to 0. Each weight's
    active count is unchanged, and asserted.

    Magnitude is the common modern form of SET's drop rule (the paper drops
    the smallest positive and the largest negative weights).

    Block masks (`dst.sparsify(..., block=...)`): the same rule on the grid of
    blocks, with block L2 norms of the weights (and of the gradient, RigL);
    counts are in blocks (see `dst.blocks`).

    Args:
        update_freq: steps between updates. Defaults to 100.
        drop_fraction: α, the fraction replaced at `begin_step`, in (0, 1).
            Defaults to 0.3.
        drop_fraction_schedule: "cosine" (α/2 · (1 + cos(π (t − begin)/
            (end − begin))), "linear" or "constant". Defaults to "cosine".
        begin_step: first update step. Defaults to 0.
        end_step: last step that may update: an int, or a float in (0, 1]
            meaning that fraction of the fit's total steps. Defaults to 0.75.
        seed: seed for the random draws. Defaults to None.
    """

    def __init__(self, *, update_freq=100, drop_fraction=0.3,
                 drop_fraction_schedule="cosine", begin_step=0, end_step=0.75,
                 seed=None):
        drop_fraction = as_float(drop_fraction, "drop_fraction", type(self).__name__,
                                 low=0.0, high=1.0, low_open=True, high_open=True)
        if drop_fraction_schedule not in DROP_FRACTION_SCHEDULES:
            raise ValueError(
                f"`drop_fraction_schedule` must be one of {list(DROP_FRACTION_SCHEDULES)}. "
                f"Received: drop_fraction_schedule={drop_fraction_schedule!r}"
            )
        super().__init__(update_freq=update_freq, begin_step=begin_step,
                         end_step=end_step, seed=seed)
        self.drop_fraction = drop_fraction
        self.drop_fraction_schedule = drop_fraction_schedule

    def drop_fraction_at(self, step: int) -> float:
        """f(t), the drop fraction at `step`."""
        return DropFraction(self.drop_fraction, self.begin_step, self.end,
                            self.drop_fraction_schedule)(step)

    def step_value(self, step: int, index: int) -> int:
        """k, the connections to drop (and grow) at `step`: floor(f(t) · n) for
        the n connections the weight had active at `bind` (SET keeps n)."""
        return floor_fraction(self.drop_fraction_at(step), self.active[index])

    @blockwise  # block masks: the same rule on the grid of blocks (dst/blocks.py)
    def new_mask(self, kit, weight, mask, grad, value, salt):
        xp = kit.xp
        active = kit.count(mask)
        k = xp.minimum(kit.cast(value, "int32"),
                       kit.cast(math.prod(mask.shape) - active, "int32"))
        dropped = kit.select(xp.abs(weight), mask, k, salt(0))
        grown = kit.select(self.grow_scores(kit, weight, mask, grad),
                           xp.logical_not(mask), k, salt(1), largest=True)
        return xp.logical_or(xp.logical_and(mask, xp.logical_not(dropped)), grown)

    @counted_in_blocks
    def expected_active(self, index, old, step):
        return super().expected_active(index, old, step)

    def grow_scores(self, kit, weight, mask, grad):
        """Higher scores grow first; None means uniformly at random (SET)."""
        return None
