"""Exact k-smallest selection with seeded tie-breaking, on the host or in-graph.

Every drop and grow decision of dst is "the k candidates with the smallest
(or largest) score". Each entry gets a unique 63-bit key:

    key = bits(score) · 2³² + fmix32(index XOR salt)

`bits` is the IEEE bit pattern of the non-negative float32 score (monotonic
in the score), and `fmix32` (MurmurHash3's finalizer) is a bijection on 32-bit
integers, so keys never tie and exactly k entries are selected. Exact score
ties are broken by the hash of (seed, step, weight, role), which makes the
choice seeded, reproducible and not biased by position.

Two kits evaluate the same keys:
- `NUMPY` (the default, on the host): `np.partition` over the scores, then
  over the hashes of the entries tied with the k-th score: O(n).
- `OPS` (inside an XLA-compiled step, `jit_compile=True`): a 63-step binary
  search over the key range written in `keras.ops`, which XLA compiles.
Both select exactly the same entries (tested).
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["NUMPY", "OPS", "salt"]

_M32 = 0xFFFFFFFF
_INF_BITS = 0x7F800000  # bits of float32 +inf
_NOT_CANDIDATE = 0x7FFFFFFF  # above every finite score and +inf
_MAX_KEY = 2**63 - 1


def _mul32(xp, h, c: int):
    """(h · c) mod 2³² for 0 <= h < 2³², without int64 overflow."""
    lo = xp.bitwise_and(h, 0xFFFF)
    hi = xp.right_shift(h, 16)
    cross = xp.bitwise_and(xp.multiply(hi, c & 0xFFFF), 0xFFFF)
    return xp.bitwise_and(xp.add(xp.multiply(lo, c), xp.left_shift(cross, 16)), _M32)


def fmix32(xp, h):
    """MurmurHash3's 32-bit finalizer: a bijection on [0, 2³²)."""
    h = xp.bitwise_and(h, _M32)
    h = xp.bitwise_xor(h, xp.right_shift(h, 16))
    h = _mul32(xp, h, 0x85EBCA6B)
    h = xp.bitwise_xor(h, xp.right_shift(h, 13))
    h = _mul32(xp, h, 0xC2B2AE35)
    return xp.bitwise_xor(h, xp.right_shift(h, 16))


def salt(xp, seed: int, step, index: int, role: int):
    """A 32-bit value from (seed, step, weight index, role: 0 drop, 1 grow)."""
    h = fmix32(np, np.int64((int(seed) ^ (role * 0x9E3779B9)) & _M32))
    h = fmix32(xp, xp.bitwise_xor(xp.bitwise_and(step, _M32), int(h)))
    return fmix32(xp, xp.bitwise_xor(h, (index * 0x27D4EB2F) & _M32))


class _Kit:
    """An array namespace plus the one operation that differs: selection."""

    xp = None

    def keys(self, scores, candidates, salt_value, largest: bool):
        xp = self.xp
        flat_c = xp.reshape(candidates, (-1,))
        n = flat_c.shape[0]
        if scores is None:
            hi = xp.zeros((n,), "int64")
        else:
            s = xp.abs(self.cast(xp.reshape(scores, (-1,)), "float32"))
            s = xp.where(xp.isnan(s), np.float32(np.inf), s)  # NaN never preferred
            hi = self.cast(self.bits(s), "int64")
            if largest:
                hi = xp.subtract(_INF_BITS, hi)
        hi = xp.where(flat_c, hi, _NOT_CANDIDATE)
        index = xp.arange(n, dtype="int64")
        tie = fmix32(xp, xp.bitwise_xor(index, salt_value))
        return xp.add(xp.multiply(hi, 2**32), tie)

    def select(self, scores, candidates, k, salt_value, *, largest=False):
        """Bool mask (shape of `candidates`) of the k candidates with the
        smallest scores (largest with `largest=True`); `scores=None` means all
        tie, so the seeded hash alone chooses. Requires k <= #candidates."""
        keys = self.keys(scores, candidates, salt_value, largest)
        chosen = self.smallest(keys, k)
        return self.xp.reshape(chosen, candidates.shape)


class _NumpyKit(_Kit):
    xp = np

    @staticmethod
    def cast(x, dtype):
        return np.asarray(x).astype(dtype, copy=False)

    @staticmethod
    def count(mask):
        return np.int64(np.count_nonzero(mask))

    def select(self, scores, candidates, k, salt_value, *, largest=False):
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


def _fmix32_u32(h: np.ndarray) -> np.ndarray:
    """`fmix32` on a uint32 array (wrapping multiplication), in place."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


class _OpsKit(_Kit):
    xp = keras.ops

    @staticmethod
    def cast(x, dtype):
        return keras.ops.cast(x, dtype)

    @staticmethod
    def bits(x):
        return keras.ops.view(x, "int32")

    @staticmethod
    def count(mask):
        return keras.ops.sum(keras.ops.cast(mask, "int64"))

    @staticmethod
    def smallest(keys, k):
        ops = keras.ops
        k = ops.cast(k, "int64")

        def body(_, bounds):
            lo, hi = bounds
            mid = lo + (hi - lo) // 2
            enough = ops.sum(ops.cast(keys <= mid, "int64")) >= k
            return ops.where(enough, lo, mid + 1), ops.where(enough, mid, hi)

        start = (ops.convert_to_tensor(0, "int64"), ops.convert_to_tensor(_MAX_KEY, "int64"))
        _, kth = ops.fori_loop(0, 63, body, start)
        return ops.logical_and(keys <= kth, k > 0)


NUMPY = _NumpyKit()
OPS = _OpsKit()
