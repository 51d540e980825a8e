"""RigL: SET, but grow where the dense gradient is largest."""

from __future__ import annotations

from collections.abc import Callable

from dst._select import Array, Kit
from dst.updaters.accumulation import GradientAccumulation
from dst.updaters.registry import register
from dst.updaters.set import SET

__all__ = ["RigL"]


@register("rigl")
class RigL(GradientAccumulation, SET):
    """Rigging the Lottery (Evci et al. 2020).

    Exactly SET's update, except that the k connections grown are the
    inactive ones with the largest |∂L/∂W| of the dense gradient: that of the
    current batch, or with `grad_accumulation_n=n` the mean of the dense
    gradients of the n steps up to and including the update step (the SRigL
    code's `grad_accumulation_n`; see `dst.updaters.accumulation`).

    Choice: the optimizer step of an update iteration is applied (as the SET
    reference does); the RigL reference skips it. The gradient used is the one
    of that batch, taken before the step.

    Args:
        update_freq: steps between updates. Defaults to 100.
        drop_fraction: SET's α. Defaults to 0.3.
        drop_fraction_schedule: SET's. Defaults to "cosine".
        drop_fraction_anchor: SET's. Defaults to "begin".
        grow_candidates: SET's. Defaults to "after_drop".
        grad_accumulation_n: the number of steps whose dense gradients are
            averaged into the grow scores, in [1, update_freq]. Defaults to 1
            (the gradient of the update step's batch alone).
        begin_step: first update step. Defaults to 0.
        end_step: last step that may update. Defaults to 0.75.
        seed: seed for the tie-breaks. Defaults to None.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("sgd", "mse")
        >>> cb = dst.callbacks.RigL(update_freq=1, drop_fraction=0.5, seed=0)
        >>> h = model.fit(np.ones((8, 8)), np.ones((8, 4)), epochs=2, verbose=0, callbacks=[cb])
        >>> sorted(k for k in h.history if k != "loss")
        ['itop', 'mask_churn', 'sparsity']
        >>> cb = dst.callbacks.RigL(update_freq=4, grad_accumulation_n=2, seed=0)
        >>> h = model.fit(np.ones((32, 8)), np.ones((32, 4)), epochs=1, verbose=0, callbacks=[cb])
        >>> round(h.history["sparsity"][-1], 2)
        0.5
    """

    needs_gradients = True

    def __init__(self, *, update_freq: int = 100, drop_fraction: float = 0.3,
                 drop_fraction_schedule: str | Callable[[int], float] = "cosine",
                 drop_fraction_anchor: str = "begin", grow_candidates: str = "after_drop",
                 grad_accumulation_n: int = 1, begin_step: int = 0,
                 end_step: int | float | None = 0.75, seed: int | None = None):
        super().__init__(update_freq=update_freq, drop_fraction=drop_fraction,
                         drop_fraction_schedule=drop_fraction_schedule,
                         drop_fraction_anchor=drop_fraction_anchor,
                         grow_candidates=grow_candidates, begin_step=begin_step,
                         end_step=end_step, seed=seed)
        self._set_accumulation(grad_accumulation_n)

    def grow_scores(self, kit: Kit, weight: Array, mask: Array,
                    grad: Array | None) -> Array | None:
        return kit.xp.abs(grad)
