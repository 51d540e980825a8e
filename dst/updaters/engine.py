"""The engine of every `dst.updaters.Updater`: binding, the schedule, the
step entry points and the writes.

An updater is bound to a model and the optimizer that steps its weights.
Its `sparse_step(step, grads)` runs *inside* that optimizer's update (see
`dst.backend`): after the weights are stepped, on the optimizer's own step
count; `lean_step` runs instead between updates (`dst.callbacks` chooses on
the host). As in the references, the optimizer itself sees masked gradients
(zero for inactive connections), so `clipnorm`, `global_clipnorm` and its
moment estimates ignore inactive weights; the sparse step gets the dense
gradient (all-reduced over replicas, unscaled under mixed precision, not
clipped) when the algorithm needs it (`needs_gradients`, RigL). A step the
loss scaler skips never reaches it, and `steps_per_execution` or
`jit_compile` change nothing. On an update step it computes every new mask
(`dst.updaters.paths`: on the host or in-graph), then in one place
(`_write`):

- writes the mask and the ITOP record ("ever active"),
- zeroes dropped weights and grown ones (grown connections start at 0.0),
- resets the optimizer slots of grown connections to their initial values
  (0 for moments, `initial_accumulator_value` for Adagrad and Ftrl),
- zeroes the EMA copies (`use_ema=True`) of inactive connections,
- skips a weight whose values or gradient are not finite, and counts it.

Custom loops call `update(step, grads)`, or `attach()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import keras

from dst import _compat, _select, backend
from dst._model import (
    Target,
    check_keras3_model,
    dynamic_targets,
    masked_targets,
    no_masks_error,
)
from dst._select import Array
from dst._validate import as_int
from dst.backend import no_autograph, step_hook, variable_key
from dst.blocks import block_of, count_units
from dst.nm import n_m_of
from dst.schedules import UpdateSteps
from dst.updaters.paths import MaskPaths
from dst.updaters.slots import OptimizerState

__all__ = ["Engine"]


class Engine(MaskPaths):
    """What `Updater` runs around the algorithm hooks (see the module)."""

    if TYPE_CHECKING:  # the hooks, defined by `dst.updaters.Updater`
        needs_gradients: bool
        update_at_end: bool
        update_freq: int
        begin_step: int
        end_step: int | float | None
        _fresh_seed: bool

        @property
        def observes(self) -> bool: ...

        def observe(self, step: Array, grads: dict) -> dict: ...

        def prepare(self, model: keras.Model) -> None: ...

    #: Steps whose dense gradients the grow scores average (RigL, SRigL,
    #: GraNet: `dst.updaters.accumulation`); 1 for every other updater.
    grad_accumulation_n: int = 1

    def accumulate(self, step, grads: Mapping, is_update) -> dict:
        """The gradients an update step sees: `grads` itself, unless
        gradients are accumulated (`GradientAccumulation.accumulate`)."""
        return dict(grads)

    def bind(self, model: keras.Model, total_steps: int | None = None,
             first_step: int = 0, optimizer: keras.optimizers.Optimizer | None = None, *,
             jit: bool | None = None, origin: int | None = None) -> None:
        """Finds the model's dynamic weights and the optimizer state to reset.

        Args:
            model: a sparsified Keras 3 model.
            total_steps: steps of the training run; needed when `end_step`
                is a float or None.
            first_step: optimizer step at which the run started.
            optimizer: the optimizer that steps the weights. Defaults to
                `model.optimizer`.
            jit: whether the step runs inside XLA (then masks are computed
                with `keras.ops` instead of numpy on the host). Defaults to
                `model.jit_compile`.
            origin: the optimizer step that `begin_step` and an int
                `end_step` count from. Defaults to `first_step`.

        Raises:
            ValueError: no masks, no optimizer, an optimizer whose
                per-weight state dst cannot reset exactly, or a setup the
                backend cannot run (`jit_compile=True` on PyTorch).
        """
        check_keras3_model(model, f"{type(self).__name__}.bind")
        optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                f"{type(self).__name__}.bind needs the optimizer that steps the "
                f"weights of model '{model.name}', which has none: compile the "
                "model, or pass `bind(model, optimizer=...)`."
            )
        inner = _compat.inner_optimizer(optimizer)
        if not _compat.is_keras_optimizer(inner):
            raise ValueError(
                f"{type(self).__name__} needs a keras.optimizers.Optimizer; received "
                f"{type(optimizer).__name__}."
            )
        made_for = _compat.optimizer_backend(inner)
        if made_for is not None and made_for != keras.backend.backend():
            kind = type(inner).__name__
            raise ValueError(
                f"{type(self).__name__}: optimizer {inner.name!r} of model '{model.name}' "
                f"is the {made_for} backend's {kind}, which cannot step weights on "
                f"{keras.backend.backend()}. Keras rebuilds the optimizer class a model "
                f"was saved with, so a .keras file saved on {made_for} brings it along. "
                "Compile the model again on this backend with the same optimizer "
                "settings, and copy its state over (see 'Models saved on another "
                "backend' in the backends guide); the model is unchanged."
            )
        if getattr(inner, "gradient_accumulation_steps", None):
            raise ValueError(
                f"{type(self).__name__} does not support gradient accumulation "
                f"(optimizer {inner.name!r} has gradient_accumulation_steps="
                f"{inner.gradient_accumulation_steps}): its step count advances on "
                "every micro-batch. Use a larger batch instead."
            )
        in_graph = backend.in_graph(model)  # refuses what the backend cannot run
        self.model = model
        self.optimizer = optimizer
        if self._fresh_seed:
            self.seed = _agreed_seed(model, self.seed)
            self._fresh_seed = False
        if origin is None and total_steps is not None:
            self.check_run_length(total_steps, first_step)
        self.targets = self._targets(model)
        self.origin, self.begin, self.end = self._bounds(total_steps, first_step, origin)
        self.schedule = UpdateSteps(self.begin, self.end, self.update_freq,
                                    self.update_at_end)
        # Compiled steps read the schedule relative to this variable, so one
        # program serves every fit whose schedule is the same from its origin.
        self._origin = _model_variable(model, "origin")
        self._origin.assign(self.origin)
        # Compiled steps read the seed from a variable too, so a new callback
        # with a fresh seed can reuse them (the host path reads `self.seed`).
        self._seed = _model_variable(model, "seed")
        self._seed.assign(_select.as_int32(self.seed))
        with _compat.strategy_scope(model):
            self.state = OptimizerState(optimizer, [t.variable for t in self.targets],
                                        model.trainable_variables)
        self.jit = backend.resolve_jit(in_graph, jit)
        self._table = None
        self.skipped = [t.mask_constraint.skipped for t in self.targets]
        self.active = [count_units(t) for t in self.targets]  # in blocks for block masks
        self._keys = {variable_key(t.variable): i for i, t in enumerate(self.targets)}
        # Every masked trainable weight (fixed masks too) gets a masked gradient.
        self._gradient_masks = {id(t.variable): t.mask_constraint.mask
                                for t in masked_targets(model) if t.variable.trainable}

    def _targets(self, model) -> list[Target]:
        targets = dynamic_targets(model)
        if not targets:
            raise no_masks_error(type(self).__name__, model)
        blocked = [t.path for t in targets if block_of(t.constraint) is not None]
        if blocked and not getattr(self, "supports_blocks", True):
            raise ValueError(
                f"{type(self).__name__} does not support block masks; weights {blocked} of "
                f"model '{model.name}' have them. Sparsify without `block=`, or train "
                "block masks with SET, RigL, magnitude pruning or GraNet."
            )
        structured = [t.path for t in targets if n_m_of(t.constraint) is not None]
        if structured and not getattr(self, "supports_n_m", True):
            raise ValueError(
                f"{type(self).__name__} does not support N:M masks{self._n_m_refusal()}; "
                f"weights {structured} of model '{model.name}' have them. Sparsify "
                "without `n_m=`, or train N:M masks with SET, RigL, magnitude pruning, "
                "GraNet or SRigL(gamma_sal=0.0)."
            )
        return targets

    def _n_m_refusal(self) -> str:
        """Why this updater refuses N:M masks (after "does not support N:M masks")."""
        return ""

    def check_run_length(self, total_steps: int, first_step: int = 0) -> None:
        """Refuses a schedule, counted from this run's start, that the run cannot hold.

        With `total_steps` steps from `first_step`, an updater whose first
        update (`begin_step`) comes after the run's last step would never
        change a mask, and one that must reach a target by `end_step`
        (`update_at_end`: magnitude pruning, GraNet) would end short of it.

        Raises:
            ValueError: naming the step argument, the run's length, and the
                ways out.
        """
        _, begin, end = self._bounds(total_steps, first_step, None)
        last = first_step + total_steps - 1
        who = type(self).__name__
        fix = ("Give `end_step` as a fraction of the fit (for example 1.0), shorten the "
               "schedule, or train longer; for a schedule that spans several fits, use "
               "the callback's `steps_from='optimizer'`.")
        if begin > last:
            raise ValueError(
                f"{who}: begin_step={self.begin_step} is after the last step of this "
                f"fit, which has {total_steps} steps (steps 0 to {total_steps - 1}), "
                f"so no mask would ever be updated. {fix}")
        if getattr(self, "update_at_end", False) and end > last:
            raise ValueError(
                f"{who}: end_step={self.end_step} is after the last step of this fit, "
                f"which has {total_steps} steps (steps 0 to {total_steps - 1}), so "
                f"training would end before the schedule reaches its target. {fix}")

    def _bounds(self, total_steps, first_step, origin) -> tuple[int, int, int]:
        """(origin, begin, end) of the schedule in optimizer steps."""
        origin = first_step if origin is None else int(origin)
        begin = origin + self.begin_step
        return origin, begin, self._resolve_end(total_steps, first_step, origin, begin)

    def _resolve_end(self, total_steps, first_step, origin, begin) -> int:
        if isinstance(self.end_step, int):
            return origin + self.end_step
        if total_steps is None:
            raise ValueError(
                f"{type(self).__name__}: end_step={self.end_step!r} is relative to "
                "the number of training steps, which is unknown here (a "
                "generator without `steps_per_epoch`?). Pass `steps_per_epoch` "
                "to fit or give `end_step` as an int."
            )
        fraction = 1.0 if self.end_step is None else self.end_step
        return max(begin, first_step + int(round(fraction * total_steps)) - 1)

    def state_variables(self) -> list:
        """(layer, [variables]) of the mask state a training step reads and writes
        (and the schedule's origin and seed)."""
        return ([(self.targets[0].layer, [self._origin, self._seed])]
                + [(t.layer, t.mask_constraint.state_variables) for t in self.targets])

    def relative_schedule(self) -> tuple:
        """What a compiled update step bakes in: the schedule from its origin
        and, where masks are computed in-graph, the table of `step_value`."""
        s = self._schedule()
        key: tuple = (s.begin - self.origin, s.end - self.origin, s.freq, s.include_end)
        if self.jit:
            steps, table = self._value_table()
            key += ((steps - self.origin).tobytes(), table.tobytes(), table.shape)
        return key

    def attach(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: runs the sparse step inside the optimizer's updates.

        For custom training loops under a `tf.distribute` strategy (or any
        loop): inside `with updater.attach():`, every `optimizer.apply`
        (called directly or in `strategy.run`) runs this updater's sparse step
        after stepping the weights, exactly as in `model.fit`, with the
        all-reduced gradients. Don't also call `update` then.

        Example:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> opt = keras.optimizers.SGD(0.1)
        >>> up = dst.updaters.SET(update_freq=1, end_step=3, seed=0)
        >>> up.bind(model, optimizer=opt)
        >>> with up.attach():
        ...     for _ in range(3):
        ...         opt.apply([keras.ops.ones(v.shape) for v in model.trainable_variables],
        ...                   model.trainable_variables)
        >>> int(dst.get_masks(model)[model.layers[0].kernel.path].sum())
        6
        """
        if self.schedule is None:
            raise RuntimeError(f"Call {type(self).__name__}.bind(model, ...) first.")
        return step_hook(self.optimizer, self.as_sparse_step())

    def as_sparse_step(self, update: bool = True) -> backend.SparseStep:
        """What a backend hooks into the optimizer: `sparse_step` (or, with
        `update=False`, `lean_step`), the masks of the gradients the optimizer
        sees, and whether the step needs the dense gradient."""
        if self.schedule is None:
            raise RuntimeError(f"Call {type(self).__name__}.bind(model, ...) first.")
        if not update:
            return backend.SparseStep(self.lean_step, dict(self._gradient_masks),
                                      self.needs_gradients and self.observes)
        return backend.SparseStep(self.sparse_step, dict(self._gradient_masks),
                                  self.needs_gradients)

    def is_update_step(self, step: int) -> bool:
        """Whether masks change after optimizer step `step` (0-based)."""
        return self._schedule()(int(step))

    def _schedule(self) -> UpdateSteps:
        if self.schedule is None:
            raise RuntimeError(f"Call {type(self).__name__}.bind(model, ...) first.")
        return self.schedule

    # -- the update ---------------------------------------------------------
    @no_autograph
    def update(self, step: int, grads: Mapping[str, Array] | Sequence[Array | None] | None = None
               ) -> bool:
        """Updates the masks now if `step` is an update step (custom loops).

        Call it after the optimizer has applied step `step` (the value of
        `optimizer.iterations` before that step).

        Args:
            step: the optimizer step (0-based).
            grads: dense gradients of this batch, needed by RigL: a dict
                {weight path: array}, or a list aligned with
                `model.trainable_variables`. Defaults to None.

        Returns:
            True if the masks were updated.
        """
        if self.schedule is None:
            raise RuntimeError(f"Call {type(self).__name__}.bind(model, ...) first.")
        step = as_int(step, "step", f"{type(self).__name__}.update", minimum=0)
        is_update = self.is_update_step(step)
        following = self._schedule().next_update(step)
        accumulating = following is not None and following - step < self.grad_accumulation_n
        if not (is_update or self.observes or accumulating):
            return False
        by_index = self.observe(step, self._grads_by_index(grads))
        by_index = self.accumulate(step, by_index, is_update)
        if is_update:
            self._update_all(step, by_index)
        return is_update

    @no_autograph
    def lean_step(self, step: Array, grads: dict) -> None:
        """The in-graph step between updates: no conditional, no mask change.

        It runs only what every step needs besides the masked weights and
        gradients: `observe` (SNFS' momentum) and the zeroing of the EMA
        copies of inactive weights. `dst.callbacks` runs it on every step
        whose window holds no update step, and `sparse_step` on the others.
        """
        if self.observes:
            if isinstance(step, keras.Variable):
                step = step.value
            self.observe(step, {i: grads.get(key) for key, i in self._keys.items()})
        if self.state.ema:
            for t in self.targets:
                t.mask_constraint.zero_masked()

    @no_autograph
    def sparse_step(self, step: Array, grads: dict) -> None:
        """The in-graph step: `grads` maps `variable_key(variable)` to its gradient."""
        if isinstance(step, keras.Variable):
            step = step.value  # read now, in the scope that maps it
        by_index = {i: grads.get(key) for key, i in self._keys.items()}
        if self.needs_gradients:
            missing = [self.targets[i].path for i, g in by_index.items() if g is None]
            if missing:
                raise ValueError(
                    f"{type(self).__name__} needs the gradient of every sparse weight, "
                    f"but the optimizer received none for {missing}. Are these weights "
                    "stepped by another optimizer? Pass that one as `optimizer=`."
                )
        by_index = self.observe(step, by_index)  # every step (SNFS' momentum)
        if self.state.ema:
            # EMA averages the weights right after this hook: keep inactive
            # entries at exactly 0 there, every step.
            for t in self.targets:
                t.mask_constraint.zero_masked()

        schedule = self._schedule()
        if schedule.end < schedule.begin:
            return  # no update step at all (FixedMasks)
        is_update = self._is_update_tensor(step)
        by_index = self.accumulate(step, by_index, is_update)  # `grad_accumulation_n`

        olds = [keras.ops.convert_to_tensor(t.mask_constraint.mask) for t in self.targets]

        def compute():
            if self.cross_layer:
                return self._planned_masks(step, by_index, olds)
            return [self._new_mask(i, step, by_index.get(i), olds[i])
                    for i in range(len(self.targets))]

        def keep():
            return [(old, keras.ops.convert_to_tensor(True)) for old in olds]

        def write(results):
            for index, (new, ok) in enumerate(results):
                self._write(index, olds[index], new, ok)

        backend.guarded_update(is_update, step, self.jit,
                               lambda at: self._update_all(at, by_index), compute, keep, write)

    def _update_all(self, step, by_index) -> None:
        """Computes and writes every new mask (weight by weight, or planned)."""
        if not self.cross_layer:
            for index in range(len(self.targets)):
                self._update_target(index, step, by_index.get(index))
            return
        olds = [keras.ops.convert_to_tensor(t.mask_constraint.mask) for t in self.targets]
        for index, (new, ok) in enumerate(self._planned_masks(step, by_index, olds)):
            self._write(index, olds[index], new, ok)

    def _update_target(self, index, step, grad) -> None:
        old = keras.ops.convert_to_tensor(self.targets[index].mask_constraint.mask)
        new, ok = self._new_mask(index, step, grad, old)
        self._write(index, old, new, ok)

    def _write(self, index, old, new, ok) -> None:
        """Writes a new mask and everything that follows from it, in one place."""
        t = self.targets[index]
        weight = t.variable
        kept = keras.ops.logical_and(new, old)
        grown = keras.ops.logical_and(new, keras.ops.logical_not(old))
        t.mask_constraint.mask.assign(new)
        t.constraint.ever.assign(keras.ops.logical_or(t.constraint.ever.value, new))
        weight.assign(keras.ops.where(kept, weight.value,
                                      keras.ops.zeros(weight.shape, weight.dtype)))
        self.state.reset(index, grown, kept)
        self.skipped[index].assign_add(1 - keras.ops.cast(ok, "int32"))

    def _is_update_tensor(self, step):
        ops = keras.ops
        s = self._schedule()
        at = self._relative(step)
        begin, end = s.begin - self.origin, s.end - self.origin
        on_grid = ops.logical_and(ops.logical_and(at >= begin, at <= end),
                                  ops.equal(ops.mod(at - begin, s.freq), 0))
        if s.include_end:
            on_grid = ops.logical_or(on_grid, ops.equal(at, end))
        return on_grid

    def _relative(self, step):
        """`step` minus the schedule's origin, read from its variable (int32)."""
        ops = keras.ops
        return ops.cast(step, "int32") - ops.cast(self._origin.value, "int32")

    # -- helpers ------------------------------------------------------------
    def _grads_by_index(self, grads) -> dict:
        who = type(self).__name__
        if grads is None:
            if self.needs_gradients:
                raise ValueError(
                    f"{who}.update needs `grads` (the dense gradients of the current "
                    "batch) at update steps, and at the grad_accumulation_n - 1 steps "
                    "before each."
                )
            return {}
        if isinstance(grads, dict):
            paths = {t.path: i for i, t in enumerate(self.targets)}
            unknown = sorted(set(grads) - set(paths))
            if unknown:
                raise ValueError(
                    f"{who}.update: `grads` keys {unknown} name no sparse weight. "
                    f"Sparse weights: {sorted(paths)}."
                )
            out = {paths[k]: g for k, g in grads.items()}
        else:
            grads = list(grads)
            variables = self.model.trainable_variables
            if len(grads) != len(variables):
                raise ValueError(
                    f"`grads` has {len(grads)} entries but the model has "
                    f"{len(variables)} trainable variables; pass a dict "
                    "{weight path: gradient} or a list aligned with "
                    "model.trainable_variables."
                )
            index = {id(t.variable): i for i, t in enumerate(self.targets)}
            out = {index[id(v)]: g for v, g in zip(variables, grads) if id(v) in index}
        if self.needs_gradients:
            missing = [self.targets[i].path for i in range(len(self.targets))
                       if out.get(i) is None]
            if missing:
                raise ValueError(
                    f"{who}.update needs the gradient of every sparse weight; it got "
                    f"None (or nothing) for {missing}. Compute gradients with respect "
                    "to all of model.trainable_variables."
                )
        out = {i: keras.ops.convert_to_tensor(g) for i, g in out.items() if g is not None}
        for i, g in out.items():  # every input checked before anything changes
            target = self.targets[i]
            if tuple(g.shape) != tuple(target.shape):
                raise ValueError(
                    f"{who}.update: the gradient of '{target.path}' has shape "
                    f"{tuple(g.shape)}, expected {tuple(target.shape)} (the weight's shape). "
                    "No mask was changed."
                )
        return out



def _agreed_seed(model, seed: int) -> int:
    """A seed every worker agrees on when none was given.

    A variable created in a strategy's scope starts, on every worker, from
    the value of worker 0 (`MultiWorkerMirroredStrategy` broadcasts initial
    values), so reading it back gives all workers worker 0's draw.
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync <= 1:
        return seed
    with strategy.scope():
        agreed = keras.Variable(seed, dtype="int64", trainable=False, name="dst_seed")
    return int(_compat.to_numpy(agreed))


def _model_variable(model, name: str) -> keras.Variable:
    """The model's one int32 variable `name` of dst's schedule (its origin, its
    seed), kept in `vars(model)`, past Keras' attribute tracking; dst
    registers it as state during a fit."""
    variable = vars(model).get(f"_dst_{name}")
    if variable is None:
        with _compat.strategy_scope(model):
            variable = keras.Variable(0, dtype="int32", trainable=False, name=f"dst_{name}")
        vars(model)[f"_dst_{name}"] = variable
    return variable
