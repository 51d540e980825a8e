"""One training run: build, sparsify or prune, fit, measure.

Every method trains `models.build(cfg["model"], ...)` with the same optimizer,
batch size, epochs and data order; the dst methods use Keras 3, `tfmot` the
same architecture in tf_keras with TF-MOT's `prune_low_magnitude`.

Runs of one seed start from the same weights and see the same batches in the
same order, whichever framework trains them: `initial_model` draws the Keras 3
model of a seed, and `tf_keras_model` copies its weights (in layer order) into
the tf_keras one; `batch_order` draws each epoch's permutation with numpy from
the seed, and `train_dataset` feeds it as one `tf.data` stream of
epochs x steps batches, which both frameworks read through without reshuffling.
"""

from __future__ import annotations

import dataclasses
import gzip
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments import config as config_lib
from experiments import methods, models, tflite, wandb_log


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What varies between runs of one experiment."""

    method: str
    distribution: str  # "none" for dense, "uniform" for tfmot
    sparsity: float  # target sparsity; 0.0 for dense
    seed: int
    block: tuple[int, int] | None = None  # block masks; None for unstructured (and dense)

    @property
    def block_name(self) -> str | None:
        """The block as "16x1", or None."""
        return None if self.block is None else "x".join(map(str, self.block))

    @property
    def run_id(self) -> str:
        block = f"-b{self.block_name}" if self.block else ""
        return f"{self.method}-{self.distribution}-s{self.sparsity:g}{block}-seed{self.seed}"


@dataclasses.dataclass
class Reference:
    """Per-architecture facts shared by all runs: kernel names, FLOPs, dense size."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    repeats: list[int]  # uses of each connection per example (dst.summary)
    dense_gzip_bytes: int

    @classmethod
    def build(cls, model_spec: Mapping, input_shape, num_classes: int) -> Reference:
        import dst

        model = models.build(model_spec, input_shape, num_classes)
        rows = dst.summary(model, print_fn=lambda *_: None)[:-1]
        shapes = [tuple(r["shape"]) for r in rows]
        if shapes != [tuple(v.shape) for v in kernels(model)]:
            raise RuntimeError("dst.summary rows do not match the model's kernels.")
        return cls(
            names=[r["path"].rsplit("/", 1)[0] for r in rows],
            shapes=shapes,
            repeats=[r["dense_flops"] // (2 * r["size"]) for r in rows],
            dense_gzip_bytes=gzip_size(model),
        )


def kernels(model) -> list:
    """The sparsifiable weights: trainable weights with ndim >= 2, in layer order."""
    return [v for v in model.trainable_weights if len(v.shape) >= 2]


def nonzeros(model) -> list[tuple[int, int]]:
    """(nonzero count, size) of every kernel, read from the weights themselves."""
    out = []
    for v in kernels(model):
        w = np.asarray(v.numpy())
        out.append((int(np.count_nonzero(w)), int(w.size)))
    return out


def gzip_size(model) -> int:
    """Bytes of the model saved as `.keras` and gzipped (level 9).

    Negative zeros (TF-MOT's masking leaves -0.0 wherever a pruned weight was
    negative; dst.strip writes +0.0) are first set to +0.0, so that the size
    measures the zeros and not their sign bits.
    """
    model.set_weights([np.where(w == 0, np.zeros_like(w), w) for w in model.get_weights()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return len(gzip.compress(path.read_bytes(), compresslevel=9))


class _Monitor:
    """Times epochs (without validation) and adds sparsity and layer densities to the logs.

    Mixed into `keras.callbacks.Callback` or `tf_keras.callbacks.Callback` by
    `_monitor`, so TF-MOT runs are measured the same way. It must come before
    the W&B logger in the callback list, which logs what it adds:
    `sparsity`, `epoch_seconds` and `density/<layer>`.
    """

    def __init__(self, names):
        super().__init__()
        self.names = names

    def on_train_begin(self, logs=None):
        self.epoch_seconds = []
        self._start = None
        self._test_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._test_start = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._test_start is None:
            self._test_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = self._test_start or time.perf_counter()
        self.epoch_seconds.append(end - self._start)
        self._start = None
        counts = nonzeros(self.model)
        if logs is None:
            return
        logs.setdefault("sparsity", 1.0 - sum(c[0] for c in counts) / sum(c[1] for c in counts))
        logs["epoch_seconds"] = self.epoch_seconds[-1]
        for name, (nz, size) in zip(self.names, counts):
            logs[f"density/{name}"] = nz / size


def _monitor(base, names):
    cls = type("RunMonitor", (_Monitor, base), {})
    return cls(names)


def _callbacks(*callbacks) -> list:
    return [c for c in callbacks if c is not None]


def _backend_of(method: str) -> str:
    """The Keras backend a method's run trains on (tf_keras for TF-MOT)."""
    if methods.get(method).framework == "tf_keras":
        return "tf_keras"
    import keras

    return keras.backend.backend()


def train_run(
    spec: RunSpec,
    cfg: Mapping[str, Any],
    data,
    val_data,
    reference: Reference,
    *,
    schedule: tuple[int, int],
    out_dir: str | Path,
) -> tuple[dict, dict]:
    """Trains one run and returns (results row, per-epoch history)."""
    steps = int(np.ceil(len(data.x_train) / cfg["batch_size"]))
    row = {
        "run_id": spec.run_id, "name": cfg["name"], "dataset": cfg["dataset"],
        "model": cfg["model"]["name"], "method": spec.method,
        "distribution": spec.distribution, "block": spec.block_name,
        "target_sparsity": spec.sparsity,
        "seed": spec.seed, "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
        "steps_per_epoch": steps, "optimizer": cfg["optimizer"]["name"],
        "lr_schedule": cfg["lr_schedule"],
        "update_freq": cfg["update_freq"], "drop_fraction": cfg["drop_fraction"],
        "begin_step": schedule[0], "end_step": schedule[1], "val_split": cfg["val_split"],
        "backend": _backend_of(spec.method),
    }
    run = wandb_log.start(cfg["wandb"], wandb_log.run_config(cfg, spec, schedule),
                          spec.run_id, out_dir, group=cfg["name"], job_type=spec.method)
    try:
        fit = _fit_tfmot if methods.get(spec.method).framework == "tf_keras" else _fit_dst
        start = time.perf_counter()
        final, history, monitor = fit(spec, cfg, data, val_data, reference, schedule, run)
        row["train_seconds"] = time.perf_counter() - start
        row.update(_measure(final, data, reference, cfg))
        if cfg.get("export"):
            row.update(tflite.measure(final, methods.get(spec.method).framework,
                                      cfg["export"], data))
        row["epoch_seconds"] = statistics.median(monitor.epoch_seconds)
        row["itop"] = history["itop"][-1] if "itop" in history else None
        if "val_accuracy" in history and cfg["val_split"] > 0:
            row["val_accuracy"] = history["val_accuracy"][-1]
    except BaseException:
        if run is not None:
            run.finish(exit_code=1)
        raise
    wandb_log.finish(run, row)
    return row, history


def _history(h) -> dict:
    return {k: [float(x) for x in v] for k, v in h.history.items()}


def batch_order(n: int, batch_size: int, seed: int, epochs: int) -> list[list[np.ndarray]]:
    """The example indices of every batch, per epoch: a fresh numpy permutation
    of range(n) per epoch, drawn from (seed, epoch), cut into batches (the last
    one smaller when batch_size does not divide n)."""
    out = []
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.append([perm[i:i + batch_size] for i in range(0, n, batch_size)])
    return out


def train_dataset(data, cfg: Mapping[str, Any], seed: int):
    """The training batches of a run as one `tf.data` stream of epochs x steps
    batches, in `batch_order`. `fit(..., steps_per_epoch=steps)` reads it straight
    through in Keras 3 and in tf_keras (neither recreates the iterator per epoch
    when the stream is longer than an epoch)."""
    import tensorflow as tf

    order = batch_order(len(data.x_train), cfg["batch_size"], seed, cfg["epochs"])
    flat = np.concatenate([np.concatenate(batches) for batches in order])
    sizes = np.array([len(b) for batches in order for b in batches], dtype=np.int64)
    x, y = tf.constant(data.x_train), tf.constant(data.y_train)
    batches = tf.data.Dataset.from_tensor_slices(
        tf.RaggedTensor.from_row_lengths(flat, sizes))
    return batches.map(lambda i: (tf.gather(x, i), tf.gather(y, i)),
                       num_parallel_calls=1, deterministic=True).prefetch(2)


def _fit_args(cfg, data, val_data, seed):
    return dict(
        x=train_dataset(data, cfg, seed), epochs=cfg["epochs"],
        steps_per_epoch=int(np.ceil(len(data.x_train) / cfg["batch_size"])),
        verbose=cfg["verbose"], validation_data=val_data, shuffle=False,
    )


def _optimizer(cfg, data, framework):
    steps = int(np.ceil(len(data.x_train) / cfg["batch_size"])) * cfg["epochs"]
    return config_lib.make_optimizer(cfg["optimizer"], framework,
                                     lr_schedule=cfg["lr_schedule"], total_steps=steps)


def initial_model(cfg: Mapping[str, Any], data, seed: int):
    """The Keras 3 model of `seed`, as every run of that seed starts."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return models.build(cfg["model"], data.input_shape, data.num_classes, keras)


def tf_keras_model(cfg: Mapping[str, Any], data, seed: int):
    """The same architecture in tf_keras, with `initial_model(cfg, data, seed)`'s
    weights copied in layer order (so TF-MOT starts where the dst runs start)."""
    import tf_keras

    weights = initial_model(cfg, data, seed).get_weights()
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(seed)
    model = models.build(cfg["model"], data.input_shape, data.num_classes, tf_keras)
    shapes = [w.shape for w in model.get_weights()]
    if shapes != [w.shape for w in weights]:
        raise RuntimeError(f"tf_keras weights {shapes} do not match Keras 3's "
                           f"{[w.shape for w in weights]}.")
    model.set_weights(weights)
    return model


def _fit_dst(spec, cfg, data, val_data, reference, schedule, run):
    import keras

    import dst

    model = initial_model(cfg, data, spec.seed)
    method = methods.get(spec.method)
    callbacks = []
    keep = cfg["keep_dense"]
    keep_dense = ["first", "last"] if keep == "both" else keep
    if method.sparsify:
        dst.sparsify(model, spec.sparsity, spec.distribution, seed=spec.seed,
                     sparse_init=cfg["sparse_init"], block=spec.block, keep_dense=keep_dense)
    elif spec.block is not None or keep_dense is not None:
        # Magnitude pruning of blocks, or of some layers only: all-ones masks first.
        dst.sparsify(model, 0.0, "uniform", block=spec.block, keep_dense=keep_dense)
    if method.callback:
        kwargs = method.callback_kwargs(cfg, spec.sparsity, spec.seed, *schedule,
                                        distribution=spec.distribution)
        callbacks.append(dst.callbacks.get(method.callback, **kwargs))
    monitor = _monitor(keras.callbacks.Callback, reference.names)
    model.compile(
        optimizer=_optimizer(cfg, data, "keras"),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    h = model.fit(**_fit_args(cfg, data, val_data, spec.seed),
                  callbacks=_callbacks(*callbacks, monitor, wandb_log.metrics_logger(run, "keras")))
    final = dst.strip(model)
    final.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return final, _history(h), monitor


def _fit_tfmot(spec, cfg, data, val_data, reference, schedule, run):
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as err:
        raise RuntimeError(
            "Method 'tfmot' needs TF-MOT and tf_keras: pip install "
            "'keras-dst[tfmot]', or drop 'tfmot' from `methods`."
        ) from err
    base = tf_keras_model(cfg, data, spec.seed)
    begin, end = schedule
    pruning = tfmot.sparsity.keras
    decay = pruning.PolynomialDecay(initial_sparsity=0.0, final_sparsity=spec.sparsity,
                                    begin_step=begin, end_step=end, power=3,
                                    frequency=cfg["update_freq"])
    if spec.block is None:
        model = pruning.prune_low_magnitude(base, pruning_schedule=decay)
    else:
        # TF-MOT blocks only 2-D kernels: Dense layers get `block_size`, the
        # other layers with weights (conv kernels) are pruned unstructured.
        def prune(layer):
            if not layer.weights:
                return layer
            size = spec.block if isinstance(layer, tf_keras.layers.Dense) else (1, 1)
            return pruning.prune_low_magnitude(layer, pruning_schedule=decay,
                                               block_size=size)

        model = tf_keras.models.clone_model(base, clone_function=prune)
    monitor = _monitor(tf_keras.callbacks.Callback, reference.names)
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=_optimizer(cfg, data, "tf_keras"), loss=loss,
                  metrics=["accuracy"])
    h = model.fit(**_fit_args(cfg, data, val_data, spec.seed),
                  callbacks=_callbacks(pruning.UpdatePruningStep(), monitor,
                                       wandb_log.metrics_logger(run, "tf_keras")))
    final = pruning.strip_pruning(model)
    final.compile(loss=loss, metrics=["accuracy"])
    return final, _history(h), monitor


def _measure(final, data, reference: Reference, cfg) -> dict:
    """Test metrics, sparsity, FLOPs and saved size of the final (stripped) model."""
    loss, acc = final.evaluate(data.x_test, data.y_test, batch_size=1024, verbose=0)
    counts = nonzeros(final)
    shapes = [tuple(v.shape) for v in kernels(final)]
    if shapes != reference.shapes:
        raise RuntimeError(f"Kernel shapes {shapes} differ from the reference {reference.shapes}.")
    active = sum(nz for nz, _ in counts)
    size = sum(s for _, s in counts)
    dense_flops = sum(2 * s * r for (_, s), r in zip(counts, reference.repeats))
    sparse_flops = sum(2 * nz * r for (nz, _), r in zip(counts, reference.repeats))
    gz = gzip_size(final)
    return {
        "test_accuracy": float(acc), "test_loss": float(loss),
        "achieved_sparsity": 1.0 - active / size, "active_weights": active,
        "total_weights": size, "dense_flops": dense_flops, "sparse_flops": sparse_flops,
        "flops_ratio": sparse_flops / dense_flops, "gzip_bytes": gz,
        "dense_gzip_bytes": reference.dense_gzip_bytes,
        "gzip_ratio": gz / reference.dense_gzip_bytes,
    }
