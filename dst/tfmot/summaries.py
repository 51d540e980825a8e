"""`PruningSummaries`: per-weight sparsity and threshold as TensorBoard scalars."""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from dst import _compat
from dst._model import masked_targets
from dst.blocks import block_of, to_blocks
from dst.tfmot.pruning import PruningMask, pool

__all__ = ["PruningSummaries"]


class PruningSummaries(keras.callbacks.Callback):
    """Logs each pruned weight's sparsity and threshold as TensorBoard scalars.

    As TF-MOT's: at each epoch begin it writes, under `log_dir/metrics`, the
    scalars `<weight path>/sparsity` (1 − mean of the mask) and
    `<weight path>/threshold` at the optimizer's step. The threshold is the
    smallest magnitude the mask keeps (the block-pooled one for block
    masks), read when it is logged (TF-MOT logs the k-th largest magnitude
    at the last pruning step: the same value at a pruning step), and 0 while
    nothing is pruned. It writes with `tf.summary` (TensorFlow, on every
    Keras backend; the `tensorboard` package is needed only to view them).
    TF-MOT's callback is also a `TensorBoard` callback (loss and metrics);
    for those, add `keras.callbacks.TensorBoard(log_dir)` beside this one.

    Args:
        log_dir: the directory to write to (a non-empty string).
        update_freq: "epoch", when the pruning scalars are written (TF-MOT
            passes other values to its TensorBoard parent, whose scalars
            this callback does not write). Defaults to "epoch".

    Raises:
        ValueError: `log_dir` is not a non-empty string, or `update_freq` is
            not "epoch".
        TypeError: other keyword arguments (those of `keras.callbacks.TensorBoard`).
        ImportError: TensorFlow is not installed.
    """

    def __init__(self, log_dir: str, update_freq: str = "epoch", **kwargs: Any):
        super().__init__()
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(
                f"`log_dir` must be a non-empty string. You passed `log_dir`={log_dir!r}.")
        if update_freq != "epoch" or kwargs:
            given = {"update_freq": update_freq, **kwargs}
            error = TypeError if kwargs else ValueError
            raise error(
                "dst.tfmot.PruningSummaries writes only the pruning scalars, at each epoch "
                f"begin (update_freq='epoch'); received {given!r}, which TF-MOT passes to its "
                "TensorBoard parent. Add keras.callbacks.TensorBoard(log_dir, ...) with "
                "those arguments beside it."
            )
        try:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2
        except ImportError as err:
            raise ImportError(
                "dst.tfmot.PruningSummaries writes TensorBoard scalars with tf.summary, "
                "which needs TensorFlow: pip install tensorflow (it works beside every "
                "Keras backend)."
            ) from err
        self.log_dir = log_dir
        self.update_freq = update_freq
        self._tf = tf
        self._metadata = summary_pb2.SummaryMetadata()
        self._metadata.plugin_data.plugin_name = "scalars"  # what TensorBoard plots
        self._writer: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._writer = self._tf.summary.create_file_writer(os.path.join(self.log_dir,
                                                                        "metrics"))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        tf = self._tf
        step = int(_compat.to_numpy(_compat.inner_optimizer(self.model.optimizer).iterations))
        with self._writer.as_default():
            for name, value in pruning_logs(self.model).items():
                tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                                 metadata=self._metadata)
        self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def pruning_logs(model: keras.Model) -> dict[str, float]:
    """{"<path>/sparsity": ..., "<path>/threshold": ...} of each masked weight."""
    out: dict[str, float] = {}
    for t in masked_targets(model):
        mask = t.mask_constraint.numpy()
        magnitude = np.abs(_compat.to_numpy(t.variable)).astype(np.float32)
        block = block_of(t.constraint)
        if block is not None and mask.ndim == 2:
            pooling = (t.constraint.block_pooling_type if isinstance(t.constraint, PruningMask)
                       else "AVG")
            magnitude, mask = pool(np, magnitude, block, pooling), to_blocks(np, mask, block,
                                                                             "any")
        out[f"{t.path}/sparsity"] = float(1.0 - mask.mean())
        out[f"{t.path}/threshold"] = float(magnitude[mask].min()) if not mask.all() else 0.0
    return out
