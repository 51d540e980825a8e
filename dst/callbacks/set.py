"""`SET` callback: Sparse Evolutionary Training in `model.fit`."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.base import DSTCallback

__all__ = ["SET"]


class SET(DSTCallback):
    """Drops the weakest connections and regrows as many at random.

    Mocanu et al. 2018, "Scalable training of artificial neural networks with
    adaptive sparse connectivity inspired by network science". See
    `dst.updaters.SET` for the exact rule, `DSTCallback` for how it runs in
    `fit`. The model must be sparsified first (`dst.sparsify`).

    Args:
        update_freq: steps between mask updates. Defaults to 100.
        drop_fraction: fraction of active connections replaced at
            `begin_step`, in (0, 1). Defaults to 0.3.
        drop_fraction_schedule: "cosine", "linear" or "constant".
            Defaults to "cosine".
        begin_step: first update step. Defaults to 0.
        end_step: last update step: an int, or a float in (0, 1] meaning
            that fraction of this fit's steps. Defaults to 0.75.
        seed: seed of the random draws. Defaults to None.
        optimizer: the optimizer that steps the sparse weights, when
            `train_step` does not use `model.optimizer`. Defaults to None
            (`model.optimizer`).
        verbose: unused, kept for Keras' callback convention. Defaults to 0.

    Example:
    >>> import numpy as np, keras, dst
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
    >>> model.compile("adam", "mse")
    >>> cb = dst.callbacks.SET(update_freq=2, seed=0)
    >>> h = model.fit(np.ones((32, 8)), np.ones((32, 4)), epochs=2, verbose=0, callbacks=[cb])
    >>> round(h.history["sparsity"][-1], 2)
    0.5
    """

    updater_class = updaters.SET

    def __init__(self, *, update_freq=100, drop_fraction=0.3, drop_fraction_schedule="cosine",
                 begin_step=0, end_step=0.75, seed=None, optimizer=None, verbose=0):
        self._args = dict(update_freq=update_freq, drop_fraction=drop_fraction,
                          drop_fraction_schedule=drop_fraction_schedule,
                          begin_step=begin_step, end_step=end_step, seed=seed)
        super().__init__(self.updater_class(**self._args), optimizer=optimizer,
                         verbose=verbose)
