"""Callbacks that update masks during `model.fit`, one per registered updater."""

from typing import Any

from dst import updaters
from dst.callbacks.base import DSTCallback, callback_class
from dst.callbacks.fixed import FixedMasks
from dst.callbacks.granet import GraNet
from dst.callbacks.magnitude import MagnitudePruning
from dst.callbacks.rigl import RigL
from dst.callbacks.set import SET
from dst.callbacks.srigl import SRigL
from dst.updaters import registry


def get(identifier: str | dict | DSTCallback, **kwargs: Any) -> DSTCallback:
    """Returns a ready callback: built by name, from a config, or as given.

    Keras' `get()` convention. A name is any name registered with
    `dst.updaters.register` ("fixed", "magnitude", "set", "rigl", or your
    own): the callback wraps that updater, built with `kwargs`.

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
        >>> get({"class_name": "set", "config": cb.get_config()}).updater.update_freq
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


__all__ = ["DSTCallback", "FixedMasks", "GraNet", "MagnitudePruning", "RigL", "SET", "SRigL", "get"]
