"""JAX backend: dst's step inside Keras' stateless, jitted train step.

Keras' JAX trainer threads the model's state through a jitted `train_step`
as values, and the optimizer steps inside `optimizer.stateless_apply`, in a
`StatelessScope` that maps only the trainable and optimizer variables. A
variable outside that state would be a constant frozen at trace time, and
its assignments would be lost. So, for the duration of a dst `fit`:

- dst's own variables (masks, ITOP records, skip counters) are registered as
  model state (`dst._compat.track_state`), so Keras threads, shards, donates
  and syncs them like its own non-trainable variables;
- the train step is traced with the inner optimizer's `stateless_apply`
  mapping those variables too. Their values enter through the list of
  trainable values (which a `LossScaleOptimizer` passes to its inner
  optimizer and returns unchanged on a skipped step) and leave the same way,
  so no traced value crosses a conditional's boundary.

Inside, the update runs as in the other backends (`dst.backend._generic`),
with masks computed by `keras.ops` (`dst._select.OPS`) in a traced step, and
with numpy when the step runs eagerly (`jit_compile=False`).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from dst import _compat
from dst.backend import _generic
from dst.backend._generic import no_autograph, variable_key
from dst.backend._hook import SparseStep

__all__ = ["computes_in_graph", "guarded_update", "host_call", "in_graph", "no_autograph",
           "plain_train_function", "read_after", "register", "release", "resolve_jit",
           "sparse_train_function", "step_hook", "variable_key"]

def in_graph(model) -> bool:
    """JAX traces every step: masks are computed in-graph."""
    return True


def host_call(fn, inputs, dtypes):
    """Runs `fn` on numpy copies of concrete (untraced) `inputs`."""
    return fn(*[np.asarray(x) for x in inputs])


def is_traced(x) -> bool:
    """Whether `x` is a value of a function being traced (then masks are
    computed in-graph) rather than a concrete array (then on the host)."""
    return isinstance(x, jax.core.Tracer)


def resolve_jit(in_graph, jit) -> bool:
    """JAX traces every step: masks are always computed in-graph in `fit`."""
    return in_graph


def computes_in_graph(jit, value) -> bool:
    """In-graph when the step is traced; on the host for concrete arrays."""
    return is_traced(value)


def guarded_update(pred, step, jit, update, compute, keep, write) -> None:
    """The update where branches cannot assign: `lax.cond` returns the new
    masks (`compute()`, or `keep()`'s old ones), and `write` writes them after
    it, unconditionally. The writes are elementwise and change nothing when
    the masks did not change, so XLA fuses them with the optimizer's update.
    A concrete predicate branches in Python (an eager `lax.cond` would
    compile both branches at every call)."""
    if not is_traced(pred):
        if bool(pred):
            write(compute())
        return
    write(jax.lax.cond(pred, compute, keep))


def _state_variables(state) -> list:
    return [v for _, variables in state for v in variables]


@contextlib.contextmanager
def step_hook(optimizer, sparse: SparseStep):
    """`dst.backend._generic.step_hook`, refusing a Keras step that cannot
    carry dst's variables.

    A train step Keras compiles without dst (`model.train_on_batch`, or a
    fit without a dst callback) runs the optimizer in a `StatelessScope` that
    maps only its own variables: dst's masks would be read as constants and
    their updates dropped. Such a step raises instead.
    """
    masks = list(sparse.masks.values())

    def run(step, grads):
        if masks and _compat.in_stateless_scope() and not _compat.is_mapped(masks[0]):
            raise RuntimeError(
                "dst on JAX: this optimizer step runs inside a Keras train step built "
                "without dst (e.g. model.train_on_batch under `updater.attach()`), which "
                "cannot carry dst's masks. Train with model.fit(callbacks=[...]) and a "
                "dst callback, or call optimizer.apply(grads, variables) yourself under "
                "`updater.attach()` (or `updater.update(step, grads)` after it)."
            )
        return sparse.run(step, grads)

    with _generic.step_hook(optimizer, SparseStep(run, sparse.masks, sparse.dense)):
        yield


def sparse_train_function(model, optimizer, sparse, state):
    """The model's train function with `sparse` hooked into `optimizer` (see module)."""
    if optimizer is not model.optimizer:
        raise ValueError(
            "On the JAX backend dst drives the optimizer given to `model.compile` "
            f"(here {getattr(model.optimizer, 'name', None)!r}); a train_step that steps "
            f"its own optimizer ({getattr(optimizer, 'name', optimizer)!r}) keeps that "
            "optimizer's state outside Keras' stateless step, which dst cannot thread. "
            "Use the TensorFlow or PyTorch backend for such a train_step, or a custom "
            "loop with `updater.update(step, grads)`."
        )
    register(model, state)
    extra = _state_variables(state)
    outer, inner = optimizer, _compat.inner_optimizer(optimizer)
    original_step = model.train_step

    def train_step(step_state, data):
        positions = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        where = [positions[id(v)] for v in extra]
        carrier = {"in": [step_state[1][i] for i in where], "out": None}
        with _Threaded(outer, inner, extra, carrier), step_hook(optimizer, sparse):
            logs, (tv, ntv, ov, mv) = original_step(step_state, data)
        assert carrier["out"] is not None, "_Threaded sets it inside the step"
        ntv = list(ntv)
        for i, value in zip(where, carrier["out"]):
            ntv[i] = value
        return logs, (tv, ntv, ov, mv)

    model.train_step = train_step
    previous = model.train_function
    try:
        model.make_train_function(force=True)
        function = model.train_function
    finally:
        del model.__dict__["train_step"]
        model.train_function = previous
    return function


def plain_train_function(model, optimizer, state):
    """A train function that changes no mask. The state of its calls still
    holds dst's variables (they stay registered until a dst fit ends), so it
    threads them."""
    return sparse_train_function(model, optimizer, SparseStep(_hold), state)


def _hold(step, grads):
    """A sparse step that changes no mask."""


def read_after(model, result, variables) -> list:
    """Host values of optimizer `variables` in the state a train-function call
    returned (`(logs, (trainable, non_trainable, optimizer, metrics))`): the
    model's own variables are not synced in the middle of an epoch."""
    values = result[1][2]
    position = {id(v): i for i, v in enumerate(model.optimizer.variables)}
    return [np.asarray(values[position[id(v)]]) for v in variables]


def register(model, state) -> None:
    """Registers dst's variables as model state for a fit (see the module)."""
    for layer, variables in state:
        _compat.track_state(layer, variables)


def release(model, state) -> None:
    """Unregisters dst's variables from the model state (after `fit` synced them)."""
    for layer, variables in state:
        _compat.untrack_state(layer, variables)


class _Threaded:
    """Patches `stateless_apply` so that the inner optimizer's scope also maps
    dst's variables, carried in and out after the trainable values."""

    def __init__(self, outer, inner, extra, carrier):
        self.outer, self.inner, self.extra, self.carrier = outer, inner, extra, carrier

    def __enter__(self):
        inner, extra, carrier = self.inner, self.extra, self.carrier
        n = len(_compat.optimizer_variables(inner))
        outer_apply = self.outer.stateless_apply

        def inner_apply(optimizer_variables, grads, trainable_variables):
            values = list(trainable_variables)
            mapping = (list(zip(_compat.optimizer_variables(inner), values[:n]))
                       + list(zip(inner.variables, optimizer_variables))
                       + list(zip(extra, values[n:])))
            with _compat.StatelessScope(state_mapping=mapping) as scope:
                inner.apply(list(grads)[:n])
            new = [scope.get_current_value(v) for v in _compat.optimizer_variables(inner)]
            new += [scope.get_current_value(v) for v in extra]
            return new, [scope.get_current_value(v) for v in inner.variables]

        def apply(optimizer_variables, grads, trainable_variables):
            values = list(trainable_variables) + list(carrier["in"])
            step = inner_apply if self.outer is inner else outer_apply
            new, optimizer_values = step(optimizer_variables, grads, values)
            carrier["out"] = list(new[n:])
            return list(new[:n]), optimizer_values

        inner.stateless_apply = inner_apply
        if self.outer is not inner:
            self.outer.stateless_apply = apply
        else:
            inner.stateless_apply = apply
        return self

    def __exit__(self, *exc):
        for opt in {id(self.outer): self.outer, id(self.inner): self.inner}.values():
            opt.__dict__.pop("stateless_apply", None)
        return False
