"""FixedMasks: static sparse training, with the masks enforced on every path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from dst._select import Array, Kit
from dst.schedules import UpdateSteps
from dst.updaters.base import Updater
from dst.updaters.registry import register

__all__ = ["FixedMasks"]


@register("fixed")
class FixedMasks(Updater):
    """Never changes a mask; keeps every write path of training masked.

    The optimizer's constraint pass already zeroes masked weights after each
    step. What it cannot reach is the optimizer's EMA (`use_ema=True`), whose
    copies are averaged from the weights *before* the constraint, and which
    overwrite the weights every `ema_overwrite_frequency` steps and at the end
    of `fit`. Bound through `dst.callbacks.FixedMasks`, this updater runs
    dst's sparse step, which keeps those copies exactly 0 where masked, and
    zeroes masked entries written since the last step when `fit` starts.

    Args:
        seed: unused (no draws are made), kept for the common signature.
            Defaults to None.

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

    def __init__(self, *, seed: int | None = None):
        super().__init__(update_freq=1, begin_step=0, end_step=0, seed=seed)

    def bind(self, model: keras.Model, total_steps: int | None = None, first_step: int = 0,
             optimizer: keras.optimizers.Optimizer | None = None, **kwargs: Any) -> None:
        super().bind(model, total_steps, first_step, optimizer, **kwargs)
        self.schedule = UpdateSteps(0, -1, 1)  # no step is an update step

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        return mask
