"""Exact k-smallest selection with seeded tie-breaking, on the host or in-graph.

Every drop and grow decision of dst is "the k candidates with the smallest
(or largest) score". Each entry gets a unique key, compared lexicographically:

    key = (bits(score), fmix32(index XOR salt))

`bits` is the IEEE bit pattern of the non-negative float32 score (monotonic
in the score), and `fmix32` (MurmurHash3's finalizer) is a bijection on 32-bit
integers, so keys never tie and exactly k entries are selected. Exact score
ties are broken by the hash of (seed, step, weight, role), which makes the
choice seeded, reproducible and not biased by position.

Two kits evaluate the same keys:
`select_columns` picks k per column of a 2-D array by the same keys (the
constant fan-in of SRigL).
- `NUMPY` (on the host): `np.partition` over the scores, then over the
  hashes of the entries tied with the k-th score: O(n).
- `OPS` (inside a compiled step: XLA under TensorFlow's `jit_compile=True`,
  and JAX's jitted train step): two binary searches written in `keras.ops`,
  over the score bits (31 steps), then over the hashes of the tied entries
  (32 steps). It uses 32-bit integers only, so it is exact on every Keras
  backend, JAX without `jax_enable_x64` included.
Both select exactly the same entries (tested on each backend).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import keras
import numpy as np

__all__ = ["NUMPY", "OPS", "Array", "Kit", "as_int32", "salt"]

#: A numpy array (host path) or a backend tensor (in-graph path).
Array = Any


class Kit(Protocol):
    """What a mask rule may use: `NUMPY` on the host, `OPS` in-graph."""

    @property
    def xp(self) -> Any:  # numpy, or keras.ops
        ...

    def cast(self, x: Array, dtype: str) -> Array: ...

    def count(self, mask: Array) -> Array: ...

    def select(self, scores: Array | None, candidates: Array, k: Array, salt_value: Array,
               *, largest: bool = False) -> Array: ...

    def select_columns(self, scores: Array | None, candidates: Array, k: Array,
                       salt_value: Array, *, largest: bool = False) -> Array: ...

_M32 = 0xFFFFFFFF
_INF_BITS = 0x7F800000  # bits of float32 +inf
_NOT_CANDIDATE = 0x7FFFFFFF  # above every finite score and +inf
_SIGN = -(2**31)  # int32 with only the sign bit set


def _fmix32_u32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer on a uint32 array (wrapping), in place."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _fmix32_int(h: int) -> int:
    return int(_fmix32_u32(np.array([h & _M32], dtype=np.uint32))[0])


def as_int32(c: int) -> int:
    """The int32 with the same 32 bits as the unsigned value `c`."""
    c &= _M32
    return c - 2**32 if c >= 2**31 else c


def _fmix32_ops(h):
    """`fmix32` on an int32 tensor holding 32-bit patterns.

    Multiplication of int32 wraps modulo 2³² on every backend (two's
    complement), which is the unsigned product's bit pattern; right shifts
    are made logical by masking off the copied sign bits.
    """
    ops = keras.ops

    def shr(x, s):
        return ops.bitwise_and(ops.right_shift(x, s), (1 << (32 - s)) - 1)

    h = ops.bitwise_xor(h, shr(h, 16))
    h = ops.multiply(h, as_int32(0x85EBCA6B))
    h = ops.bitwise_xor(h, shr(h, 13))
    h = ops.multiply(h, as_int32(0xC2B2AE35))
    return ops.bitwise_xor(h, shr(h, 16))


def salt(xp, seed: int, step, index: int, role: int):
    """A 32-bit value from (seed, step, weight index, role: 0 drop, 1 grow).

    With `xp=np` (or any host number) it returns a Python int in [0, 2³²);
    with `xp=keras.ops` and a tensor `step`, an int32 tensor with the same
    bits. `seed` may be an int32 tensor holding the seed's low 32 bits (a
    compiled step that reads its seed from a variable); `step` is then a
    tensor too.
    """
    index_bits = (index * 0x27D4EB2F) & _M32
    role_bits = (role * 0x9E3779B9) & _M32
    if isinstance(seed, int | np.integer):
        h = _fmix32_int((int(seed) & _M32) ^ role_bits)
        if xp is np or isinstance(step, int | np.integer):
            h = _fmix32_int((int(step) & _M32) ^ h)
            return _fmix32_int(h ^ index_bits)
        h = as_int32(h)
    else:
        h = _fmix32_ops(keras.ops.bitwise_xor(keras.ops.cast(seed, "int32"), as_int32(role_bits)))
    ops = keras.ops
    h = _fmix32_ops(ops.bitwise_xor(ops.cast(step, "int32"), h))
    return _fmix32_ops(ops.bitwise_xor(h, as_int32(index_bits)))


class _NumpyKit:
    """Selection on the host, with numpy."""

    xp = np

    @staticmethod
    def cast(x, dtype):
        return np.asarray(x).astype(dtype, copy=False)

    @staticmethod
    def count(mask):
        return np.int64(np.count_nonzero(mask))

    def select(self, scores, candidates, k, salt_value, *, largest=False):
        """Bool mask (shape of `candidates`) of the k candidates with the
        smallest scores (largest with `largest=True`); `scores=None` means all
        tie, so the seeded hash alone chooses. Requires k <= #candidates."""
        # The same order as sorting the full keys, done in two partitions:
        # by score bits over the candidates, then by hash over the entries tied
        # with the k-th score only.
        flat_c = np.asarray(candidates, dtype=bool).ravel()
        out = np.zeros(flat_c.size, dtype=bool)
        k = int(k)
        idx = np.flatnonzero(flat_c)
        if k >= idx.size:
            out[idx] = True
            return out.reshape(candidates.shape)
        if k <= 0:
            return out.reshape(candidates.shape)
        if scores is None:  # all tie: the hash alone decides
            tied, need = idx, k
        else:
            # float32 order equals the order of the IEEE bits of |score|.
            s = np.abs(np.asarray(scores, dtype=np.float32).ravel()[idx])
            s[np.isnan(s)] = np.inf
            if largest:
                kth = np.partition(s, s.size - k)[s.size - k]
                better = s > kth
            else:
                kth = np.partition(s, k - 1)[k - 1]
                better = s < kth
            out[idx[better]] = True
            tied = idx[s == kth]
            need = k - int(np.count_nonzero(better))
        if need < tied.size:
            h = _fmix32_u32(tied.astype(np.uint32) ^ np.uint32(int(salt_value) & _M32))
            tied = tied[h <= np.partition(h, need - 1)[need - 1]]  # hashes are unique
        out[tied] = True
        return out.reshape(candidates.shape)

    def select_columns(self, scores, candidates, k, salt_value, *, largest=False):
        """Per column of a 2-D array, the k[j] best candidates (k: an int or one
        per column), by the same keys as `select` (constant fan-in, SRigL)."""
        return _select_columns_numpy(scores, candidates, k, salt_value, largest=largest)


