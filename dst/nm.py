"""N:M masks: in every group of M consecutive inputs, N connections are active.

A group is M consecutive entries along a kernel's input (reduction) axis,
the second to last one, for each index of every other axis: for a Dense
kernel (in, out), M consecutive inputs of one output unit; for a conv
kernel (kh, kw, in, out), M consecutive input channels of one output channel
at one spatial position. That is the layout that NVIDIA's sparse tensor
cores (cuSPARSELt, XLA's N:M dot) run: 2:4 along the reduction axis K of
the GEMM, which for a convolution lowered to a GEMM over (kh, kw, in) is
contiguous along the input channels, and it is the axis TF-MOT's
`sparsity_m_by_n` prunes along (its rank-4 kernels are rearranged to
(out·kh·kw, in) and grouped along `in`).

The structure every dst updater keeps: each group holds at least N active
entries, and exactly N at the sparsity 1 − N/M that `dst.sparsify(...,
n_m=)` draws and gradual pruning to N:M ends at. A group that an axis cuts
short (TF-MOT's masks only: `dst.sparsify` refuses such an axis) holds at
least min(N, its length).

Updaters keep it around their own rule (`n_m_wise`, applied by
`dst.updaters.Updater` to every `new_mask`): whatever mask the rule
returns, each group first keeps up to N entries that the rule kept (largest
`drop_scores` first), then that it grew (largest `grow_scores` first), then
fills up, by `grow_scores` among its other inactive entries when the rule
kept its count (SET, RigL: each group regrows what it lost) or by
`drop_scores` among the entries the rule just dropped when it lowered it
(pruning never regrows); the rest of the rule's count goes to the other
entries the rule chose, grown ones first, by global score.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import keras
import numpy as np

from dst import _select
from dst.masking import MaskConstraint

if TYPE_CHECKING:
    from dst._model import Target

__all__ = ["NMMaskConstraint", "NMKit", "check_n_m", "check_fits", "n_m_of", "to_groups",
           "from_groups", "group_counts", "group_floors", "is_n_m", "random_n_m_mask",
           "top_n_mask", "n_m_wise"]

# Salt roles of the structure's selections (the rules use 0-3).
_ROLES = (20, 21, 22, 23, 24, 25)


@keras.saving.register_keras_serializable(package="dst")
class NMMaskConstraint(MaskConstraint):
    """A `MaskConstraint` whose mask keeps N of every M consecutive inputs.

    Its config carries `n_m`, so `load_model` and `clone_model` restore it.

    Args:
        inner, fixed, mask: as for `MaskConstraint`.
        n_m: (N, M), the connections kept in each group of M consecutive
            entries along the input axis (the second to last).
    """

    def __init__(self, inner: keras.constraints.Constraint | str | dict | None = None,
                 fixed: bool = False, mask: np.ndarray | dict[str, Any] | None = None,
                 n_m: Sequence[int] = (2, 4)) -> None:
        super().__init__(inner=inner, fixed=fixed, mask=mask)
        self.n_m: tuple[int, int] | None = (int(n_m[0]), int(n_m[1]))

    def get_config(self) -> dict[str, Any]:
        assert self.n_m is not None
        return {**super().get_config(), "n_m": list(self.n_m)}


def check_n_m(n_m: Sequence[int] | None, where: str) -> tuple[int, int] | None:
    """`n_m` as (N, M) with 1 <= N < M, or None; a clear error otherwise."""
    if n_m is None:
        return None
    ok = (isinstance(n_m, Sequence) and not isinstance(n_m, str) and len(n_m) == 2
          and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in n_m)
          and 1 <= n_m[0] < n_m[1])
    if not ok:
        raise ValueError(
            f"`n_m` must be two ints (N, M) with 1 <= N < M (N kept in every M "
            f"consecutive inputs, e.g. (2, 4)) for {where}. Received: n_m={n_m!r}."
        )
    return int(n_m[0]), int(n_m[1])


def check_fits(shape: Sequence[int], n_m: tuple[int, int], name: str, where: str) -> None:
    """Raises unless the input axis (second to last) of `shape` is a multiple of M."""
    if len(shape) < 2 or shape[-2] % n_m[1]:
        axis = shape[-2] if len(shape) >= 2 else None
        raise ValueError(
            f"{where}: n_m={n_m} does not fit weight '{name}' of shape {tuple(shape)}: "
            f"its input axis (the second to last, length {axis}) must be a multiple of "
            f"M={n_m[1]}, so that it splits into whole groups as the N:M kernels "
            "require. Leave this weight out with `exclude=`, or pick an M that divides "
            "it."
        )


def n_m_of(constraint: object) -> tuple[int, int] | None:
    """The (N, M) of a mask constraint, or None for one without N:M structure."""
    if not isinstance(constraint, MaskConstraint):
        return None
    return getattr(constraint, "n_m", None)


# -- the group layout ---------------------------------------------------------
def _groups_shape(shape: Sequence[int], m: int) -> tuple[int, int, int, int]:
    """(outer, groups along the input axis, M, inner) of a weight of `shape`."""
    shape = tuple(int(d) for d in shape)
    return math.prod(shape[:-2]), -(-shape[-2] // m), m, shape[-1]


def to_groups(xp: Any, x: Any, m: int) -> Any:
    """`x` as an (M, groups) array: one column per group of M consecutive
    entries along the second to last axis (zero-padded past its end)."""
    shape = tuple(int(d) for d in x.shape)
    outer, groups, _, inner = _groups_shape(shape, m)
    is_bool = str(x.dtype) == "bool"
    if xp is np:
        x = np.asarray(x).astype(np.int32 if is_bool else np.float32)
    else:
        x = keras.ops.cast(x, "int32" if is_bool else "float32")
    x = xp.reshape(x, (outer, shape[-2], inner))
    pad = groups * m - shape[-2]
    if pad:
        x = xp.pad(x, [(0, 0), (0, pad), (0, 0)])
    x = xp.transpose(xp.reshape(x, (outer, groups, m, inner)), (2, 0, 1, 3))
    x = xp.reshape(x, (m, outer * groups * inner))
    return x > 0 if is_bool else x


def from_groups(xp: Any, x: Any, shape: Sequence[int], m: int) -> Any:
    """The inverse of `to_groups`: an (M, groups) array back to `shape`."""
    shape = tuple(int(d) for d in shape)
    outer, groups, _, inner = _groups_shape(shape, m)
    x = xp.transpose(xp.reshape(x, (m, outer, groups, inner)), (1, 2, 0, 3))
    x = xp.reshape(x, (outer, groups * m, inner))[:, : shape[-2], :]
    return xp.reshape(x, shape)


def group_floors(shape: Sequence[int], n_m: tuple[int, int]) -> np.ndarray:
    """Per group, the entries it keeps at least: min(N, the group's length)."""
    valid = to_groups(np, np.ones(tuple(shape), dtype=bool), n_m[1])
    return np.minimum(valid.sum(axis=0), n_m[0]).astype(np.int32)


def group_counts(mask: np.ndarray, m: int) -> np.ndarray:
    """Active entries of each group of M consecutive inputs of `mask` (one
    per group, in the order of `to_groups`)."""
    return to_groups(np, np.asarray(mask) != 0, m).sum(axis=0)


def is_n_m(mask: np.ndarray, n_m: tuple[int, int], *, exact: bool = True) -> bool:
    """Whether every group of M consecutive inputs of `mask` keeps N entries.

    Args:
        mask: a bool mask (or any array: its non-zeros count).
        n_m: (N, M).
        exact: exactly N per group (min(N, its length) for a short one), or
            (False) at least that many. Defaults to True.

    Returns:
        True if every group does.

    Example:
        >>> import numpy as np
        >>> from dst import nm
        >>> kernel = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], bool)  # (in=4, out=2)
        >>> nm.is_n_m(kernel, (2, 4)), nm.group_counts(kernel, 4).tolist()
        (True, [2, 2])
    """
    counts, floors = group_counts(mask, n_m[1]), group_floors(np.shape(mask), n_m)
    return bool((counts == floors).all() if exact else (counts >= floors).all())


def random_n_m_mask(shape: Sequence[int], n_m: tuple[int, int],
                    rng: np.random.Generator) -> np.ndarray:
    """A mask of `shape` with N entries of each group drawn at random."""
    valid = to_groups(np, np.ones(tuple(shape), dtype=bool), n_m[1])
    keys = np.where(valid, rng.random(valid.shape), -1.0)
    rank = np.argsort(np.argsort(-keys, axis=0, kind="stable"), axis=0, kind="stable")
    return from_groups(np, rank < n_m[0], shape, n_m[1]).astype(bool)


def top_n_mask(kit: Any, scores: Any, n_m: tuple[int, int], salt_value: Any) -> Any:
    """The N entries of largest |score| of every group (min(N, length) of a
    short one), ties broken by the seeded order of `kit.select`."""
    xp = kit.xp
    shape = tuple(int(d) for d in scores.shape)
    m = n_m[1]
    valid = _const(xp, to_groups(np, np.ones(shape, dtype=bool), m))
    floors = _const(xp, group_floors(shape, n_m))
    chosen = kit.select_columns(to_groups(xp, scores, m), valid, floors, salt_value,
                                largest=True)
    return from_groups(xp, chosen, shape, m)


# -- updaters -----------------------------------------------------------------
class NMKit:
    """A selection kit (`dst._select.NUMPY` or `OPS`) that carries the (N, M)
    of the one weight it is handed to update (see `dst.blocks.BlockKit`)."""

    def __init__(self, kit: _select.Kit, n_m: tuple[int, int]):
        self.kit = kit
        self.n_m = n_m

    def __getattr__(self, name):
        return getattr(self.kit, name)


def kit_for(kit: _select.Kit, target: Target) -> Any:
    """`kit` for updating `target`: an `NMKit` for N:M masks, a
    `dst.blocks.BlockKit` for block masks, else `kit` itself."""
    from dst.blocks import kit_for as block_kit_for

    n_m = n_m_of(target.constraint)
    return NMKit(kit, n_m) if n_m is not None else block_kit_for(kit, target)


F = TypeVar("F", bound=Callable[..., Any])


def n_m_wise(new_mask: F) -> F:
    """Keeps an updater's `new_mask` rule N:M for an N:M weight (see the module).

    For an N:M weight (the updater passes an `NMKit`, see `kit_for`), the
    rule runs with the plain kit; its result is made N:M with the same
    active count, from the rule's own scores (`drop_scores`, `grow_scores`).
    """

    @functools.wraps(new_mask)
    def wrapper(self, kit, weight, mask, grad, value, salt):
        n_m = getattr(kit, "n_m", None) if isinstance(kit, NMKit) else None
        if n_m is None:
            return new_mask(self, kit, weight, mask, grad, value, salt)
        kit = kit.kit
        new = new_mask(self, kit, weight, mask, grad, value, salt)
        out = structure(kit, n_m, mask, new, self.drop_scores(kit, weight, mask, grad),
                        self.grow_scores(kit, weight, mask, grad), salt)
        if kit is _select.NUMPY and not is_n_m(out, n_m, exact=False):
            raise AssertionError(
                f"{type(self).__name__} left a group of an N:M {n_m} mask with fewer "
                f"than {n_m[0]} active entries: counts {sorted(set(group_counts(out, n_m[1]).tolist()))}."
            )
        return out

    wrapper._dst_n_m = True  # type: ignore[attr-defined]
    return cast(F, wrapper)


def structure(kit: Any, n_m: tuple[int, int], old: Any, new: Any, keep_scores: Any,
              grow_scores: Any, salt: Callable[[int], Any]) -> Any:
    """`new` made N:M with its active count (see the module); `old` is N:M.

    Args:
        kit: `dst._select.NUMPY` or `OPS`.
        n_m: (N, M).
        old: the current mask (every group has at least min(N, length)).
        new: the rule's new mask.
        keep_scores: `drop_scores` of the weight (higher is kept first), or
            None (a seeded random order).
        grow_scores: `grow_scores` of the weight (higher is grown first), or None.
        salt: `salt(role)`, the seeded tie-break salt of a role.

    Returns:
        The N:M mask, of `new`'s shape and active count (as long as that
        count is at least the sum of the groups' floors).
    """
    xp = kit.xp
    m = n_m[1]
    shape = tuple(int(d) for d in old.shape)
    valid = _const(xp, to_groups(np, np.ones(shape, dtype=bool), m))
    floors = _const(xp, group_floors(shape, n_m))
    old_g, new_g = to_groups(xp, old, m), to_groups(xp, new, m)
    keep_s = _scores(xp, keep_scores, shape, m)
    grow_s = _scores(xp, grow_scores, shape, m)
    kept = xp.logical_and(old_g, new_g)
    grown = xp.logical_and(new_g, xp.logical_not(old_g))
    dropped = xp.logical_and(old_g, xp.logical_not(new_g))
    total = kit.cast(kit.count(new), "int32")
    shrink = total < kit.cast(kit.count(old), "int32")

    def per_group(x):
        return kit.cast(xp.sum(kit.cast(x, "int32"), axis=0), "int32")

    # 1. Up to N per group: kept, then grown, then filled.
    first = kit.select_columns(keep_s, kept, floors, salt(_ROLES[0]), largest=True)
    need = floors - per_group(first)
    second = kit.select_columns(grow_s, grown, need, salt(_ROLES[1]), largest=True)
    need = need - per_group(second)
    others = xp.logical_and(valid, xp.logical_not(new_g))
    fill_from = xp.where(shrink, dropped, others)
    fill_by = xp.where(shrink, keep_s, grow_s)
    third = kit.select_columns(fill_by, fill_from, need, salt(_ROLES[2]), largest=True)
    floor = xp.logical_or(xp.logical_or(first, second), third)
    # 2. The rest of the count: the rule's other grown entries, then its kept ones.
    rest = total - kit.cast(kit.count(floor), "int32")
    more_grown = kit.select(grow_s, xp.logical_and(grown, xp.logical_not(floor)), rest,
                            salt(_ROLES[3]), largest=True)
    rest = rest - kit.cast(kit.count(more_grown), "int32")
    more_kept = kit.select(keep_s, xp.logical_and(kept, xp.logical_not(floor)), rest,
                           salt(_ROLES[4]), largest=True)
    out = xp.logical_or(floor, xp.logical_or(more_grown, more_kept))
    return from_groups(xp, out, shape, m)


def _scores(xp: Any, scores: Any, shape: tuple[int, ...], m: int) -> Any:
    """Scores in the group layout; None (a random order) as all zeros, which
    `select` orders by the same seeded hash."""
    if scores is None:
        return _const(xp, np.zeros(to_groups(np, np.zeros(shape, np.float32), m).shape,
                                   np.float32))
    return to_groups(xp, xp.abs(scores), m)


def _const(xp: Any, value: np.ndarray) -> Any:
    return value if xp is np else keras.ops.convert_to_tensor(value)
