"""`dst.summary`: per-weight sparsity and inference FLOPs, Keras-style table."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras

from dst import _compat
from dst._model import check_keras3_model, count_active, find_targets

__all__ = ["summary"]

# Conv layers whose kernel is applied once per output position.
_CONV = (_compat.BaseConv, _compat.BaseDepthwiseConv, _compat.BaseSeparableConv)


def _attention_positions(target) -> int | None:
    """Positions at which an attention projection runs, from its parent's build."""
    if target.group is None:
        return None
    shapes = _compat.build_shapes(target.group[0])
    source = {"key": "key_shape", "value": "value_shape"}.get(target.layer.name, "query_shape")
    shape = shapes.get(source) or shapes.get("value_shape")
    if shape is None or not all(isinstance(d, int) for d in shape[1:-1]):
        return None
    return math.prod(shape[1:-1])


def _build_input_shape(layer):
    shape = _compat.build_shapes(layer).get("input_shape")
    if shape is None or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return tuple(shape)


def _output_shape(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    return tuple(shape) if all(d is not None for d in shape[1:]) else None


def _time_steps(model) -> dict[int, int]:
    """{id(cell): time steps} for the cells of RNN layers with a known length."""
    steps = {}
    for layer in _compat.flatten_layers(model):
        if isinstance(layer, keras.layers.RNN):
            try:
                n = tuple(layer.input.shape)[1]
            except (AttributeError, ValueError, TypeError, IndexError):
                continue
            if n is not None:
                steps[id(layer.cell)] = int(n)
    return steps


def _repeats(layer, target_shape) -> int:
    """How many times per example each connection is used in a forward pass.

    Conv: output positions; Conv transpose: input positions; Dense and
    EinsumDense (attention projections included): input elements / kernel
    input elements, from the shape the layer was built with; RNN cells:
    time steps; Embedding: 0 (a lookup has no multiply-adds); other layers
    and layers that were never called symbolically: 1.
    """
    if isinstance(layer, keras.layers.Embedding):
        return 0
    if isinstance(layer, _compat.BaseConvTranspose):
        try:
            return math.prod(_spatial(layer, tuple(layer.input.shape)))
        except (AttributeError, ValueError, TypeError):
            return 1
    out = _output_shape(layer)
    if isinstance(layer, keras.layers.Dense | keras.layers.EinsumDense):
        kernel_in = (target_shape[0] if isinstance(layer, keras.layers.Dense)
                     else _in_dims(layer, target_shape))
        built = _build_input_shape(layer)
        if built is not None:  # also known for sublayers, e.g. attention projections
            return max(1, math.prod(built[1:]) // kernel_in)
        if out is None:
            return 1
        return max(1, math.prod(out[1:]) * kernel_in // math.prod(target_shape))
    if out is None:
        return 1
    if isinstance(layer, _CONV):
        return math.prod(_spatial(layer, out))
    return 1


def _spatial(layer, shape) -> tuple:
    """The spatial dims of a conv layer's (batch, ...) input or output shape."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return shape[2:]
    return shape[1:-1]


def _in_dims(layer, shape) -> int:
    # EinsumDense "abc,cde->abde": kernel dims also in the input are inputs.
    lhs, rest = layer.equation.split(",")
    kernel, _ = rest.split("->")
    return math.prod(d for ch, d in zip(kernel, shape) if ch in lhs) or 1


def summary(model: keras.Model, print_fn: Callable[..., Any] = print) -> list[dict[str, Any]]:
    """Prints a table of masked weights and returns its rows.

    Each row: `path`, `shape`, `size`, `active`, `density`, `dense_flops` and
    `sparse_flops` (inference FLOPs per example, counting a multiply-add as 2
    FLOPs, and only active connections for the sparse count, as in the RigL
    paper's appendix). The last row, with path "total", sums them. Biases,
    activations, normalization and the weight-free attention products
    (QK^T, scores·V) are not counted; a layer shared between call sites is
    counted once. Masked weights frozen afterwards are included.

    `active` counts entries whose mask is 1 or whose weight is non-zero: as
    for `dst.sparsity`, values written by `model.set_weights` where the mask
    is 0 count as active until `dst.set_masks(model, dst.get_masks(model))`
    or the next optimizer step zeroes them, and a warning names the weights.

    Args:
        model: a Keras 3 model, sparsified or not (unmasked weights count as
            dense).
        print_fn: called with each line. Defaults to `print`; pass
            `lambda *_: None` to only get the rows.

    Returns:
        A list of dicts, one per sparsifiable weight, then the total.

    Raises:
        TypeError: a legacy tf_keras model, or not a Keras model.
        ValueError: an unbuilt model.
    """
    check_keras3_model(model, "dst.summary")
    rows: list[dict[str, Any]] = []
    steps = _time_steps(model)
    targets = find_targets(model)
    masked = [t for t in targets if t.constraint is not None and t.constraint.mask is not None]
    actives = dict(zip(map(id, masked), count_active(masked, "dst.summary")))
    for t in targets:
        size = math.prod(t.shape)
        active = actives.get(id(t), size)
        reps = (steps.get(id(t.layer)) or _attention_positions(t)
                or _repeats(t.layer, t.shape))
        rows.append(
            dict(path=t.path, shape=t.shape, size=size, active=active,
                 density=active / size, dense_flops=2 * size * reps,
                 sparse_flops=2 * active * reps)
        )
    size = sum(r["size"] for r in rows)
    active = sum(r["active"] for r in rows)
    rows.append(
        dict(path="total", shape=(), size=size, active=active,
             density=active / size if size else 1.0,
             dense_flops=sum(r["dense_flops"] for r in rows),
             sparse_flops=sum(r["sparse_flops"] for r in rows))
    )
    _print_table(model, rows, print_fn)
    return rows


def _print_table(model, rows, print_fn) -> None:
    head = ("Weight (path)", "Shape", "Size", "Active", "Density",
            "Dense FLOPs", "Sparse FLOPs")
    body = [
        (r["path"], "" if r["path"] == "total" else str(r["shape"]),
         f"{r['size']:,}", f"{r['active']:,}", f"{r['density']:.4f}",
         f"{r['dense_flops']:,}", f"{r['sparse_flops']:,}")
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = "  ".join(w * "─" for w in widths)

    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    print_fn(f'dst summary: "{model.name}"')
    print_fn(line)
    print_fn(fmt(head))
    print_fn(line)
    for cells in body[:-1]:
        print_fn(fmt(cells))
    print_fn(line)
    print_fn(fmt(body[-1]))
    total = rows[-1]
    ratio = total["sparse_flops"] / total["dense_flops"] if total["dense_flops"] else 1.0
    print_fn(f"Sparsity: {1 - total['density']:.4f}   "
             f"Sparse/dense inference FLOPs: {ratio:.4f}")
