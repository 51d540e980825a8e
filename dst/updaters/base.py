"""`Updater`: the one owner of the sparse step, shared by every algorithm.

An updater is bound to a model and the optimizer that steps its weights.
Its `sparse_step(step, grads)` runs *inside* that optimizer's update (see
`dst.backend`): after the weights are stepped, on the optimizer's own step
count. As in the references, the optimizer itself sees masked gradients
(zero for inactive connections), so `clipnorm`, `global_clipnorm` and its
moment estimates ignore inactive weights; the sparse step gets the dense
gradient (all-reduced over replicas, unscaled under mixed precision, not
clipped) when the algorithm needs it (`needs_gradients`, RigL). A step the
loss scaler skips never reaches it, and `steps_per_execution` or
`jit_compile` change nothing. On an update step it computes every new mask,
then in one place:

- writes the mask and the ITOP record ("ever active"),
- zeroes dropped weights and grown ones (grown connections start at 0.0),
- resets the optimizer slots of grown connections to the optimizer's own
  initial values (0 for momentum and Adam moments, `initial_accumulator_value`
  for Adagrad and Ftrl),
- zeroes the EMA copies (`use_ema=True`) of inactive connections,
- skips a weight whose values or gradient are not finite, and counts it.

Subclasses override `new_mask` (and `step_value`); drop-and-grow methods
override `grow_scores`. Cross-layer methods (SNFS) also override `observe`
(runs every step: state such as momentum) and `plan` (sees every weight at
once and gives each its value for `new_mask`). Custom loops call
`update(step, grads)` directly.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from dst import _compat, _select, backend
from dst._model import Target, check_keras3_model, dynamic_targets, masked_targets
from dst._select import Array, Kit
from dst._validate import as_float, as_int
from dst.backend import host_call, no_autograph, step_hook, variable_key
from dst.blocks import count_units, kit_for
from dst.schedules import UpdateSteps
from dst.updaters.slots import OptimizerState

__all__ = ["Updater"]


class Updater:
    """Base class: runs `new_mask` on every dynamic weight at update steps.

    Args:
        update_freq: steps between mask updates. Defaults to 100.
        begin_step: first step that updates masks, counted from the `origin`
            given to `bind` (a callback's `steps_from`: by default the first
            step of its `fit`). Defaults to 0.
        end_step: last step that may update masks: an int (counted like
            `begin_step`), or a float in (0, 1] meaning that fraction of the
            total steps given to `bind`.
        seed: seed of the random draws, which are made from (seed, step,
            weight index), so a run is reproducible and resumable.
            Defaults to None (a fresh seed per instance).
    """

    needs_gradients = False
    update_at_end = False  # also update at `end` when it is off the grid

    def __init__(self, *, update_freq: int = 100, begin_step: int = 0,
                 end_step: int | float | None = 0.75, seed: int | None = None):
        who = type(self).__name__
        self.update_freq = as_int(update_freq, "update_freq", who, minimum=1)
        self.begin_step = as_int(begin_step, "begin_step", who, minimum=0)
        if end_step is not None:
            if isinstance(end_step, numbers.Integral) and not isinstance(end_step, bool):
                end_step = as_int(end_step, "end_step", who, minimum=0)
                if end_step < self.begin_step:
                    raise ValueError(
                        f"`end_step` must not be before `begin_step` for {who}. Received: "
                        f"end_step={end_step!r}, begin_step={begin_step!r}"
                    )
            else:
                end_step = as_float(end_step, "end_step", who + " (a float end_step is "
                                    "a fraction of the fit's steps)", low=0.0, high=1.0,
                                    low_open=True)
        self.end_step = end_step
        self._fresh_seed = seed is None
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.seed = as_int(seed, "seed", who)
        self.targets: list[Target] = []
        self.schedule: UpdateSteps | None = None
        self.jit = False

    # -- binding ------------------------------------------------------------
    def prepare(self, model: keras.Model) -> None:
        """Adds what the model must hold before training state is loaded.

        `DSTCallback` calls it when Keras hands the callback its model,
        before any callback's `on_train_begin`. By default nothing; pruning
        (`MagnitudePruning`, `GraNet`) gives a dense model all-ones masks
        here, so that a `BackupAndRestore` checkpoint restores its masks.
        """

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
        self.targets = self._targets(model)
        self.origin = first_step if origin is None else int(origin)
        self.begin = self.origin + self.begin_step
        self.end = self._resolve_end(total_steps, first_step)
        self.schedule = UpdateSteps(self.begin, self.end, self.update_freq,
                                    self.update_at_end)
        with _compat.strategy_scope(model):
            self.state = OptimizerState(optimizer, [t.variable for t in self.targets],
                                        model.trainable_variables)
        # JAX traces every step: masks are always computed in-graph there.
        self.jit = in_graph if jit is None or backend.FUNCTIONAL else bool(jit)
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
            raise ValueError(
                f"{type(self).__name__} needs a sparsified model, but model "
                f"'{model.name}' has no masks. Call dst.sparsify(model, "
                "sparsity) first."
            )
        return targets

    def _resolve_end(self, total_steps, first_step) -> int:
        if isinstance(self.end_step, int):
            return self.origin + self.end_step
        if total_steps is None:
            raise ValueError(
                f"{type(self).__name__}: end_step={self.end_step!r} is relative to "
                "the number of training steps, which is unknown here (a "
                "generator without `steps_per_epoch`?). Pass `steps_per_epoch` "
                "to fit or give `end_step` as an int."
            )
        fraction = 1.0 if self.end_step is None else self.end_step
        return max(self.begin, first_step + int(round(fraction * total_steps)) - 1)

    def state_variables(self) -> list:
        """(layer, [variables]) of the mask state a training step reads and writes."""
        return [(t.layer, t.mask_constraint.state_variables) for t in self.targets]

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
        if not (is_update or self.observes):
            return False
        by_index = self.observe(step, self._grads_by_index(grads))
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

        def update(at=step):
            self._update_all(at, by_index)

        if backend.FUNCTIONAL:
            self._functional_update(step, by_index)
            return
        if not self.jit:
            keras.ops.cond(self._is_update_tensor(step), update, lambda: None)
            return
        # Under XLA, computations in an untaken branch that don't depend on
        # its operands are hoisted and run every step; a loop that runs zero
        # or one time with the step as its variable keeps them inside.
        ops = keras.ops
        first = ops.cast(step, "int32")
        stop = first + ops.cast(self._is_update_tensor(step), "int32")

        def body(at):
            update(at)
            return (at + 1,)

        ops.while_loop(lambda at: at < stop, body, (first,))

    def _functional_update(self, step, by_index) -> None:
        """The update where branches cannot assign (JAX).

        The conditional returns only the new masks (the old ones when this
        is not an update step); the writes that follow are elementwise and
        unconditional, and change nothing when the masks did not change, so
        XLA fuses them with the optimizer's own update instead of copying
        every weight and slot through a conditional at every step.
        """
        ops = keras.ops
        olds = [ops.convert_to_tensor(t.mask_constraint.mask) for t in self.targets]
        pred = self._is_update_tensor(step)
        if not backend.is_traced(pred) and not bool(pred):
            return  # an eager step that is not an update step

        def compute():
            if self.cross_layer:
                return self._planned_masks(step, by_index, olds)
            return [self._new_mask(i, step, by_index.get(i), olds[i])
                    for i in range(len(self.targets))]

        def keep():
            return [(old, ops.convert_to_tensor(True)) for old in olds]

        for index, (new, ok) in enumerate(backend.cond(pred, compute, keep)):
            self._write(index, olds[index], new, ok)

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

    def _new_mask(self, index, step, grad, old):
        """(new mask, whether the update ran) of the `index`-th weight."""
        weight = self.targets[index].variable
        if self.jit if not backend.FUNCTIONAL else backend.is_traced(old):
            return self._masks_in_graph(index, step, weight, old, grad)
        return self._masks_on_host(index, step, weight, old, grad)

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

    def _masks_on_host(self, index, step, weight, old, grad):
        target = self.targets[index]

        def compute(step, w, m, *g):
            step = int(step)
            g = g[0] if g else None
            if not (np.isfinite(w).all() and (g is None or np.isfinite(g).all())):
                return m, np.bool_(False)
            new = self.new_mask(kit_for(_select.NUMPY, target), w, m, g,
                                self.step_value(step, index),
                                lambda role: int(_select.salt(np, self.seed, step, index, role)))
            new = np.asarray(new, dtype=bool)
            _check(target, m, new, self.expected_active(index, m, step), type(self).__name__)
            return new, np.bool_(True)

        inputs = [step, weight, old] + ([grad] if grad is not None else [])
        new, ok = host_call(compute, inputs, ["bool", "bool"])
        if hasattr(new, "set_shape"):
            new.set_shape(target.shape)
            ok.set_shape(())
        return keras.ops.convert_to_tensor(new), keras.ops.convert_to_tensor(ok)

    def _masks_in_graph(self, index, step, weight, old, grad):
        ops = keras.ops
        weight = weight.value
        step = ops.cast(step, "int32")
        ok = ops.all(ops.isfinite(weight))
        if grad is not None:
            ok = ops.logical_and(ok, ops.all(ops.isfinite(grad)))
        value = self._value_in_graph(step, index)
        safe_w = ops.where(ops.isfinite(weight), weight, ops.zeros(weight.shape, weight.dtype))
        safe_g = None if grad is None else ops.where(ops.isfinite(grad), grad,
                                                     ops.zeros(grad.shape, grad.dtype))
        new = self.new_mask(kit_for(_select.OPS, self.targets[index]), safe_w, old, safe_g, value,
                            lambda role: _select.salt(ops, self.seed, step, index, role))
        return ops.where(ok, new, old), ok

    def _value_in_graph(self, step, index):
        """`step_value(step, index)` read from the table, for a traced step."""
        ops = keras.ops
        steps, table = self._value_table()
        row = ops.minimum(ops.sum(ops.cast(ops.convert_to_tensor(steps) <= step, "int32")) - 1,
                          len(steps) - 1)
        return ops.take(ops.take(ops.convert_to_tensor(table), ops.maximum(row, 0), axis=0),
                        index, axis=0)  # an int, or a vector for a tuple `step_value`

    def _value_table(self):
        """Update steps and the `step_value` of each (step, weight), for XLA."""
        if self._table is None:
            steps = self.schedule.steps()
            table = np.array([[self.step_value(s, i) for i in range(len(self.targets))]
                              for s in steps], dtype="int32")
            self._table = (np.asarray(steps, dtype="int32"), table)
        return self._table

    def _is_update_tensor(self, step):
        ops = keras.ops
        step = ops.cast(step, "int32")
        s = self.schedule
        on_grid = ops.logical_and(
            ops.logical_and(step >= s.begin, step <= s.end),
            ops.equal(ops.mod(step - s.begin, s.freq), 0))
        if s.include_end:
            on_grid = ops.logical_or(on_grid, ops.equal(step, s.end))
        return on_grid

    # -- the algorithm hooks ------------------------------------------------
    def step_value(self, step: int, index: int) -> int:
        """The per-step count `new_mask` needs (connections to drop, or to keep).

        An integer computed on the host, so the count is exactly the same on
        every backend and in both selection paths; or a tuple of integers of
        one length for every step and weight (`new_mask` then indexes
        `value[0]`, `value[1]`, ...).
        """
        return 0

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        """Returns the new bool mask of one weight. Subclasses override this.

        Args:
            kit: `dst._select.NUMPY` or `OPS`: `kit.xp` is numpy or
                `keras.ops`, `kit.select(scores, candidates, k, salt)` picks
                exactly k candidates, `kit.count(mask)` counts. For a weight
                with block masks, a `dst.blocks.BlockKit` that also carries
                `kit.block` (see `dst.blocks.blockwise`).
            weight: the weight's values, an array of its shape.
            mask: its current bool mask, an array of the same shape.
            grad: its gradient, an array of the same shape, or None.
            value: `step_value(step, index)`.
            salt: `salt(role)` gives the seeded tie-break salt for a role.
        """
        raise NotImplementedError

    def expected_active(self, index: int, old: np.ndarray, step: int) -> int:
        """Active count the new mask must have: by default, unchanged.

        Checked per weight; for a cross-layer updater (one that overrides
        `plan`), only the sum over all weights is checked.
        """
        return int(old.sum())

    # -- cross-layer hooks (SNFS) -------------------------------------------
    def observe(self, step: Array, grads: dict) -> dict:
        """Runs at every step, update step or not, before the update.

        Args:
            step: the optimizer step (an int, or a tensor inside a step).
            grads: {weight index: gradient} (the dense gradients when
                `needs_gradients`), tensors.

        Returns:
            The {index: array} that the update passes as `grad` to `plan` and
            `new_mask`. Defaults to `grads` unchanged. Written in `keras.ops`;
            state it keeps must be in variables listed by `state_variables`
            (SNFS smooths the gradients into momentum buffers here).
        """
        return grads

    def plan(self, kit: Kit, values: list, weights: list, masks: list, grads: list) -> list:
        """The per-weight values of one update, seeing every weight at once.

        A cross-layer updater overrides it (e.g. SNFS, which splits the total
        regrowth across weights). It runs once per update step, before the
        `new_mask` calls, whose `value` becomes its output. On the host its
        inputs are numpy arrays and Python ints, in a compiled step tensors and
        int32 scalars: write it with `kit.xp` and no Python branch on values.
        The whole update is then skipped (every mask kept, each weight counted
        as skipped) when any weight, or any `grad` it would see (the output of
        `observe`), is not finite.

        Args:
            kit: `dst._select.NUMPY` or `OPS` (plain, never a `BlockKit`).
            values: `step_value(step, index)` of every weight.
            weights, masks, grads: lists aligned with the updater's targets;
                `grads` holds what `observe` returned (None where absent).

        Returns:
            One value per weight: an int (int32 scalar in-graph) or a tuple of
            them, passed as `new_mask`'s `value` (as Python ints on the host).
        """
        return values

    @property
    def observes(self) -> bool:
        """Whether this updater overrides `observe`."""
        return type(self).observe is not Updater.observe

    @property
    def cross_layer(self) -> bool:
        """Whether this updater overrides `plan` (then masks are planned together)."""
        return type(self).plan is not Updater.plan

    def _planned_masks(self, step, by_index, olds) -> list:
        """[(new mask, ok)] of every weight, through `plan`."""
        if self.jit if not backend.FUNCTIONAL else backend.is_traced(olds[0]):
            return self._planned_in_graph(step, by_index, olds)
        return self._planned_on_host(step, by_index, olds)

    def _planned_on_host(self, step, by_index, olds) -> list:
        """One host call computes every mask (numpy), then checks the total."""
        n = len(self.targets)
        present = [i for i in range(n) if by_index.get(i) is not None]
        who = type(self).__name__

        def compute(step, *arrays):
            step = int(step)
            weights = list(arrays[:n])
            masks = [np.asarray(m, dtype=bool) for m in arrays[n:2 * n]]
            grads = [None] * n
            for i, g in zip(present, arrays[2 * n:]):
                grads[i] = g
            if not all(np.isfinite(x).all() for x in weights + [grads[i] for i in present]):
                return (*masks, np.bool_(False))
            values = [self.step_value(step, i) for i in range(n)]
            planned = self.plan(_select.NUMPY, values, weights, masks, grads)
            news = []
            for i, target in enumerate(self.targets):
                value = _host_value(planned[i])
                new = self.new_mask(
                    kit_for(_select.NUMPY, target), weights[i], masks[i], grads[i], value,
                    lambda role, i=i: int(_select.salt(np, self.seed, step, i, role)))
                news.append(np.asarray(new, dtype=bool))
            want = sum(self.expected_active(i, masks[i], step) for i in range(n))
            _check_total(self.targets, masks, news, want, who)
            return (*news, np.bool_(True))

        inputs = ([step] + [t.variable for t in self.targets] + list(olds)
                  + [by_index[i] for i in present])
        out = host_call(compute, inputs, ["bool"] * (n + 1))
        news, ok = list(out[:n]), out[n]
        if hasattr(ok, "set_shape"):
            for new, target in zip(news, self.targets):
                new.set_shape(target.shape)
            ok.set_shape(())
        ok = keras.ops.convert_to_tensor(ok)
        return [(keras.ops.convert_to_tensor(new), ok) for new in news]

    def _planned_in_graph(self, step, by_index, olds) -> list:
        ops = keras.ops
        n = len(self.targets)
        step = ops.cast(step, "int32")
        weights = [t.variable.value for t in self.targets]
        grads = [by_index.get(i) for i in range(n)]
        ok = ops.convert_to_tensor(True)
        for x in weights + [g for g in grads if g is not None]:
            ok = ops.logical_and(ok, ops.all(ops.isfinite(x)))

        def finite(x):
            return None if x is None else ops.where(ops.isfinite(x), x, ops.zeros_like(x))

        weights = [finite(w) for w in weights]
        grads = [finite(g) for g in grads]
        values = [self._value_in_graph(step, i) for i in range(n)]
        planned = self.plan(_select.OPS, values, weights, olds, grads)
        out = []
        for i, target in enumerate(self.targets):
            new = self.new_mask(
                kit_for(_select.OPS, target), weights[i], olds[i], grads[i], planned[i],
                functools.partial(self._salt_in_graph, step, i))
            out.append((ops.where(ok, new, olds[i]), ok))
        return out

    def _salt_in_graph(self, step: Array, index: int, role: int) -> Array:
        return _select.salt(keras.ops, self.seed, step, index, role)

    # -- helpers ------------------------------------------------------------
    def _grads_by_index(self, grads) -> dict:
        who = type(self).__name__
        if grads is None:
            if self.needs_gradients:
                raise ValueError(
                    f"{who}.update needs `grads` (the dense gradients of the current "
                    "batch) at update steps."
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


def _check(target, old, new, want: int, who: str) -> None:
    got = int(new.sum())
    if tuple(new.shape) != target.shape or got != want:
        raise AssertionError(
            f"{who} produced {got} active connections for '{target.path}', "
            f"expected {want} (had {int(old.sum())})."
        )


def _host_value(value):
    """A `plan` entry as Python ints (a tuple stays a tuple)."""
    if isinstance(value, tuple | list):
        return tuple(int(v) for v in value)
    return int(value)


def _check_total(targets, olds, news, want: int, who: str) -> None:
    """The check of a cross-layer update: shapes, and the total active count."""
    for target, new in zip(targets, news):
        if tuple(new.shape) != target.shape:
            raise AssertionError(f"{who} produced a mask of shape {new.shape} for "
                                 f"'{target.path}', expected {target.shape}.")
    got = sum(int(new.sum()) for new in news)
    if got != want:
        raise AssertionError(
            f"{who} produced {got} active connections over all weights, expected {want} "
            f"(had {sum(int(old.sum()) for old in olds)})."
        )


def floor_fraction(fraction: float, count: int) -> int:
    """floor(fraction · count), in float64 on the host."""
    return int(math.floor(float(fraction) * float(count)))
