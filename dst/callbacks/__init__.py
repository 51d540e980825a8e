"""Callbacks that update masks during `model.fit`, registered by name."""

from dst.callbacks.base import DSTCallback
from dst.callbacks.fixed import FixedMasks
from dst.callbacks.magnitude import MagnitudePruning
from dst.callbacks.rigl import RigL
from dst.callbacks.set import SET

_REGISTRY = {"fixed": FixedMasks, "magnitude": MagnitudePruning, "set": SET, "rigl": RigL}


def get(identifier):
    """Returns a callback class by name, an instance as is, or one from a config.

    Args:
        identifier: "fixed", "magnitude", "set" or "rigl"; a `DSTCallback` instance;
            or a dict {"class_name": name, "config": {...}}.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.

    Example:
    >>> get("rigl").__name__
    'RigL'
    """
    if isinstance(identifier, DSTCallback):
        return identifier
    if isinstance(identifier, dict):
        return get(identifier["class_name"]).from_config(identifier.get("config", {}))
    if isinstance(identifier, str) and identifier.lower() in _REGISTRY:
        return _REGISTRY[identifier.lower()]
    raise ValueError(
        f"Unknown dst callback: {identifier!r}. Known callbacks: {sorted(_REGISTRY)}."
    )


__all__ = ["DSTCallback", "FixedMasks", "MagnitudePruning", "RigL", "SET", "get"]
