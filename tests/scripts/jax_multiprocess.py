"""RigL under `keras.distribution.DataParallel` across 2 JAX processes (CPU, gloo).

Usage: python jax_multiprocess.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Each process owns one CPU device and feeds its half of every global batch of
16 (`fit` gets the process-local data); Keras makes the global arrays. The
masks and weights each process ends with are saved.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402

pid, n, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid,
                           initialization_timeout=120)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dst  # noqa: E402

keras.utils.set_random_seed(0)  # every process must build the same initial values
distribution = keras.distribution.DataParallel(devices=jax.devices())
distribution.auto_shard_dataset = False  # each process passes its own half of each batch
keras.distribution.set_distribution(distribution)
rng = np.random.default_rng(0)
x = rng.normal(size=(160, 12)).astype("float32")
y = (x[:, :3] @ rng.normal(size=(3, 3))).astype("float32")
model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(3)])
model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                   for w in model.get_weights()])
dst.sparsify(model, 0.7, "uniform", seed=0)
start = dst.get_masks(model)
model.compile(keras.optimizers.SGD(0.05), "mse")
per = 16 // n
rows = np.concatenate([np.arange(b * 16 + pid * per, b * 16 + (pid + 1) * per) for b in range(10)])
model.fit(x[rows], y[rows], batch_size=per, epochs=1, shuffle=False, verbose=0,
          callbacks=[dst.callbacks.RigL(update_freq=2, drop_fraction=0.4, end_step=8, seed=3)])
masks = dst.get_masks(model)
np.savez(out, changed=any(not np.array_equal(start[k], masks[k]) for k in masks),
         **{f"mask:{k}": m for k, m in masks.items()},
         **{f"weight{i}": w for i, w in enumerate(model.get_weights())})
jax.distributed.shutdown()
