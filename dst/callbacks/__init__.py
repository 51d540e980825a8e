"""Callbacks that update masks during `model.fit`, one per registered updater.

Each is generated from the registry (`callback_class`): `dst.callbacks.RigL`
is the callback of `dst.updaters.RigL`, and an updater registered with
`dst.updaters.register` gets its callback under its class name here too
(`dst.callbacks.MyRule`), or by name with `get`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dst import updaters
from dst.callbacks.base import DSTCallback, callback_class
from dst.updaters import registry

if TYPE_CHECKING:  # type checkers see the generated classes as DSTCallback subclasses
    class FixedMasks(DSTCallback): ...
    class MagnitudePruning(DSTCallback): ...
    class GraNet(MagnitudePruning): ...
    class SET(DSTCallback): ...
    class RigL(SET): ...
    class SNFS(SET): ...
    class SRigL(RigL): ...
    class CHT(SET): ...
else:
    FixedMasks = callback_class(updaters.FixedMasks)
    MagnitudePruning = callback_class(updaters.MagnitudePruning)
    GraNet = callback_class(updaters.GraNet)
    SET = callback_class(updaters.SET)
    RigL = callback_class(updaters.RigL)
    SNFS = callback_class(updaters.SNFS)
    SRigL = callback_class(updaters.SRigL)
    CHT = callback_class(updaters.CHT)


def __getattr__(name: str) -> type[DSTCallback]:
    """The callback of any registered updater, by its class name."""
    updater = registry.class_named(name)
    if updater is not None:
        return callback_class(updater)
    raise AttributeError(f"module 'dst.callbacks' has no attribute {name!r}")


def get(identifier: str | dict | DSTCallback, **kwargs: Any) -> DSTCallback:
    """Returns a ready callback: built by name, from a config, or as given.

    Keras' `get()` convention. A name is any name registered with
    `dst.updaters.register` ("fixed", "magnitude", "set", "rigl", "snfs",
    or your own): the callback wraps that updater, built with `kwargs`.

    Args:
        identifier: a registered name (any case); a dict
            {"class_name": name, "config": {...}} (the output of a callback's
            `get_config`); or a `DSTCallback` instance, returned as is.
        **kwargs: the arguments of the named updater, plus `optimizer` and
            `verbose`; only with a name.

    Returns:
        A `DSTCallback` instance (`dst.callbacks.RigL` for "rigl", ...).

    Raises:
        ValueError: for an unknown name (the message lists the known ones),
            or `kwargs` with an instance or a config.
        TypeError: for arguments the named updater does not take.

    Examples:
        >>> import dst
        >>> cb = get("rigl", update_freq=50, seed=0)
        >>> type(cb).__name__, cb.updater.update_freq
        ('RigL', 50)
        >>> get({"class_name": "rigl", "config": cb.get_config()}).updater.update_freq
        50
    """
    if isinstance(identifier, DSTCallback) or isinstance(identifier, dict):
        if kwargs:
            raise ValueError(
                "dst.callbacks.get takes arguments only with a name; received "
                f"{type(identifier).__name__} {identifier!r} and {sorted(kwargs)}."
            )
        if isinstance(identifier, DSTCallback):
            return identifier
        if "class_name" not in identifier:
            raise ValueError(
                "A config dict for dst.callbacks.get needs 'class_name' (and "
                f"'config'). Received: {identifier!r}"
            )
        return get(identifier["class_name"], **identifier.get("config", {}))
    try:
        updater = updaters.get(identifier)
    except ValueError:
        raise ValueError(
            f"Unknown dst callback: {identifier!r}. Known callbacks: {registry.names()}. "
            "Add one by registering an updater with @dst.updaters.register(name)."
        ) from None
    return callback_class(updater)(**kwargs)


__all__ = ["CHT", "DSTCallback", "FixedMasks", "GraNet", "MagnitudePruning", "RigL", "SET", "SNFS", "SRigL",
           "get"]
