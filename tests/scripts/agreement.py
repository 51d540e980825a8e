"""One seeded run of a dst method on the backend of KERAS_BACKEND; writes its masks.

Usage: python agreement.py OUT_DIR METHOD... (METHOD: a key of CALLBACKS; writes
OUT_DIR/METHOD.npz)

The run is `dst.testing.protocol_run` (the conformance kit's cross-backend
protocol): the initial weights, data and batch order come from numpy, so every
backend starts from the same model. The masks and weights after every step
are saved.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
    np.savez(out, **dst.testing.protocol_run(dst.updaters.get(method), CALLBACKS[method]))


if __name__ == "__main__":
    for name in sys.argv[2:]:
        main(name, f"{sys.argv[1]}/{name}.npz")
