# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A Keras layer where not all neurons are connected
#
# *Source: `notebooks/01_sparse_layer.py` (jupytext percent format); the `.ipynb` beside it is generated from it and stored with the outputs of a full-budget run. Edit the `.py`, then regenerate the `.ipynb` with the command in `notebooks/README.md`.*
#
# A `keras.layers.Dense(units)` layer connects every input to every output unit. To connect only
# chosen input/output pairs, use `dst.layers.SparseDense`: a `Dense` layer plus a fixed 0/1
# *connectivity* array of shape `(input_dim, units)`. Output unit `j` sees input `i` only where
# `connectivity[i, j] == 1`; the other kernel entries are 0.0 when the layer is built and stay 0.0
# after every optimizer step (the mask is a Keras constraint, applied by the optimizer).
#
# This notebook:
# 1. builds a hand-made *banded* connectivity and a random one (`density=`), and draws them;
# 2. trains a small model on scikit-learn's digits;
# 3. checks that the missing connections are still exactly zero;
# 4. prints `dst.summary`, saves and reloads the model, and turns it into a plain Keras model with
#    `dst.strip`.

# %%
import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"    # quiet TensorFlow's C++ logs
os.environ.setdefault("WANDB_MODE", "offline")

import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

# %% [markdown]
# ## Budget
#
# `SMALL` is a papermill parameter (the cell below is tagged `parameters`). The test suite runs
# this notebook with `SMALL = True` (tiny epochs, seconds; the numbers it then prints are not
# meaningful): `papermill NOTEBOOK.ipynb out.ipynb -p SMALL True`. As stored, it runs the full
# budget (a minute or two on a laptop CPU).

# %% tags=["parameters"]
SMALL = False  # True: a seconds-long smoke run

# %%
EPOCHS = 2 if SMALL else 40
BATCH_SIZE = 32

# %%
import tempfile

import keras
import matplotlib.pyplot as plt

import dst

keras.utils.set_random_seed(0)

# %% [markdown]
# ## Data: scikit-learn's digits

# %%
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

x, y = load_digits(return_X_y=True)             # 1,797 8x8 images, 64 features, 10 classes
x = (x / 16.0).astype("float32")                 # pixel values 0..16 -> 0..1
y = y.astype("int32")
x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.2, random_state=0, stratify=y)
if SMALL:
    x_train, y_train = x_train[:512], y_train[:512]
print(x_train.shape, x_test.shape)

# %% [markdown]
# ## A hand-made connectivity
#
# Input `i` (pixel `i` of the flattened 8×8 image, row by row) connects to hidden unit `j` of 32
# when `|i − 2j| ≤ 3`: each unit sees a band of 6–7 neighbouring pixels, and neighbouring units
# overlap. Any 0/1 (or boolean) array works, as long as every output unit has at least one input.

# %%
n_in, n_band = 64, 32
band = (np.abs(np.subtract.outer(np.arange(n_in), 2 * np.arange(n_band))) <= 3).astype("int8")
print("connectivity shape:", band.shape, " connections:", int(band.sum()),
      f" density: {band.mean():.3f}")

# %% [markdown]
# A second sparse layer gets a *random* connectivity: `density=0.25` keeps exactly
# `round(0.25 × input_dim × units)` connections, drawn with `seed` (at least one input per unit).

# %%
model = keras.Sequential([
    keras.Input((64,)),
    dst.layers.SparseDense(n_band, connectivity=band, activation="relu", name="banded"),
    dst.layers.SparseDense(64, density=0.25, seed=0, activation="relu", name="random"),
    keras.layers.Dense(10, name="logits"),
], name="sparse_digits")
model.summary()

# %% [markdown]
# The connectivity of each `SparseDense` layer is its `connectivity` attribute (set at build):

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, name in zip(axes, ["banded", "random"]):
    conn = model.get_layer(name).connectivity
    ax.imshow(conn.T, cmap="Greys", interpolation="nearest", aspect="auto")
    ax.set_title(f"{name}: {int(conn.sum())} of {conn.size} connections")
    ax.set_xlabel("input")
    ax.set_ylabel("output unit")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Train it like any Keras model

# %%
model.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
history = model.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE,
                    validation_data=(x_test, y_test), verbose=0)
loss, acc = model.evaluate(x_test, y_test, verbose=0)
print(f"test accuracy: {acc:.3f}")

# %%
plt.plot(history.history["accuracy"], label="train")
plt.plot(history.history["val_accuracy"], label="test")
plt.xlabel("epoch")
plt.ylabel("accuracy")
plt.legend()
plt.show()

# %% [markdown]
# ## The missing connections are still exactly zero
#
# Adam moved every weight for many steps, yet each masked kernel entry is exactly 0.0, and every
# zero is a missing connection (a trained, present connection landing on exactly 0.0 is possible but
# practically never happens):

# %%
for name in ["banded", "random"]:
    layer = model.get_layer(name)
    kernel = layer.kernel.numpy()
    conn = layer.connectivity
    assert np.all(kernel[~conn] == 0.0), name
    assert np.all(kernel[conn] != 0.0), name
    print(f"{name}: {int((~conn).sum())} masked weights, all exactly 0.0")

# %% [markdown]
# ## `dst.summary`: density and inference FLOPs per weight
#
# One row per weight that can be sparse (here the three kernels; `logits` is a plain dense `Dense`).
# *Sparse FLOPs* counts only present connections (a multiply-add = 2 FLOPs). It also returns the rows
# as dicts.

# %%
rows = dst.summary(model)

# %% [markdown]
# ## Save and load
#
# The connectivity is part of the layer's config, so a `.keras` file restores it. Loading needs
# `import dst` in the loading process (it registers `SparseDense`).

# %%
tmp = tempfile.mkdtemp()
path = os.path.join(tmp, "sparse_digits.keras")
model.save(path)
loaded = keras.models.load_model(path)

np.testing.assert_allclose(loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0),
                           rtol=1e-5, atol=1e-5)
for name in ["banded", "random"]:
    np.testing.assert_array_equal(loaded.get_layer(name).connectivity,
                                  model.get_layer(name).connectivity)
print("reloaded model: same predictions, same connectivity")

# %% [markdown]
# Training the reloaded model keeps the zeros too: the mask came back with it.

# %%
loaded.fit(x_train, y_train, epochs=1, batch_size=BATCH_SIZE, verbose=0)
assert np.all(loaded.get_layer("banded").kernel.numpy()[~band.astype(bool)] == 0.0)
print("still zero after more training")

# %% [markdown]
# ## `dst.strip`: a plain Keras model
#
# For deployment, `dst.strip(model)` returns a copy made of plain Keras layers (`SparseDense` →
# `Dense`) with the zeros baked into the weights. It loads in a process that never imports dst. Its
# weights are no longer masked: further training would fill the zeros in.

# %%
plain = dst.strip(model)
print([type(layer).__name__ for layer in plain.layers])
np.testing.assert_allclose(plain.predict(x_test, verbose=0), model.predict(x_test, verbose=0),
                           rtol=1e-5, atol=1e-5)
print("zeros in the plain model's first kernel:",
      int((plain.layers[0].kernel.numpy() == 0).sum()), "of", band.size)

# %% [markdown]
# ## Next
#
# `02_dynamic_sparse_training.ipynb` makes *any* Keras model sparse with `dst.sparsify` and lets the
# connectivity change during training (SET, RigL). `SparseDense` layers keep theirs fixed even there.
