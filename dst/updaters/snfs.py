"""SNFS (sparse momentum): prune by magnitude, regrow by momentum, across layers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from dst import _compat
from dst._model import dynamic_targets
from dst._select import Array, Kit
from dst._validate import as_float
from dst.updaters.registry import register
from dst.updaters.set import SET, fraction_count, fraction_units

__all__ = ["SNFS"]


@register("snfs")
class SNFS(SET):
    """Sparse momentum (Dettmers & Zettlemoyer 2019, "Sparse Networks from
    Scratch: Faster Training without Losing Performance").

    Every step, each sparse weight's momentum buffer m ← β·m + (1 − β)·g is
    updated from its dense gradient g (at inactive connections too). At each
    update step t:

    1. each weight l scores its mean |m| over its active connections;
    2. it drops its d_l = floor(f(t) · a_l) active connections of smallest
       magnitude (a_l: its active count now; f(t): SET's drop-fraction
       schedule; computed in float32 from f(t) rounded up to a multiple of
       2^-24, the same on every path: the host's count, or in rare cases one
       more, and never one short when f(t) · a_l is an integer, as 0.3 · 10).
       T = Σ d_l is the number regrown;
    3. T is split across weights in proportion to their scores, capped at each
       weight's free places (the connections inactive after its drop; before
       it with `grow_candidates="before_drop"`), and each weight grows its
       share at the candidates with the largest |m|.

    So per-weight counts move toward the weights with large momentum and the
    total stays constant (asserted). Grown weights start at 0.0 with fresh
    optimizer slots, as in SET and RigL.

    Rounding rule of the split (exact integers summing to T): rounds of
    largest remainders. In a round, R connections are left to give and the
    open weights (free places left) have scores s_l; each gets
    floor(R · s_l / Σ s) and the leftover ones go, one each, to the largest
    fractional parts (ties to the earlier weight); a weight given more than
    its free places gets them all and closes, and the next round splits what
    is left among the open ones (by their free places when all of their scores
    are 0). The shares are float32 on every path; the host and the compiled
    step agree except where a float32 sum of momenta rounds differently and a
    share sits on an integer boundary.

    Choices: the momentum buffer is dst's own (a variable per weight, threaded
    as model state), not the optimizer's: the optimizer sees masked gradients,
    so its momentum is 0 at inactive connections. It is saved with the mask
    (in `.keras`/`.weights.h5` files and `BackupAndRestore` checkpoints) and
    restarts at 0 at each `fit` (no bias correction), except the first fit
    after it was loaded from a file, which continues it: so an interrupted
    run resumes exactly. The drop counts are of the current active
    counts, as in the reference code. Block masks are not supported.

    Args:
        update_freq: steps between updates. Defaults to 100.
        drop_fraction: α, SET's. Defaults to 0.3.
        drop_fraction_schedule: SET's. Defaults to "cosine".
        drop_fraction_anchor: SET's. Defaults to "begin".
        grow_candidates: "after_drop" (the reference's: a connection just
            dropped may regrow) or "before_drop". Defaults to "after_drop".
        momentum: β, the smoothing of the momentum buffer, in [0, 1).
            Defaults to 0.9.
        begin_step: first update step. Defaults to 0.
        end_step: last step that may update: an int, or a float in (0, 1]
            meaning that fraction of the fit's total steps. Defaults to 0.75.
        seed: seed for the tie-breaks. Defaults to None.

    Example:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8),
        ...                           keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("sgd", "mse")
        >>> cb = dst.callbacks.SNFS(update_freq=2, seed=0)
        >>> h = model.fit(np.ones((16, 8)), np.ones((16, 4)), epochs=2, verbose=0,
        ...               callbacks=[cb])
        >>> round(h.history["sparsity"].pop(), 2)
        0.5

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8),
        ...                           keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("adam", "mse")
        >>> cb = dst.callbacks.SNFS(update_freq=2, momentum=0.9, seed=0)
        >>> h = model.fit(np.ones((32, 8)), np.ones((32, 4)), epochs=2, verbose=0, callbacks=[cb])
        >>> round(h.history["sparsity"][-1], 2)
        0.5
    """

    needs_gradients = True
    supports_blocks = False
    #: Redistributing the regrowth across weights changes each weight's count,
    #: which N:M masks fix.
    supports_n_m = False

    def __init__(self, *, update_freq: int = 100, drop_fraction: float = 0.3,
                 drop_fraction_schedule: str | Callable[[int], float] = "cosine",
                 drop_fraction_anchor: str = "begin", grow_candidates: str = "after_drop",
                 momentum: float = 0.9, begin_step: int = 0,
                 end_step: int | float | None = 0.75, seed: int | None = None):
        self.momentum = as_float(momentum, "momentum", type(self).__name__,
                                 low=0.0, high=1.0, high_open=True)
        super().__init__(update_freq=update_freq, drop_fraction=drop_fraction,
                         drop_fraction_schedule=drop_fraction_schedule,
                         drop_fraction_anchor=drop_fraction_anchor,
                         grow_candidates=grow_candidates, begin_step=begin_step,
                         end_step=end_step, seed=seed)
        self.momenta: list = []  # one keras.Variable per target, set by `bind`

    def prepare(self, model: keras.Model) -> None:
        """Gives each sparse weight its momentum buffer, saved with its mask,
        before a `BackupAndRestore` loads its checkpoint into it."""
        with _compat.strategy_scope(model):
            for t in dynamic_targets(model):
                t.mask_constraint.state(_MOMENTUM, t.variable.dtype)

    def bind(self, model: keras.Model, total_steps: int | None = None,
             first_step: int = 0, optimizer: keras.optimizers.Optimizer | None = None,
             **kwargs: Any) -> None:
        super().bind(model, total_steps, first_step, optimizer, **kwargs)
        self.momenta = []
        with _compat.strategy_scope(model):
            for t in self.targets:
                momentum = t.mask_constraint.state(_MOMENTUM, t.variable.dtype)
                if not t.mask_constraint.restored(_MOMENTUM):  # a new run starts at 0
                    momentum.assign(np.zeros(t.shape, t.variable.dtype))
                self.momenta.append(momentum)

    def state_variables(self) -> list:
        """The mask state, plus each weight's momentum buffer."""
        return super().state_variables() + [
            (t.layer, [m]) for t, m in zip(self.targets, self.momenta)]

    def observe(self, step: Array, grads: dict) -> dict:
        """m ← β·m + (1 − β)·g (kept where g is not finite); the update sees m."""
        ops = keras.ops
        out = {}
        for index, grad in grads.items():
            if grad is None:
                continue
            variable = self.momenta[index]
            old = variable.value
            grad = ops.cast(ops.convert_to_tensor(grad), old.dtype)
            new = ops.where(ops.isfinite(grad),
                            self.momentum * old + (1.0 - self.momentum) * grad, old)
            variable.assign(new)
            out[index] = new
        return out

    def step_value(self, step: int, index: int) -> int:
        """f(t) in units of 2^-24 (the drop counts depend on the active counts,
        which `plan` reads)."""
        return fraction_units(self.drop_fraction_at(step))

    def plan(self, kit: Kit, values: list, weights: list, masks: list, grads: list) -> list:
        """(drop, grow) of every weight: see the class docstring."""
        xp = kit.xp
        after_drop = self.grow_candidates == "after_drop"
        drops, caps, scores = [], [], []
        for mask, grad in zip(masks, grads):
            size = math.prod(mask.shape)
            active = kit.cast(kit.count(mask), "int32")
            drop = fraction_count(kit, values[0], active)
            if not after_drop:
                drop = xp.minimum(drop, size - active)
            drops.append(drop)
            caps.append(size - active + (drop if after_drop else 0))
            magnitude = xp.sum(xp.where(mask, xp.abs(grad), xp.zeros_like(grad)))
            scores.append(kit.cast(magnitude, "float32")
                          / kit.cast(xp.maximum(active, 1), "float32"))
        total = drops[0]
        for drop in drops[1:]:
            total = total + drop
        grows = _split(kit, total, xp.stack(scores), xp.stack(caps))
        return [(drop, grows[i]) for i, drop in enumerate(drops)]

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        xp = kit.xp
        drop, grow = value
        dropped = kit.select(self.drop_scores(kit, weight, mask, grad), mask, drop, salt(0))
        kept = xp.logical_and(mask, xp.logical_not(dropped))
        candidates = xp.logical_not(kept if self.grow_candidates == "after_drop" else mask)
        grown = kit.select(self.grow_scores(kit, weight, mask, grad), candidates, grow, salt(1),
                           largest=True)
        return xp.logical_or(kept, grown)

    def grow_scores(self, kit: Kit, weight: Array, mask: Array,
                    grad: Array | None) -> Array | None:
        return kit.xp.abs(grad)  # `grad` is the momentum (`observe`)

    def expected_active(self, index: int, old: np.ndarray, step: int) -> int:
        """Each weight's count changes; the base checks that the sum of these,
        the total, is unchanged."""
        return int(old.sum())


