"""RigL: SET, but grow where the dense gradient is largest."""

from __future__ import annotations

from dst._select import Array, Kit
from dst.updaters.registry import register
from dst.updaters.set import SET

__all__ = ["RigL"]


@register("rigl")
class RigL(SET):
    """Rigging the Lottery (Evci et al. 2020).

    Exactly SET's update, except that the k connections grown are the
    inactive ones with the largest |∂L/∂W| of the dense gradient of the
    current batch. Arguments are SET's.

    Choice: the optimizer step of an update iteration is applied (as the SET
    reference does); the RigL reference skips it. The gradient used is the one
    of that batch, taken before the step.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("sgd", "mse")
        >>> cb = dst.callbacks.RigL(update_freq=1, drop_fraction=0.5, seed=0)
        >>> h = model.fit(np.ones((8, 8)), np.ones((8, 4)), epochs=2, verbose=0, callbacks=[cb])
        >>> sorted(k for k in h.history if k != "loss")
        ['itop', 'mask_churn', 'sparsity']
    """

    needs_gradients = True

    def grow_scores(self, kit: Kit, weight: Array, mask: Array,
                    grad: Array | None) -> Array | None:
        return kit.xp.abs(grad)
