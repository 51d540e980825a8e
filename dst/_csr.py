"""The "npz" export format: Dense kernels as CSR matrices, run with scipy.

Measured on a 784-1000-1000-10 MLP at 95% sparsity (README, "Sparse
deployment"): a scipy CSR forward pass is faster than dense Keras `predict`,
`predict_on_batch` and dense numpy at batch 1 to 64, so dst keeps this path for
MLP-style models served from Python on CPU.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from dst import _compat

__all__ = ["CSRModel", "to_npz"]

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda h: h,
    "relu": lambda h: np.maximum(h, 0, out=h),
    "relu6": lambda h: np.clip(h, 0, 6, out=h),
    "sigmoid": lambda h: 1.0 / (1.0 + np.exp(-h)),
    "tanh": np.tanh,
    "softmax": lambda h: _softmax(h),
}


def _softmax(h):
    # Features are on axis 0 here: (units, batch).
    e = np.exp(h - h.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _activation_name(fn, layer) -> str:
    name = keras.activations.serialize(fn) if fn is not None else "linear"
    name = name if isinstance(name, str) else getattr(fn, "__name__", repr(fn))
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"dst.export format='npz' cannot run activation {name!r} of layer "
            f"'{layer.name}'. Supported: {sorted(_ACTIVATIONS)}. Use format='tflite'."
        )
    return name


def to_npz(model) -> bytes:
    """The npz bytes of a Sequential model of Dense/Flatten/Dropout/Activation layers."""
    if not isinstance(model, keras.Sequential):
        raise ValueError(
            "dst.export format='npz' supports keras.Sequential models of Dense, "
            f"Flatten, Dropout, Activation and ReLU layers. Received "
            f"{type(model).__name__} '{model.name}'. Use format='tflite'."
        )
    arrays: dict[str, Any] = {}
    steps: list[str] = []
    flat = len(model.inputs[0].shape) == 2  # Dense on (batch, features) only
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense) and not flat:
            raise ValueError(
                f"dst.export format='npz' runs Dense layers on flat inputs only; "
                f"layer '{layer.name}' gets a {len(layer.input.shape)}-D input. "
                "Add a Flatten before it, or use format='tflite'."
            )
        if isinstance(layer, keras.layers.Dense):
            i = len(steps)
            kernel = np.asarray(_compat.to_numpy(layer.kernel), np.float32).T
            rows, cols = np.nonzero(kernel)  # row-major: CSR order
            indptr = np.zeros(kernel.shape[0] + 1, dtype=np.int32)
            np.cumsum(np.bincount(rows, minlength=kernel.shape[0]), out=indptr[1:])
            arrays[f"{i}_data"] = kernel[rows, cols]
            arrays[f"{i}_indices"] = cols.astype(np.int32)
            arrays[f"{i}_indptr"] = indptr
            arrays[f"{i}_shape"] = np.asarray(kernel.shape, np.int64)
            bias = (_compat.to_numpy(layer.bias) if layer.use_bias
                    else np.zeros(kernel.shape[0]))
            arrays[f"{i}_bias"] = np.asarray(bias, np.float32)
            steps.append(f"dense:{_activation_name(layer.activation, layer)}")
        elif isinstance(layer, keras.layers.Activation):
            steps.append(f"act:{_activation_name(layer.activation, layer)}")
        elif isinstance(layer, keras.layers.ReLU) and layer.get_config().get(
                "max_value") is None and not layer.get_config().get("negative_slope"):
            steps.append("act:relu")
        elif isinstance(layer, keras.layers.Flatten | keras.layers.Dropout):
            flat = flat or isinstance(layer, keras.layers.Flatten)
            steps.append("identity")
        else:
            raise ValueError(
                f"dst.export format='npz' cannot run layer '{layer.name}' "
                f"({type(layer).__name__}). It supports Dense, Flatten, Dropout, "
                "Activation and ReLU layers. Use format='tflite'."
            )
    arrays["steps"] = np.asarray(steps)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


class CSRModel:
    """A model exported with format="npz": scipy CSR products on numpy batches.

    Attributes:
        content: the npz bytes.
    """

    def __init__(self, content: bytes):
        try:
            from scipy import sparse
        except ImportError:
            raise ImportError(
                "dst.export.load needs scipy for format='npz' files: "
                "pip install 'keras-dst[export]'."
            ) from None
        self.content = content
        with np.load(io.BytesIO(content), allow_pickle=False) as f:
            self.steps = [str(s) for s in f["steps"]]
            self._layers: list[tuple[Any, np.ndarray] | None] = []
            for i, step in enumerate(self.steps):
                if step.startswith("dense:"):
                    matrix = sparse.csr_matrix(
                        (f[f"{i}_data"], f[f"{i}_indices"], f[f"{i}_indptr"]),
                        shape=tuple(f[f"{i}_shape"]))
                    self._layers.append((matrix, f[f"{i}_bias"][:, None]))
                else:
                    self._layers.append(None)

    def __call__(self, x):
        h = np.asarray(x, dtype=np.float32)
        n = h.shape[0]
        h = h.reshape(n, -1).T  # (features, batch): CSR (out, in) @ (in, batch)
        for step, layer in zip(self.steps, self._layers):
            act = step.partition(":")[2]
            if layer is not None:  # a dense step
                matrix, bias = layer
                h = matrix @ h + bias
            if act:
                h = _ACTIVATIONS[act](h)
        return np.ascontiguousarray(h.T)

    def __repr__(self):
        return f"<CSRModel {len(self.content)} bytes, {len(self.steps)} steps>"
