"""`DSTCallback`: runs an updater's sparse step inside `model.fit`."""

from __future__ import annotations

import warnings

import keras

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

    Args:
        updater: a `dst.updaters.Updater`.
        optimizer: the optimizer that steps the sparse weights. Defaults to
            `model.optimizer`.
        verbose: unused, kept for Keras' callback convention. Defaults to 0.
    """

    def __init__(self, updater: Updater, optimizer=None, verbose: int = 0):
        super().__init__()
        self.updater = updater
        self.optimizer = optimizer
        self.verbose = verbose

    # -- Keras hooks ------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._function = None
        self._epoch = 0
        self._epoch_masks = None
        self._start = None
        self._skipped_seen = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_masks = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._function is None:
            self._bind(batch)
        if self._epoch_masks is None:
            self._epoch_masks = [t.constraint.numpy() for t in self.updater.targets]
        self._function.armed = True

    def on_train_batch_end(self, batch, logs=None):
        if self._start is not None:
            self._check_advanced()

    def on_epoch_end(self, epoch, logs=None):
        if self._function is None:
            return
        self._warn_skipped()
        if logs is None:
            return
        targets = self.updater.targets
        masks = [t.constraint.numpy() for t in targets]
        before = self._epoch_masks or masks
        active_before = sum(int(m.sum()) for m in before)
        left = sum(int((b & ~m).sum()) for b, m in zip(before, masks))
        size = sum(m.size for m in masks)
        logs["sparsity"] = 1.0 - sum(int(m.sum()) for m in masks) / size
        logs["mask_churn"] = left / active_before if active_before else 0.0
        logs["itop"] = sum(int(t.constraint.ever_active.sum()) for t in targets) / size

    def on_train_end(self, logs=None):
        if self._function is not None:
            self._warn_skipped()
            model = self.model  # (on JAX, reading it syncs the trained state)
            backend.release(model, self._function.state)
            model.train_function = None  # the next fit traces a plain step
            self._function = None

    # -- helpers ------------------------------------------------------------
    def _bind(self, batch: int) -> None:
        optimizer = self.optimizer if self.optimizer is not None else self.model.optimizer
        inner = _compat.inner_optimizer(optimizer) if optimizer is not None else None
        step = _read(inner.iterations) if inner is not None else 0
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        total = steps * epochs if steps and epochs else None
        first = step - self._epoch * (steps or 0) - batch  # resumed runs start later
        self.updater.bind(self.model, total, first, optimizer)
        self.updater.state.mask_ema([t.constraint.mask for t in self.updater.targets])
        for t in self.updater.targets:  # weights written since the last step
            t.constraint.zero_masked()
        self._skipped_seen = [_read(v) for v in self.updater.skipped]
        scale = getattr(optimizer, "dynamic_scale", None)
        self._start = (step, None if scale is None else _read(scale, float))
        self._function = _SparseTrainFunction(self.model, optimizer, self.updater)
        self.model.train_function = self._function

    def _check_advanced(self) -> None:
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

    def get_config(self):
        """The constructor arguments of the named subclass (SET, RigL, ...)."""
        return {**getattr(self, "_args", {}), "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
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
