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
# # Dynamic sparse training: SET and RigL in `model.fit`
#
# *Source: `notebooks/02_dynamic_sparse_training.py` (jupytext percent format); the `.ipynb` beside it is generated from it and stored with the outputs of a full-budget run. Edit the `.py`, then regenerate the `.ipynb` with the command in `notebooks/README.md`.*
#
# `dst.sparsify(model, sparsity, distribution)` masks the weights of an existing Keras 3 model
# (in place, no wrapper layers). Training then keeps the masked weights at exactly zero. The callbacks
# `dst.callbacks.SET` and `dst.callbacks.RigL` additionally *move* connections during training: every
# `update_freq` steps they drop the smallest-magnitude active weights and grow as many new ones — at
# random (SET, Mocanu et al. 2018) or where the dense gradient is largest (RigL, Evci et al. 2020). The
# number of connections, and so the sparsity, never changes.
#
# This notebook trains an MLP on scikit-learn's digits at 90% sparsity, compares ERK and uniform
# per-layer densities, follows sparsity, mask churn and in-time over-parameterization (ITOP) through
# training, and compares the accuracy with a dense model.

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
SPARSITY = 0.9
UPDATE_FREQ = 10 if SMALL else 50     # optimizer steps between mask updates

# %%
import keras
import matplotlib.pyplot as plt

import dst

keras.utils.set_random_seed(0)

# %% [markdown]
# ## Data and model

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


# %%
def build_mlp(name="mlp"):
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ], name=name)


def compile_model(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


# %% [markdown]
# ## How the sparsity is spread over layers: uniform vs ERK
#
# With `distribution="uniform"` every weight gets the same sparsity. With `"erk"`
# (Erdős–Rényi-Kernel, from the RigL paper) a weight's density is proportional to
# `(fan_in + fan_out) / (fan_in × fan_out)`: large layers get sparser, small ones (here the
# 64→256 input layer and the 128→10 output layer) denser, for the same total. Compare two sparsified
# copies; `dst.summary` returns the rows (`print_fn` silences its table):

# %%
densities = {}
for distribution in ["uniform", "erk"]:
    m = dst.sparsify(build_mlp(distribution), sparsity=SPARSITY, distribution=distribution, seed=0)
    rows = dst.summary(m, print_fn=lambda *_: None)
    densities[distribution] = [r["density"] for r in rows[:-1]]   # the last row is the total
    labels = ["x".join(map(str, r["shape"])) for r in rows[:-1]]   # kernel shapes
    print(f"{distribution:8s} total density {rows[-1]['density']:.3f}   " + "   ".join(
        f"{r['shape']}: {r['density']:.3f}" for r in rows[:-1]))

pos = np.arange(len(labels))
for i, distribution in enumerate(densities):
    plt.bar(pos + 0.4 * i - 0.2, densities[distribution], width=0.4, label=distribution)
plt.xticks(pos, labels)
plt.xlabel("kernel (fan_in x fan_out)")
plt.ylabel("density (fraction of weights kept)")
plt.title(f"Per-layer density at {SPARSITY:.0%} total sparsity")
plt.legend()
plt.show()


# %% [markdown]
# ## Train: dense, static sparse, SET, RigL
#
# The same architecture, seed, data and optimizer; only the masks and the callback differ.
#
# - **dense**: the plain MLP.
# - **static**: `dst.sparsify` with ERK, connectivity fixed for the whole run.
# - **SET / RigL**: `dst.sparsify` with ERK, then the callback in `model.fit`.
#
# The callback arguments:
#
# - `update_freq`: optimizer steps between mask updates (here `UPDATE_FREQ` steps; with about 45
#   steps per epoch, roughly one update per epoch, and now and then an epoch with none).
# - `drop_fraction`: the fraction of a weight's active connections replaced at an update (0.3);
#   with the default `drop_fraction_schedule="cosine"` it decays to 0 at `end_step`.
# - `end_step`: the last step at which masks change; a float in (0, 1] is that fraction of this
#   `fit`'s steps (0.75: the last quarter of training fine-tunes a fixed sparse network).
# - `begin_step` (0) delays the first update; `seed` makes SET's random growth (and tie breaking)
#   reproducible.

# %%
def train(method):
    keras.utils.set_random_seed(0)
    model = build_mlp(method)
    callbacks = []
    if method != "dense":
        dst.sparsify(model, sparsity=SPARSITY, distribution="erk", seed=0)
    if method == "set":
        callbacks = [dst.callbacks.SET(update_freq=UPDATE_FREQ, drop_fraction=0.3,
                                       end_step=0.75, seed=0)]
    elif method == "rigl":
        callbacks = [dst.callbacks.RigL(update_freq=UPDATE_FREQ, drop_fraction=0.3,
                                        end_step=0.75, seed=0)]
    compile_model(model)
    history = model.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE,
                        validation_data=(x_test, y_test), callbacks=callbacks, verbose=0)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    return model, history.history, acc


