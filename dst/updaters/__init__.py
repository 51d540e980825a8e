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

Every module of this package is imported here, so an algorithm added to the
package is one new file, `dst/updaters/<name>.py`, whose class registers
itself with `@register(name)`; it is then reachable by name and as
`dst.updaters.<ClassName>`.
"""

from __future__ import annotations

import importlib
import pkgutil

from dst.updaters.base import Updater
from dst.updaters.cht import CHT
from dst.updaters.fixed import FixedMasks
from dst.updaters.granet import GraNet
from dst.updaters.magnitude import MagnitudePruning
from dst.updaters.registry import get, register
from dst.updaters.rigl import RigL
from dst.updaters.set import SET
from dst.updaters.snfs import SNFS
from dst.updaters.srigl import SRigL

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def __getattr__(name: str) -> type[Updater]:
    """Any registered updater, by its class name."""
    from dst.updaters import registry

    found = registry.class_named(name)
    if found is not None:
        return found
    raise AttributeError(f"module 'dst.updaters' has no attribute {name!r}")


__all__ = ["CHT", "FixedMasks", "GraNet", "MagnitudePruning", "RigL", "SET", "SNFS", "SRigL", "Updater",
           "get", "register"]
