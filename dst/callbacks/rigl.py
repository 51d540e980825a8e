"""`RigL` callback: Rigging the Lottery in `model.fit`."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.set import SET

__all__ = ["RigL"]


class RigL(SET, updater=updaters.RigL):
    """SET, but regrows where the dense gradient of the current batch is largest.

    Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners".
    Takes the arguments of `dst.updaters.RigL` (SET's), plus `optimizer` and
    `verbose`. The dense gradient is copied from the compiled train step on
    update steps only; see `DSTCallback`. The optimizer step of an update
    iteration is applied (the RigL reference skips it).

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
