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
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from dst import _compat, _csr
from dst._csr import CSRModel
from dst._model import check_keras3_model, masked_targets

__all__ = ["convert", "save", "load", "TFLiteModel", "CSRModel", "FORMATS", "QUANTIZE_MODES"]

FORMATS = ("tflite", "npz")
QUANTIZE_MODES = (None, "float16", "dynamic", "int8")
_EXTRA = "pip install 'keras-dst[export]'"


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
    optimization finds it pays.

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
        representative_data: calibration inputs for `quantize="int8"`: an
            array (split into batches of 32), a batched `tf.data.Dataset`,
            or an iterable of batches; elements may be `(x, y)` pairs, of
            which `x` is used. Defaults to None.
        max_calibration_batches: at most this many batches are used for
            calibration. Defaults to 100.

    Returns:
        The file's content as bytes.

    Raises:
        ValueError: an unknown `format` or `quantize`, a layer the "npz"
            format cannot run (named), `quantize="int8"` without
            `representative_data` or with empty data, or ops that TFLite's
            built-in kernels cannot run (the message names them).
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
    with tempfile.TemporaryDirectory(prefix="dst_export_") as tmp, _MaskedValues(model):
        with _quiet(tf):  # "Assets written to: <a temporary folder>" is noise here
            model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        configure_converter(converter, quantize, calibration)
        try:
            return converter.convert()
        except Exception as err:  # noqa: BLE001 - re-raised with the ops named
            ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op", str(err))))
            if not ops:
                raise
            where = sorted(set(re.findall(r'fused\["\w+:", "([^"@]+)@', str(err))))
            raise ValueError(
                f"dst.export: TFLite has no built-in kernel for the TensorFlow ops "
                f"{ops} of model '{model.name}' (at {where}). Replace the layers "
                "that use them, or convert with TensorFlow's own converter and "
                "Select TF ops (tf.lite.OpsSet.SELECT_TF_OPS)."
            ) from None


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
        output for the batch `x` (a list of arrays for several inputs or
        outputs).

    Raises:
        ImportError: `ai-edge-litert` (TFLite) or `scipy` (npz) is not
            installed; both are in the `[export]` extra.
    """
    if isinstance(path_or_bytes, bytes | bytearray):
        content = bytes(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            content = f.read()
    if content[:2] == b"PK":  # a zip archive: np.savez
        return CSRModel(content)
    return TFLiteModel(content, num_threads=num_threads)


class TFLiteModel:
    """A TFLite flatbuffer run by `ai-edge-litert`'s interpreter on numpy batches.

    The default delegates (XNNPACK on CPU) are used when they can allocate the
    model. TFLite's XNNPACK delegate refuses some int8 and "dynamic" files (int8
    weights stored sparse, or int8 models at some batch sizes); such a file then
    runs on the built-in kernels and `delegate` is "none" (a warning says so).

    Attributes:
        delegate: "default" or "none".
        content: the flatbuffer bytes.
    """

    def __init__(self, path_or_bytes: str | os.PathLike | bytes, *,
                 num_threads: int | None = 1) -> None:
        try:
            from ai_edge_litert import interpreter as litert
        except ImportError:
            raise ImportError(
                "dst.export.load needs the `ai-edge-litert` package (TFLite's "
                f"runtime): {_EXTRA}."
            ) from None
        if isinstance(path_or_bytes, bytes | bytearray):
            self.content = bytes(path_or_bytes)
        else:
            with open(path_or_bytes, "rb") as f:
                self.content = f.read()
        self._litert = litert
        self.num_threads = num_threads
        self.delegate = "default"
        self._interpreter = self._new_interpreter()
        try:
            self._interpreter.allocate_tensors()
        except RuntimeError as err:
            self._without_delegates(err, stacklevel=4)
        self._inputs = self._interpreter.get_input_details()
        self._outputs = self._interpreter.get_output_details()
        self._shapes: list[tuple[int, ...]] | None = [tuple(d["shape"]) for d in self._inputs]

    def _without_delegates(self, err, stacklevel: int = 3) -> None:
        """Falls back to the built-in kernels when XNNPACK refuses the model."""
        if self.delegate != "default":
            raise err
        resolver = self._litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.delegate = "none"
        self._interpreter = self._new_interpreter(resolver)
        self._interpreter.allocate_tensors()
        self._shapes = None
        warnings.warn(
            "dst.export.load: TFLite's default delegate (XNNPACK) could not "
            f"run this model ({str(err).strip().splitlines()[0]}); it runs on the "
            "built-in kernels. Pass experimental_op_resolver_type=OpResolverType."
            "BUILTIN_WITHOUT_DEFAULT_DELEGATES to the interpreter where you "
            "deploy it.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )

    def _new_interpreter(self, resolver=None):
        kwargs = {"model_content": self.content, "num_threads": self.num_threads}
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver
        return self._litert.Interpreter(**kwargs)

    def __call__(self, x):
        xs = list(x) if isinstance(x, list | tuple) else [x]
        if len(xs) != len(self._inputs):
            raise ValueError(
                f"This TFLite model takes {len(self._inputs)} inputs; received {len(xs)}."
            )
        xs = [np.asarray(a, dtype=d["dtype"]) for a, d in zip(xs, self._inputs)]
        try:
            return self._run(xs)
        except RuntimeError as err:  # XNNPACK may refuse only at a new batch size
            self._without_delegates(err)
            return self._run(xs)

    def _run(self, xs):
        it = self._interpreter
        shapes = [a.shape for a in xs]
        if shapes != self._shapes:
            for a, d in zip(xs, self._inputs):
                it.resize_tensor_input(d["index"], a.shape)
            it.allocate_tensors()
            self._shapes = shapes
        for a, d in zip(xs, self._inputs):
            it.set_tensor(d["index"], a)
        it.invoke()
        out = [it.get_tensor(d["index"]) for d in self._outputs]
        return out[0] if len(out) == 1 else out

    def __repr__(self):
        return (f"<TFLiteModel {len(self.content)} bytes, inputs "
                f"{[tuple(d['shape_signature']) for d in self._inputs]}, "
                f"delegate={self.delegate!r}>")


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
            masked = np.where(t.constraint.numpy(), value, 0).astype(value.dtype)
            if not np.array_equal(masked, value):
                self.saved.append((t.variable, value))
                t.variable.assign(masked)
        return self

    def __exit__(self, *exc):
        for variable, value in self.saved:
            variable.assign(value)
        return False


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
