"""`Updater`: the mask-update loop shared by every algorithm.

An updater is a plain object: bind it to a model, then call
`update(step, grads)` after each optimizer step. Subclasses override one hook,
`new_mask`, or (for drop-and-grow methods) `grow_scores`.
"""

from __future__ import annotations

import keras
import numpy as np

from dst._model import Target, dynamic_targets
from dst.core import apply_mask
from dst.schedules import UpdateSteps
from dst.updaters.slots import reset_slots, slot_variables

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

    def __init__(self, *, update_freq=100, begin_step=0, end_step=0.75, seed=None):
        if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
            raise ValueError(
                f"`update_freq` must be an int >= 1. Received: update_freq={update_freq!r}"
            )
        if not isinstance(begin_step, int) or begin_step < 0:
            raise ValueError(
                f"`begin_step` must be an int >= 0. Received: begin_step={begin_step!r}"
            )
        if end_step is not None:
            if isinstance(end_step, float) and not 0.0 < end_step <= 1.0:
                raise ValueError(
                    "`end_step` as a float is a fraction of the fit's steps and "
                    f"must be in (0, 1]. Received: end_step={end_step!r}"
                )
            if isinstance(end_step, int) and end_step < begin_step:
                raise ValueError(
                    f"`end_step` must not be before `begin_step`. Received: "
                    f"end_step={end_step!r}, begin_step={begin_step!r}"
                )
        self.update_freq = update_freq
        self.begin_step = begin_step
        self.end_step = end_step
        self.seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
        self.targets: list[Target] = []
        self.schedule = None

    # -- binding ------------------------------------------------------------
    def bind(self, model: keras.Model, total_steps: int | None = None,
             first_step: int = 0, optimizer=None) -> None:
        """Finds the model's dynamic weights and resolves `end_step`.

        Args:
            model: a sparsified Keras 3 model.
            total_steps: steps of the training run; needed when `end_step`
                is a float or None.
            first_step: optimizer step at which the run started.
            optimizer: the optimizer whose state is reset for regrown
                connections. Defaults to `model.optimizer`.
        """
        self.model = model
        self.optimizer = optimizer if optimizer is not None else model.optimizer
        self.targets = self._targets(model)
        self.end = self._resolve_end(total_steps, first_step)
        self.schedule = UpdateSteps(self.begin_step, self.end, self.update_freq)

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

    def is_update_step(self, step: int) -> bool:
        """Whether masks change after optimizer step `step` (0-based)."""
        return self.schedule(int(step))

    # -- the update ---------------------------------------------------------
    def update(self, step: int, grads=None) -> bool:
        """Updates the masks if `step` is an update step.

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
        if not self.is_update_step(step):
            return False
        grads = self._grads_by_path(grads)
        if self.optimizer is None:
            raise ValueError(
                f"{type(self).__name__} resets optimizer state of regrown "
                "connections: compile the model or pass "
                "`bind(model, optimizer=...)`."
            )
        slots = slot_variables(self.optimizer, [t.variable for t in self.targets])
        for index, t in enumerate(self.targets):
            weight = t.variable.numpy()
            old = t.constraint.numpy()
            rng = np.random.default_rng([self.seed, int(step), index])
            new = self.new_mask(weight, old, grads.get(t.path), int(step), index, rng)
            _check(t, new, self.expected_active(index, old, int(step)), type(self).__name__)
            apply_mask(t, new)
            grown = new & ~old
            reset_slots(slots[id(t.variable)], grown)
        return True

    def new_mask(self, weight, mask, grad, step, index, rng) -> np.ndarray:
        """Returns the new bool mask of one weight. Subclasses override this."""
        raise NotImplementedError

    def expected_active(self, index: int, old: np.ndarray, step: int) -> int:
        """Active count the new mask must have: by default, unchanged."""
        return int(old.sum())

    # -- helpers ------------------------------------------------------------
    def _grads_by_path(self, grads) -> dict:
        if grads is None:
            if self.needs_gradients:
                raise ValueError(
                    f"{type(self).__name__}.update needs `grads` (the dense "
                    "gradients of the current batch) at update steps."
                )
            return {}
        if isinstance(grads, dict):
            return {k: keras.ops.convert_to_numpy(g) for k, g in grads.items()}
        variables = self.model.trainable_variables
        if len(grads) != len(variables):
            raise ValueError(
                f"`grads` has {len(grads)} entries but the model has "
                f"{len(variables)} trainable variables; pass a dict "
                "{weight path: gradient} or a list aligned with "
                "model.trainable_variables."
            )
        wanted = {id(t.variable) for t in self.targets}
        return {
            v.path: keras.ops.convert_to_numpy(g)
            for v, g in zip(variables, grads) if id(v) in wanted
        }


def _check(target, new, want: int, who: str) -> None:
    got = int(new.sum())
    if tuple(new.shape) != target.shape or got != want:
        raise AssertionError(
            f"{who} produced {got} active connections for '{target.path}', "
            f"expected {want}."
        )


def lowest(scores: np.ndarray | None, candidates: np.ndarray, k: int,
           rng: np.random.Generator, *, largest: bool = False) -> np.ndarray:
    """Flat indices of the k candidates with the lowest (or largest) scores.

    Exact ties are broken by a seeded random draw, so the choice is
    deterministic for a given generator and never biased by position.
    `scores=None` means all candidates tie: k of them uniformly at random.
    """
    idx = np.flatnonzero(candidates.ravel())
    if k <= 0 or idx.size == 0:
        return idx[:0]
    if k >= idx.size:
        return idx
    if scores is None:
        return np.sort(idx[rng.choice(idx.size, size=k, replace=False)])
    values = scores.ravel()[idx]
    if largest:
        np.negative(values, out=values)
    # Everything strictly below the k-th smallest value, then as many of the
    # entries tied with it as needed, drawn with the seeded generator.
    kth = np.partition(values, k - 1)[k - 1]
    below = idx[values < kth]
    ties = idx[values == kth]
    picked = rng.choice(ties.size, size=k - below.size, replace=False)
    return np.concatenate([below, ties[np.sort(picked)]])