class _OpsKit:
    """Selection in `keras.ops`, for compiled steps (32-bit integers only)."""

    xp = keras.ops

    @staticmethod
    def cast(x, dtype):
        return keras.ops.cast(x, dtype)

    @staticmethod
    def count(mask):
        return keras.ops.sum(keras.ops.cast(mask, "int32"))

    def select(self, scores, candidates, k, salt_value, *, largest=False):
        ops = keras.ops
        shape = candidates.shape
        flat_c = ops.reshape(candidates, (-1,))
        n = flat_c.shape[0]
        k = ops.cast(k, "int32")
        flat_s = None if scores is None else ops.reshape(scores, (-1,))
        hi, tie = _keys_ops(flat_s, flat_c, salt_value, largest)

        def search(values, eligible, need, low, high, steps):
            # Smallest t in [low, high] with #(eligible & values <= t) >= need.
            def body(_, bounds):
                lo, up = bounds
                # floor((lo + up) / 2) without int32 overflow.
                mid = (ops.right_shift(lo, 1) + ops.right_shift(up, 1)
                       + ops.bitwise_and(ops.bitwise_and(lo, up), 1))
                enough = ops.sum(ops.cast(ops.logical_and(eligible, values <= mid),
                                          "int32")) >= need
                return ops.where(enough, lo, mid + 1), ops.where(enough, mid, up)

            start = (ops.convert_to_tensor(low, "int32"), ops.convert_to_tensor(high, "int32"))
            return ops.fori_loop(0, steps, body, start)[1]

        everything = ops.ones((n,), "bool")
        kth = search(hi, everything, k, 0, _NOT_CANDIDATE, 31)
        below = hi < kth
        need = k - ops.sum(ops.cast(below, "int32"))
        at = ops.equal(hi, kth)
        last = search(tie, at, need, _SIGN, 2**31 - 1, 32)
        chosen = ops.logical_or(below, ops.logical_and(at, tie <= last))
        chosen = ops.logical_and(ops.logical_and(chosen, flat_c), k > 0)
        return ops.reshape(chosen, shape)

    def select_columns(self, scores, candidates, k, salt_value, *, largest=False):
        """`_NumpyKit.select_columns` in `keras.ops`: the same entries."""
        return _select_columns_ops(scores, candidates, k, salt_value, largest=largest)


