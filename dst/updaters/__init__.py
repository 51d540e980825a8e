"""Mask-update algorithms as plain objects, for custom training loops.

Example loop::

    updater = dst.updaters.RigL(update_freq=100, end_step=3000, seed=0)
    updater.bind(model)
    for step, (x, y) in enumerate(dataset):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        updater.update(step, grads)   # grads only needed by RigL

The callbacks in `dst.callbacks` wrap these for `model.fit`. Each updater is
registered by name (`register`, `get`); every registered name is also a
callback: `dst.callbacks.get(name, **kwargs)`.
"""

from dst.updaters.base import Updater
from dst.updaters.fixed import FixedMasks
from dst.updaters.granet import GraNet
from dst.updaters.magnitude import MagnitudePruning
from dst.updaters.registry import get, register
from dst.updaters.rigl import RigL
from dst.updaters.set import SET
from dst.updaters.srigl import SRigL

__all__ = ["FixedMasks", "GraNet", "MagnitudePruning", "RigL", "SET", "SRigL", "Updater", "get", "register"]
