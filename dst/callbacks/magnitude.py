"""`MagnitudePruning` callback: gradual magnitude pruning in `model.fit`."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.base import DSTCallback

__all__ = ["MagnitudePruning"]


class MagnitudePruning(DSTCallback):
    """Prunes gradually to `final_sparsity` (Zhu & Gupta 2017).

    The schedule is TF-MOT's `PolynomialDecay`; each weight keeps exactly its
    share of largest-magnitude entries (see `dst.updaters.MagnitudePruning`).
    Works on a dense model: masks are attached when training begins.

    Args:
        final_sparsity: target sparsity in [0, 1).
        initial_sparsity: sparsity at `begin_step`. Defaults to 0.0.
        begin_step: first pruning step. Defaults to 0.
        end_step: step at which `final_sparsity` is reached: an int, a float
            in (0, 1] (fraction of this fit's steps) or None (end of fit).
            Defaults to None.
        update_freq: steps between pruning steps. Defaults to 100.
        power: schedule exponent. Defaults to 3.
        distribution: "uniform", "er", "erk". Defaults to "uniform".
        seed: seed for tie-breaking. Defaults to None.
        optimizer: the optimizer that steps the weights, when `train_step`
            does not use `model.optimizer`. Defaults to None.
        verbose: unused, kept for Keras' callback convention. Defaults to 0.

    Example:
    >>> import numpy as np, keras, dst
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
    >>> model.compile("adam", "mse")
    >>> cb = dst.callbacks.MagnitudePruning(0.8, update_freq=1, end_step=3)
    >>> _ = model.fit(np.ones((40, 8)), np.ones((40, 10)), batch_size=8, verbose=0, callbacks=[cb])
    >>> round(dst.sparsity(model), 2)
    0.8
    """

    def __init__(self, final_sparsity, *, initial_sparsity=0.0, begin_step=0, end_step=None,
                 update_freq=100, power=3, distribution="uniform", seed=None, optimizer=None,
                 verbose=0):
        self._args = dict(final_sparsity=final_sparsity, initial_sparsity=initial_sparsity,
                          begin_step=begin_step, end_step=end_step, update_freq=update_freq,
                          power=power, distribution=distribution, seed=seed)
        super().__init__(updaters.MagnitudePruning(**self._args), optimizer=optimizer,
                         verbose=verbose)
