"""Static sparse layers."""

from dst.layers.sparse_dense import SparseDense

__all__ = ["SparseDense"]
