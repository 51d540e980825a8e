"""`MagnitudePruning` callback: gradual magnitude pruning in `model.fit`."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.base import DSTCallback

__all__ = ["MagnitudePruning"]


class MagnitudePruning(DSTCallback, updater=updaters.MagnitudePruning):
    """Prunes gradually to `final_sparsity` (Zhu & Gupta 2017).

    The schedule is TF-MOT's `PolynomialDecay`; each weight keeps exactly its
    share of largest-magnitude entries (see `dst.updaters.MagnitudePruning`).
    Works on a dense model: masks are attached when training begins. Takes
    the arguments of `dst.updaters.MagnitudePruning`, plus `optimizer` and
    `verbose`.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
        >>> model.compile("adam", "mse")
        >>> cb = dst.callbacks.MagnitudePruning(0.8, update_freq=1, end_step=3)
        >>> _ = model.fit(np.ones((40, 8)), np.ones((40, 10)), batch_size=8, verbose=0, callbacks=[cb])
        >>> round(dst.sparsity(model), 2)
        0.8
    """
