"""Per-step cost of dst in `model.fit`, as a ratio to dense Keras 3.

In one process, alternating the variants round by round, times each epoch
(after the first, which traces) of an MLP 784-1000-1000-10 and a small CNN on
synthetic data, batch 128, by wall time and by process CPU time, and prints
the median over rounds of (variant / dense of the same round), with its min
and max, so that slow drifts of a shared machine cancel.

The variants: fixed masks, and SET, RigL, GraNet and SNFS *between updates*
(their one update of each fit falls in the untimed first epoch), then SET and
RigL with one update per 100-step epoch. Target between updates: <= 1.03 by
CPU time and <= 1.05 by wall time. SNFS smooths the gradient into momentum at
every step, its own algorithm's cost. On TensorFlow it also times one mask
update through the public updater API, as a fraction of 100 dense steps
(target <= 0.02). `--jit` compiles every model with `jit_compile=True`;
`--resnet50` times one update of ResNet50 (weights=None, 32x32 inputs, 90%
ERK) instead. `--tfmot` (TensorFlow) times `dst.tfmot` (prune_low_magnitude +
UpdatePruningStep) against dst's MagnitudePruning and against TF-MOT's own
wrappers on tf_keras, on the same architecture in the same process, with one
mask update per 100-step epoch in each, and prints their ratios to each other
and to each framework's dense model. `--backend` picks the Keras backend
(default: KERAS_BACKEND, else tensorflow).

    python -m experiments.bench_overhead [--backend jax] [--rounds 8] [--epochs 2] [--steps 100] [--jit]
    python -m experiments.bench_overhead --resnet50 [--jit]
    python -m experiments.bench_overhead --tfmot [--rounds 8] [--no-cnn]
"""

from __future__ import annotations

import argparse
import statistics
import time

from experiments._backend_arg import BACKENDS, select_backend

select_backend()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dst  # noqa: E402


def mlp():
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(1000, activation="relu"),
        keras.layers.Dense(1000, activation="relu"),
        keras.layers.Dense(10),
    ])


def cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


# "between updates": the one update of each fit falls in its first epoch,
# which traces and is not timed; "every 100": one update per timed epoch.
QUIET = 10**6
VARIANTS = {
    "dense": None,
    "fixed masks": lambda: dst.callbacks.FixedMasks(),
    "SET": lambda: dst.callbacks.SET(update_freq=QUIET, end_step=1.0, seed=0),
    "RigL": lambda: dst.callbacks.RigL(update_freq=QUIET, end_step=1.0, seed=0),
    "GraNet": lambda: dst.callbacks.GraNet(0.9, initial_sparsity=0.9, update_freq=QUIET,
                                           end_step=1, seed=0),  # updates at steps 0 and 1
    "SNFS (momentum)": lambda: dst.callbacks.SNFS(update_freq=QUIET, end_step=1.0, seed=0),
    "SET every 100": lambda: dst.callbacks.SET(update_freq=100, end_step=1.0, seed=0),
    "RigL every 100": lambda: dst.callbacks.RigL(update_freq=100, end_step=1.0, seed=0),
}


class EpochTimer(keras.callbacks.Callback):
    """Wall and process CPU seconds of each epoch."""

    def on_train_begin(self, logs=None):
        self.times, self.cpu = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t[0])
        self.cpu.append(time.process_time() - self._t[1])


