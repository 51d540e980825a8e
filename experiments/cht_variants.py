"""CHT variants for the runner, by name: `--import experiments.cht_variants`.

`cht_percolation` is `dst.updaters.CHT` with `percolation=True` (the CHT
reference's chain removal); `chts` adds CHTs' CH2-L3n score and soft
regrowth to it. Both take the runner's schedule arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import dst


@dst.updaters.register("cht_percolation")
class CHTPercolation(dst.updaters.CHT):
    """CHT that removes the links of units left without input or output."""

    def __init__(self, *, update_freq: int = 100, drop_fraction: float = 0.3,
                 drop_fraction_schedule: str | Callable[[int], float] = "constant",
                 begin_step: int = 0, end_step: int | float | None = 1.0,
                 seed: int | None = None):
        super().__init__(update_freq=update_freq, drop_fraction=drop_fraction,
                         drop_fraction_schedule=drop_fraction_schedule, percolation=True,
                         begin_step=begin_step, end_step=end_step, seed=seed)


@dst.updaters.register("chts")
class CHTs(dst.updaters.CHT):
    """CHT with CHTs' node-based CH2-L3n score, soft regrowth and percolation."""

    def __init__(self, *, update_freq: int = 100, drop_fraction: float = 0.3,
                 drop_fraction_schedule: str | Callable[[int], float] = "constant",
                 begin_step: int = 0, end_step: int | float | None = 1.0,
                 seed: int | None = None):
        super().__init__(update_freq=update_freq, drop_fraction=drop_fraction,
                         drop_fraction_schedule=drop_fraction_schedule, score="ch2_l3n",
                         soft_regrowth=True, percolation=True, begin_step=begin_step,
                         end_step=end_step, seed=seed)
