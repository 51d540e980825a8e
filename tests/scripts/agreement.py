"""One seeded run of a dst method on the backend of KERAS_BACKEND; writes its masks.

Usage: python agreement.py OUT_DIR METHOD... (METHOD: a key of CALLBACKS; writes
OUT_DIR/METHOD.npz)

The initial weights, data and batch order come from numpy, so every backend
starts from the same model. The masks and weights after every step are saved.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dst  # noqa: E402

#: Each method's callback arguments: mask updates at steps 0, 2, 4, 6 and 8 of 10.
CALLBACKS = {
    "set": dict(update_freq=2, drop_fraction=0.4, end_step=8, seed=3),
    "rigl": dict(update_freq=2, drop_fraction=0.4, end_step=8, seed=3),
    "snfs": dict(update_freq=2, drop_fraction=0.4, end_step=8, seed=3),
    "srigl": dict(update_freq=2, drop_fraction=0.4, end_step=8, seed=3),
    "granet": dict(final_sparsity=0.9, initial_sparsity=0.7, update_freq=2, end_step=8, seed=3),
}


def main(method: str, out: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12)).astype("float32")
    y = (x[:, :3].argmax(1)).astype("int32")
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    if method != "granet":  # GraNet sparsifies at bind, to its initial_sparsity
        dst.sparsify(model, 0.7, "uniform", seed=0)
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = dst.callbacks.get(method, **CALLBACKS[method])
    record = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for path, mask in dst.get_masks(self.model).items():
                record[f"{batch}:{path}"] = mask
            record[f"{batch}:weights"] = np.concatenate(
                [np.ravel(w) for w in self.model.get_weights()])

    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[callback, Record()])
    np.savez(out, **record)


if __name__ == "__main__":
    for name in sys.argv[2:]:
        main(name, f"{sys.argv[1]}/{name}.npz")
