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
in `.keras` and `.weights.h5` files. Keras loads a layer's own weights before
its attributes, so `load_own_variables` also sets the masked entries of the
freshly loaded weight to 0.0, whatever the file held there.

Its config carries the mask too (bit-packed, base64), so
`keras.models.clone_model` and `from_config` rebuild a sparse layer with the
same mask; the ITOP record of such a copy restarts as its mask.
"""

from __future__ import annotations

import base64
from collections import UserDict
from collections.abc import Mapping, MutableMapping
from typing import Any

import keras
import numpy as np

from dst import _compat
from dst._compat import LeafSaveable

__all__ = ["MaskConstraint", "MaskGroup", "pack_mask", "unpack_mask"]


def pack_mask(mask: np.ndarray) -> dict:
    """A bool mask as a JSON-able config: its shape and base64 packed bits."""
    mask = np.asarray(mask, dtype=bool)
    bits = np.packbits(mask.ravel()).tobytes()
    return {"shape": [int(d) for d in mask.shape],
            "bits": base64.b64encode(bits).decode()}


def unpack_mask(config: Mapping) -> np.ndarray:
    """The bool mask of a `pack_mask` config."""
    shape = tuple(int(d) for d in config["shape"])
    bits = np.frombuffer(base64.b64decode(config["bits"]), dtype=np.uint8)
    return np.unpackbits(bits)[: int(np.prod(shape))].reshape(shape).astype(bool)


@keras.saving.register_keras_serializable(package="dst")
class MaskConstraint(keras.constraints.Constraint, LeafSaveable):
    """Keeps masked entries of one weight at exactly 0.0 after each update.

    Args:
        inner: the constraint the weight had before it was masked, applied to
            the masked weight and masked again. Defaults to `None`.
        fixed: `True` for connectivity that dynamic sparse training must not
            change (e.g. `dst.layers.SparseDense`). Defaults to `False`.
        mask: the mask, as a bool array or a `pack_mask` config (what
            `get_config` returns). Defaults to `None` (no mask yet).

    Users normally never build one: `dst.sparsify` and `SparseDense` do.
    """

    def __init__(self, inner: keras.constraints.Constraint | str | dict | None = None,
                 fixed: bool = False, mask: np.ndarray | Mapping[str, Any] | None = None
                 ) -> None:
        self.inner = keras.constraints.get(inner)
        self.fixed = bool(fixed)
        # keras.Variable(bool), created by `attach`/loading; None before.
        self.mask: Any = None
        self.ever: Any = None  # keras.Variable(bool): the ITOP record, updated in-graph
        self.skipped: Any = None  # keras.Variable(int32): updates skipped (NaN/Inf)
        # The weight this constraint masks: set by `dst._model` when it installs
        # or finds the constraint, so that loading can zero the weight.
        self.variable: keras.Variable | None = None
        # An updater's own per-weight state, saved with the mask (`state`),
        # values loaded for state not created yet, and the names loaded since
        # the updater last took them (`restored`).
        self._states: dict[str, Any] = {}
        self._loaded: dict[str, np.ndarray] = {}
        self._restored: set[str] = set()
        if mask is not None:
            self.attach(unpack_mask(mask) if isinstance(mask, Mapping) else mask)

    # -- state ---------------------------------------------------------------
    def attach(self, mask: np.ndarray) -> None:
        """Creates (or overwrites) the mask variable from a numpy bool array."""
        mask = np.asarray(mask, dtype=bool)
        if self.mask is None or tuple(self.mask.shape) != mask.shape:
            self.mask = keras.Variable(
                mask, dtype="bool", trainable=False, name="dst_mask"
            )
            self.ever = keras.Variable(
                mask, dtype="bool", trainable=False, name="dst_ever_active"
            )
            # Mask updates skipped for non-finite values (not saved).
            self.skipped = keras.Variable(0, dtype="int32", trainable=False,
                                          name="dst_skipped_updates")
        else:
            self.mask.assign(mask)
            self.ever.assign(self.ever_active | mask)

    def state(self, name: str, dtype: str = "float32") -> Any:
        """An updater's per-weight state `name` (SNFS' momentum): a variable of
        the mask's shape, created on first use (zeros, or the values a file
        loaded for it), saved and loaded with the mask."""
        if name not in self._states:
            value = self._loaded.pop(name, None)
            if value is None:
                value = np.zeros(tuple(self.mask.shape), dtype)
            self._states[name] = keras.Variable(value.astype(dtype), trainable=False,
                                                name=f"dst_{name}")
        return self._states[name]

    def restored(self, name: str) -> bool:
        """Whether state `name` was loaded from a file since the last call."""
        found = name in self._restored
        self._restored.discard(name)
        return found

    @property
    def state_variables(self) -> list:
        """The variables a training step reads and writes: mask, ITOP record, skip count."""
        return [self.mask, self.ever, self.skipped] if self.mask is not None else []

    def numpy(self) -> np.ndarray:
        """The mask as a numpy bool array."""
        return np.asarray(_compat.to_numpy(self.mask), dtype=bool)

    @property
    def ever_active(self) -> np.ndarray | None:
        """The ITOP record as a numpy bool array: entries active at least once."""
        if self.ever is None:
            return None
        return np.asarray(_compat.to_numpy(self.ever), dtype=bool)

    def zero_masked(self) -> None:
        """Sets the masked entries of the weight to 0.0 (no-op when unbound)."""
        v = self.variable
        if v is None or self.mask is None or tuple(v.shape) != tuple(self.mask.shape):
            return
        v.assign(keras.ops.where(self.mask.value, v.value, keras.ops.zeros((), v.dtype)))

    # -- Constraint ----------------------------------------------------------
    def __call__(self, w):
        if self.mask is None:
            return self.inner(w) if self.inner is not None else w
        # `where`, not `w * mask`: masked entries become +0.0, never -0.0. The
        # zero is 0-d (broadcast): no full-size buffer is filled every step.
        _check_readable(self.mask)
        mask = self.mask.value
        zero = keras.ops.zeros((), w.dtype)
        w = keras.ops.where(mask, _value(w), zero)
        if self.inner is None:
            return w
        w = _value(self.inner(w))
        return keras.ops.where(mask, w, zero)

    def get_config(self) -> dict[str, Any]:
        return {
            "inner": keras.constraints.serialize(self.inner)
            if self.inner is not None
            else None,
            "fixed": self.fixed,
            "mask": pack_mask(self.numpy()) if self.mask is not None else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskConstraint:
        return cls(**config)

    # -- KerasSaveable (see `dst._compat.LeafSaveable`) -----------------------
    def save_own_variables(self, store: MutableMapping[str, Any]) -> None:
        if self.mask is not None:
            _save_mask(store, "", self)

    def load_own_variables(self, store: Mapping[str, Any]) -> None:
        # Runs after the layer loaded its weights: a file saved from a dense
        # model (or with values assigned after the last step) must not leave
        # masked entries non-zero until the next optimizer step.
        _load_mask(store, "", self)
        self.zero_masked()


def _check_readable(variable) -> None:
    """A clear error for a mask whose value Keras' JAX trainer holds elsewhere.

    During a dst `fit` on JAX the masks are part of the threaded state (see
    `dst.backend.jax`) and the trainer drops the variables' own values; a fit
    that ended with an exception leaves them registered until the next dst
    fit ends. A train function built without dst in between cannot see them.
    """
    if getattr(variable, "_value", True) is None and not _compat.is_mapped(variable):
        raise RuntimeError(
            "dst: this model's masks are still registered as JAX training state by a "
            "dst fit that ended with an exception, and this step was built without "
            "dst. Train with a dst callback (e.g. `dst.callbacks.FixedMasks()` to keep "
            "the masks as they are): it releases them when it ends."
        )


def _value(x):
    """A tensor for `x` (keras.Variables are not arrays to every backend's ops)."""
    return x.value if isinstance(x, keras.Variable) else x


def _save_mask(store, prefix: str, constraint: MaskConstraint) -> None:
    mask = constraint.numpy()
    store[prefix + "shape"] = np.asarray(mask.shape, dtype="int64")
    store[prefix + "mask"] = np.packbits(mask.ravel())
    ever = constraint.ever_active  # there is one whenever there is a mask
    store[prefix + "ever_active"] = np.packbits((mask if ever is None else ever).ravel())
    for name, variable in constraint._states.items():
        store[prefix + _STATE + name] = np.asarray(_compat.to_numpy(variable))


def _load_mask(store, prefix: str, constraint: MaskConstraint) -> bool:
    if prefix + "mask" not in store.keys():
        return False  # a file without masks for this weight (e.g. a dense one)
    shape = tuple(int(d) for d in np.asarray(store[prefix + "shape"]))
    size = int(np.prod(shape))
    mask = np.unpackbits(np.asarray(store[prefix + "mask"]))[:size].astype(bool)
    ever = np.unpackbits(np.asarray(store[prefix + "ever_active"]))[:size]
    constraint.attach(mask.reshape(shape))
    constraint.ever.assign(ever.astype(bool).reshape(shape) | constraint.numpy())
    for key in store.keys():
        if key.startswith(prefix + _STATE):
            name, value = key[len(prefix + _STATE):], np.asarray(store[key])
            if name in constraint._states:
                constraint._states[name].assign(value)
            else:
                constraint._loaded[name] = value
            constraint._restored.add(name)
    return True


# The store key prefix of an updater's per-weight state (`MaskConstraint.state`).
_STATE = "state_"


@keras.saving.register_keras_serializable(package="dst")
class MaskGroup(keras.constraints.Constraint, LeafSaveable):
    """The masks of several weights whose layer config shares one constraint.

    `MultiHeadAttention` passes its single `kernel_constraint` to its query,
    key, value and output projections and rebuilds them from its own config
    when loaded. A `MaskGroup` in that slot carries one `MaskConstraint` per
    member weight, keyed by the weight's path inside the parent layer (e.g.
    "query/kernel"), so `keras.models.load_model` and
    `keras.models.clone_model` restore all of them.

    Keras' saving walk reaches the group through the first projection, before
    the other projections have loaded their weights; so `dst._model` also
    hangs each member on its own projection, whose walk loads (and zeroes)
    the member after that projection's weights.

    Args:
        inner: the constraint the parent had before. Defaults to None.
        members: {key: `MaskConstraint` or its serialized config}, as
            `get_config` returns. Defaults to None (no members yet).
    """

    def __init__(self, inner: keras.constraints.Constraint | str | dict | None = None,
                 members: Mapping[str, MaskConstraint | dict] | None = None) -> None:
        self.inner = keras.constraints.get(inner)
        # A UserDict, not a dict: Keras' saving walks dict attributes and
        # would save the members a second time, by position instead of key.
        self.members: UserDict[str, MaskConstraint] = UserDict(
            {key: keras.constraints.get(m) for key, m in (members or {}).items()}
        )

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

    def get_config(self) -> dict[str, Any]:
        inner = keras.constraints.serialize(self.inner) if self.inner is not None else None
        members = {key: keras.constraints.serialize(m) for key, m in self.members.items()}
        return {"inner": inner, "members": members}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskGroup:
        return cls(**config)

    def save_own_variables(self, store: MutableMapping[str, Any]) -> None:
        keys = sorted(self.members)
        store["keys"] = np.frombuffer("\n".join(keys).encode(), dtype=np.uint8)
        for i, key in enumerate(keys):
            if self.members[key].mask is not None:
                _save_mask(store, f"{i}_", self.members[key])

    def load_own_variables(self, store: Mapping[str, Any]) -> None:
        if "keys" in store.keys():
            keys = np.asarray(store["keys"], dtype=np.uint8).tobytes().decode().split("\n")
            for i, key in enumerate(keys):
                member = self.members.setdefault(key, MaskConstraint(self.inner))
                _load_mask(store, f"{i}_", member)
        for member in self.members.values():  # those whose weights are loaded
            member.zero_masked()
