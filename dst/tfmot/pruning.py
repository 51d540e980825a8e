"""TF-MOT's magnitude pruning as a dst updater: `TFMOTPruning`, its mask
`PruningMask` and its callback `UpdatePruningStep`.

Each pruned weight carries a `PruningMask`: a dst mask (all ones at first)
that also holds the weight's `PruningSchedule`, `block_size` and
`block_pooling_type` (or `sparsity_m_by_n`), so that `clone_model`, `.keras` files and
`BackupAndRestore` carry them. At each bind (the first epoch of a `fit`) the
updater asks every schedule, on the host, which steps of the fit prune and to
which sparsity, and runs its update on exactly those steps.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from dst import _select
from dst._model import Target, dynamic_targets, find_targets, install
from dst.blocks import BlockMaskConstraint, block_of, from_blocks, grid_shape
from dst.callbacks.base import DSTCallback
from dst.masking import MaskConstraint
from dst.nm import group_floors, n_m_of, top_n_mask
from dst.schedules import UpdateSteps
from dst.tfmot.schedules import BUILT_IN, ConstantSparsity, PruningSchedule
from dst.updaters.base import Updater
from dst.updaters.registry import register

__all__ = ["PruningMask", "TFMOTPruning", "UpdatePruningStep"]

MISSING_CALLBACK = (
    "dst.tfmot: weight '{path}' was pruned with prune_low_magnitude, which requires the "
    "UpdatePruningStep callback during training. Please add it as a callback to your "
    "model.fit call: model.fit(..., callbacks=[dst.tfmot.UpdatePruningStep()])."
)
_POOLING = ("AVG", "MAX")


@keras.saving.register_keras_serializable(package="dst")
class PruningMask(BlockMaskConstraint):
    """The dst mask of a weight pruned by `prune_low_magnitude`.

    A `MaskConstraint` (block-structured when `block_size` is not (1, 1))
    that carries TF-MOT's arguments of its weight. Applying it in a training
    step that no `UpdatePruningStep` drives raises, as TF-MOT does.

    Args:
        inner, fixed, mask: as for `dst.MaskConstraint`.
        pruning_schedule: a `PruningSchedule`, or its `get_config()`.
            Defaults to `ConstantSparsity(0.5, 0)`.
        block_size: (height, width) of the blocks of a 2-D weight. Defaults
            to (1, 1).
        block_pooling_type: "AVG" or "MAX". Defaults to "AVG".
        sparsity_m_by_n: TF-MOT's (m zeros, in every n) along the input
            axis, which replaces the schedule and the blocks. Defaults to None.
    """

    def __init__(self, inner: keras.constraints.Constraint | str | dict | None = None,
                 fixed: bool = False, mask: np.ndarray | dict[str, Any] | None = None,
                 pruning_schedule: PruningSchedule | dict | None = None,
                 block_size: int | Sequence[int] = (1, 1),
                 block_pooling_type: str = "AVG",
                 sparsity_m_by_n: Sequence[int] | None = None) -> None:
        block_size = check_block_size(block_size)
        super().__init__(inner=inner, fixed=fixed, mask=mask, block=block_size)
        self.sparsity_m_by_n = check_m_by_n(sparsity_m_by_n)
        # `dst.nm.n_m_of` reads `n_m`: (kept, group), the N:M of dst.
        m_by_n = self.sparsity_m_by_n
        self.n_m = None if m_by_n is None else (m_by_n[1] - m_by_n[0], m_by_n[1])
        # `dst.blocks.block_of` reads `block`: None for an unstructured mask.
        self.block = (None if block_size == (1, 1) or m_by_n is not None  # type: ignore[assignment]
                      else block_size)
        self.block_size = block_size
        self.block_pooling_type = check_pooling(block_pooling_type)
        self.pruning_schedule = as_schedule(
            ConstantSparsity(0.5, 0) if pruning_schedule is None else pruning_schedule)
        self.driven = False  # True while an UpdatePruningStep drives this mask

    def __call__(self, w):
        if not self.driven:
            path = getattr(self.variable, "path", "?")
            raise RuntimeError(MISSING_CALLBACK.format(path=path))
        return super().__call__(w)

    def get_config(self) -> dict[str, Any]:
        return {**MaskConstraint.get_config(self), "pruning_schedule": self.pruning_schedule.get_config(),
                "block_size": list(self.block_size),
                "block_pooling_type": self.block_pooling_type,
                "sparsity_m_by_n": (None if self.sparsity_m_by_n is None
                                    else list(self.sparsity_m_by_n))}


@register("tfmot_pruning")  # "tfmot" is the experiments' TF-MOT (tf_keras) method
class TFMOTPruning(Updater):
    """TF-MOT's magnitude pruning: at each step its `PruningSchedule` names, keep
    the k = max(round(n·(1 − s)), 1) largest magnitudes.

    Each weight follows its own schedule (from `prune_low_magnitude`) or, for
    weights masked otherwise, `pruning_schedule`. The step a schedule sees is
    TF-MOT's pruning step: 1 on the optimizer's first step (`iterations` + 1,
    counted from the `origin` given to `bind`). n counts the weight's entries,
    or its blocks of `block_size` (edge blocks included), whose magnitude is
    the mean ("AVG") or the largest ("MAX") |w| of the block. dst keeps
    exactly k, ties broken by a seeded order (TF-MOT also keeps every entry
    tied with the k-th largest), so masks equal TF-MOT's wherever the k-th
    and (k+1)-th magnitudes differ. The masks change at the end of the step
    (TF-MOT: at the start of the next batch) and pruned weights stay at
    exactly zero (TF-MOT lets them move until the next pruning).

    Args:
        pruning_schedule: the `PruningSchedule` (or its config) of masked
            weights that carry none, e.g. after `dst.sparsify`; a dense model
            then gets all-ones masks. Defaults to None (such weights keep
            their masks).
        block_size: (height, width) of the blocks of the masks it attaches
            to a dense model (a weight masked by `dst.sparsify(..., block=)`
            is pruned in its own mask's blocks). Defaults to (1, 1).
        block_pooling_type: how those weights' blocks are pooled: "AVG" or
            "MAX". Defaults to "AVG".
        sparsity_m_by_n: TF-MOT's (m, n) for the masks it attaches to a dense
            model. Defaults to None.
        seed: seed of the tie-breaking order. Defaults to None.

    N:M masks (TF-MOT's `sparsity_m_by_n`, or `dst.sparsify(..., n_m=)`):
    as TF-MOT, the schedule only says whether a weight is pruned; at the
    pruning step 1 (the first training step of the first fit) every group of
    consecutive inputs keeps its largest magnitudes (n − m of n; a short
    group at the axis' end, min(n − m, its length)), and the mask stays.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
        >>> model.compile("sgd", "mse")
        >>> schedule = dst.tfmot.ConstantSparsity(0.8, begin_step=0, frequency=5)
        >>> cb = dst.callbacks.get("tfmot_pruning", pruning_schedule=schedule)
        >>> _ = model.fit(np.ones((40, 8)), np.ones((40, 10)), batch_size=8, verbose=0,
        ...               callbacks=[cb])
        >>> round(dst.sparsity(model), 2)
        0.8
    """

    # Block and N:M structure are handled here (as TF-MOT does), not by the base.
    blocks_by_base = False
    n_m_by_base = False
    starts_dense = True  # with `pruning_schedule`: every sparsifiable weight

    def __init__(self, pruning_schedule: PruningSchedule | dict | None = None,
                 block_size: int | Sequence[int] = (1, 1), block_pooling_type: str = "AVG",
                 sparsity_m_by_n: Sequence[int] | None = None, *, seed: int | None = None):
        super().__init__(update_freq=1, begin_step=0, end_step=0, seed=seed)
        self.pruning_schedule = (None if pruning_schedule is None
                                 else as_schedule(pruning_schedule))
        self.block_size = check_block_size(block_size)
        self.block_pooling_type = check_pooling(block_pooling_type)
        self.sparsity_m_by_n = check_m_by_n(sparsity_m_by_n)
        self._plan: dict[int, dict[int, tuple[int, int]]] = {}

    def prepare(self, model: keras.Model) -> None:
        """A model without masks gets all-ones `PruningMask`s (with
        `pruning_schedule`) on every sparsifiable weight."""
        if self.pruning_schedule is not None and not dynamic_targets(model):
            for t in find_targets(model):
                attach(t, PruningMask(t.variable.constraint,
                                      pruning_schedule=self.pruning_schedule,
                                      block_size=self.block_size,
                                      block_pooling_type=self.block_pooling_type,
                                      sparsity_m_by_n=self.sparsity_m_by_n))

    def _targets(self, model) -> list[Target]:
        self.prepare(model)
        if not dynamic_targets(model):
            raise ValueError(
                f"{type(self).__name__}: model '{model.name}' has no pruned weights. Prune "
                "layers with dst.tfmot.prune_low_magnitude (or pass `pruning_schedule=`) "
                "before training with UpdatePruningStep."
            )
        return super()._targets(model)

    def bind(self, model: keras.Model, total_steps: int | None = None, first_step: int = 0,
             optimizer: keras.optimizers.Optimizer | None = None, **kwargs: Any) -> None:
        super().bind(model, total_steps, first_step, optimizer, **kwargs)
        specs = [self._spec(t) for t in self.targets]
        last = self._last_step(specs, first_step, total_steps)
        plan: dict[int, dict[int, tuple[int, int]]] = {}
        for index, (target, spec) in enumerate(zip(self.targets, specs)):
            if spec is None:
                continue
            schedule, block, pooling = spec
            units = math.prod(grid_shape(target.shape, block)) if block else math.prod(
                target.shape)
            low, high = first_step - self.origin + 1, last - self.origin + 1
            n_m = n_m_of(target.constraint)
            if n_m is not None:  # TF-MOT: N:M masks are made at pruning step 1 only
                if low <= 1 <= high:
                    keep = int(group_floors(target.shape, n_m).sum())
                    plan.setdefault(self.origin, {})[index] = (keep, 0)
                continue
            for p in schedule._candidate_steps(low, high):
                should, sparsity = schedule(p)
                if bool(np.asarray(should)):
                    keep = keep_count(units, float(np.asarray(sparsity)))
                    plan.setdefault(self.origin + p - 1, {})[index] = (keep, pooling)
        self._plan = plan
        steps = sorted(plan)
        freq = math.gcd(*[b - a for a, b in zip(steps, steps[1:])]) if len(steps) > 1 else 1
        self.schedule = (UpdateSteps(steps[0], steps[-1], freq) if steps
                         else UpdateSteps(first_step, first_step - 1, 1))
        self._table = None
        for t in self.targets:
            if isinstance(t.constraint, PruningMask):
                t.constraint.driven = True

    def step_value(self, step: int, index: int) -> Any:
        """(k to keep, 1 for "MAX" pooling else 0); k = -1 where the weight's
        schedule does not prune at `step`."""
        return self._plan.get(step, {}).get(index, (-1, 0))

    def new_mask(self, kit: Any, weight: Any, mask: Any, grad: Any, value: Any,
                 salt: Callable[[int], Any]) -> Any:
        block = getattr(kit, "block", None)  # a `dst.blocks.BlockKit` for block masks
        n_m = getattr(kit, "n_m", None)  # a `dst.nm.NMKit` for N:M masks
        kit = getattr(kit, "kit", kit)
        xp = kit.xp
        k, pooling = value[0], value[1]
        magnitude = xp.abs(weight)
        if n_m is not None:
            keep = top_n_mask(kit, magnitude, n_m, salt(0))
        elif block is None:
            everywhere = xp.logical_or(mask, xp.logical_not(mask))
            keep = kit.select(magnitude, everywhere, xp.maximum(k, 0), salt(0), largest=True)
        else:
            scores = xp.where(pooling == 1, pool(xp, magnitude, block, "MAX"),
                              pool(xp, magnitude, block, "AVG"))
            everywhere = xp.logical_not(xp.zeros(scores.shape, dtype="bool"))
            grid = kit.select(scores, everywhere, xp.maximum(k, 0), salt(0), largest=True)
            keep = from_blocks(xp, grid, tuple(int(d) for d in mask.shape), block)
            if kit is _select.NUMPY:  # for `expected_active`, which counts entries
                self.__dict__.setdefault("_tfmot_counts", {})[id(mask)] = (
                    int(np.count_nonzero(grid)), int(np.count_nonzero(keep)))
        return xp.where(k < 0, mask, keep)

    def expected_active(self, index: int, old: np.ndarray, step: int) -> int:
        k = self.step_value(step, index)[0]
        record = self.__dict__.get("_tfmot_counts", {}).pop(id(old), None)
        if k < 0:
            return int(old.sum())
        if record is None:
            return k
        blocks, entries = record
        if blocks != k:
            raise AssertionError(f"{type(self).__name__} kept {blocks} blocks of "
                                 f"'{self.targets[index].path}', expected {k}.")
        return entries


    # -- helpers ------------------------------------------------------------
    def _spec(self, target: Target) -> tuple[PruningSchedule, tuple[int, ...] | None, int] | None:
        c = target.constraint
        if isinstance(c, PruningMask):
            return c.pruning_schedule, c.block, _POOLING.index(c.block_pooling_type)
        if self.pruning_schedule is None:
            return None
        return (self.pruning_schedule, block_of(c),
                _POOLING.index(self.block_pooling_type))

    def _last_step(self, specs, first_step: int, total_steps: int | None) -> int:
        """The last optimizer step this fit may prune at."""
        if total_steps is not None:
            return first_step + total_steps - 1
        ends = [spec[0]._last_step() for spec in specs if spec is not None]
        if any(end is None for end in ends):
            raise ValueError(
                f"{type(self).__name__}: a pruning schedule without an end (end_step=-1, "
                "or a PruningSchedule subclass) needs the number of steps of the fit, "
                "which is unknown here (a dataset of unknown length?). Pass "
                "`steps_per_epoch` to fit."
            )
        return self.origin + max([0, *[int(end) for end in ends if end is not None]]) - 1


class UpdatePruningStep(DSTCallback, updater=TFMOTPruning):
    """Runs TF-MOT's pruning schedules of `prune_low_magnitude` inside `model.fit`.

    Required when training a model pruned with `dst.tfmot.prune_low_magnitude`,
    as in TF-MOT: without it, the first training step raises. It is the dst
    callback of `TFMOTPruning` (`dst.callbacks.get("tfmot_pruning")`): the masks
    change inside the optimizer step, on the steps the schedules name, with
    every dst guarantee (all backends, `steps_per_execution`, exact resume).
    The step counts from the optimizer's step 0 (`steps_from="optimizer"`),
    as TF-MOT's pruning step counts from the first batch it trained.

    Examples:
        >>> import dst.tfmot as tfmot_sparsity
        >>> callback = tfmot_sparsity.UpdatePruningStep()
        >>> callback.steps_from
        'optimizer'
    """

    def __init__(self, *args: Any, steps_from: str = "optimizer", **kwargs: Any) -> None:
        super().__init__(*args, steps_from=steps_from, **kwargs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        targets = list(self.updater.targets)
        super().on_train_end(logs)
        for t in targets:
            if isinstance(t.constraint, PruningMask):
                t.constraint.driven = False


def _steps_from_optimizer(cls: type) -> None:
    """Shows `steps_from="optimizer"` in the generated signature of `cls`."""
    signature = inspect.signature(cls)
    cls.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
        p.replace(default="optimizer") if p.name == "steps_from" else p
        for p in signature.parameters.values()])


_steps_from_optimizer(UpdatePruningStep)


# -- shared helpers --------------------------------------------------------------
def keep_count(units: int, sparsity: float) -> int:
    """TF-MOT's k: max(round(n · (1 − s)), 1), in float32, halves to even."""
    f32 = np.float32
    k = int(np.round(f32(units) * (f32(1.0) - f32(sparsity))))
    return min(max(k, 1), units)


def pool(xp: Any, x: Any, block: tuple[int, int], how: str) -> Any:
    """The mean ("AVG") or the largest ("MAX") of `x` (2-D, >= 0) per block, as
    TF-MOT pools: with TensorFlow's "SAME" padding, so along an axis the block
    does not divide, the windows start half the padding early (the first and
    last are short, and a mean is over its own entries), while the mask keeps
    the blocks aligned at 0 (`dst.blocks.from_blocks`), as TF-MOT's does."""
    rows, cols = (int(d) for d in x.shape)
    grid = grid_shape((rows, cols), block)
    pad = tuple((total // 2, total - total // 2)
                for total in (grid[0] * block[0] - rows, grid[1] * block[1] - cols))
    if any(before or after for before, after in pad):
        x = xp.pad(x, pad)
    x = xp.reshape(x, (grid[0], block[0], grid[1], block[1]))
    if how == "MAX":
        return xp.max(x, axis=(1, 3))
    counts = np.pad(np.ones((rows, cols), np.float32), pad).reshape(x.shape).sum(axis=(1, 3))
    return xp.sum(x, axis=(1, 3)) / (counts if xp is np else xp.convert_to_tensor(counts))


def attach(target: Target, constraint: PruningMask) -> None:
    """Installs `constraint` with an all-ones mask on `target` (a no-op for a
    weight that already has a mask)."""
    if target.constraint is not None and target.constraint.mask is not None:
        return
    if constraint.n_m is not None and len(target.shape) not in (2, 4):
        raise ValueError(f"weight tensor with shape: {target.shape} is not supported. "
                         f"sparsity_m_by_n prunes rank-2 and rank-4 weights only (weight "
                         f"'{target.path}').")
    if constraint.block is not None and len(target.shape) != 2:
        raise ValueError("Block Sparsity can only be used for layers which have "
                         f"2-dimensional weights. Weight '{target.path}' has shape "
                         f"{target.shape}.")
    constraint.attach(np.ones(target.shape, dtype=bool))
    install(target, constraint)


def as_schedule(schedule: PruningSchedule | dict) -> PruningSchedule:
    """A `PruningSchedule`, from itself or from its `get_config()`."""
    if isinstance(schedule, PruningSchedule):
        return schedule
    if isinstance(schedule, dict) and "class_name" in schedule:
        name = schedule["class_name"]
        cls = BUILT_IN.get(name) or keras.saving.get_registered_object(name)
        if isinstance(cls, type) and issubclass(cls, PruningSchedule):
            return cls.from_config(schedule.get("config", {}))
        raise ValueError(
            f"Unknown pruning schedule {name!r} in dst.tfmot. Register your "
            "PruningSchedule subclass with @keras.saving.register_keras_serializable() "
            "or load inside keras.saving.custom_object_scope({name: cls})."
        )
    raise ValueError(
        "`pruning_schedule` must be a dst.tfmot.PruningSchedule (ConstantSparsity, "
        f"PolynomialDecay or a subclass). Received: pruning_schedule={schedule!r}"
    )


def check_block_size(block_size: int | Sequence[int]) -> tuple[int, int]:
    """`block_size` as two ints >= 1 (TF-MOT accepts an int or a pair)."""
    pair: Any = block_size
    if isinstance(block_size, int | np.integer) and not isinstance(block_size, bool):
        pair = (block_size, block_size)
    ok = (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
          and all(isinstance(b, int | np.integer) and not isinstance(b, bool) and b >= 1
                  for b in pair))
    if not ok:
        raise ValueError(
            "`block_size` must be an int or a tuple of 2 ints >= 1 for dst.tfmot. "
            f"Received: block_size={block_size!r}"
        )
    return int(pair[0]), int(pair[1])


def check_m_by_n(sparsity_m_by_n: Sequence[int] | None) -> tuple[int, int] | None:
    """`sparsity_m_by_n` as (m, n) with 0 <= m < n, or None; TF-MOT's messages
    (it ignores a falsy value, and checks m < n at the first pruning step)."""
    if not sparsity_m_by_n:
        return None
    try:
        pair = tuple(sparsity_m_by_n)
    except TypeError:
        raise ValueError("The sparsity_m_by_n argument must be a tuple/list of 2 integers."
                         f"received: {sparsity_m_by_n!s}.") from None
    if len(pair) != 2:
        raise ValueError("The sparsity_m_by_n argument must be a tuple/list of 2 integers."
                         f"received: {sparsity_m_by_n!s}.")
    for value in pair:
        if not isinstance(value, int):
            raise ValueError(
                "The sparsity_m_by_n argument must be a tuple/list of 2 integers."
                f"received: {sparsity_m_by_n!s} including element {value!s} of type "
                f"{type(value)!s}.")
    if not 0 <= pair[0] < pair[1]:
        raise ValueError(f"Argument m_by_n received {pair}, m be must smaller than n "
                         "(and m >= 0), for dst.tfmot.")
    return int(pair[0]), int(pair[1])


def check_pooling(block_pooling_type: str) -> str:
    if block_pooling_type not in _POOLING:
        raise ValueError(f"Unsupported pooling type '{block_pooling_type}'. "
                         "Should be 'AVG' or 'MAX'.")
    return block_pooling_type