def bench(name, build, x, y, rounds, epochs, jit=False):
    models = {}
    for variant in VARIANTS:
        keras.utils.set_random_seed(0)
        model = build()
        if variant != "dense":
            dst.sparsify(model, 0.9, "erk", seed=0)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=True if jit else "auto")  # auto: XLA on JAX, and on TF's GPU
        models[variant] = model
    times = {v: [] for v in VARIANTS}
    update_ms = {v: [] for v in VARIANTS}
    ratios = {v: [] for v in VARIANTS}  # per round, against dense of the same round
    cpu_ratios = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
        wall, cpu = {}, {}
        for variant in order:
            timer = EpochTimer()
            make = VARIANTS[variant]
            extra = make() if make else None
            cbs = [timer] + ([extra] if extra is not None else [])
            models[variant].fit(x, y, batch_size=128, epochs=epochs, verbose=0, callbacks=cbs)
            wall[variant] = statistics.median(timer.times[1:])  # the first epoch traces
            cpu[variant] = statistics.median(timer.cpu[1:])
            times[variant].extend(timer.times[1:])
            if (variant in ("SET every 100", "RigL every 100") and r < 2
                    and keras.backend.backend() == "tensorflow"):
                update_ms[variant].extend(time_update(extra.updater, models[variant], jit))
        for variant in VARIANTS:
            ratios[variant].append(wall[variant] / wall["dense"])
            cpu_ratios[variant].append(cpu[variant] / cpu["dense"])
    mode = f" (jit_compile={models['dense'].jit_compile})"
    print(f"\n{name}{mode} on {keras.backend.backend()}: {rounds} rounds; medians of the "
          "per-round ratios to dense (wall time, process CPU time)")
    print(f"{'variant':<18}{'s/epoch':>9}{'wall':>7}{'min':>7}{'max':>7}{'cpu':>7}{'min':>7}"
          f"{'max':>7}")
    for variant in VARIANTS:
        rs, cs = ratios[variant], cpu_ratios[variant]
        print(f"{variant:<18}{statistics.median(times[variant]):>9.3f}"
              f"{statistics.median(rs):>7.3f}{min(rs):>7.3f}{max(rs):>7.3f}"
              f"{statistics.median(cs):>7.3f}{min(cs):>7.3f}{max(cs):>7.3f}")
    step = statistics.median(times["dense"]) / (len(y) // 128)
    for variant, ms in update_ms.items():
        if ms:
            cost = statistics.median(ms) / 1000 / (100 * step)
            print(f"{variant}: one mask update takes {statistics.median(ms):.1f} ms (median of "
                  f"{len(ms)}) = {cost:.3f} of 100 dense steps")


def tfmot_variants(build_layers, jit):
    """{variant: (framework, model, callbacks factory)} for `--tfmot`: the same
    architecture, 90% sparse (uniform, every prunable layer), one mask update
    per 100 steps in each pruning variant, dense baselines in both frameworks."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    import dst.tfmot as dst_tfmot

    theirs_api = tfmot.sparsity.keras
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variants = {}
    for name in ("dense", "dst MagnitudePruning", "dst.tfmot"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(build_layers(keras))
        callbacks = list
        if name == "dst MagnitudePruning":
            dst.sparsify(model, 0.9, "uniform", seed=0)
            callbacks = lambda: [dst.callbacks.MagnitudePruning(  # noqa: E731
                0.9, initial_sparsity=0.9, update_freq=100, end_step=1.0)]
        elif name == "dst.tfmot":
            model = dst_tfmot.prune_low_magnitude(
                model, dst_tfmot.ConstantSparsity(0.9, 0, frequency=100))
            callbacks = lambda: [dst_tfmot.UpdatePruningStep()]  # noqa: E731
        model.compile("adam", loss, jit_compile=True if jit else "auto")
        variants[name] = ("keras", model, callbacks)
    for name in ("tf_keras dense", "TF-MOT"):
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential(build_layers(tf_keras))
        callbacks = list
        if name == "TF-MOT":
            model = theirs_api.prune_low_magnitude(
                model, pruning_schedule=theirs_api.ConstantSparsity(0.9, 0, frequency=100))
            callbacks = lambda: [theirs_api.UpdatePruningStep()]  # noqa: E731
        model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        variants[name] = ("tf_keras", model, callbacks)
    return variants


def mlp_layers(api):
    return [api.Input((784,)), api.layers.Dense(1000, activation="relu"),
            api.layers.Dense(1000, activation="relu"), api.layers.Dense(10)]


def cnn_layers(api):
    return [api.Input((28, 28, 1)), api.layers.Conv2D(32, 3, activation="relu"),
            api.layers.MaxPooling2D(), api.layers.Conv2D(64, 3, activation="relu"),
            api.layers.MaxPooling2D(), api.layers.Flatten(),
            api.layers.Dense(128, activation="relu"), api.layers.Dense(10)]


# (variant, reference): the ratios `--tfmot` prints.
TFMOT_RATIOS = [("dst MagnitudePruning", "dense"), ("dst.tfmot", "dense"),
                ("TF-MOT", "tf_keras dense"), ("tf_keras dense", "dense"),
                ("dst.tfmot", "dst MagnitudePruning"), ("dst.tfmot", "TF-MOT")]


def bench_tfmot(name, build_layers, x, y, rounds, epochs, jit=False):
    """dst.tfmot against dst's MagnitudePruning and TF-MOT's wrappers (tf_keras),
    in one process, variants alternating round by round; medians over rounds of
    per-round ratios of epoch times (the first epoch of each fit, which traces,
    is dropped)."""
    import tf_keras

    class TfKerasTimer(tf_keras.callbacks.Callback):
        on_train_begin = EpochTimer.on_train_begin
        on_epoch_begin = EpochTimer.on_epoch_begin
        on_epoch_end = EpochTimer.on_epoch_end

    variants = tfmot_variants(build_layers, jit)
    wall = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for variant in order:
            framework, model, callbacks = variants[variant]
            timer = EpochTimer() if framework == "keras" else TfKerasTimer()
            model.fit(x, y, batch_size=128, epochs=epochs, verbose=0,
                      callbacks=[timer, *callbacks()])
            wall[variant].append(statistics.median(timer.times[1:]))
            cpu[variant].append(statistics.median(timer.cpu[1:]))
    print(f"\n{name} (jit_compile={jit}) on tensorflow, 90% uniform, one mask update per "
          f"100-step epoch: {rounds} rounds; medians of the per-round ratios (wall time, "
          "process CPU time)")
    print(f"{'variant':<22}{'s/epoch':>9}")
    for variant in variants:
        print(f"{variant:<22}{statistics.median(wall[variant]):>9.3f}")
    print(f"{'ratio':<44}{'wall':>7}{'min':>7}{'max':>7}{'cpu':>7}{'min':>7}{'max':>7}")
    for a, b in TFMOT_RATIOS:
        rs = [p / q for p, q in zip(wall[a], wall[b])]
        cs = [p / q for p, q in zip(cpu[a], cpu[b])]
        print(f"{a + ' / ' + b:<44}{statistics.median(rs):>7.3f}{min(rs):>7.3f}"
              f"{max(rs):>7.3f}{statistics.median(cs):>7.3f}{min(cs):>7.3f}{max(cs):>7.3f}")


def time_update(updater, model, jit, repeats=8):
    """Wall times (ms) of one full mask update through `updater.update`.

    The updater is bound to `model` (by its callback's fit). The update runs
    in a `tf.function`, as inside `fit`: masks computed by numpy on the host
    (`tf.numpy_function`), or, with `jit`, in an XLA-compiled function.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    grads = [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
    step = updater.schedule.steps()[0]
    run = tf.function(lambda *g: updater.update(step, list(g)), jit_compile=jit)
    run(*grads)  # traces / warms up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(*grads)
        for target in updater.targets:  # wait for the assignments
            target.constraint.mask.numpy()
        out.append(1000 * (time.perf_counter() - t))
    return out


def bench_resnet50(jit=False, repeats=5):
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10,
                                         classifier_activation=None)
    dst.sparsify(model, 0.9, "erk", seed=0)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 256)
    timer = EpochTimer()
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[timer])
    step = statistics.median(timer.times[1:]) / 8
    for name, cls in (("SET", dst.updaters.SET), ("RigL", dst.updaters.RigL)):
        updater = cls(update_freq=100, end_step=1000, seed=0)
        updater.bind(model)
        ms = time_update(updater, model, jit, repeats)
        n = sum(int(np.prod(t.shape)) for t in updater.targets)
        print(f"ResNet50 (32x32, 90% ERK, {n / 1e6:.1f}M maskable weights){' jit' if jit else ''}: "
              f"one {name} update takes {statistics.median(ms):.0f} ms (median of {len(ms)}) "
              f"= {statistics.median(ms) / 1000 / (100 * step):.3f} of 100 dense steps "
              f"(batch 32, {1000 * step:.0f} ms per step)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit; first is dropped")
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--jit", action="store_true", help="compile with jit_compile=True")
    parser.add_argument("--resnet50", action="store_true", help="time one ResNet50 update")
    parser.add_argument("--tfmot", action="store_true",
                        help="dst.tfmot vs dst MagnitudePruning vs TF-MOT (tf_keras)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--cnn", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the CNN")
    args = parser.parse_args()
    if args.resnet50 and keras.backend.backend() != "tensorflow":
        parser.error("--resnet50 times the update through tf.function: TensorFlow only")
    if args.tfmot and keras.backend.backend() != "tensorflow":
        parser.error("--tfmot compares with TF-MOT, which runs on tf_keras: TensorFlow only")
    if args.resnet50:
        bench_resnet50(args.jit)
        return
    rng = np.random.default_rng(0)
    n = 128 * args.steps
    y = rng.integers(0, 10, n)
    if args.tfmot:
        bench_tfmot("MLP 784-1000-1000-10", mlp_layers,
                    rng.normal(size=(n, 784)).astype("float32"), y, args.rounds, args.epochs,
                    args.jit)
        if args.cnn:
            bench_tfmot("CNN (2 conv + 2 dense)", cnn_layers,
                        rng.normal(size=(n, 28, 28, 1)).astype("float32"), y, args.rounds,
                        args.epochs, args.jit)
        return
    bench("MLP 784-1000-1000-10", mlp, rng.normal(size=(n, 784)).astype("float32"), y,
          args.rounds, args.epochs, args.jit)
    if args.cnn:
        bench("CNN (2 conv + 2 dense)", cnn, rng.normal(size=(n, 28, 28, 1)).astype("float32"),
              y, args.rounds, args.epochs, args.jit)


if __name__ == "__main__":
    main()
