"""`DSTCallback`: runs an updater's sparse step inside `model.fit`."""

from __future__ import annotations

import inspect
import warnings
import weakref
from typing import Any, ClassVar

import keras
import numpy as np

from dst import _compat, backend
from dst.callbacks._docs import document as _document
from dst.callbacks._train_function import SparseTrainFunction
from dst.callbacks._train_function import read as _read
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
    `jit_compile=True`.

    Between updates a step costs what the masks cost: the train function
    holds a lean program with no conditional and no host read, and runs the
    update program only for the calls whose `steps_per_execution` window may
    hold an update step (chosen on the host; the optimizer's step is read
    back once after each such call). No batch-end hook is overridden, so
    Keras keeps dispatching callbacks asynchronously.

    The optimizer is patched only while Keras calls the train function, so
    between batches, after `fit` and after an exception inside `fit`, it is
    exactly as it was. At each epoch end `sparsity`, `mask_churn` (fraction of
    the epoch-start active connections that are inactive at epoch end) and
    `itop` (fraction of all maskable weights active at least once since
    `dst.sparsify`, Liu et al. 2021) are added to `logs`.

    A `train_step` that steps its own optimizer (e.g. a GAN with one
    optimizer per sub-model) must name it: `RigL(..., optimizer=opt)`. If the
    optimizer dst drives does not advance during the first call of the train
    function, `fit` stops with an error instead of training with masks that
    never change. Two dst callbacks in one `fit` are refused when it starts.

    Repeated fits reuse what they can: the lean program always, the update
    program when the callback (or a new one equal to it, which then takes
    over its updater; with `seed=None`, keeping its own fresh seed) has the
    same schedule from the fit's start.

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
        steps_from: what `begin_step` and an int `end_step` count from:
            "fit" (the first step of this `fit`, or of the interrupted run a
            `BackupAndRestore` resumes) or "optimizer" (the optimizer's step
            0). A float `end_step` is always a fraction of this fit's steps.
            Defaults to "fit", so a new callback in a second `fit` ramps from
            that fit's start. Counted from the fit, a schedule must fit in it:
            `fit` refuses a `begin_step` after its last step, and a pruning
            schedule whose `end_step` comes after it (when the fit's length is
            known), before anything changes.
        verbose: unused, kept for Keras' callback convention. Defaults to 0.

    Examples:
        >>> import dst
        >>> cb = dst.callbacks.DSTCallback(dst.updaters.SET(update_freq=10, seed=0))
        >>> cb.updater.update_freq
        10
    """

    updater_class: ClassVar[type[Updater] | None] = None
    # State of one `fit`, reset by `on_train_begin`.
    _function: SparseTrainFunction | None
    _epoch: int
    _epoch_masks: list[np.ndarray] | None
    _skipped_seen: list[int]

    def __init__(self, *args: Any, optimizer: keras.optimizers.Optimizer | None = None,
                 steps_from: str = "fit", verbose: int = 0,
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
        if steps_from not in STEPS_FROM:
            raise ValueError(
                f"`steps_from` must be one of {list(STEPS_FROM)} for {cls.__name__}. "
                f"Received: steps_from={steps_from!r}"
            )
        self.steps_from = steps_from
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
        clash = [p.name for p in params if p.name in ("optimizer", "steps_from", "verbose")]
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
    def set_params(self, params: dict[str, Any]) -> None:
        # Keras gives every callback its model, then the fit's params, before
        # any `on_train_begin`: a schedule that cannot fit in this fit is
        # refused before anything changes, and masks an updater adds to a
        # dense model exist by the time a `BackupAndRestore` loads its
        # checkpoint, so they are restored too.
        super().set_params(params)
        steps, epochs = (params or {}).get("steps"), (params or {}).get("epochs")
        if steps and epochs and self.steps_from == "fit":
            self.updater.check_run_length(steps * epochs)
        if isinstance(self.model, keras.Model):
            self.updater.prepare(self.model)

    # No batch-end hook is overridden: such an override turns off Keras'
    # asynchronous callback dispatch, which then blocks on every step's logs.
    # The train function itself (`SparseTrainFunction`) counts steps on the
    # host; `on_train_batch_begin` only arms it (no device read).
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Every callback of one `fit` gets the same `params` dict: a second
        # dst callback in it finds the first one registered with that dict.
        params, other = vars(self.model).get(_IN_FIT, (None, lambda: None))
        if params is self.params and other() not in (None, self):
            raise ValueError(
                f"Two dst callbacks in one fit: {type(other()).__name__} and "
                f"{type(self).__name__}. Only one can drive the masks of model "
                f"'{self.model.name}'; pass one of them (to prune and then train "
                "sparse, run two fits, one per callback)."
            )
        self.model.__dict__[_IN_FIT] = (self.params, weakref.ref(self))
        self._function = None
        self._epoch = 0
        self._epoch_masks = None
        self._skipped_seen = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._require_fit("on_epoch_begin")
        # Binding waits for the first epoch begin: every callback's
        # `on_train_begin` has run, so weights a `BackupAndRestore` loads are in.
        self._epoch = epoch
        if self._function is None:
            self._bind()
        self._epoch_masks = [t.mask_constraint.numpy() for t in self.updater.targets]

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._require_fit("on_train_batch_begin")
        if self._function is not None:
            self._function.armed = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._require_fit("on_epoch_end")
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
        self.model.__dict__.pop(_IN_FIT, None)
        if self._function is not None:
            self._warn_skipped()
            model = self.model  # (on JAX, reading it syncs the trained state)
            backend.release(model, self._function.state)
            model.train_function = None  # the next fit traces a plain step
            self._function = None

    # -- helpers ------------------------------------------------------------
    def _require_fit(self, hook: str) -> None:
        """A hook called outside `fit` (before `on_train_begin`) is an error."""
        if "_function" not in vars(self):  # (not `self.model`: on JAX it syncs)
            who = type(self).__name__
            raise RuntimeError(
                f"{who}.{hook} was called outside model.fit: a dst callback runs inside "
                f"`model.fit(callbacks=[{who}(...)])`, which calls `on_train_begin` first. "
                f"For a custom training loop, use its updater: `{who}(...).updater`, then "
                "`updater.bind(model)` and `with updater.attach(): ...` (or "
                "`updater.update(step, grads)` after each optimizer step)."
            )

    def _bind(self) -> SparseTrainFunction:
        optimizer = self.optimizer if self.optimizer is not None else self.model.optimizer
        inner = _compat.inner_optimizer(optimizer) if optimizer is not None else None
        step = _read(inner.iterations) if inner is not None else 0
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        total = steps * epochs if steps and epochs else None
        first = step - self._epoch * (steps or 0)  # resumed runs start later
        origin = first if self.steps_from == "fit" else 0
        self._adopt_equal_updater()
        self.updater.bind(self.model, total, first, optimizer, origin=origin)
        self.updater.state.mask_ema([t.mask_constraint.mask for t in self.updater.targets])
        for t in self.updater.targets:  # weights written since the last step
            t.mask_constraint.zero_masked()
        self._skipped_seen = [_read(v) for v in self.updater.skipped]
        self._function = SparseTrainFunction(self, optimizer, step)
        self.model.train_function = self._function
        return self._function

    def _adopt_equal_updater(self) -> None:
        """A new callback equal to the one of this model's last dst fit (same
        class, same arguments) takes over that callback's updater, so the fit
        can reuse its compiled update program. The two would make the same
        draws from the same seed; with `seed=None` the updater takes this
        callback's fresh seed, which compiled steps read from a variable. An
        updater that keeps state of its own every step (`observes`, SNFS) is
        not taken over."""
        last = vars(self.model).get(_LAST_UPDATER)
        mine = (type(self), self._args)
        eligible = self._args is not None and not self.updater.observes
        if (eligible and last is not None and last[0] is not self.updater
                and last[1][0] is mine[0] and _equal(last[1][1], mine[1])):
            if self._args is not None and self._args.get("seed", 0) is None:
                # seed=None: the updater takes this callback's own fresh draw
                last[0].seed, last[0]._fresh_seed = self.updater.seed, self.updater._fresh_seed
            self.updater = last[0]
        self.model.__dict__[_LAST_UPDATER] = (self.updater, mine)

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
        updater's arguments, `steps_from` and `verbose` (not `optimizer`, an
        object)."""
        if self._args is None:
            raise NotImplementedError(
                f"{type(self).__name__}(updater) has no config: it does not know the "
                "arguments its updater was built with. Build it by name instead, "
                "e.g. dst.callbacks.get('rigl', update_freq=100), to get a config."
            )
        return {**self._args, "steps_from": self.steps_from, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DSTCallback:
        """A callback from `get_config`'s output: `cls(**config)`."""
        return cls(**config)


# vars(model) key of (the updater of the model's last dst fit, (callback class, arguments))
_LAST_UPDATER = "_dst_last_updater"


def _equal(a: dict | None, b: dict | None) -> bool:
    """Whether two callbacks' arguments are equal (False where a value can't tell)."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


# vars(model) key of (params of the fit it is in, a weak reference to its dst callback)
_IN_FIT = "_dst_in_fit"


# updater class -> its callback class (the first declared, else one built by
# `callback_class`).
_BY_UPDATER: dict[type[Updater], type[DSTCallback]] = {}


def callback_class(updater: type[Updater]) -> type[DSTCallback]:
    """The callback class of an updater class, built once from the registry.

    `dst.callbacks.RigL` is `callback_class(dst.updaters.RigL)`: a subclass of
    the callback of the updater's nearest updater base that has one
    (`dst.callbacks.SET` here), else of `DSTCallback`, with the updater's
    name, constructor arguments (plus the callback's own) and docstring.
    """
    if updater not in _BY_UPDATER:
        parent = next((callback_class(base) for base in updater.__mro__[1:]
                       if isinstance(base, type) and issubclass(base, Updater)
                       and base is not Updater and _has_constructor(base)), DSTCallback)
        type(updater.__name__, (parent,),
             {"__module__": "dst.callbacks", "__qualname__": updater.__name__},
             updater=updater)
    return _BY_UPDATER[updater]


def _has_constructor(updater: type[Updater]) -> bool:
    """Whether `updater` is a concrete algorithm (it defines `new_mask` itself
    or inherits one from an algorithm), not an abstract helper base."""
    return any("new_mask" in vars(c) for c in updater.__mro__ if c is not Updater
               and issubclass(c, Updater))


# What a callback's step arguments count from (see DSTCallback's `steps_from`).
STEPS_FROM = ("fit", "optimizer")

# The keyword arguments every callback takes besides its updater's.
_CALLBACK_PARAMETERS = [
    inspect.Parameter("optimizer", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=keras.optimizers.Optimizer | None),
    inspect.Parameter("steps_from", inspect.Parameter.KEYWORD_ONLY, default="fit",
                      annotation=str),
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
            f"{who} takes one updater instance (and `optimizer`, `steps_from`, `verbose`): {err}. "
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
