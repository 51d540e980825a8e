"""Per-epoch cost of dst's step when no mask update is ever taken.

Three fits of the MLP 784-1000-1000-10 (90% ERK, Adam, batch 128, 40 steps
per epoch), alternating, median of the epochs after the first: masks only (no
callback), SET whose update steps all lie after the end of the fit (the
update is compiled into the step but never runs), and SET updating every 100
steps. Isolates the cost of carrying the update in the step from the cost of
running it.

    KERAS_BACKEND=jax python -m experiments.bench_untaken_update [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dst  # noqa: E402


class _EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _epoch_seconds(x, y, callback) -> float:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(1000, activation="relu"),
                              keras.layers.Dense(1000, activation="relu"), keras.layers.Dense(10)])
    dst.sparsify(model, 0.9, "erk", seed=0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = _EpochTimes()
    model.fit(x, y, batch_size=128, epochs=3, verbose=0,
              callbacks=[timer] + ([callback] if callback else []))
    return statistics.median(timer.times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128 * 40, 784)).astype("float32")
    y = rng.integers(0, 10, 128 * 40)
    variants = {
        "masks, no callback": lambda: None,
        "SET, update never taken": lambda: dst.callbacks.SET(
            update_freq=100, begin_step=10**6, end_step=10**6 + 100, seed=0),
        "SET, update_freq=100": lambda: dst.callbacks.SET(update_freq=100, end_step=1.0, seed=0),
    }
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, make in variants.items():
            times[name].append(_epoch_seconds(x, y, make()))
    print(f"{keras.backend.backend()}: median seconds per 40-step epoch over {args.rounds} rounds")
    for name, ts in times.items():
        print(f"  {name:<26}{statistics.median(ts):8.3f}")


if __name__ == "__main__":
    main()
