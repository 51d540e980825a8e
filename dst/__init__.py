"""keras-dst: sparse and dynamic sparse training for Keras 3."""

from dst import callbacks, distributions, export, layers, nm, testing, tfmot, updaters
from dst.core import sparsify
from dst.masking import MaskConstraint, MaskGroup
from dst.masks import get_masks, set_masks, sparsity
from dst.strip import strip
from dst.summary import summary

__version__ = "0.1.0"

__all__ = [
    "MaskConstraint",
    "MaskGroup",
    "callbacks",
    "distributions",
    "export",
    "get_masks",
    "layers",
    "nm",
    "set_masks",
    "sparsify",
    "sparsity",
    "strip",
    "summary",
    "testing",
    "tfmot",
    "updaters",
]
