"""TF-MOT's pruning schedules: `PruningSchedule`, `ConstantSparsity`, `PolynomialDecay`.

Same names, arguments, defaults, validation errors and values as
`tfmot.sparsity.keras`, evaluated on the host with a Python int `step` (the
pruning step: 1 on the first training batch). Values are computed in
float32, as TF-MOT's tensors are, so the number of weights kept matches
TF-MOT's to the weight.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["ConstantSparsity", "PolynomialDecay", "PruningSchedule"]


class PruningSchedule(abc.ABC):
    """When to prune, and to which sparsity: `step -> (should_prune, sparsity)`.

    Subclass it to write your own schedule, as in TF-MOT. dst calls it on the
    host with a Python int (TF-MOT calls it with a step tensor): return a bool
    and a float (or anything `bool()` and `float()` accept, such as 0-d numpy
    arrays or eager tensors). The step is TF-MOT's pruning step, 1 on the
    first training batch of the optimizer, so `ConstantSparsity(s, 0,
    frequency=100)` first prunes on the 100th batch, as in TF-MOT. Implement
    `get_config` to save a model pruned with it.

    Examples:
        >>> import dst.tfmot as tfmot_sparsity
        >>> class EveryTen(tfmot_sparsity.PruningSchedule):
        ...     def __call__(self, step):
        ...         return step % 10 == 0, min(0.9, step / 100)
        ...     def get_config(self):
        ...         return {"class_name": "EveryTen", "config": {}}
        >>> EveryTen()(30)
        (True, 0.3)
    """

    def _should_prune_in_step(self, step: int, begin_step: int, end_step: int,
                              frequency: int) -> bool:
        """Whether `step` is in [begin_step, end_step] (no end when end_step < 0)
        and on the grid begin_step + n·frequency."""
        in_range = step >= begin_step and (step <= end_step or end_step < 0)
        return bool(in_range and (step - begin_step) % frequency == 0)

    def _validate_step(self, begin_step: int, end_step: int, frequency: int,
                       allow_negative_1: bool) -> None:
        """TF-MOT's checks of the step arguments, with its messages."""
        if begin_step < 0:
            raise ValueError("begin_step should be >= 0")
        if not allow_negative_1 and end_step == -1:
            raise ValueError("end_step cannot be -1.")
        if end_step != -1:
            if end_step < 0:
                raise ValueError("end_step can be -1 or >= 0")
            if end_step < begin_step:
                raise ValueError("begin_step should be <= end_step if end_step != -1")
        if frequency <= 0:
            raise ValueError("frequency should be > 0")

    def _validate_sparsity(self, sparsity: float, variable_name: str) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"{variable_name} must be in range [0,1)")

    def _candidate_steps(self, low: int, high: int) -> Iterable[int]:
        """The steps in [low, high] where this schedule may prune (all of them
        unless a subclass knows its grid), so that dst calls it only there."""
        return range(low, high + 1)

    def _last_step(self) -> int | None:
        """The last step that may prune, if known (None: no end)."""
        return None

    @abc.abstractmethod
    def __call__(self, step: int) -> tuple[Any, Any]:
        """Returns (should_prune, sparsity) at pruning step `step`."""
        raise NotImplementedError("PruningSchedule implementation must override __call__")

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """{"class_name": ..., "config": {constructor arguments}}, as TF-MOT."""
        raise NotImplementedError("PruningSchedule implementation override get_config")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruningSchedule:
        """A schedule from the "config" part of `get_config()`: `cls(**config)`."""
        return cls(**config)


class _GridSchedule(PruningSchedule):
    """A schedule that prunes on begin_step + n·frequency up to end_step."""

    begin_step: int
    end_step: int
    frequency: int

    def _candidate_steps(self, low: int, high: int) -> Iterable[int]:
        first = max(low, self.begin_step)
        first = self.begin_step + -(-(first - self.begin_step) // self.frequency) * self.frequency
        last = high if self.end_step < 0 else min(high, self.end_step)
        return range(first, last + 1, self.frequency)

    def _last_step(self) -> int | None:
        return None if self.end_step < 0 else self.end_step

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self.get_config()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config()["config"].items())
        return f"{type(self).__name__}({args})"