NUMPY = _NumpyKit()
OPS = _OpsKit()


def _column_keys_numpy(scores, candidates, salt_value, largest):
    """uint64 keys (score bits << 32 | hash) of a 2-D array; non-candidates last."""
    c = np.asarray(candidates, dtype=bool)
    if scores is None:
        hi = np.zeros(c.shape, dtype=np.uint64)
    else:
        s = np.abs(np.asarray(scores, dtype=np.float32))
        s[np.isnan(s)] = np.inf
        hi = s.view(np.uint32).astype(np.uint64)
        if largest:
            hi = np.uint64(_INF_BITS) - hi
    hi = np.where(c, hi, np.uint64(_NOT_CANDIDATE))
    index = np.arange(c.size, dtype=np.uint32).reshape(c.shape)
    h = _fmix32_u32(index ^ np.uint32(int(salt_value) & _M32)).astype(np.uint64)
    return (hi << np.uint64(32)) | h


def _select_columns_numpy(scores, candidates, k, salt_value, *, largest=False):
    """Per column of a 2-D array, the k[j] best candidates (k: int or per column)."""
    c = np.asarray(candidates, dtype=bool)
    rows, cols = c.shape
    k = np.clip(np.broadcast_to(np.asarray(k, dtype=np.int64), (cols,)), 0, rows)
    key = _column_keys_numpy(scores, c, salt_value, largest)
    if rows == 0:
        return c
    kth = np.sort(key, axis=0)[np.maximum(k - 1, 0), np.arange(cols)]
    return (key <= kth) & c & (k > 0)


def _keys_ops(scores, candidates, salt_value, largest: bool):
    """The two selection keys of every entry, in `keras.ops` (shape of `candidates`).

    Primary: the score's float32 bits (a non-negative int32; NaN as +inf, so
    never preferred; flipped for `largest`), non-candidates last. Secondary:
    the seeded hash of the entry's row-major index, made signed-comparable
    (sign bit flipped).
    """
    ops = keras.ops
    shape = tuple(candidates.shape)
    if scores is None:
        hi = ops.zeros(shape, "int32")
    else:
        s = ops.abs(ops.cast(scores, "float32"))
        s = ops.where(ops.isnan(s), np.float32(np.inf), s)
        hi = ops.view(s, "int32")
        if largest:
            hi = _INF_BITS - hi
    hi = ops.where(candidates, hi, _NOT_CANDIDATE)
    index = ops.reshape(ops.arange(math.prod(shape), dtype="int32"), shape)
    tie = ops.bitwise_xor(_fmix32_ops(ops.bitwise_xor(index, salt_value)), _SIGN)
    return hi, tie


def _select_columns_ops(scores, candidates, k, salt_value, *, largest=False):
    """`_select_columns_numpy` in `keras.ops`: the same keys, binary searches per column."""
    ops = keras.ops
    rows, cols = candidates.shape
    k = ops.broadcast_to(ops.cast(k, "int32"), (cols,))
    hi, tie = _keys_ops(scores, candidates, salt_value, largest)

    def search(values, eligible, need, low, high, steps):
        # Per column: smallest t in [low, high] with #(eligible & values <= t) >= need.
        def body(_, bounds):
            lo, up = bounds
            mid = (ops.right_shift(lo, 1) + ops.right_shift(up, 1)
                   + ops.bitwise_and(ops.bitwise_and(lo, up), 1))
            hits = ops.logical_and(eligible, values <= ops.expand_dims(mid, 0))
            enough = ops.sum(ops.cast(hits, "int32"), axis=0) >= need
            return ops.where(enough, lo, mid + 1), ops.where(enough, mid, up)

        start = (ops.full((cols,), low, "int32"), ops.full((cols,), high, "int32"))
        return ops.fori_loop(0, steps, body, start)[1]

    everything = ops.ones((rows, cols), "bool")
    kth = ops.expand_dims(search(hi, everything, k, 0, _NOT_CANDIDATE, 31), 0)
    below = hi < kth
    need = k - ops.sum(ops.cast(below, "int32"), axis=0)
    at = ops.equal(hi, kth)
    last = ops.expand_dims(search(tie, at, need, _SIGN, 2**31 - 1, 32), 0)
    chosen = ops.logical_or(below, ops.logical_and(at, tie <= last))
    return ops.logical_and(ops.logical_and(chosen, candidates), ops.expand_dims(k > 0, 0))

