"""Schedules: small frozen objects that map an optimizer step to a value."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["UpdateSteps", "PolynomialSparsity", "DropFraction", "DROP_FRACTION_SCHEDULES"]


@dataclasses.dataclass(frozen=True)
class UpdateSteps:
    """Which steps update masks: begin, begin + freq, ... while <= end.

    With `include_end`, `end` is an update step too, so a schedule that must
    reach its final value by `end` (gradual magnitude pruning) does, whatever
    `freq` is.
    """

    begin: int
    end: int
    freq: int
    include_end: bool = False

    def __call__(self, step: int) -> bool:
        if self.include_end and step == self.end:
            return True
        return self.begin <= step <= self.end and (step - self.begin) % self.freq == 0

    def next_update(self, step: int) -> int | None:
        """The first update step at or after `step`, or None if there is none."""
        found = None
        if step <= self.end and self.begin <= self.end:
            first = max(step, self.begin)
            first = self.begin + -(-(first - self.begin) // self.freq) * self.freq
            found = first if first <= self.end else None
        if self.include_end and step <= self.end and (found is None or self.end < found):
            found = self.end
        return found

    def steps(self) -> list[int]:
        """Every update step, in order."""
        out = list(range(self.begin, self.end + 1, self.freq))
        if self.include_end and (not out or out[-1] != self.end):
            out.append(self.end)
        return out


@dataclasses.dataclass(frozen=True)
class PolynomialSparsity:
    """Zhu & Gupta 2017: s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t_end − t0))^power.

    The same values as TF-MOT's `PolynomialDecay` for the same arguments;
    before `begin` it is s_i, from `end` on it is s_f (also when `end` equals
    `begin`: the one update step prunes to s_f).
    """

    initial: float
    final: float
    begin: int
    end: int
    power: float = 3

    def __call__(self, step: int) -> float:
        if step >= self.end:
            return self.final
        p = max(0.0, (step - self.begin) / max(self.end - self.begin, 1))
        return self.final + (self.initial - self.final) * (1.0 - p) ** self.power


@dataclasses.dataclass(frozen=True)
class DropFraction:
    """The fraction of active connections SET and RigL replace at a step.

    kind "cosine" (RigL): α/2 · (1 + cos(π (t − begin)/(end − begin)));
    "linear": α · (1 − (t − begin)/(end − begin)); "constant": α.
    """

    alpha: float
    begin: int
    end: int
    kind: str = "cosine"

    def __call__(self, step: int) -> float:
        p = min(1.0, max(0.0, (step - self.begin) / max(self.end - self.begin, 1)))
        if self.kind == "cosine":
            return self.alpha / 2 * (1 + math.cos(math.pi * p))
        if self.kind == "linear":
            return self.alpha * (1 - p)
        return self.alpha


DROP_FRACTION_SCHEDULES = ("cosine", "linear", "constant")
