"""`DSTCallback`: runs an updater's sparse step inside `model.fit`."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, ClassVar

import keras
import numpy as np

from dst import _compat, backend
from dst.updaters.base import Updater

__all__ = ["DSTCallback"]


class DSTCallback(keras.callbacks.Callback):
    """Updates masks inside the optimizer step of `model.fit`.

    The mask update is part of the compiled train step: it runs inside the
    optimizer's `apply`, right after the weights are stepped, when the
    optimizer's own step count is an update step (see `dst.updaters.Updater`).
    So the update happens at exactly the scheduled steps whatever
    `steps_per_execution` is, with the all-reduced gradient under
    `tf.distribute.MirroredStrategy`, with the unscaled gradient under mixed
    precision (a step the loss scaler skips is not a step), and under
    `jit_compile=True`. No host synchronization happens per batch.

    The optimizer is patched only while Keras calls the train function, so
    between batches, after `fit` and after an exception inside `fit`, it is
    exactly as it was. At each epoch end `sparsity`, `mask_churn` (fraction of
    the epoch-start active connections that are inactive at epoch end) and
    `itop` (fraction of all maskable weights active at least once since
    `dst.sparsify`, Liu et al. 2021) are added to `logs`.

    A `train_step` that steps its own optimizer (e.g. a GAN with one
    optimizer per sub-model) must name it: `RigL(..., optimizer=opt)`. If the
    optimizer dst drives does not advance during the first batch, `fit` stops
    with an error instead of training with masks that never change.

    `DSTCallback(updater)` wraps any updater instance. The named callbacks
    (`SET`, `RigL`, `MagnitudePruning`, `FixedMasks`, and one per name added
    with `dst.updaters.register`, built by `dst.callbacks.get`) are
    subclasses declared with `class RigL(DSTCallback, updater=updaters.RigL)`:
    they take exactly the arguments of their updater's constructor, plus
    `optimizer` and `verbose`, and `get_config` returns those arguments.

    Args:
        updater: a `dst.updaters.Updater` instance (for `DSTCallback`
            itself; the named subclasses take their updater's arguments).
        optimizer: the optimizer that steps the sparse weights. Defaults to
            `model.optimizer`.
        verbose: unused, kept for Keras' callback convention. Defaults to 0.

    Examples:
        >>> import dst
        >>> cb = dst.callbacks.DSTCallback(dst.updaters.SET(update_freq=10, seed=0))
        >>> cb.updater.update_freq
        10
    """

    updater_class: ClassVar[type[Updater] | None] = None
    # State of one `fit`, reset by `on_train_begin`.
    _function: _SparseTrainFunction | None
    _epoch: int
    _epoch_masks: list[np.ndarray] | None
    _start: tuple[int, float | None] | None
    _skipped_seen: list[int]

    def __init__(self, *args: Any, optimizer: keras.optimizers.Optimizer | None = None,
                 verbose: int = 0,
                 **kwargs: Any) -> None:
        super().__init__()
        cls = type(self)
        if cls.updater_class is None:
            self._args: dict[str, Any] | None = None
            self.updater = _given_updater(cls.__name__, args, kwargs)
        else:
            bound = _bind(cls, cls.updater_class, args, kwargs)
            self.updater = cls.updater_class(*bound.args, **bound.kwargs)
            self._args = _arguments(bound)
        self.optimizer = optimizer
        self.verbose = verbose

    def __init_subclass__(cls, *, updater: type[Updater] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if updater is None:
            if "__init__" in vars(cls):  # its own constructor: its own signature
                cls.__signature__ = None
            return
        if not (isinstance(updater, type) and issubclass(updater, Updater)):
            raise TypeError(
                f"`updater` must be a subclass of dst.updaters.Updater for the callback "
                f"class {cls.__name__}. Received: updater={updater!r}"
            )
        params = list(inspect.signature(updater).parameters.values())
        clash = [p.name for p in params if p.name in ("optimizer", "verbose")]
        if clash:
            raise TypeError(
                f"{updater.__name__}'s constructor takes {clash}, which its callback "
                f"{cls.__name__} takes itself; rename that argument of the updater."
            )
        cls.updater_class = updater
        var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        cls.__signature__ = inspect.Signature(
            [p for p in params if p not in var_kw] + _CALLBACK_PARAMETERS + var_kw)
        cls.__doc__ = _document(cls, updater)
        _BY_UPDATER.setdefault(updater, cls)

    # -- Keras hooks ------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._function = None
        self._epoch = 0
        self._epoch_masks = None
        self._start = None
        self._skipped_seen = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._epoch_masks = None

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        function = self._function if self._function is not None else self._bind(batch)
        if self._epoch_masks is None:
            self._epoch_masks = [t.mask_constraint.numpy() for t in self.updater.targets]
        function.armed = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._start is not None:
            self._check_advanced()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._function is None:
            return
        self._warn_skipped()
        if logs is None:
            return
        targets = self.updater.targets
        masks = [t.mask_constraint.numpy() for t in targets]
        before = self._epoch_masks or masks
        active_before = sum(int(m.sum()) for m in before)
        left = sum(int((b & ~m).sum()) for b, m in zip(before, masks))
        size = sum(m.size for m in masks)
        logs["sparsity"] = 1.0 - sum(int(m.sum()) for m in masks) / size
        logs["mask_churn"] = left / active_before if active_before else 0.0
        logs["itop"] = sum(int(ever.sum()) for t in targets
                           if (ever := t.mask_constraint.ever_active) is not None) / size

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._function is not None:
            self._warn_skipped()
            model = self.model  # (on JAX, reading it syncs the trained state)
            backend.release(model, self._function.state)
            model.train_function = None  # the next fit traces a plain step
            self._function = None

    # -- helpers ------------------------------------------------------------
    def _bind(self, batch: int) -> _SparseTrainFunction:
        optimizer = self.optimizer if self.optimizer is not None else self.model.optimizer
        inner = _compat.inner_optimizer(optimizer) if optimizer is not None else None
        step = _read(inner.iterations) if inner is not None else 0
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        total = steps * epochs if steps and epochs else None
        first = step - self._epoch * (steps or 0) - batch  # resumed runs start later
        self.updater.bind(self.model, total, first, optimizer)
        self.updater.state.mask_ema([t.mask_constraint.mask for t in self.updater.targets])
        for t in self.updater.targets:  # weights written since the last step
            t.mask_constraint.zero_masked()
        self._skipped_seen = [_read(v) for v in self.updater.skipped]
        scale = getattr(optimizer, "dynamic_scale", None)
        self._start = (step, None if scale is None else _read(scale, float))
        self._function = _SparseTrainFunction(self.model, optimizer, self.updater)
        self.model.train_function = self._function
        return self._function

    def _check_advanced(self) -> None:
        if self._start is None:
            return
        step, scale = self._start
        self._start = None
        optimizer = self.updater.optimizer
        self.model  # noqa: B018 - on JAX, reading it syncs the trained state
        now = _read(_compat.inner_optimizer(optimizer).iterations)
        moved = now != step or (scale is not None
                                and _read(optimizer.dynamic_scale, float) != scale)
        if not moved:
            raise RuntimeError(
                f"{type(self).__name__}: optimizer {optimizer.name!r} did not step during "
                "the first batch, so dst's mask updates would never run. If your "
                "train_step applies gradients with its own optimizer, pass it: "
                f"{type(self).__name__}(..., optimizer=that_optimizer)."
            )

    def _warn_skipped(self) -> None:
        counts = [_read(v) for v in self.updater.skipped]
        for t, seen, now in zip(self.updater.targets, self._skipped_seen, counts):
            if now > seen:
                warnings.warn(
                    f"{type(self).__name__}: {now - seen} mask update(s) of '{t.path}' "
                    "were skipped because its weights or gradient were not finite "
                    "(NaN or Inf); its mask and active count are unchanged.",
                    stacklevel=2,
                )
        self._skipped_seen = counts

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments of a named callback (SET, RigL, ...): its
        updater's arguments and `verbose` (not `optimizer`, an object)."""
        if self._args is None:
            raise NotImplementedError(
                f"{type(self).__name__}(updater) has no config: it does not know the "
                "arguments its updater was built with. Build it by name instead, "
                "e.g. dst.callbacks.get('rigl', update_freq=100), to get a config."
            )
        return {**self._args, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DSTCallback:
        """A callback from `get_config`'s output: `cls(**config)`."""
        return cls(**config)


class _SparseTrainFunction:
    """Keras' train function, called with dst's sparse step hooked in.

    `armed` is set by the callback before each call. A call that finds it
    unset comes from a `fit` this callback is not part of (an earlier `fit`
    raised before `on_train_end`): it puts back a plain train function.
    """

    def __init__(self, model, optimizer, updater):
        self.model = model
        self.updater = updater
        self.state = updater.state_variables()
        self.sparse = backend.sparse_train_function(model, optimizer,
                                                    updater.as_sparse_step(), self.state)
        self.armed = False

    def __call__(self, *args):
        if self.armed:
            self.armed = False
            return self.sparse(*args)
        if backend.FUNCTIONAL:
            # On JAX the state of this call already holds dst's variables (they
            # stay registered until a dst fit ends): thread them, update nothing.
            self.model.train_function = backend.sparse_train_function(
                self.model, self.updater.optimizer, backend.SparseStep(_hold), self.state)
        else:
            self.model.train_function = None
            self.model.make_train_function()
        return self.model.train_function(*args)


def _hold(step, grads):
    """A sparse step that changes no mask (a fit without dst after a failed one)."""


def _read(variable, kind=int):
    """A scalar variable's value on the host."""
    return kind(_compat.to_numpy(variable))


# updater class -> its callback class (the first declared, else one built by
# `callback_class`).
_BY_UPDATER: dict[type[Updater], type[DSTCallback]] = {}


def callback_class(updater: type[Updater]) -> type[DSTCallback]:
    """The callback class of an updater class: the one declared for it
    (`dst.callbacks.RigL` for `dst.updaters.RigL`), else a subclass of
    `DSTCallback` of the updater's name, built once."""
    if updater not in _BY_UPDATER:
        type(updater.__name__, (DSTCallback,), {"__module__": updater.__module__},
             updater=updater)
    return _BY_UPDATER[updater]


# The keyword arguments every callback takes besides its updater's.
_CALLBACK_PARAMETERS = [
    inspect.Parameter("optimizer", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=keras.optimizers.Optimizer | None),
    inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=int),
]
DSTCallback.__signature__ = inspect.Signature(
    [inspect.Parameter("updater", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                       annotation=Updater)] + _CALLBACK_PARAMETERS)


def _given_updater(who: str, args: tuple, kwargs: dict) -> Updater:
    """The one updater instance passed to `DSTCallback(updater)`."""
    try:
        bound = inspect.signature(lambda updater: None).bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(
            f"{who} takes one updater instance (and `optimizer`, `verbose`): {err}. "
            "For an algorithm by name, use dst.callbacks.get(name, **arguments)."
        ) from None
    updater = bound.arguments["updater"]
    if not isinstance(updater, Updater):
        raise TypeError(
            f"`updater` must be a dst.updaters.Updater instance for {who}. Received: "
            f"updater={updater!r}. For an algorithm by name, use "
            "dst.callbacks.get(name, **arguments)."
        )
    return updater


def _bind(cls: type[DSTCallback], updater: type[Updater], args: tuple,
          kwargs: dict) -> inspect.BoundArguments:
    """Binds a named callback's arguments to its updater's constructor."""
    try:
        bound = inspect.signature(updater).bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(
            f"{cls.__name__}: {err}. It takes the arguments of "
            f"dst.updaters.{updater.__name__}: {inspect.signature(cls)}."
        ) from None
    bound.apply_defaults()
    return bound


def _arguments(bound: inspect.BoundArguments) -> dict[str, Any]:
    """Bound arguments as one flat {name: value} dict (**kwargs spread out)."""
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return out


def _document(cls: type, updater: type[Updater]) -> str:
    """The callback's docstring with its updater's Args section, plus its own."""
    own = inspect.cleandoc(cls.__dict__.get("__doc__") or updater.__doc__ or "")
    # The Args of the class that defines the constructor (RigL's are SET's).
    owner = next(c for c in updater.__mro__ if "__init__" in vars(c))
    args = (_section(inspect.cleandoc(owner.__doc__ or ""), "Args:")
            or _section(inspect.cleandoc(vars(owner)["__init__"].__doc__ or ""), "Args:"))
    if not args:
        args = "".join(f"    {name}: see `{updater.__qualname__}`.\n"
                       for name in inspect.signature(updater).parameters)
    args = (f"Args (those of `dst.updaters.{updater.__qualname__}`, then the callback's):\n"
            + args
            + "    optimizer: the optimizer that steps the sparse weights, when\n"
              "        `train_step` does not use `model.optimizer`. Defaults to None\n"
              "        (`model.optimizer`).\n"
              "    verbose: unused, kept for Keras' callback convention. Defaults to 0.\n")
    lines = own.splitlines()
    at = next((i for i, line in enumerate(lines) if line.strip() in ("Examples:", "Example:")),
              len(lines))
    head = "\n".join(lines[:at]).rstrip()
    tail = "\n".join(lines[at:])
    return f"{head}\n\n{args}\n{tail}".rstrip() + "\n"


def _section(doc: str, title: str) -> str:
    """The indented body of a Google-style docstring section, or ''."""
    lines = doc.splitlines()
    if title not in (line.strip() for line in lines):
        return ""
    start = [line.strip() for line in lines].index(title) + 1
    body = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        body.append(line)
    return "\n".join(body).rstrip() + "\n"
