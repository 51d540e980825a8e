"""`DSTCallback`: runs an updater inside `model.fit`."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dst._model import dynamic_targets
from dst.updaters.base import Updater

__all__ = ["DSTCallback"]


class DSTCallback(keras.callbacks.Callback):
    """Updates masks between optimizer steps of `model.fit`.

    The step is the optimizer's iteration count before the batch. After
    the batch's optimizer step, if the updater says the step is an update
    step, masks change. At each epoch end `sparsity`, `mask_churn` (fraction
    of the epoch-start active connections that are inactive at epoch end)
    and `itop` (fraction of all maskable weights active at least once since
    `dst.sparsify`, Liu et al. 2021) are added to `logs`, so the progress
    bar, `History` and W&B callbacks see them.

    For updaters that need gradients (RigL), the dense gradient of the
    current batch is copied, inside the compiled train step, into a buffer
    per sparse weight on update steps only: the optimizer's `apply` is
    wrapped for the duration of `fit`, so any `train_step` that calls
    `optimizer.apply`/`apply_gradients` works, with numpy arrays,
    `tf.data.Dataset`s and generators alike.

    State lives in the model (masks and the ITOP record are saved with it)
    and in the optimizer's step counter; random draws are seeded from
    (seed, step, weight), so `keras.callbacks.BackupAndRestore` resumes a
    seeded run exactly. `on_train_begin` resets per-fit state.

    With `compile(steps_per_execution=k)`, Keras calls batch hooks once per
    k steps, so only the first step of each group can be an update step:
    choose `update_freq` and `begin_step` as multiples of k.

    Args:
        updater: a `dst.updaters.Updater`.
        verbose: 1 prints a line at each mask update. Defaults to 0.
    """

    def __init__(self, updater: Updater, verbose: int = 0):
        super().__init__()
        self.updater = updater
        self.verbose = verbose

    # -- Keras hooks ------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._bound = False
        self._pending = None
        self._epoch = 0
        self._epoch_masks = None
        self._capture = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_masks = None

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if not self._bound:
            self._bind(step - self._epoch * (self.params.get("steps") or 0) - batch)
        if self._epoch_masks is None:
            self._epoch_masks = [t.constraint.numpy() for t in self.updater.targets]
        self._pending = step if self.updater.is_update_step(step) else None
        if self._capture is not None:
            self._capture.arm(self._pending is not None)

    def on_train_batch_end(self, batch, logs=None):
        if self._pending is None:
            return
        grads = self._capture.read() if self._capture is not None else None
        self.updater.update(self._pending, grads)
        if self.verbose:
            print(f"\n{type(self).__name__}: masks updated at step {self._pending}")
        self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._bound:
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
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
            self.model.train_function = None

    # -- helpers ------------------------------------------------------------
    def _bind(self, first_step: int) -> None:
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        total = steps * epochs if steps and epochs else None
        retrace = self.model.train_function is not None and not _has_masks(self.model)
        self.updater.bind(self.model, total, first_step)
        if self.updater.needs_gradients:
            self._capture = _GradientCapture(self.model, self.updater.targets)
        if self.updater.needs_gradients or retrace:
            # Retrace so the compiled step sees the wrapper / new constraints.
            self.model.make_train_function(force=True)
        self._bound = True

    def get_config(self):
        """The constructor arguments of the named subclass (SET, RigL, ...)."""
        return {**getattr(self, "_args", {}), "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _has_masks(model) -> bool:
    return bool(dynamic_targets(model))


class _GradientCapture:
    """Copies the dense gradients of sparse weights into buffers when armed."""

    def __init__(self, model, targets):
        self.optimizer = model.optimizer
        self.flag = tf.Variable(False, trainable=False)
        self.buffers = {
            id(t.variable): tf.Variable(tf.zeros(t.shape, t.variable.dtype), trainable=False)
            for t in targets
        }
        self.paths = {id(t.variable): t.path for t in targets}
        self._armed = False
        original = self.optimizer.apply

        def apply(grads, trainable_variables=None):
            variables = (trainable_variables if trainable_variables is not None
                         else self.optimizer._trainable_variables)
            for g, v in zip(grads, variables):
                buf = self.buffers.get(id(v))
                if buf is not None and g is not None:
                    tf.cond(self.flag, lambda b=buf, g=g: b.assign(tf.convert_to_tensor(g)).op,
                            tf.no_op)
            return original(grads, trainable_variables)

        self._had_own = "apply" in vars(self.optimizer)
        self.optimizer.apply = apply
        self._original = original

    def arm(self, on: bool) -> None:
        if on != self._armed:
            self.flag.assign(on)
            self._armed = on

    def read(self) -> dict:
        return {self.paths[k]: np.asarray(b.numpy()) for k, b in self.buffers.items()}

    def remove(self) -> None:
        if self._had_own:
            self.optimizer.apply = self._original
        else:
            del self.optimizer.apply  # back to the class's method
        self.buffers.clear()
