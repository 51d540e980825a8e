"""`GraNet` callback: gradual pruning with neuroregeneration in `model.fit`."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.magnitude import MagnitudePruning

__all__ = ["GraNet"]


class GraNet(MagnitudePruning, updater=updaters.GraNet):
    """Gradual magnitude pruning that also regrows by gradient (Liu et al. 2021).

    Takes the arguments of `dst.updaters.GraNet`, plus `optimizer` and
    `verbose`. A model without masks is sparsified to `initial_sparsity`
    when training begins.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
        >>> model.compile("adam", "mse")
        >>> cb = dst.callbacks.GraNet(0.8, update_freq=1, end_step=3, seed=0)
        >>> _ = model.fit(np.ones((40, 8)), np.ones((40, 10)), batch_size=8, verbose=0, callbacks=[cb])
        >>> round(dst.sparsity(model), 2)
        0.8
    """
