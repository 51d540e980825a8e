"""`Updater`: the algorithm API, the hooks every dst algorithm overrides.

`new_mask` (and `step_value`); `drop_scores` and `grow_scores`, the scores
every built-in rule drops and grows by; `observe` and `plan` for
cross-layer ones (SNFS). Block and N:M structure are applied to whatever
these return: a subclass's `new_mask` and `expected_active` are run on the
grid of blocks for a block-masked weight (`dst.blocks.blockwise`), and the
mask `new_mask` returns for an N:M weight is made N:M (`dst.nm.n_m_wise`),
so overriding a method cannot lose either. Binding, the schedule, the mask paths and the writes
are the engine's (`dst.updaters.engine`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from dst._model import Target
from dst._select import Array, Kit
from dst._validate import as_end_step, as_int
from dst.blocks import blockwise, counted_in_blocks
from dst.nm import n_m_wise
from dst.schedules import UpdateSteps
from dst.updaters.engine import Engine

__all__ = ["Updater", "floor_fraction"]


class Updater(Engine):
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
    #: Whether the rule runs on block masks (`dst.sparsify(..., block=...)`);
    #: `bind` refuses a block-masked model for one that does not.
    supports_blocks = True
    #: Whether the updater trains a model without masks too (pruning: its
    #: `prepare` gives such a model all-ones masks).
    starts_dense = False
    #: Whether the base runs the rule on the grid of blocks (block L2 norms).
    #: False for a rule that reads `kit.block` and pools blocks itself.
    blocks_by_base = True
    #: Whether the rule runs on N:M masks (`dst.sparsify(..., n_m=...)`);
    #: `bind` refuses an N:M model for one that does not.
    supports_n_m = True
    #: Whether the base makes the rule's masks N:M (`dst.nm.n_m_wise`).
    #: False for a rule that reads `kit.n_m` and keeps the structure itself.
    n_m_by_base = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Structure belongs to the base, not to each rule: a rule's own
        # `new_mask` runs on the grid of blocks and its `expected_active`
        # counts blocks, and its masks are made N:M, whether or not the
        # subclass thought of blocks or N:M.
        super().__init_subclass__(**kwargs)
        wrappers = []
        if cls.supports_blocks and cls.blocks_by_base:
            wrappers += [("new_mask", blockwise, "_dst_blockwise"),
                         ("expected_active", counted_in_blocks, "_dst_blockwise")]
        if cls.n_m_by_base:
            wrappers.append(("new_mask", n_m_wise, "_dst_n_m"))
        for name, structured, marker in wrappers:
            method = vars(cls).get(name)
            if method is not None and not getattr(method, marker, False):
                setattr(cls, name, structured(method))

    def __init__(self, *, update_freq: int = 100, begin_step: int = 0,
                 end_step: int | float | None = 0.75, seed: int | None = None):
        who = type(self).__name__
        self.update_freq = as_int(update_freq, "update_freq", who, minimum=1)
        self.begin_step = as_int(begin_step, "begin_step", who, minimum=0)
        self.end_step = as_end_step(end_step, self.begin_step, who)
        self._fresh_seed = seed is None
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.seed = as_int(seed, "seed", who)
        self.targets: list[Target] = []
        self.schedule: UpdateSteps | None = None
        self.jit = False
        self.origin, self.begin = 0, self.begin_step  # until `bind` sets them

    def prepare(self, model: keras.Model) -> None:
        """Adds what `model` must hold before any callback loads state (called
        by `DSTCallback.set_model`). Pruning gives a dense model all-ones masks
        here, so that a `BackupAndRestore` checkpoint restores them."""

    # -- the algorithm hooks ------------------------------------------------
    def step_value(self, step: int, index: int) -> int:
        """The per-step count `new_mask` needs (connections to drop, or to keep).

        An int computed on the host (so it is the same on every backend and
        path), or a tuple of ints of one length (`value[0]`, `value[1]`, ...).
        """
        return 0

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        """Returns the new bool mask of one weight. Subclasses override this.

        Args:
            kit: `dst._select.NUMPY` or `OPS` (`kit.xp`: numpy or `keras.ops`;
                `kit.select(scores, candidates, k, salt)`, `kit.count(mask)`),
                or a `dst.blocks.BlockKit` for block masks (`kit.block`), or a
                `dst.nm.NMKit` for N:M masks (`kit.n_m`; only where
                `n_m_by_base` is False: otherwise the rule sees the plain kit
                and the base makes its result N:M).
            weight: the weight's values, an array of its shape.
            mask: its current bool mask, an array of the same shape.
            grad: its gradient, an array of the same shape, or None.
            value: `step_value(step, index)`.
            salt: `salt(role)` gives the seeded tie-break salt for a role.
        """
        raise NotImplementedError

    @counted_in_blocks
    def expected_active(self, index: int, old: np.ndarray, step: int) -> int:
        """Active count the new mask must have: by default, unchanged.

        Checked per weight; for a cross-layer updater, only the sum.
        """
        return int(old.sum())

    def drop_scores(self, kit: Kit, weight: Array, mask: Array,
                    grad: Array | None) -> Array | None:
        """The scores connections are dropped (pruned) by: lower goes first.

        Every built-in rule drops by these; the default is |weight|
        (magnitude). Return None to drop uniformly at random. Written with
        `kit.xp` (numpy or `keras.ops`); for a block-masked weight, `weight`
        and `grad` are block L2 norms.
        """
        return kit.xp.abs(weight)

    def grow_scores(self, kit: Kit, weight: Array, mask: Array,
                    grad: Array | None) -> Array | None:
        """The scores connections are grown by: higher goes first.

        The default, None, grows uniformly at random (SET); RigL, GraNet,
        SRigL and SNFS return |grad| (SNFS' `grad` is its momentum). Written
        like `drop_scores`.
        """
        return None

    # -- cross-layer hooks (SNFS) -------------------------------------------
    def observe(self, step: Array, grads: dict) -> dict:
        """Runs at every step, update step or not, before the update.

        Args:
            step: the optimizer step (an int, or a tensor inside a step).
            grads: {weight index: gradient} (the dense gradients when
                `needs_gradients`), tensors.

        Returns:
            The {index: array} passed as `grad` to `plan` and `new_mask`
            (default: `grads`). Written in `keras.ops`; its state lives in
            variables listed by `state_variables` (SNFS' momentum).
        """
        return grads

    def plan(self, kit: Kit, values: list, weights: list, masks: list, grads: list) -> list:
        """The per-weight values of one update, seeing every weight at once.

        Overridden by cross-layer updaters (SNFS splits the regrowth across
        weights). Runs once per update step, before `new_mask`, whose `value`
        becomes its output. Inputs are numpy arrays and ints on the host,
        tensors and int32 scalars in a compiled step: use `kit.xp`, no Python
        branch on values. The update is skipped (masks kept, each weight
        counted as skipped) when a weight or a `grad` it would see is not
        finite.

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


def floor_fraction(fraction: float, count: int) -> int:
    """floor(fraction · count), in float64 on the host."""
    return int(math.floor(float(fraction) * float(count)))