class ConstantSparsity(_GridSchedule):
    """Prunes to `target_sparsity` every `frequency` steps in [begin_step, end_step].

    Args:
        target_sparsity: the sparsity, in [0, 1).
        begin_step: first pruning step (>= 0).
        end_step: last pruning step; -1 (the default) prunes until training ends.
        frequency: steps between two prunings (> 0). Defaults to 100.

    Raises:
        ValueError: TF-MOT's errors, e.g. "begin_step should be >= 0".

    Examples:
        >>> from dst.tfmot import ConstantSparsity
        >>> ConstantSparsity(0.5, begin_step=100, frequency=10)(110)
        (True, 0.5)
    """

    def __init__(self, target_sparsity: float, begin_step: int, end_step: int = -1,
                 frequency: int = 100):
        self.target_sparsity = target_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency
        self._validate_step(begin_step, end_step, frequency, True)
        self._validate_sparsity(target_sparsity, "target_sparsity")

    def __call__(self, step: int) -> tuple[bool, float]:
        return (self._should_prune_in_step(step, self.begin_step, self.end_step,
                                           self.frequency),
                float(np.float32(self.target_sparsity)))

    def get_config(self) -> dict[str, Any]:
        return {"class_name": type(self).__name__,
                "config": {"target_sparsity": self.target_sparsity,
                           "begin_step": self.begin_step, "end_step": self.end_step,
                           "frequency": self.frequency}}


class PolynomialDecay(_GridSchedule):
    """Zhu & Gupta's schedule: s = s_f + (s_i − s_f)(1 − (step − begin)/(end − begin))^power.

    "To prune or not to prune" (Zhu & Gupta 2017). Prunes every `frequency`
    steps in [begin_step, end_step]; the sparsity grows from
    `initial_sparsity` to `final_sparsity` (reached at `end_step`, which is a
    pruning step only when it is on the grid begin_step + n·frequency, as in
    TF-MOT).

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1).
        begin_step: first pruning step (>= 0).
        end_step: last pruning step (>= begin_step; -1 is refused).
        power: exponent of the decay. Defaults to 3.
        frequency: steps between two prunings (> 0). Defaults to 100.

    Raises:
        ValueError: TF-MOT's errors, e.g. "end_step cannot be -1.".

    Examples:
        >>> from dst.tfmot import PolynomialDecay
        >>> should, sparsity = PolynomialDecay(0.2, 0.8, begin_step=0, end_step=100)(50)
        >>> should, round(sparsity, 4)
        (False, 0.725)
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int,
                 end_step: int, power: float = 3, frequency: int = 100):
        self.initial_sparsity = initial_sparsity
        self.final_sparsity = final_sparsity
        self.power = power
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency
        self._validate_step(begin_step, end_step, frequency, False)
        self._validate_sparsity(initial_sparsity, "initial_sparsity")
        self._validate_sparsity(final_sparsity, "final_sparsity")

    def __call__(self, step: int) -> tuple[bool, float]:
        # float32 throughout, in TF-MOT's order of operations.
        f32 = np.float32
        span = self.end_step - self.begin_step
        with np.errstate(divide="ignore", invalid="ignore"):
            p = f32(step - self.begin_step) / f32(span)
        p = f32(1.0) if math.isnan(p) else min(f32(1.0), max(f32(0.0), p))
        decay = np.power(f32(1.0) - p, f32(self.power))
        sparsity = f32(self.initial_sparsity - self.final_sparsity) * decay + f32(
            self.final_sparsity)
        return (self._should_prune_in_step(step, self.begin_step, self.end_step,
                                           self.frequency),
                float(sparsity))

    def get_config(self) -> dict[str, Any]:
        return {"class_name": type(self).__name__,
                "config": {"initial_sparsity": self.initial_sparsity,
                           "final_sparsity": self.final_sparsity, "power": self.power,
                           "begin_step": self.begin_step, "end_step": self.end_step,
                           "frequency": self.frequency}}


BUILT_IN = {"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay}