results = {}
for method in ["dense", "static", "set", "rigl"]:
    results[method] = train(method)
    print(f"{method:7s} test accuracy {results[method][2]:.3f}   "
          f"sparsity {dst.sparsity(results[method][0]):.3f}")

# %% [markdown]
# ## What the callbacks log
#
# At every epoch end the DST callbacks add three numbers to `logs`, so they show in the progress
# bar, in `History` and in W&B/TensorBoard callbacks:
#
# - `sparsity`: the fraction of maskable weights that are masked (constant: drop = grow);
# - `mask_churn`: the fraction of the connections active at the epoch's start that are no longer
#   active at its end — how much the connectivity moved during the epoch;
# - `itop`: the fraction of all maskable weights that have been active at least once since
#   `dst.sparsify` (in-time over-parameterization, Liu et al. 2021). A static sparse network stays at
#   `1 − sparsity`; DST explores more of the dense network.

# %%
print("history keys:", sorted(results["rigl"][1]))
fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
for method in ["set", "rigl"]:
    h = results[method][1]
    epochs = np.arange(1, len(h["sparsity"]) + 1)
    for ax, key in zip(axes[:3], ["sparsity", "mask_churn", "itop"]):
        ax.plot(epochs, h[key], marker="o", label=method)
        ax.set_title(key)
        ax.set_xlabel("epoch")
for method, (_, h, _) in results.items():
    axes[3].plot(np.arange(1, len(h["val_accuracy"]) + 1), h["val_accuracy"], label=method)
axes[3].set_title("test accuracy")
axes[3].set_xlabel("epoch")
for ax in axes:
    ax.legend()
fig.tight_layout()
plt.show()

# %%
for method in ["set", "rigl"]:
    h = results[method][1]
    assert abs(h["sparsity"][-1] - SPARSITY) < 0.01, method
    assert h["itop"][-1] >= 1 - SPARSITY - 1e-6, method
    print(f"{method}: final itop {h['itop'][-1]:.3f}, "
          f"mask churn per epoch {np.round(h['mask_churn'], 3).tolist()}")

# %% [markdown]
# Reading the curves: `sparsity` is flat (drop = grow). `mask_churn` starts near `drop_fraction`
# (one update per epoch replaces 30% of the connections), is 0 in an epoch that holds no update
# step, shrinks as the cosine schedule lowers the drop fraction, and is 0 after `end_step`. `itop`
# grows while masks move; with the full budget SET's random growth explored more of the dense
# network (higher `itop`) than RigL, whose gradient-based growth tends to pick similar candidates
# again.

# %% [markdown]
# ## Accuracy vs the dense model

# %%
names = list(results)
accs = [results[m][2] for m in names]
plt.bar(names, accs, color=["grey", "tab:blue", "tab:orange", "tab:green"])
plt.ylim(min(accs) - 0.05, 1.0)
plt.ylabel("test accuracy")
plt.title(f"Digits MLP, {SPARSITY:.0%} sparse (ERK) vs dense")
plt.show()
for m, a in zip(names, accs):
    print(f"{m:7s} {a:.3f}")

# %% [markdown]
# Digits is a small problem: a 90%-sparse MLP usually gets within a point or two of the dense one,
# and the differences between static, SET and RigL are of the order of run-to-run noise here. The
# gaps grow on harder tasks and higher sparsities (see the RigL paper and `experiments/`).
#
# The trained model is still a normal Keras model with masks: `dst.summary(model)` reports its
# sparse FLOPs, `model.save` keeps the masks, and `dst.strip(model)` gives a plain Keras model.

# %%
rigl_model = results["rigl"][0]
dst.summary(rigl_model)
plain = dst.strip(rigl_model)
print(type(plain).__name__, "with", sum(int((w == 0).sum()) for w in plain.get_weights()),
      "zero weights")
