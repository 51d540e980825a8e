"""Gradual magnitude pruning (Zhu & Gupta 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from dst import backend
from dst import distributions as dist_lib
from dst._model import check_keras3_model, dynamic_targets
from dst._select import Array, Kit
from dst._validate import as_float
from dst.blocks import block_of, grid_shape
from dst.core import dense_n_m, sparsify
from dst.nm import check_n_m, n_m_of
from dst.schedules import PolynomialSparsity
from dst.updaters.base import Updater
from dst.updaters.registry import register

__all__ = ["MagnitudePruning"]


@register("magnitude")
class MagnitudePruning(Updater):
    """Prunes to `final_sparsity` along s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t_end − t0))^power.

    "To prune or not to prune" (Zhu & Gupta 2017); the same schedule as
    TF-MOT's `PolynomialDecay`. At each update step each weight keeps exactly
    round(size × density_t) of its largest-magnitude active entries, where
    density_t comes from `distribution` at overall sparsity s_t (TF-MOT keeps
    every entry tied with the threshold; dst keeps exactly that many, ties
    broken by a seeded random order). Pruned connections never come back,
    so the sparsity can only rise: `initial_sparsity` above `final_sparsity`
    is refused, and equal values give a constant schedule. If `end_step`
    resolves to `begin_step`, that one update prunes to `final_sparsity`.
    A model without masks gets all-ones masks at `bind`.

    N:M masks (`n_m=`, or a model sparsified with `dst.sparsify(...,
    n_m=)`): every group of M consecutive inputs always keeps its N
    largest-magnitude active entries, and the rest of each weight's count
    goes to its other largest magnitudes; so the masks end exactly N:M at the
    final sparsity, which must be 1 − N/M (see `dst.nm`).

    Args:
        final_sparsity: s_f, in [0, 1).
        initial_sparsity: s_i, in [0, s_f]. Defaults to 0.0.
        begin_step: t0. Defaults to 0.
        end_step: t_end: an int, a float in (0, 1] (fraction of the fit's
            steps), or None for the last step of the fit. Defaults to None.
        update_freq: steps between updates. Defaults to 100.
        power: exponent of the schedule. Defaults to 3.
        distribution: how s_t is spread over weights ("uniform", "er",
            "erk" or a callable). Defaults to "uniform".
        seed: seed for tie-breaking. Defaults to None.
        n_m: (N, M): a model without masks gets all-ones N:M masks, pruned to
            exactly N of every M consecutive inputs; `final_sparsity` must be
            1 − N/M and `distribution` "uniform". Defaults to None.

    Raises:
        ValueError: an argument out of range, `initial_sparsity` greater
            than `final_sparsity`, or a `final_sparsity` or `distribution`
            that contradicts N:M masks.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
        >>> model.compile("adam", "mse")
        >>> cb = dst.callbacks.MagnitudePruning(0.8, update_freq=1, end_step=3)
        >>> _ = model.fit(np.ones((40, 8)), np.ones((40, 10)), batch_size=8, verbose=0, callbacks=[cb])
        >>> round(dst.sparsity(model), 2)
        0.8
    """

    update_at_end = True
    starts_dense = True

    def __init__(self, final_sparsity: float, *, initial_sparsity: float = 0.0,
                 begin_step: int = 0, end_step: int | float | None = None,
                 update_freq: int = 100, power: float = 3,
                 distribution: str | Callable = "uniform", seed: int | None = None,
                 n_m: tuple[int, int] | None = None):
        who = type(self).__name__
        final = as_float(final_sparsity, "final_sparsity", who, low=0.0, high=1.0,
                         high_open=True)
        initial = as_float(initial_sparsity, "initial_sparsity", who, low=0.0, high=1.0,
                           high_open=True)
        if initial > final:  # pruning never adds connections back
            raise ValueError(
                f"`initial_sparsity` must be <= `final_sparsity` for {who}, whose updates "
                "never add active connections. Received: "
                f"initial_sparsity={initial_sparsity!r}, final_sparsity={final_sparsity!r}. "
                f"Pass initial_sparsity <= {final!r} (0.0 starts dense; equal values keep "
                "the sparsity constant) or raise final_sparsity."
            )
        super().__init__(update_freq=update_freq, begin_step=begin_step,
                         end_step=end_step, seed=seed)
        self.final_sparsity = final
        self.initial_sparsity = initial
        self.power = as_float(power, "power", who, low=0.0, low_open=True)
        self.distribution = distribution
        self._fn = dist_lib.get(distribution)
        self.n_m = check_n_m(n_m, who)
        if self.n_m is not None:
            self._check_n_m(self.n_m)

    def prepare(self, model: keras.Model) -> None:
        """A dense model gets all-ones masks now (see `Updater.prepare`)."""
        check_keras3_model(model, f"{type(self).__name__}.bind")
        backend.in_graph(model)  # a setup the backend refuses leaves the model as it was
        self._start(model)

    def _start(self, model: keras.Model) -> None:
        """All-ones masks (N:M ones with `n_m`) on a model without masks."""
        if dynamic_targets(model):
            return
        if self.n_m is not None:
            dense_n_m(model, self.n_m, f"{type(self).__name__}(n_m={self.n_m})")
        else:
            sparsify(model, 0.0, "uniform")

    def _targets(self, model):
        self._start(model)
        targets = super()._targets(model)
        for n_m in {n_m_of(t.constraint) for t in targets}:
            if n_m is not None:
                self._check_n_m(n_m)
        return targets

    def _check_n_m(self, n_m: tuple[int, int]) -> None:
        """Refuses a final sparsity or a distribution that contradicts N:M masks."""
        who = type(self).__name__
        implied = 1.0 - n_m[0] / n_m[1]
        if abs(self.final_sparsity - implied) > 1e-6:
            raise ValueError(
                f"{who}: N:M {n_m} masks end with {n_m[0]} of every {n_m[1]} connections, "
                f"sparsity {implied:g}; received final_sparsity={self.final_sparsity!r}. "
                f"Pass final_sparsity={implied:g}."
            )
        if self.distribution != "uniform":
            raise ValueError(
                f"{who}: N:M {n_m} masks give every weight the same sparsity, so "
                f"distribution={self.distribution!r} contradicts them. Pass "
                "distribution='uniform'."
            )

    def bind(self, model: keras.Model, total_steps: int | None = None, first_step: int = 0,
             optimizer: keras.optimizers.Optimizer | None = None, **kwargs: Any) -> None:
        super().bind(model, total_steps, first_step, optimizer, **kwargs)
        self.sparsity_schedule = PolynomialSparsity(
            self.initial_sparsity, self.final_sparsity, self.begin, self.end, self.power)
        self._shapes = {t.path: t.shape for t in self.targets}
        # Counts are in blocks for block masks: density × number of blocks.
        self._grids = {t.path: _grid(t) for t in self.targets}
        self._counts: dict[int, dict[str, int]] = {}
        have, want = sum(self.active), sum(self.target_counts(self.end).values())
        if have < want:  # never regrows: the model would stay sparser than asked
            size = sum(int(np.prod(g)) for g in self._grids.values())
            raise ValueError(
                f"{type(self).__name__}: model '{model.name}' is already at sparsity "
                f"{1 - have / size:.4f}, above final_sparsity={self.final_sparsity}, and "
                "pruning never regrows connections, so training would end there. Pass "
                f"final_sparsity >= {1 - have / size:.4f}, or train at this sparsity with "
                "SET or RigL."
            )

    def target_counts(self, step: int) -> dict[str, int]:
        """Active connections each weight keeps at `step`."""
        if step not in self._counts:
            s = self.sparsity_schedule(step)
            self._counts[step] = dist_lib.active_counts(self._grids, self._fn(self._shapes, s))
        return self._counts[step]

    def step_value(self, step: int, index: int) -> int:
        return int(self.target_counts(step)[self.targets[index].path])

    def expected_active(self, index: int, old: np.ndarray, step: int) -> int:
        return min(int(self.step_value(step, index)), int(old.sum()))

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        xp = kit.xp
        active = kit.count(mask)
        keep = xp.minimum(kit.cast(value, "int32"), kit.cast(active, "int32"))
        pruned = kit.select(self.drop_scores(kit, weight, mask, grad), mask, active - keep,
                            salt(0))
        return xp.logical_and(mask, xp.logical_not(pruned))


def _grid(target) -> tuple[int, ...]:
    """The shape a weight's counts are taken over: its block grid, or itself."""
    block = block_of(target.constraint)
    return tuple(grid_shape(target.shape, block)) if block else target.shape