def _split(kit, total, scores, caps):
    """Integers g (int32 [n]) with Σ g = total and 0 <= g <= caps, in
    proportion to `scores` (the rounding rule of `SNFS`). Needs Σ caps >= total."""
    xp = kit.xp

    def isum(x):
        return kit.cast(xp.sum(x), "int32")

    n = int(scores.shape[0])
    index = xp.arange(n)
    given = kit.cast(xp.zeros((n,)), "int32")
    for _ in range(n):  # each round closes a weight or gives everything
        left = total - isum(given)
        room = caps - given
        open_ = room > 0
        weights = xp.where(open_, scores, xp.zeros_like(scores))
        weights = xp.where(xp.sum(weights) > 0, weights,
                           xp.where(open_, kit.cast(room, "float32"), xp.zeros_like(scores)))
        mass = xp.sum(weights)
        quota = kit.cast(left, "float32") * weights / xp.maximum(mass, np.float32(1e-30))
        floor = xp.floor(quota)
        base = kit.cast(floor, "int32")
        extra = xp.maximum(left - isum(base), 0)
        fraction = quota - floor
        ahead = xp.logical_or(fraction[None, :] > fraction[:, None],
                              xp.logical_and(fraction[None, :] == fraction[:, None],
                                             index[None, :] < index[:, None]))
        rank = xp.sum(kit.cast(xp.logical_and(ahead, open_[None, :]), "int32"), axis=1)
        want = base + kit.cast(xp.logical_and(open_, rank < extra), "int32")
        given = given + xp.minimum(want, room)
    # Float shortfalls only: the rest in weight order, up to each weight's room.
    left = total - isum(given)
    room = caps - given
    before = xp.cumsum(room) - room
    return given + xp.minimum(xp.maximum(left - before, 0), room)


# The name of the momentum buffer in each weight's `MaskConstraint.state`.
_MOMENTUM = "snfs_momentum"
