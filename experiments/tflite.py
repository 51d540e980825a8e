"""The `export:` option: a run's final model as a TFLite file, its size and latency.

Keras 3 runs (dst methods, dense) are converted with `dst.export.convert`;
TF-MOT's stripped tf_keras model with TensorFlow's converter and the same
options (`EXPERIMENTAL_SPARSITY`, plus `DEFAULT` and the quantization
settings when quantizing), as TF-MOT documents. Both are run by
`dst.export.load` (ai-edge-litert's interpreter, one thread). int8 files are
calibrated on the first 256 training examples.
"""

from __future__ import annotations

import gzip
import statistics
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

CALIBRATION_EXAMPLES = 256
WARMUP_CALLS = 10


def measure(final, framework: str, options: Mapping[str, Any], data) -> dict:
    """Exports `final` and returns its results columns.

    Args:
        final: the run's final model (stripped): Keras 3, or tf_keras for TF-MOT.
        framework: "keras" or "tf_keras" (`methods.Method.framework`).
        options: the config's `export` mapping (quantize, batch_sizes, calls).
        data: the run's data; the test set is timed and scored.

    Returns:
        `tflite_quantize`, `tflite_bytes`, `tflite_gzip_bytes`,
        `tflite_accuracy` (test set), `tflite_delegate` ("default", or "none"
        when XNNPACK refused the file) and `tflite_b<batch>_us` (median
        microseconds per call) for each batch size.
    """
    import dst

    quantize = options["quantize"]
    calibration = data.x_train[:CALIBRATION_EXAMPLES] if quantize == "int8" else None
    if framework == "tf_keras":
        content = _convert_tf_keras(final, quantize, calibration)
    else:
        content = dst.export.convert(final, quantize=quantize, representative_data=calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the XNNPACK fallback, recorded as the delegate
        runner = dst.export.load(content)
        predictions = np.concatenate([runner(data.x_test[i:i + 1000])
                                      for i in range(0, len(data.x_test), 1000)])
        row = {
            "tflite_quantize": quantize or "float32",
            "tflite_bytes": len(content),
            "tflite_gzip_bytes": len(gzip.compress(content, compresslevel=9)),
            "tflite_accuracy": float(np.mean(predictions.argmax(-1) == data.y_test)),
        }
        for batch in options["batch_sizes"]:
            x = np.resize(data.x_test, (batch, *data.x_test.shape[1:]))
            row[f"tflite_b{batch}_us"] = 1e6 * median_seconds(runner, x, options["calls"])
    row["tflite_delegate"] = runner.delegate
    return row


def median_seconds(runner, x, calls: int) -> float:
    """Median wall time of `runner(x)` over `calls` calls, after warm-up calls."""
    for _ in range(WARMUP_CALLS):
        runner(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _convert_tf_keras(model, quantize, calibration) -> bytes:
    """TensorFlow's converter on a tf_keras model, with `dst.export`'s options."""
    import tensorflow as tf

    import dst.export

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    batches = ([] if calibration is None else
               [calibration[i:i + 32] for i in range(0, len(calibration), 32)])
    dst.export.configure_converter(converter, quantize, batches)
    return converter.convert()
