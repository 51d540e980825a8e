"""Where a mask lives: `MaskConstraint`, the one home of dst's mask state.

A mask is a boolean Keras variable owned by a `MaskConstraint` that is set as
the weight variable's `constraint`. Keras optimizers apply
`variable.constraint` after every update, so masked entries are 0.0 after every
optimizer step, whatever the optimizer, while the forward pass uses the stored
kernel unchanged. Because the mask is never multiplied into the forward pass,
the gradient that reaches a masked entry is the *dense* gradient, which RigL
grows from.

The constraint is also a Keras saveable: Keras' saving code walks layer
attributes and calls `save_own_variables` / `load_own_variables` on it, so the
mask (bit-packed) and the record of which connections were ever active travel
in `.keras` and `.weights.h5` files.
"""

from __future__ import annotations

from collections import UserDict

import keras
import numpy as np
from keras.src.saving.keras_saveable import KerasSaveable

__all__ = ["MaskConstraint", "MaskGroup"]


@keras.saving.register_keras_serializable(package="dst")
class MaskConstraint(keras.constraints.Constraint, KerasSaveable):
    """Keeps masked entries of one weight at exactly 0.0 after each update.

    Args:
        inner: the constraint the weight had before it was masked, applied to
            the masked weight and masked again. Defaults to `None`.
        fixed: `True` for connectivity that dynamic sparse training must not
            change (e.g. `dst.layers.SparseDense`). Defaults to `False`.

    Users normally never build one: `dst.sparsify` and `SparseDense` do.
    """

    def __init__(self, inner=None, fixed: bool = False):
        self.inner = keras.constraints.get(inner)
        self.fixed = bool(fixed)
        self.mask = None  # keras.Variable(bool), created by `attach`/loading
        self.ever_active = None  # numpy bool array: the ITOP record

    # -- state ---------------------------------------------------------------
    def attach(self, mask: np.ndarray) -> None:
        """Creates (or overwrites) the mask variable from a numpy bool array."""
        mask = np.asarray(mask, dtype=bool)
        if self.mask is None or tuple(self.mask.shape) != mask.shape:
            self.mask = keras.Variable(
                mask, dtype="bool", trainable=False, name="dst_mask"
            )
            self.ever_active = mask.copy()
        else:
            self.mask.assign(mask)
            self.ever_active |= mask

    def numpy(self) -> np.ndarray:
        """The mask as a numpy bool array."""
        return np.asarray(self.mask.numpy(), dtype=bool)

    # -- Constraint ----------------------------------------------------------
    def __call__(self, w):
        if self.mask is None:
            return self.inner(w) if self.inner is not None else w
        # `where`, not `w * mask`: masked entries become +0.0, never -0.0.
        w = keras.ops.where(self.mask, w, keras.ops.zeros_like(w))
        if self.inner is None:
            return w
        w = self.inner(w)
        return keras.ops.where(self.mask, w, keras.ops.zeros_like(w))

    def get_config(self):
        return {
            "inner": keras.constraints.serialize(self.inner)
            if self.inner is not None
            else None,
            "fixed": self.fixed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- KerasSaveable -------------------------------------------------------
    def _obj_type(self):
        # Keras only uses this to pick which attributes to skip when it walks
        # children; a MaskConstraint has no saveable children, and "Loss" is
        # an accepted type whose skip list fits a plain object.
        return "Loss"

    def save_own_variables(self, store):
        if self.mask is not None:
            _save_mask(store, "", self)

    def load_own_variables(self, store):
        _load_mask(store, "", self)


def _save_mask(store, prefix: str, constraint: MaskConstraint) -> None:
    mask = constraint.numpy()
    store[prefix + "shape"] = np.asarray(mask.shape, dtype="int64")
    store[prefix + "mask"] = np.packbits(mask.ravel())
    store[prefix + "ever_active"] = np.packbits(constraint.ever_active.ravel())


def _load_mask(store, prefix: str, constraint: MaskConstraint) -> bool:
    if prefix + "mask" not in store.keys():
        return False  # a file without masks for this weight (e.g. a dense one)
    shape = tuple(int(d) for d in np.asarray(store[prefix + "shape"]))
    size = int(np.prod(shape))
    mask = np.unpackbits(np.asarray(store[prefix + "mask"]))[:size].astype(bool)
    ever = np.unpackbits(np.asarray(store[prefix + "ever_active"]))[:size]
    constraint.attach(mask.reshape(shape))
    constraint.ever_active = ever.astype(bool).reshape(shape) | constraint.numpy()
    return True


@keras.saving.register_keras_serializable(package="dst")
class MaskGroup(keras.constraints.Constraint, KerasSaveable):
    """The masks of several weights whose layer config shares one constraint.

    `MultiHeadAttention` passes its single `kernel_constraint` to its query,
    key, value and output projections and rebuilds them from its own config
    when loaded. A `MaskGroup` in that slot carries one `MaskConstraint` per
    member weight, keyed by the weight's path inside the parent layer (e.g.
    "query/kernel"), so `keras.models.load_model` restores all of them.

    Args:
        inner: the constraint the parent had before. Defaults to None.
    """

    def __init__(self, inner=None):
        self.inner = keras.constraints.get(inner)
        # A UserDict, not a dict: Keras' saving walks dict attributes and
        # would save the members a second time, by position instead of key.
        self.members: UserDict[str, MaskConstraint] = UserDict()

    def member_for(self, path: str) -> MaskConstraint | None:
        """The member mask of the weight at `path`, or None."""
        for key, member in self.members.items():
            if path == key or path.endswith("/" + key):
                return member
        return None

    def __call__(self, w):
        member = self.member_for(getattr(w, "path", ""))
        if member is not None:
            return member(w)
        return self.inner(w) if self.inner is not None else w

    def get_config(self):
        inner = keras.constraints.serialize(self.inner) if self.inner is not None else None
        return {"inner": inner}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _obj_type(self):
        return "Loss"  # see MaskConstraint._obj_type

    def save_own_variables(self, store):
        keys = sorted(self.members)
        store["keys"] = np.frombuffer("\n".join(keys).encode(), dtype=np.uint8)
        for i, key in enumerate(keys):
            if self.members[key].mask is not None:
                _save_mask(store, f"{i}_", self.members[key])

    def load_own_variables(self, store):
        if "keys" not in store.keys():
            return
        keys = np.asarray(store["keys"], dtype=np.uint8).tobytes().decode().split("\n")
        for i, key in enumerate(keys):
            member = self.members.setdefault(key, MaskConstraint(self.inner))
            _load_mask(store, f"{i}_", member)
