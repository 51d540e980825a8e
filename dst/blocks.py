"""Block-sparse masks: masks that are unions of whole blocks of a kernel.

A block shape `(b_in, b_out)` covers the last two axes of a kernel: (input,
output) for a Dense kernel, (input channels, output channels) for a conv
kernel at each spatial position; every other axis has block size 1. A block
that the kernel's edge cuts short (an axis the block does not divide) is a
smaller block at that edge. TFLite stores Keras' (input, output) Dense kernel
as (output, input), so `block=(4, 1)` and `(16, 1)` are its 1×4 and 1×16
blocks, the ones its sparse kernels run.

Updaters work on blocks by running their unstructured rule on the grid of
blocks (`blockwise`): a block's weight is the L2 norm of its weights, a block's
gradient the L2 norm of its gradient, a block is active when its entries are,
and counts are in blocks.
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

__all__ = ["BlockMaskConstraint", "BlockKit", "check_block", "block_of", "grid_shape",
           "count_units", "kit_for", "to_blocks", "from_blocks", "random_block_mask",
           "is_union_of_blocks"]


@keras.saving.register_keras_serializable(package="dst")
class BlockMaskConstraint(MaskConstraint):
    """A `MaskConstraint` whose mask is a union of `block`-shaped blocks.

    Its config carries `block`, so `load_model` and `clone_model` restore it.

    Args:
        inner, fixed, mask: as for `MaskConstraint`.
        block: the block shape over the kernel's last two axes.
    """

    def __init__(self, inner: keras.constraints.Constraint | str | dict | None = None,
                 fixed: bool = False, mask: np.ndarray | dict[str, Any] | None = None,
                 block: Sequence[int] = (1, 1)) -> None:
        super().__init__(inner=inner, fixed=fixed, mask=mask)
        self.block = tuple(int(b) for b in block)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "block": list(self.block)}


def check_block(block: Sequence[int] | None, where: str) -> tuple[int, int] | None:
    """`block` as a tuple of two ints >= 1, or None; a clear error otherwise."""
    if block is None:
        return None
    ok = (isinstance(block, Sequence) and not isinstance(block, str) and len(block) == 2
          and all(isinstance(b, int | np.integer) and not isinstance(b, bool) and b >= 1
                  for b in block))
    if not ok:
        raise ValueError(
            f"`block` must be two ints >= 1, (inputs, outputs) of the kernel, for "
            f"{where}. Received: block={block!r}."
        )
    block = (int(block[0]), int(block[1]))
    return None if block == (1, 1) else block


def check_fits(shape: tuple, block: tuple[int, int], name: str, where: str) -> None:
    """Raises when a kernel axis is shorter than the block along it."""
    if len(shape) < 2 or shape[-2] < block[0] or shape[-1] < block[1]:
        raise ValueError(
            f"{where}: block={block} does not fit weight '{name}' of shape {shape}: "
            f"its (input, output) axes {tuple(shape[-2:])} must be at least as long "
            "as the block. Use a smaller block, or leave this weight out with "
            "`exclude=`."
        )


def block_of(constraint: object) -> tuple[int, int] | None:
    """The block shape of a mask constraint, or None for an unstructured one."""
    return getattr(constraint, "block", None) if isinstance(constraint,
                                                            BlockMaskConstraint) else None


def grid_shape(shape: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
    """The number of blocks along each axis (edge blocks included)."""
    full = (1,) * (len(shape) - 2) + tuple(block)
    return tuple(-(-int(s) // b) for s, b in zip(shape, full))


def to_blocks(xp: Any, x: Any, block: Sequence[int], how: str) -> Any:
    """Per-block reduction of `x` over the grid: "any" (masks) or "norm" (L2)."""
    shape = tuple(int(d) for d in x.shape)
    grid = grid_shape(shape, block)
    x = xp.cast(x, "float32") if xp is keras.ops else np.asarray(x, dtype=np.float32)
    if how == "norm":
        x = xp.square(x)
    pad = [(0, 0)] * (len(shape) - 2) + [(0, g * b - s) for g, b, s in
                                         zip(grid[-2:], block, shape[-2:])]
    if any(p for _, p in pad):
        x = xp.pad(x, pad)
    x = xp.reshape(x, (*shape[:-2], grid[-2], block[0], grid[-1], block[1]))
    x = xp.sum(x, axis=(-3, -1))
    return xp.sqrt(x) if how == "norm" else x > 0


def from_blocks(xp: Any, grid_mask: Any, shape: Sequence[int], block: Sequence[int]) -> Any:
    """A bool mask of `shape` that is True on every entry of each active block."""
    out = xp.repeat(xp.repeat(grid_mask, block[0], axis=-2), block[1], axis=-1)
    return out[..., : shape[-2], : shape[-1]]


def is_union_of_blocks(mask: np.ndarray, block: Sequence[int]) -> bool:
    """Whether every block of `mask` is entirely active or entirely inactive."""
    mask = np.asarray(mask, dtype=bool)
    return bool(np.array_equal(from_blocks(np, to_blocks(np, mask, block, "any"),
                                           mask.shape, block), mask))


def random_block_mask(shape: Sequence[int], block: Sequence[int], n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """A mask of `shape` made of exactly `n_blocks` blocks drawn at random."""
    grid = grid_shape(shape, block)
    flat = np.zeros(math.prod(grid), dtype=bool)
    flat[rng.choice(flat.size, size=n_blocks, replace=False)] = True
    return from_blocks(np, flat.reshape(grid), tuple(shape), block)


def n_blocks(shape: Sequence[int], block: Sequence[int]) -> int:
    return math.prod(grid_shape(shape, block))


def count_units(target: Target) -> int:
    """Active blocks of a blocked target's mask, active entries otherwise.

    The unit `new_mask` counts in: what an updater's per-weight counts
    (`Updater.active` on main) must hold for block masks.
    """
    mask = target.mask_constraint.numpy()
    block = block_of(target.constraint)
    return int(mask.sum() if block is None else to_blocks(np, mask, block, "any").sum())


# -- updaters -----------------------------------------------------------------
class BlockKit:
    """A selection kit (`dst._select.NUMPY` or `OPS`) that carries the block
    shape of the one weight it is handed to update.

    The updater passes it as `new_mask`'s `kit`, so a rule learns the block
    structure from the weight it updates, never from the weight's shape (two
    weights of one shape may have different blocks). Everything else is the
    plain kit's (`kit.xp`, `kit.select`, ...).
    """

    def __init__(self, kit: _select.Kit, block: tuple[int, int]):
        self.kit = kit
        self.block = block

    def __getattr__(self, name):
        return getattr(self.kit, name)


def kit_for(kit: _select.Kit, target: Target) -> _select.Kit | BlockKit:
    """`kit` for updating `target`: a `BlockKit` when its mask is blocked."""
    block = block_of(target.constraint)
    return kit if block is None else BlockKit(kit, block)


F = TypeVar("F", bound=Callable[..., Any])


def blockwise(new_mask: F) -> F:
    """Runs an updater's unstructured `new_mask` rule on the grid of blocks.

    For a blocked weight (the updater passes a `BlockKit`, see `kit_for`), the
    rule sees a plain kit, the block L2 norms of the weight and the gradient
    and the block mask; its result is expanded back to entries.
    """

    @functools.wraps(new_mask)
    def wrapper(self, kit, weight, mask, grad, value, salt):
        block = getattr(kit, "block", None)  # set by `kit_for` for a blocked weight
        if block is None:
            return new_mask(self, kit, weight, mask, grad, value, salt)
        kit = kit.kit
        xp = kit.xp
        shape = tuple(int(d) for d in mask.shape)
        old = to_blocks(xp, mask, block, "any")
        new = new_mask(self, kit, to_blocks(xp, weight, block, "norm"), old,
                       None if grad is None else to_blocks(xp, grad, block, "norm"),
                       value, salt)
        full = from_blocks(xp, new, shape, block)
        if kit is _select.NUMPY:  # for `expected_active`, which counts entries
            self.__dict__.setdefault("_dst_counts", {})[id(mask)] = (
                int(np.count_nonzero(new)), int(np.count_nonzero(full)))
        return full

    wrapper._dst_blockwise = True  # type: ignore[attr-defined]
    return cast(F, wrapper)


def counted_in_blocks(expected_active: F) -> F:
    """Makes an updater's `expected_active` count blocks for blocked weights.

    The base check compares the new mask's entry count with
    `expected_active`; with edge blocks smaller than the others, the entry
    count may change while the block count is exact. So for a blocked weight
    the block count of the new mask (recorded by `blockwise`) is checked here
    against the rule's expected block count, and the new entry count returned.
    """

    @functools.wraps(expected_active)
    def wrapper(self, index, old, step):
        t = self.targets[index]
        block = block_of(t.constraint)
        record = getattr(self, "_dst_counts", {}).pop(id(old), None)
        if block is None or record is None:
            return expected_active(self, index, old, step)
        want = expected_active(self, index, to_blocks(np, old, block, "any"), step)
        got, entries = record
        if got != want:
            raise AssertionError(
                f"{type(self).__name__} produced {got} active blocks of {block} for "
                f"'{t.path}', expected {want} (had {int(to_blocks(np, old, block, 'any').sum())})."
            )
        return entries

    wrapper._dst_blockwise = True  # type: ignore[attr-defined]
    return cast(F, wrapper)
