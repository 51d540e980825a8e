"""Where an `Updater`'s new masks are computed: on the host (numpy, through
`dst.backend.host_call`) or in-graph (`keras.ops`, under XLA and on JAX),
weight by weight or planned across weights (`plan`). Each returns
(new mask, whether the update ran) per weight, for the engine to write.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from dst import _select, backend
from dst.backend import host_call
from dst.nm import kit_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from dst._model import Target
    from dst._select import Array, Kit
    from dst.schedules import UpdateSteps

__all__ = ["MaskPaths"]


class MaskPaths:
    """The mask computations of an `Updater` (see the module)."""

    if TYPE_CHECKING:  # set by `Engine.bind`, and the hooks of `Updater`
        targets: list[Target]
        schedule: UpdateSteps | None
        jit: bool
        seed: int
        _seed: keras.Variable
        _table: Any
        origin: int

        def _relative(self, step: Any) -> Any: ...

        @property
        def cross_layer(self) -> bool: ...

        def step_value(self, step: int, index: int) -> Any: ...

        def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None,
                     value: Any, salt: Callable[[int], Any]) -> Array: ...

        def expected_active(self, index: int, old: np.ndarray, step: int) -> int: ...

        def plan(self, kit: Kit, values: list, weights: list, masks: list,
                 grads: list) -> list: ...

    def _new_mask(self, index, step, grad, old):
        """(new mask, whether the update ran) of the `index`-th weight."""
        weight = self.targets[index].variable
        if backend.computes_in_graph(self.jit, old):
            return self._masks_in_graph(index, step, weight, old, grad)
        return self._masks_on_host(index, step, weight, old, grad)

    def _masks_on_host(self, index, step, weight, old, grad):
        target = self.targets[index]

        def compute(step, w, m, *grads):
            step = int(step)
            g = grads[0] if grads else None
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
                            functools.partial(self._salt_in_graph, step, index))
        return ops.where(ok, new, old), ok

    def _value_in_graph(self, step, index):
        """`step_value(step, index)` read from the table, for a traced step."""
        ops = keras.ops
        steps, table = self._value_table()
        relative = ops.convert_to_tensor(steps - self.origin)  # the table, from the origin
        row = ops.minimum(ops.sum(ops.cast(relative <= self._relative(step), "int32")) - 1,
                          len(steps) - 1)
        return ops.take(ops.take(ops.convert_to_tensor(table), ops.maximum(row, 0), axis=0),
                        index, axis=0)  # an int, or a vector for a tuple `step_value`

    def _value_table(self):
        """Update steps and the `step_value` of each (step, weight), for XLA."""
        if self._table is None:
            assert self.schedule is not None  # set by `bind`
            steps = self.schedule.steps()
            table = np.array([[self.step_value(s, i) for i in range(len(self.targets))]
                              for s in steps], dtype="int32")
            self._table = (np.asarray(steps, dtype="int32"), table)
        return self._table

    def _planned_masks(self, step, by_index, olds) -> list:
        """[(new mask, ok)] of every weight, through `plan`."""
        if backend.computes_in_graph(self.jit, olds[0]):
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
                new = self.new_mask(kit_for(_select.NUMPY, target), weights[i], masks[i],
                                    grads[i], value, _host_salt(self.seed, step, i))
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
        # The seed is read from the model's variable: programs outlive a seed.
        return _select.salt(keras.ops, self._seed.value, step, index, role)


def _check(target, old, new, want: int, who: str) -> None:
    got = int(new.sum())
    if tuple(new.shape) != target.shape or got != want:
        raise AssertionError(
            f"{who} produced {got} active connections for '{target.path}', "
            f"expected {want} (had {int(old.sum())})."
        )


def _host_salt(seed: int, step: int, index: int) -> Callable[[int], int]:
    """`salt(role)` of one weight's update on the host."""
    return lambda role: int(_select.salt(np, seed, step, index, role))


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
