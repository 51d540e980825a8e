"""Repeated `fit` calls: time and memory per fit, dst against plain Keras.

A `for epoch in ...: model.fit(epochs=1)` loop, or a sweep that reuses a
model, pays whatever a fit rebuilds. In one process, for each variant, runs
`--fits` one-epoch fits of a 12-64-3 MLP (sparsified at 80%, 8 steps per fit)
and prints the median wall seconds per fit after the first, and the growth
of the process' resident memory (RSS) per fit after the first five.
Variants: plain Keras (the sparsified model, no callback), a new SET
callback per fit (seed 0: it takes over the last one's updater), a new one
with seed=None (a fresh seed: it builds its own update program), and one SET
callback reused by every fit.

    python -m experiments.bench_fits [--backend jax] [--fits 16]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

from experiments._backend_arg import BACKENDS, select_backend

select_backend()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dst  # noqa: E402


def rss_mib() -> float:
    """The process' resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(variant: str, fits: int) -> tuple[float, float]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(3)])
    dst.sparsify(model, 0.8, "uniform", seed=0)
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")
    reused = dst.callbacks.SET(update_freq=4, end_step=1.0, seed=0)
    times, memory = [], []
    for _ in range(fits):
        callbacks = {
            "plain Keras": [],
            "dst, fresh callback": [dst.callbacks.SET(update_freq=4, end_step=1.0, seed=0)],
            "dst, fresh, seed=None": [dst.callbacks.SET(update_freq=4, end_step=1.0)],
            "dst, reused callback": [reused],
        }[variant]
        start = time.perf_counter()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
        times.append(time.perf_counter() - start)
        memory.append(rss_mib())
    growth = (memory[-1] - memory[4]) / (fits - 5)
    return statistics.median(times[1:]), growth


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=16)
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    args = parser.parse_args()
    if args.fits < 7:
        parser.error("--fits must be at least 7 (growth is measured after the first 5)")
    print(f"{args.fits} one-epoch fits on {keras.backend.backend()}: median seconds per fit "
          "(after the first), RSS growth per fit (after the first 5)")
    rows = {}
    for variant in ("plain Keras", "dst, fresh callback", "dst, fresh, seed=None",
                    "dst, reused callback"):
        rows[variant] = run(variant, args.fits)
    plain = rows["plain Keras"][0]
    for variant, (seconds, growth) in rows.items():
        print(f"{variant:<22}{seconds:>8.3f} s/fit{seconds / plain:>7.2f}x plain"
              f"{growth:>8.2f} MiB/fit")


if __name__ == "__main__":
    main()
