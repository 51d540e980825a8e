"""The registry of updaters by name: `register` adds one, `get` finds one.

Every name in it is also a callback: `dst.callbacks.get(name, **kwargs)`
builds the registered updater with `kwargs` and wraps it for `model.fit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dst.updaters.base import Updater

__all__ = ["get", "register"]

U = TypeVar("U", bound=type[Updater])

# name (lower case) -> Updater subclass. The built-in updaters register
# themselves in their own modules with `@register`.
_REGISTRY: dict[str, type[Updater]] = {}


def register(name: str) -> Callable[[U], U]:
    """A class decorator that registers an `Updater` subclass under `name`.

    Names are case-insensitive (stored in lower case). Registering the same
    class again (a module or notebook cell run twice) replaces the entry;
    another class under a taken name is refused.

    Args:
        name: the name `dst.updaters.get` and `dst.callbacks.get` accept.

    Returns:
        The decorator, which returns the class unchanged.

    Raises:
        ValueError: `name` is empty or taken by another class.
        TypeError: `name` is not a string, or the decorated object is not a
            subclass of `dst.updaters.Updater`.

    Examples:
        >>> import dst
        >>> @dst.updaters.register("keep_all")
        ... class KeepAll(dst.updaters.Updater):
        ...     def new_mask(self, kit, weight, mask, grad, value, salt):
        ...         return mask
        >>> dst.updaters.get("keep_all") is KeepAll
        True
        >>> type(dst.callbacks.get("keep_all", update_freq=10)).__name__
        'KeepAll'
    """
    if not isinstance(name, str):
        raise TypeError(
            f"`name` must be a string for dst.updaters.register. Received: name={name!r}"
        )
    key = name.strip().lower()
    if not key:
        raise ValueError(
            f"`name` must not be empty for dst.updaters.register. Received: name={name!r}"
        )

    def decorator(cls: U) -> U:
        if not (isinstance(cls, type) and issubclass(cls, Updater)):
            raise TypeError(
                f"dst.updaters.register({key!r}) decorates subclasses of "
                f"dst.updaters.Updater. Received: {cls!r}"
            )
        taken = _REGISTRY.get(key)
        if taken is not None and _qualified(taken) != _qualified(cls):
            raise ValueError(
                f"dst.updaters.register: the name {key!r} is already taken by "
                f"{_qualified(taken)}; cannot register {_qualified(cls)} under it. "
                "Pick another name."
            )
        _REGISTRY[key] = cls
        return cls

    return decorator


def get(name: str) -> type[Updater]:
    """Returns the `Updater` subclass registered under `name`.

    Args:
        name: a registered name, any case: "fixed", "magnitude", "set",
            "rigl", "snfs", or one added with `dst.updaters.register`.

    Returns:
        The updater class.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.

    Examples:
        >>> import dst
        >>> dst.updaters.get("RigL") is dst.updaters.RigL
        True
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown dst updater: {name!r}. Known updaters: {names()}. Add one "
            "with the decorator @dst.updaters.register(name)."
        )
    return _REGISTRY[key]


def names() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def class_named(name: str) -> type[Updater] | None:
    """The registered updater whose class is called `name`, or None."""
    return next((cls for cls in _REGISTRY.values() if cls.__name__ == name), None)


def name_of(cls: type[Updater]) -> str | None:
    """The name `cls` is registered under, or None."""
    for key, registered in _REGISTRY.items():
        if registered is cls:
            return key
    return None


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
