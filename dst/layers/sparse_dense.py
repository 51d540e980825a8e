"""`SparseDense`: a Dense layer whose connectivity is fixed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from dst import blocks as blocks_lib
from dst._validate import as_float, as_int
from dst.masking import MaskConstraint, pack_mask, unpack_mask

__all__ = ["SparseDense"]


@keras.saving.register_keras_serializable(package="dst")
class SparseDense(keras.layers.Dense):
    """A densely-shaped layer where only chosen input-output pairs connect.

    Output unit j sees input i only where `connectivity[i, j]` is 1. The
    masked kernel entries are 0.0 at build and after every optimizer step;
    dynamic sparse training callbacks never change this layer's connectivity.

    Args:
        units: number of output units.
        density: fraction of connections drawn at random (per layer, exactly
            round(density × input_dim × units), at least one input per unit)
            when `connectivity` is not given. Defaults to None.
        connectivity: 0/1 array of shape (input_dim, units). Defaults to None.
        seed: seed for the random connectivity. Defaults to None.
        block: (inputs, outputs) block shape: the connectivity is a union of
            whole blocks (drawn at random by blocks, round(density × blocks)
            of them and at least one per block column; a given
            `connectivity` must be such a union). Blocks cut short at the
            edge are fine; an axis shorter than the block is an error.
            Defaults to None (unstructured).
        activation: as for `keras.layers.Dense`. Defaults to None.
        use_bias: as for `keras.layers.Dense`. Defaults to True.
        **dense_kwargs: other arguments of `keras.layers.Dense`.

    Numbers may be numpy scalars (`np.int64(3)`); they are stored, and saved
    in the config, as Python numbers.

    Raises:
        ValueError: `units` not an int >= 1, `density` not a number in (0, 1],
            `seed` not an int >= 0, neither or both of `density` and
            `connectivity`, or a `connectivity` of the wrong shape, with
            values other than 0/1, or that leaves a unit without input.

    Examples:
        >>> import numpy as np, keras, dst
        >>> band = np.abs(np.subtract.outer(np.arange(6), np.arange(3) * 2)) <= 1
        >>> layer = dst.layers.SparseDense(3, connectivity=band)
        >>> y = layer(np.ones((1, 6), "float32"))
        >>> int((layer.kernel.numpy() != 0).sum()) == int(band.sum())
        True
    """

    def __init__(self, units: int, *, density: float | None = None,
                 connectivity: np.ndarray | dict[str, Any] | None = None,
                 seed: int | None = None, block: Sequence[int] | None = None,
                 activation: Any = None, use_bias: bool = True,
                 **dense_kwargs: Any) -> None:
        if (density is None) == (connectivity is None):
            raise ValueError(
                "SparseDense needs exactly one of `density` or `connectivity`. "
                f"Received: density={density!r}, connectivity="
                f"{'None' if connectivity is None else 'an array'}."
            )
        units = as_int(units, "units", "SparseDense", minimum=1)
        if density is not None:
            density = as_float(density, "density", "SparseDense", low=0, high=1,
                               low_open=True)
        if seed is not None:
            seed = as_int(seed, "seed", "SparseDense", minimum=0)
        block = blocks_lib.check_block(block, "SparseDense")
        if isinstance(connectivity, dict):
            connectivity = unpack_mask(connectivity)
        if connectivity is not None:
            connectivity = np.asarray(connectivity)
            if connectivity.ndim != 2 or connectivity.shape[1] != units:
                raise ValueError(
                    "`connectivity` must have shape (input_dim, units) = "
                    f"(input_dim, {units}). Received shape: {connectivity.shape}."
                )
            if not np.isin(connectivity, (0, 1)).all():
                raise ValueError("`connectivity` must hold only 0/1 or booleans.")
            connectivity = connectivity.astype(bool)
            empty = np.flatnonzero(~connectivity.any(axis=0))
            if empty.size:
                raise ValueError(
                    f"`connectivity` leaves output units {empty.tolist()} with "
                    "no input. Give every unit at least one input."
                )
            if block is not None:
                blocks_lib.check_fits(connectivity.shape, block, "connectivity",
                                      "SparseDense")
                if not blocks_lib.is_union_of_blocks(connectivity, block):
                    raise ValueError(
                        f"`connectivity` must be a union of whole {block} blocks "
                        f"for SparseDense(block={block}). Set every block "
                        "entirely to 0 or to 1."
                    )
        if block is not None and units < block[1]:
            raise ValueError(
                f"SparseDense: block={block} does not fit {units} units: the "
                "output axis must be at least as long as the block."
            )
        self.density = density
        self.connectivity = connectivity
        self.seed = seed
        self.block = block
        inner = dense_kwargs.pop("kernel_constraint", None)
        super().__init__(units, activation=activation, use_bias=use_bias,
                         kernel_constraint=MaskConstraint(inner, fixed=True),
                         **dense_kwargs)

    def build(self, input_shape: tuple[Any, ...]) -> None:
        input_dim = int(input_shape[-1])
        if self.connectivity is None:
            if self.block is not None:
                blocks_lib.check_fits((input_dim, self.units), self.block,
                                      f"{self.name}/kernel", "SparseDense")
            self.connectivity = _random_connectivity(
                input_dim, self.units, self.density, self.seed, self.block or (1, 1))
        elif self.connectivity.shape[0] != input_dim:
            raise ValueError(
                f"SparseDense '{self.name}': `connectivity` has "
                f"{self.connectivity.shape[0]} rows but the input has "
                f"{input_dim} features."
            )
        super().build(input_shape)
        self.kernel_constraint.attach(self.connectivity)
        self.kernel_constraint.variable = self.kernel  # zeroed again after load_weights
        self.kernel.assign(self.kernel_constraint(self.kernel))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        inner = self.kernel_constraint
        if isinstance(inner, MaskConstraint):  # not after dst.strip(inplace=True)
            inner = inner.inner
        config["kernel_constraint"] = (
            keras.constraints.serialize(inner) if inner is not None else None
        )
        config.update(
            density=self.density,
            seed=self.seed,
            block=None if self.block is None else list(self.block),
            connectivity=None if self.connectivity is None else pack_mask(self.connectivity),
        )
        if self.connectivity is not None:
            config["density"] = None
        return config


def _random_connectivity(n_in, units, density, seed, block=(1, 1)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = blocks_lib.grid_shape((n_in, units), block)
    size = rows * cols
    n_active = int(min(size, max(cols, round(density * size))))
    mask = np.zeros(size, dtype=bool)
    # One guaranteed input (block) per unit (block column), the rest uniformly at random.
    first = rng.integers(0, rows, size=cols) * cols + np.arange(cols)
    mask[first] = True
    rest = np.flatnonzero(~mask)
    mask[rng.choice(rest, size=n_active - cols, replace=False)] = True
    return blocks_lib.from_blocks(np, mask.reshape(rows, cols), (n_in, units), block)
