"""An optimizer's per-weight state (slots, EMA copies) and how to reset it.

Slots are found in the optimizer's lists aligned with its trainable variables
(SGD momentum, Adam/AdamW m and v, RMSprop, Adagrad and Ftrl accumulators,
...). A regrown connection's slots are reset to the value a fresh optimizer
of the same config starts from: dst builds one on tiny proxy variables once
and reads it, so `Ftrl(initial_accumulator_value=0.1)` resets to 0.1, Adam to 0.
"""

from __future__ import annotations

import keras
import numpy as np

from dst import _compat

__all__ = ["OptimizerState"]


def _aligned_lists(opt) -> dict[str, list]:
    """{attribute: list} for the optimizer's lists aligned with its variables:
    one entry (a variable of the same shape, or None) per trainable variable."""
    tracked = _compat.optimizer_variables(opt)
    ema = _compat.ema_variables(opt)
    return {
        name: value for name, value in _compat.optimizer_lists(opt).items()
        if len(value) == len(tracked) and value
        and value is not tracked and value is not ema
        and any(x is not None for x in value)
        and all(x is None or (isinstance(x, keras.Variable)
                              and tuple(x.shape) == tuple(v.shape))
                for x, v in zip(value, tracked))
    }


class OptimizerState:
    """The slots and EMA copies of the sparse weights of one optimizer.

    Args:
        optimizer: the optimizer that steps the weights (a
            `LossScaleOptimizer` is unwrapped).
        variables: the sparse weight variables, in target order.

    Raises:
        ValueError: when the optimizer holds weight-shaped state that cannot
            be attributed to a weight, or whose initial value cannot be read.
    """

    def __init__(self, optimizer, variables, all_variables):
        self.optimizer = _compat.inner_optimizer(optimizer)
        self.variables = list(variables)
        if not self.optimizer.built:  # as its first `apply` would
            optimizer.build(list(all_variables))
        self._resolve()

    @property
    def ema(self) -> bool:
        return bool(getattr(self.optimizer, "use_ema", False))

    def _resolve(self) -> None:
        opt = self.optimizer
        lists = _aligned_lists(opt)
        initial = _initial_values(opt, self.variables, sorted(lists))
        slots, emas = [], []
        ema = _compat.ema_variables(opt)
        for i, v in enumerate(self.variables):
            idx = _compat.variable_index(opt, v)
            slots.append([
                (lists[name][idx], initial[name][i]) for name in sorted(lists)
                if lists[name][idx] is not None
                and tuple(lists[name][idx].shape) == tuple(v.shape)
            ])
            emas.append(ema[idx] if ema and ema[idx] is not None else None)
        attributed = {id(s) for lst in lists.values() for s in lst if s is not None}
        attributed |= {id(e) for e in ema if e is not None}
        shapes = {tuple(v.shape) for v in self.variables}
        stray = [s.path for s in opt.variables
                 if tuple(s.shape) in shapes and len(s.shape) >= 2 and id(s) not in attributed]
        if stray:
            raise ValueError(
                f"dst cannot reset the state of optimizer {type(opt).__name__} for "
                f"regrown connections: state {stray} is not stored per weight in "
                "the way Keras' built-in optimizers store it. Use SGD, Adam, "
                "AdamW, RMSprop, Adagrad, Adamax, Nadam, Lion, Ftrl or another "
                "built-in optimizer."
            )
        self._slots, self._ema = slots, emas

    def slots(self, index: int) -> list:
        """The slot variables of the `index`-th sparse weight."""
        return [slot for slot, _ in self._slots[index]]

    def variables_of(self, index: int) -> list:
        """Every optimizer variable an update of the `index`-th weight may write."""
        average = self._ema[index]
        return self.slots(index) + ([average] if average is not None else [])

    def mask_ema(self, masks) -> None:
        """Zeroes the EMA copies where `masks` (one per variable) are False."""
        if not self.ema:
            return
        for average, mask in zip(self._ema, masks):
            if average is not None:
                average.assign(_zero_outside(mask, average))

    def reset(self, index: int, grown, kept) -> None:
        """Resets the slots of `grown` entries; zeroes EMA outside `kept`."""
        for slot, init in self._slots[index]:
            slot.assign(keras.ops.where(grown, keras.ops.cast(init, slot.dtype), slot.value))
        average = self._ema[index]
        if average is not None:
            average.assign(_zero_outside(kept, average))


def _zero_outside(mask, variable):
    mask = mask.value if isinstance(mask, keras.Variable) else mask
    return keras.ops.where(mask, variable.value,
                           keras.ops.zeros(variable.shape, variable.dtype))


def _initial_values(opt, variables, names) -> dict[str, list]:
    """{list name: [initial scalar per variable]} from a fresh optimizer."""
    if not names:
        return {}
    try:
        fresh = type(opt).from_config(opt.get_config())
        proxies = [keras.Variable(np.zeros((1,) * len(v.shape), dtype=v.dtype), name="proxy")
                   for v in variables]
        fresh.build(proxies)
        fresh_lists = _aligned_lists(fresh)
        out = {}
        for name in names:
            values = []
            for p in proxies:
                slot = fresh_lists[name][_compat.variable_index(fresh, p)]
                values.append(None if slot is None else
                              float(_compat.to_numpy(slot).ravel()[0]))
            out[name] = values
        return out
    except Exception as err:  # noqa: BLE001 - re-raised with advice
        raise ValueError(
            f"dst cannot find the initial value of the per-weight state {names} of "
            f"optimizer {type(opt).__name__} ({type(err).__name__}: {err}), so it "
            "cannot reset regrown connections exactly. Use a built-in Keras optimizer."
        ) from err
