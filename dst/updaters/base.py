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
override `grow_scores`. Custom loops call `update(step, grads)` directly.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np

from dst import _compat, _select, backend
from dst._model import Target, check_keras3_model, dynamic_targets, masked_targets
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
        begin_step: first optimizer step that updates masks. Defaults to 0.
        end_step: last step that may update masks: an int, or a float in
            (0, 1] meaning that fraction of the total steps given to `bind`.
        seed: seed of the random draws, which are made from (seed, step,
            weight index), so a run is reproducible and resumable.
            Defaults to None (a fresh seed per instance).
    """

    needs_gradients = False
    update_at_end = False  # also update at `end` when it is off the grid

    def __init__(self, *, update_freq=100, begin_step=0, end_step=0.75, seed=None):
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
            seed = int(np.random.SeedSequence().entropy % 2**32)
        self.seed = as_int(seed, "seed", who)
        self.targets: list[Target] = []
        self.schedule = None
        self.jit = False

    # -- binding ------------------------------------------------------------
    def bind(self, model: keras.Model, total_steps: int | None = None,
             first_step: int = 0, optimizer=None, *, jit: bool | None = None) -> None:
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

        Raises:
            ValueError: no masks, no optimizer, or an optimizer whose
                per-weight state dst cannot reset exactly.
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
        self.model = model
        self.optimizer = optimizer
        if self._fresh_seed:
            self.seed = _agreed_seed(model, self.seed)
            self._fresh_seed = False
        self.targets = self._targets(model)
        self.end = self._resolve_end(total_steps, first_step)
        self.schedule = UpdateSteps(self.begin_step, self.end, self.update_freq,
                                    self.update_at_end)
        with _compat.strategy_scope(model):
            self.state = OptimizerState(optimizer, [t.variable for t in self.targets],
                                        model.trainable_variables)
        # JAX traces every step: masks are always computed in-graph there.
        self.jit = backend.in_graph(model) if jit is None or backend.FUNCTIONAL else bool(jit)
        self._table = None
        self.skipped = [t.constraint.skipped for t in self.targets]
        self.active = [count_units(t) for t in self.targets]  # in blocks for block masks
        self._keys = {variable_key(t.variable): i for i, t in enumerate(self.targets)}
        # Every masked trainable weight (fixed masks too) gets a masked gradient.
        self._gradient_masks = {id(t.variable): t.constraint.mask
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
            return self.end_step
        if total_steps is None:
            raise ValueError(
                f"{type(self).__name__}: end_step={self.end_step!r} is relative to "
                "the number of training steps, which is unknown here (a "
                "generator without `steps_per_epoch`?). Pass `steps_per_epoch` "
                "to fit or give `end_step` as an int."
            )
        fraction = 1.0 if self.end_step is None else self.end_step
        return max(self.begin_step, first_step + int(round(fraction * total_steps)) - 1)

    def state_variables(self) -> list:
        """(layer, [variables]) of the mask state a training step reads and writes."""
        return [(t.layer, t.constraint.state_variables) for t in self.targets]

    def attach(self):
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

    def as_sparse_step(self) -> backend.SparseStep:
        """What a backend hooks into the optimizer: `sparse_step`, the masks
        of the gradients the optimizer sees, and whether the step needs the
        dense gradient."""
        if self.schedule is None:
            raise RuntimeError(f"Call {type(self).__name__}.bind(model, ...) first.")
        return backend.SparseStep(self.sparse_step, dict(self._gradient_masks),
                                  self.needs_gradients)

    def is_update_step(self, step: int) -> bool:
        """Whether masks change after optimizer step `step` (0-based)."""
        return self.schedule(int(step))

    # -- the update ---------------------------------------------------------
    @no_autograph
    def update(self, step: int, grads=None) -> bool:
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
        if not self.is_update_step(step):
            return False
        by_index = self._grads_by_index(grads)
        for index in range(len(self.targets)):
            self._update_target(index, step, by_index.get(index))
        return True

    @no_autograph
    def sparse_step(self, step, grads: dict) -> None:
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
        if self.state.ema:
            # EMA averages the weights right after this hook: keep inactive
            # entries at exactly 0 there, every step.
            for t in self.targets:
                t.constraint.zero_masked()

        if self.schedule.end < self.schedule.begin:
            return  # no update step at all (FixedMasks)

        def update(at=step):
            for index in range(len(self.targets)):
                self._update_target(index, at, by_index.get(index))

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
        olds = [ops.convert_to_tensor(t.constraint.mask) for t in self.targets]
        pred = self._is_update_tensor(step)
        if not backend.is_traced(pred) and not bool(pred):
            return  # an eager step that is not an update step

        def compute():
            return [self._new_mask(i, step, by_index.get(i), olds[i])
                    for i in range(len(self.targets))]

        def keep():
            return [(old, ops.convert_to_tensor(True)) for old in olds]

        for index, (new, ok) in enumerate(backend.cond(pred, compute, keep)):
            self._write(index, olds[index], new, ok)

    def _update_target(self, index, step, grad) -> None:
        old = keras.ops.convert_to_tensor(self.targets[index].constraint.mask)
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
        t.constraint.mask.assign(new)
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
        steps, table = self._value_table()
        row = ops.minimum(ops.sum(ops.cast(ops.convert_to_tensor(steps) <= step, "int32")) - 1,
                          len(steps) - 1)
        value = ops.take(ops.take(ops.convert_to_tensor(table), ops.maximum(row, 0), axis=0),
                         index, axis=0)  # an int, or a vector for a tuple `step_value`
        safe_w = ops.where(ops.isfinite(weight), weight, ops.zeros(weight.shape, weight.dtype))
        safe_g = None if grad is None else ops.where(ops.isfinite(grad), grad,
                                                     ops.zeros(grad.shape, grad.dtype))
        new = self.new_mask(kit_for(_select.OPS, self.targets[index]), safe_w, old, safe_g, value,
                            lambda role: _select.salt(ops, self.seed, step, index, role))
        return ops.where(ok, new, old), ok

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

    def new_mask(self, kit, weight, mask, grad, value, salt):
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
        """Active count the new mask must have: by default, unchanged."""
        return int(old.sum())

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
        return {i: keras.ops.convert_to_tensor(g) for i, g in out.items() if g is not None}


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


def floor_fraction(fraction: float, count: int) -> int:
    """floor(fraction · count), in float64 on the host."""
    return int(math.floor(float(fraction) * float(count)))
