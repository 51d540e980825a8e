"""`SET` callback: Sparse Evolutionary Training in `model.fit`."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.base import DSTCallback

__all__ = ["SET"]


class SET(DSTCallback, updater=updaters.SET):
    """Drops the weakest connections and regrows as many at random.

    Mocanu et al. 2018, "Scalable training of artificial neural networks with
    adaptive sparse connectivity inspired by network science". See
    `dst.updaters.SET` for the exact rule, `DSTCallback` for how it runs in
    `fit`. The model must be sparsified first (`dst.sparsify`). Takes the
    arguments of `dst.updaters.SET`, plus `optimizer` and `verbose`.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("adam", "mse")
        >>> cb = dst.callbacks.SET(update_freq=2, seed=0)
        >>> h = model.fit(np.ones((32, 8)), np.ones((32, 4)), epochs=2, verbose=0, callbacks=[cb])
        >>> round(h.history["sparsity"][-1], 2)
        0.5
    """
