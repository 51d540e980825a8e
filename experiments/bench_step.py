"""Per-step cost of dst's in-graph sparse step when no update happens.

Fits the MLP of `bench_overhead` (90% ERK) with a SET callback whose update
steps never come (`begin_step` far beyond the run), against the same sparse
model without a callback (the masks' constraint only) and dense, in one
process, and prints wall and process CPU seconds per epoch (50 steps, batch
128; the first epoch, which traces, is dropped). Process CPU time is less
sensitive than wall time to other tenants of a shared machine.

    python -m experiments.bench_step [--jit] [--rounds 2]
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
from experiments.bench_overhead import mlp  # noqa: E402


class Clock(keras.callbacks.Callback):
    """(wall, process CPU) seconds of each epoch."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        wall, cpu = self._start
        self.times.append((time.perf_counter() - wall, time.process_time() - cpu))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jit", action="store_true", help="compile with jit_compile=True")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128 * 50, 784)).astype("float32")
    y = rng.integers(0, 10, 128 * 50)
    times = {"dense": [], "dst masks, no callback": [], "dst SET, no update step": []}
    for _ in range(args.rounds):
        for variant in times:
            keras.utils.set_random_seed(0)
            model = mlp()
            callbacks = [Clock()]
            if variant != "dense":
                dst.sparsify(model, 0.9, "erk", seed=0)
            if variant.startswith("dst SET"):
                callbacks.append(dst.callbacks.SET(update_freq=100, begin_step=10**9,
                                                   end_step=10**9, seed=0))
            model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          jit_compile=args.jit)
            model.fit(x, y, batch_size=128, epochs=4, verbose=0, callbacks=callbacks)
            times[variant].extend(callbacks[0].times[1:])
    mode = "jit_compile=True" if args.jit else "jit_compile=False"
    print(f"MLP 784-1000-1000-10, 50 steps per epoch, {mode}: median seconds per epoch")
    for variant, ts in times.items():
        print(f"{variant:<26} wall {statistics.median(w for w, _ in ts):6.2f}"
              f"   cpu {statistics.median(c for _, c in ts):6.2f}   (n={len(ts)})")


if __name__ == "__main__":
    main()
