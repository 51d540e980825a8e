"""`FixedMasks` callback: static sparsity in `model.fit`, masks kept on every path."""

from __future__ import annotations

from dst import updaters
from dst.callbacks.base import DSTCallback

__all__ = ["FixedMasks"]


class FixedMasks(DSTCallback, updater=updaters.FixedMasks):
    """Trains with fixed masks and keeps them exact where the constraint can't.

    Plain `fit` on a sparsified model already keeps masked weights at 0 after
    every optimizer step. Add this callback when the optimizer uses EMA
    (`use_ema=True`): the EMA copies then stay masked, and so do the weights
    after every EMA overwrite and after `fit`. It also zeroes masked entries
    written by `set_weights` before the first step, and logs `sparsity`,
    `mask_churn` (0) and `itop` at each epoch end.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.75, "uniform", seed=0)
        >>> model.compile(keras.optimizers.Adam(use_ema=True), "mse")
        >>> _ = model.fit(np.ones((16, 8)), np.ones((16, 4)), epochs=2, verbose=0,
        ...               callbacks=[dst.callbacks.FixedMasks()])
        >>> int((model.layers[0].kernel.numpy() != 0).sum())
        8
    """
