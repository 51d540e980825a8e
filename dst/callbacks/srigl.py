"""`SRigL` callback: RigL with constant fan-in in `model.fit`."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.rigl import RigL

__all__ = ["SRigL"]


class SRigL(RigL, updater=updaters.SRigL):
    """RigL with constant fan-in and neuron ablation (Lasby et al. 2024).

    Takes the arguments of `dst.updaters.SRigL`, plus `optimizer` and
    `verbose`. Masks are made constant fan-in when training begins.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("sgd", "mse")
        >>> cb = dst.callbacks.SRigL(update_freq=1, drop_fraction=0.5, seed=0)
        >>> _ = model.fit(np.ones((8, 8)), np.ones((8, 4)), epochs=2, verbose=0, callbacks=[cb])
        >>> fans = dst.get_masks(model)[model.layers[0].kernel.path].sum(axis=0)
        >>> len(set(fans.tolist()) - {0})  # one fan-in for every unit not ablated
        1
    """
