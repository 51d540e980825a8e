"""`dst.export`: a sparse Keras model as a TFLite file that is smaller (and, with blocks, faster).

Route (checked with Keras 3.15, TF 2.21): the model is written with Keras 3's own
`model.export(format="tf_saved_model")` and converted with
`tf.lite.TFLiteConverter.from_saved_model`, with
`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`. `TFLiteConverter.from_keras_model` does
the same internally (same bytes) but prints the export summary;
`from_concrete_functions` on a Keras 3 model leaves the weights as unresolved
resources (a 3.6 kB file that outputs NaN), so it is not used.

The converter stores a weight in a sparse format when it is sparse enough to pay.
TFLite's runtime then either rebuilds the dense weight at load (a DENSIFY op:
smaller file, same speed; what unstructured masks get) or, for weights whose
non-zeros form blocks of consecutive inputs of one output unit (dst's
`block=(4, 1)` to `(16, 1)` on a Dense kernel; measured in the README), runs
XNNPACK's sparse kernels.

The SavedModel's inputs are named `input_0, input_1, ...` in `model.inputs`
order (Keras names its outputs `output_0, ...` in `model.outputs` order), and
`load` orders the file's tensors by those names: TFLite's own tensor order
differs from the model's (for three same-shaped heads `z_first, a_second,
m_third` it is `a_second, z_first, m_third`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from dst import _compat, _csr
from dst._csr import CSRModel
from dst._model import check_keras3_model, masked_targets
from dst._tflite import EXTRA as _EXTRA
from dst._tflite import TFLiteModel, fits

__all__ = ["convert", "save", "load", "TFLiteModel", "CSRModel", "FORMATS", "QUANTIZE_MODES"]

FORMATS = ("tflite", "npz")
QUANTIZE_MODES = (None, "float16", "dynamic", "int8")


def convert(
    model: keras.Model,
    *,
    format: str = "tflite",
    quantize: str | None = None,
    representative_data: np.ndarray | Iterable[Any] | None = None,
    max_calibration_batches: int = 100,
) -> bytes:
    """Converts a (sparse or stripped) Keras 3 model to a TFLite flatbuffer or a CSR file.

    Masked weights are exported as zeros even where `set_weights` wrote
    values since the last optimizer step; the model itself is left
    unchanged. Weights are stored sparse where TFLite's sparsity
    optimization finds it pays. The file's inputs and outputs keep the
    order of `model.inputs` and `model.outputs` (a dict's values in sorted
    key order, as `keras.tree.flatten` gives them), for every `quantize`.

    Args:
        model: a built Keras 3 model, sparsified with dst or already
            stripped with `dst.strip`.
        format: "tflite" (a TFLite flatbuffer) or "npz" (the Dense kernels
            as scipy CSR matrices, for a numpy/scipy forward pass on CPU
            servers; `keras.Sequential` models of Dense, Flatten, Dropout,
            Activation and ReLU layers only). Defaults to "tflite".
        quantize: None (float32), "float16" (float16 weights), "dynamic"
            (int8 weights, float activations) or "int8" (int8 weights and
            activations, float32 inputs and outputs). Defaults to None.
        representative_data: calibration inputs for `quantize="int8"` (a
            model with one input): an array (split into batches of 32), a
            batched `tf.data.Dataset`, or an iterable of batches; elements
            may be `(x, y)` pairs, of which `x` is used. Each batch must have
            the model's input shape (any batch size). Defaults to None.
        max_calibration_batches: at most this many batches are used for
            calibration. Defaults to 100.

    Returns:
        The file's content as bytes.

    Raises:
        ValueError: an unknown `format` or `quantize`, layers quantized by
            Keras' `model.quantize` (named), a layer the "npz"
            format cannot run (named), `quantize="int8"` without
            `representative_data`, with empty data, with batches of another
            shape than the model's input, or on a model with several inputs,
            or ops that TFLite's built-in kernels cannot run (the message
            names them and where they sit; for the loop of a recurrent layer
            such as `LSTM`, it names the layer and `unroll=True`). dst.export
            does not convert with TensorFlow's Select TF ops: such a file
            needs TFLite's Flex delegate, which `load` (`ai-edge-litert`)
            cannot run.
        ImportError: TensorFlow is not installed.

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> runner = dst.export.load(dst.export.convert(model))
        >>> x = np.ones((2, 8), "float32")
        >>> bool(np.allclose(runner(x), model.predict(x, verbose=0), atol=1e-6))
        True
    """
    check_keras3_model(model, "dst.export.convert")
    _check_not_quantized(model)
    if format not in FORMATS:
        raise ValueError(
            f"`format` must be one of {list(FORMATS)} for dst.export. "
            f"Received: format={format!r}."
        )
    if format == "npz":
        if quantize is not None or representative_data is not None:
            raise ValueError(
                "format='npz' stores float32 CSR matrices: `quantize` and "
                f"`representative_data` don't apply. Received: quantize={quantize!r}."
            )
        with _MaskedValues(model):
            return _csr.to_npz(model)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"`quantize` must be one of {list(QUANTIZE_MODES)} for dst.export. "
            f"Received: quantize={quantize!r}."
        )
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "dst.export with quantize='int8' needs `representative_data` (an array, "
            "a batched tf.data.Dataset or an iterable of input batches) to calibrate "
            "the activation ranges. Pass some training inputs, or use "
            "quantize='dynamic' (int8 weights, no calibration)."
        )
    if quantize != "int8" and representative_data is not None:
        raise ValueError(
            "`representative_data` is only used with quantize='int8'. "
            f"Received: quantize={quantize!r}."
        )
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "dst.export with format='tflite' converts through TensorFlow's TFLite "
            "converter, which takes models of Keras' TensorFlow backend; this process "
            f"runs Keras on {keras.backend.backend()!r}. Save the model "
            "(model.save('m.keras')) and convert it in a process started with "
            "KERAS_BACKEND=tensorflow, or use format='npz' (CSR, any backend)."
        )
    tf = _tensorflow()
    calibration: list[np.ndarray] = []
    if quantize == "int8":
        calibration = _calibration_batches(representative_data, max_calibration_batches)
        _check_calibration_shapes(model, calibration)
    with tempfile.TemporaryDirectory(prefix="dst_export_") as tmp, _MaskedValues(model):
        with _quiet(tf):  # "Assets written to: <a temporary folder>" is noise here
            model.export(tmp, format="tf_saved_model", verbose=False,
                         input_signature=_named_input_signature(model))
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        configure_converter(converter, quantize, calibration)
        try:
            return converter.convert()
        except Exception as err:  # noqa: BLE001 - re-raised with the ops named
            error = _unsupported_ops_error(model, err)
            if error is None:
                raise
            raise error from err


def save(model: keras.Model, path: str | os.PathLike, **kwargs: Any) -> str:
    """Converts `model` with `convert` and writes the flatbuffer to `path`.

    Args:
        model: a built Keras 3 model.
        path: the file to write (conventionally `.tflite`).
        **kwargs: `format`, `quantize`, `representative_data`,
            `max_calibration_batches` as for `convert`.

    Returns:
        `path`, as a string.
    """
    content = convert(model, **kwargs)
    with open(path, "wb") as f:
        f.write(content)
    return os.fspath(path)


def load(path_or_bytes: str | os.PathLike | bytes, *,
         num_threads: int | None = 1) -> TFLiteModel | CSRModel:
    """A callable that runs an exported file on numpy batches.

    Args:
        path_or_bytes: a file written by `save` or the bytes `convert`
            returned: TFLite (run by `ai-edge-litert`'s interpreter) or npz
            (run with scipy CSR products).
        num_threads: CPU threads of the TFLite interpreter. Defaults to 1.

    Returns:
        A `TFLiteModel` or `CSRModel`: `runner(x)` returns the model's
        output for the batch `x`. Several inputs are passed as a list in
        `model.inputs` order; several outputs come back as a list in
        `model.outputs` order, for every `quantize` setting.

    Raises:
        ImportError: `ai-edge-litert` (TFLite) or `scipy` (npz) is not
            installed; both are in the `[export]` extra. A `TFLiteModel`
            raises ValueError when called on a batch whose shape does not
            fit its input (any batch size), naming both shapes.
    """
    if isinstance(path_or_bytes, bytes | bytearray):
        content = bytes(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            content = f.read()
    if content[:2] == b"PK":  # a zip archive: np.savez
        return CSRModel(content)
    return TFLiteModel(content, num_threads=num_threads)


def configure_converter(converter: Any, quantize: str | None,
                        calibration: list[np.ndarray]) -> None:
    """Sets a `tf.lite.TFLiteConverter` to dst's options: the sparsity
    optimization, plus the quantization `quantize` names (`calibration`: the
    int8 calibration batches). Shared with the benchmarks' TF-MOT path."""
    tf = _tensorflow()
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if quantize is not None:
        converter.optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        converter.representative_dataset = lambda: ([b] for b in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


@contextlib.contextmanager
def _quiet(tf):
    """TensorFlow's Python logger at ERROR for the duration (restored after)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError(
            "dst.export converts with TensorFlow's TFLite converter; install "
            f"tensorflow (or {_EXTRA})."
        ) from None
    return tf


class _MaskedValues:
    """Within the block, masked weights hold exactly 0.0; restored after."""

    def __init__(self, model):
        self.targets = masked_targets(model)
        self.saved = []

    def __enter__(self):
        for t in self.targets:
            value = _compat.to_numpy(t.variable)
            masked = np.where(t.mask_constraint.numpy(), value, 0).astype(value.dtype)
            if not np.array_equal(masked, value):
                self.saved.append((t.variable, value))
                t.variable.assign(masked)
        return self

    def __exit__(self, *exc):
        for variable, value in self.saved:
            variable.assign(value)
        return False


def _check_not_quantized(model) -> None:
    """Refuses layers quantized by Keras' `model.quantize`: TFLite's converter
    has no kernel for their int8 matmul or float8 casts, and the "npz" format
    would read int8 kernels as floats, without their scales."""
    quantized = {layer.name: layer.quantization_mode
                 for layer in _compat.flatten_layers(model)
                 if getattr(layer, "quantization_mode", None) is not None}
    if quantized:
        raise ValueError(
            f"dst.export cannot convert layers quantized by Keras' model.quantize: "
            f"{quantized} of model '{model.name}' (TFLite's converter has no kernel for "
            "Keras' int8 matmul or float8 casts). Export the float model and let the "
            "converter quantize it: dst.export.convert(model, quantize='int8', "
            "representative_data=...), or quantize='dynamic' or 'float16'."
        )


def _calibration_batches(data, limit: int) -> list[np.ndarray]:
    """Float32 input batches from an array, a tf.data.Dataset or an iterable."""
    if isinstance(data, np.ndarray) or hasattr(data, "__array__") and not _is_dataset(data):
        array = np.asarray(data, dtype="float32")
        batches = [array[i:i + 32] for i in range(0, len(array), 32)]
    elif isinstance(data, Iterable) or _is_dataset(data):
        batches = []
        for element in data:
            if isinstance(element, tuple | list) and element:
                element = element[0]  # (x, y) or (x, y, sample_weight)
            batches.append(np.asarray(element, dtype="float32"))
            if len(batches) >= limit:
                break
    else:
        raise TypeError(
            "`representative_data` must be an array, a batched tf.data.Dataset or an "
            f"iterable of batches. Received: {type(data).__name__}."
        )
    batches = [b for b in batches[:limit] if len(b)]
    if not batches:
        raise ValueError("`representative_data` holds no batch to calibrate with.")
    return batches


def _is_dataset(data) -> bool:
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec")


def _model_inputs(model) -> list | None:
    """`model.inputs`, or None for a subclassed model (which has none)."""
    try:
        return list(model.inputs) or None
    except (AttributeError, ValueError):
        return None


def _named_input_signature(model) -> list | None:
    """Keras' export signature with the inputs named `input_0, input_1, ...`
    in `model.inputs` order, for `load` to order them; None (Keras infers it,
    with its own names) for a subclassed model."""
    inputs = _model_inputs(model)
    if inputs is None:
        return None
    position = {id(t): i for i, t in enumerate(inputs)}

    def spec(t):
        return keras.InputSpec(shape=(None, *t.shape[1:]), dtype=t.dtype,
                               name=f"input_{position[id(t)]}")

    if isinstance(model, _compat.Functional):  # one argument: the input structure
        return [keras.tree.map_structure(spec, model.input)]
    return [spec(t) for t in inputs]  # Sequential: one positional argument


def _check_calibration_shapes(model, batches: list[np.ndarray]) -> None:
    """Refuses int8 calibration data that does not fit the model's one input."""
    inputs = _model_inputs(model)
    if inputs is None:
        return
    if len(inputs) != 1:
        raise ValueError(
            f"dst.export with quantize='int8' calibrates models with one input; "
            f"model '{model.name}' has {len(inputs)}. Use quantize='dynamic' (int8 "
            "weights, no calibration) or quantize='float16'."
        )
    want = (None, *inputs[0].shape[1:])
    for i, batch in enumerate(batches):
        if not fits(batch.shape, want):
            raise ValueError(
                f"`representative_data` must hold batches of shape {want} (the "
                f"input of model '{model.name}', any batch size) for dst.export "
                f"with quantize='int8'. Received: batch {i} of shape {batch.shape}."
            )


_NO_KERNEL = (r"'tf\.(\w+)' op is neither a custom op",
              r"failed to legalize operation 'tf\.(\w+)'")


def _unsupported_ops_error(model, err: Exception) -> ValueError | None:
    """A ValueError naming the TensorFlow ops TFLite has no kernel for, where
    they sit and what to do; None when `err` is another converter error."""
    text = str(err)
    ops = sorted({op for pattern in _NO_KERNEL for op in re.findall(pattern, text)})
    if not ops:
        return None
    where = sorted({name for name in re.findall(r'fused\["\w+:", "([^"@]+)@', text)
                    if not name.startswith("StatefulPartitionedCall")})
    message = (f"dst.export: TFLite has no built-in kernel for the TensorFlow ops "
               f"{ops} of model '{model.name}' (at {where}). ")
    if any(op.startswith("TensorList") for op in ops):
        rnns = ", ".join(f"'{layer.name}' ({type(layer).__name__})"
                         for layer in _compat.flatten_layers(model)
                         if isinstance(layer, keras.layers.RNN) and not layer.unroll)
        return ValueError(
            message + f"They are the time loop of the recurrent layers {rnns}. "
            "Build them with `unroll=True` (that needs a fixed sequence length, "
            "e.g. keras.Input((steps,))) and copy the weights over with "
            "set_weights. dst.export offers no Select TF ops: a file with them "
            "needs TFLite's Flex delegate, which dst.export.load (ai-edge-litert) "
            "cannot run."
        )
    return ValueError(
        message + "Replace the layers that use them, or convert with TensorFlow's "
        "own converter and Select TF ops (tf.lite.OpsSet.SELECT_TF_OPS; the file "
        "then needs TFLite's Flex delegate, which dst.export.load cannot run)."
    )
