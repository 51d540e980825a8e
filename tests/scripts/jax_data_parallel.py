"""RigL under `keras.distribution.DataParallel` on 2 JAX CPU devices vs 1 device.

Prints JSON: whether the masks and weights equal the single-device run on the
same global batches, and whether every device holds the same mask.
"""

import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import json  # noqa: E402

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import dst  # noqa: E402


def run(distributed: bool):
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices()) if distributed else None)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12)).astype("float32")
    y = (x[:, :3] @ rng.normal(size=(3, 3))).astype("float32")
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    dst.sparsify(model, 0.7, "uniform", seed=0)
    start = list(dst.get_masks(model).values())
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[dst.callbacks.RigL(update_freq=2, drop_fraction=0.4, end_step=8,
                                            seed=3)])
    same_on_devices = []
    for t in dst._model.masked_targets(model):
        shards = [np.asarray(s.data) for s in t.constraint.mask.value.addressable_shards]
        same_on_devices.append(all(np.array_equal(shards[0], s) for s in shards))
    devices = len(t.constraint.mask.value.addressable_shards)
    masks = list(dst.get_masks(model).values())
    changed = any(not np.array_equal(a, b) for a, b in zip(start, masks))
    return masks, model.get_weights(), same_on_devices, devices, changed


masks_2, weights_2, same, devices, changed = run(True)
masks_1, weights_1, _, _, _ = run(False)
print(json.dumps({
    "devices": devices,
    "changed": changed,
    "same_on_devices": same,
    "masks_equal": [bool(np.array_equal(a, b)) for a, b in zip(masks_2, masks_1)],
    "max_weight_diff": float(max(np.abs(a - b).max() for a, b in zip(weights_2, weights_1))),
}))
