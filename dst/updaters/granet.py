"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dst._model import dynamic_targets
from dst._select import Array, Kit
from dst._validate import as_float
from dst.core import sparsify
from dst.schedules import DropFraction
from dst.updaters.accumulation import GradientAccumulation
from dst.updaters.base import floor_fraction
from dst.updaters.magnitude import MagnitudePruning
from dst.updaters.registry import register

__all__ = ["GraNet"]


@register("granet")
class GraNet(GradientAccumulation, MagnitudePruning):
    """Gradual magnitude pruning that also drops and regrows (Liu et al. 2021).

    "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration"
    (NeurIPS 2021). At each update step t each weight:

    1. is pruned to `MagnitudePruning`'s count: keep_t = round(size × density_t)
       along the Zhu & Gupta schedule from `initial_sparsity` to
       `final_sparsity` (exactly `MagnitudePruning`'s counts);
    2. then loses k_t = floor(r(t) · keep_t) more of its smallest-magnitude
       active connections and regrows k_t, those with the largest |dense
       gradient| of the current batch (with `grad_accumulation_n=n`, the
       mean of the n steps up to the update, as RigL's) among all connections
       inactive after the drop (RigL's "after_drop" rule), so its count is
       keep_t exactly.

    r(t) = α/2 · (1 + cos(π (t − begin_step)/(end − begin_step))) decays from
    α = `regrowth_fraction` at `begin_step` to 0 at the last update step.
    Regrown connections start at 0.0 with fresh optimizer slots; a connection
    dropped and regrown in the same update keeps its weight.

    Regrowth only replaces: no update raises a weight's active count, as in
    the paper, where the density only falls from the initial to the final
    one. So `initial_sparsity` above `final_sparsity` is refused; equal
    values keep the count constant while connections are still replaced.

    A model without masks is sparsified at `bind` to `initial_sparsity` with
    `distribution` (random masks; `initial_sparsity=0.0` starts dense); with
    `n_m`, it gets all-ones N:M masks, pruned to `initial_sparsity` at the
    first update.

    N:M masks: as for `MagnitudePruning` (each group keeps at least N, exactly
    N at `final_sparsity` = 1 − N/M); a group that the pruning and the
    drop leave with fewer than N regrows, by |gradient|, among its inactive
    entries (see `dst.nm`).

    Differences from the GraNet code: it ranks magnitudes over all layers at
    once (global pruning), dst keeps per-weight counts from `distribution`
    (as `MagnitudePruning`); its regrowth rate decays over the whole run and
    regrowth continues after the last pruning step, dst's ends at `end_step`.

    Args:
        final_sparsity: s_f, in [0, 1).
        initial_sparsity: s_i, in [0, s_f]. Defaults to 0.5 (the GraNet
            code's `--init-density 0.5` sparse start); 0.0 starts dense.
        regrowth_fraction: α, the fraction of the kept connections replaced
            at `begin_step`, in [0, 1). Defaults to 0.5 (the GraNet code's
            `--prune-rate 0.5`).
        begin_step: t0. Defaults to 0.
        end_step: the last pruning step: an int, a float in (0, 1] (fraction
            of the fit's steps), or None for the last step. Defaults to None.
        update_freq: steps between updates. Defaults to 100.
        power: exponent of the sparsity schedule. Defaults to 3.
        distribution: how s_t is spread over weights. Defaults to "uniform".
        seed: seed of the initial masks and of tie-breaking. Defaults to None.
        grad_accumulation_n: steps whose dense gradients are averaged into
            the regrowth scores, in [1, update_freq], as RigL's. Defaults to 1.
        n_m: (N, M): start a model without masks from all-ones N:M masks
            and end at exactly N of every M consecutive inputs (as for
            `MagnitudePruning`). Defaults to None.

    Raises:
        ValueError: an argument out of range, or `initial_sparsity` greater
            than `final_sparsity` (as `GraNet(0.3)`, whose default start is
            0.5).

    Example:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
        >>> model.compile("adam", "mse")
        >>> up = dst.updaters.GraNet(0.8, update_freq=1, end_step=3, seed=0)
        >>> up.bind(model)
        >>> round(dst.sparsity(model), 2)
        0.5

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
        >>> model.compile("adam", "mse")
        >>> cb = dst.callbacks.GraNet(0.8, update_freq=1, end_step=3, seed=0)
        >>> _ = model.fit(np.ones((40, 8)), np.ones((40, 10)), batch_size=8, verbose=0, callbacks=[cb])
        >>> round(dst.sparsity(model), 2)
        0.8
    """

    needs_gradients = True

    def __init__(self, final_sparsity: float, *, initial_sparsity: float = 0.5,
                 regrowth_fraction: float = 0.5, begin_step: int = 0,
                 end_step: int | float | None = None, update_freq: int = 100,
                 power: float = 3, distribution: str | Callable = "uniform",
                 seed: int | None = None, grad_accumulation_n: int = 1,
                 n_m: tuple[int, int] | None = None):
        super().__init__(final_sparsity, initial_sparsity=initial_sparsity,
                         begin_step=begin_step, end_step=end_step, update_freq=update_freq,
                         power=power, distribution=distribution, seed=seed, n_m=n_m)
        who = type(self).__name__
        self.regrowth_fraction = as_float(regrowth_fraction, "regrowth_fraction", who,
                                          low=0.0, high=1.0, high_open=True)
        self._set_accumulation(grad_accumulation_n)

    def _targets(self, model):
        if not dynamic_targets(model) and self.n_m is None:
            sparsify(model, self.initial_sparsity,
                     self.distribution if self.initial_sparsity else "uniform", seed=self.seed)
        return super()._targets(model)

    def grow_scores(self, kit: Kit, weight: Array, mask: Array,
                    grad: Array | None) -> Array | None:
        return kit.xp.abs(grad)

    def step_value(self, step: int, index: int) -> tuple[int, int]:  # type: ignore[override]
        """(keep_t, k_t): the count the weight keeps, and how many it regrows."""
        keep = super().step_value(step, index)
        rate = DropFraction(self.regrowth_fraction, self.begin, self.end)(step)
        return keep, floor_fraction(rate, keep)

    def expected_active(self, index: int, old: np.ndarray, step: int) -> int:
        return min(self.step_value(step, index)[0], int(old.sum()))

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        xp = kit.xp
        active = kit.cast(kit.count(mask), "int32")
        keep = xp.minimum(kit.cast(value[0], "int32"), active)
        k = xp.minimum(kit.cast(value[1], "int32"), keep)
        dropped = kit.select(self.drop_scores(kit, weight, mask, grad), mask,
                             active - keep + k, salt(0))
        kept = xp.logical_and(mask, xp.logical_not(dropped))
        grown = kit.select(self.grow_scores(kit, weight, mask, grad), xp.logical_not(kept), k,
                           salt(1), largest=True)
        return xp.logical_or(kept, grown)
