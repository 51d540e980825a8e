"""`GradientAccumulation`: grow scores from the dense gradients of the n steps
up to each update, as the SRigL code's `grad_accumulation_n` does.

Semantics (those of the SRigL code, `rigl_scheduler.py`): the `grad` that
`grow_scores` sees at update step U is

    (g[U − n + 1] + ... + g[U]) / n,

the mean of the dense gradients of the n optimizer steps up to and including
U (g[t]: the gradient `needs_gradients` passes at step t, the one of the
global batch: summed over replicas, unscaled under mixed precision, not
clipped). Only applied steps count: a step the loss scaler skips is not one
of the n. Where fewer than n steps lie between the start of a `fit` (or the
previous update) and U, the sum runs over those and is still divided by n.
`n = 1` is the single-batch gradient, computed as before (no state, no
extra op).

Cost: the sum is kept in one variable per weight (`MaskConstraint.state`,
saved with the mask, so a `BackupAndRestore` checkpoint taken inside a
window resumes exactly). It is written only by the update program, which
`dst.callbacks` runs on the calls whose steps may fall in a window; the
steps in between run the lean program, which never reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from dst import _compat
from dst._model import dynamic_targets
from dst._validate import as_int

if TYPE_CHECKING:
    from dst.updaters.base import Updater

    _Base = Updater
else:
    _Base = object

__all__ = ["GradientAccumulation"]

# The name of the running sum in each weight's `MaskConstraint.state`.
_SUM = "grad_accumulation"
# Farther than any step: "no update ahead".
_FAR = 2**30


class GradientAccumulation(_Base):
    """Mixin of the updaters that grow by gradient (RigL, SRigL, GraNet).

    Placed before the updater's base class; the subclass's constructor calls
    `_set_accumulation(n)` after the base's.
    """

    grad_accumulation_n: int = 1

    def _set_accumulation(self, n: Any) -> None:
        who = type(self).__name__
        n = as_int(n, "grad_accumulation_n", who, minimum=1)
        if n > self.update_freq:
            raise ValueError(
                f"`grad_accumulation_n` must be at most `update_freq` ({self.update_freq}) "
                f"for {who}: the windows of two updates would overlap. Received: "
                f"grad_accumulation_n={n}"
            )
        self.grad_accumulation_n = n
        self.accumulators: list = []  # one keras.Variable per target, set by `bind`

    def prepare(self, model: keras.Model) -> None:
        """Gives each sparse weight its running sum (n > 1), saved with its
        mask, before a `BackupAndRestore` loads its checkpoint into it."""
        super().prepare(model)
        if self.grad_accumulation_n > 1:
            with _compat.strategy_scope(model):
                for t in dynamic_targets(model):
                    t.mask_constraint.state(_SUM, t.variable.dtype)

    def bind(self, model: keras.Model, total_steps: int | None = None,
             first_step: int = 0, optimizer: keras.optimizers.Optimizer | None = None,
             **kwargs: Any) -> None:
        super().bind(model, total_steps, first_step, optimizer, **kwargs)
        self.accumulators = []
        if self.grad_accumulation_n == 1:
            return
        with _compat.strategy_scope(model):
            for t in self.targets:
                total = t.mask_constraint.state(_SUM, t.variable.dtype)
                if not t.mask_constraint.restored(_SUM):  # a new run starts at 0
                    total.assign(np.zeros(t.shape, t.variable.dtype))
                self.accumulators.append(total)

    def state_variables(self) -> list:
        """The mask state, plus each weight's running sum (n > 1)."""
        return super().state_variables() + [
            (t.layer, [s]) for t, s in zip(self.targets, self.accumulators)]

    def accumulate(self, step: Any, grads: Mapping, is_update: Any) -> dict:
        """Adds g / n to each running sum in a window and returns the sums;
        resets them after an update step (see the module)."""
        n = self.grad_accumulation_n
        if n == 1:
            return dict(grads)
        ops = keras.ops
        inside = self._steps_to_update(step) < n
        out = dict(grads)
        for index, grad in grads.items():
            if grad is None:
                continue
            variable = self.accumulators[index]
            old = variable.value
            total = ops.where(inside, old + ops.cast(grad, old.dtype) / float(n), old)
            variable.assign(ops.where(is_update, ops.zeros_like(old), total))
            out[index] = total
        return out

    def _steps_to_update(self, step: Any) -> Any:
        """Steps from `step` to the next update step (0 at one; large after
        the last): on the host for an int, else an int32 tensor read relative
        to the schedule's origin (as `Engine._is_update_tensor`)."""
        schedule = self._schedule()
        if isinstance(step, int | np.integer):
            following = schedule.next_update(int(step))
            return _FAR if following is None else following - int(step)
        ops = keras.ops
        at = self._relative(step)
        begin, end = schedule.begin - self.origin, schedule.end - self.origin
        first = ops.maximum(at, begin)
        grid = begin + ops.floor_divide(first - begin + schedule.freq - 1,
                                        schedule.freq) * schedule.freq
        following = ops.where(grid <= end, grid, _FAR)
        if schedule.include_end:
            following = ops.minimum(following, ops.where(at <= end, end, _FAR))
        return following - at
