"""`SNFS` callback: sparse momentum in `model.fit`."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.base import DSTCallback

__all__ = ["SNFS"]


class SNFS(DSTCallback, updater=updaters.SNFS):
    """Prunes by magnitude, regrows by momentum, and moves connections across
    layers toward those with the largest mean momentum.

    Dettmers & Zettlemoyer 2019, "Sparse Networks from Scratch: Faster
    Training without Losing Performance". See `dst.updaters.SNFS` for the
    exact rule, `DSTCallback` for how it runs in `fit`. The model must be
    sparsified first (`dst.sparsify`). Per-layer active counts change; the
    total stays constant. Takes the arguments of `dst.updaters.SNFS`, plus
    `optimizer` and `verbose`.

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
