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
# # Sparse deployment: block masks, RigL, and a TFLite file that is smaller and faster
#
# *Source: `notebooks/04_sparse_deployment.py` (jupytext percent format); the `.ipynb` beside it is generated from it and stored with the outputs of a full-budget run. Edit the `.py`, then regenerate the `.ipynb` with the command in `notebooks/README.md`.*
#
# A sparse Keras model is not smaller or faster by itself: `dst.strip` gives a dense model with
# zeros in it. `dst.export` converts it to a TFLite file with TFLite's sparsity optimization. The
# runtime's sparse kernels, though, only speed up **blocks** of consecutive inputs of one output
# unit; with unstructured masks it rebuilds the dense matrix at every call.
#
# This notebook trains the same MLP three ways and exports each:
# 1. dense;
# 2. 95% sparse with RigL and unstructured masks;
# 3. 95% sparse with RigL and `block=(16, 1)` masks (16 consecutive inputs of one unit);
#
# then compares file size, batch-1 latency and test accuracy, in float32 and int8.
# It needs the `[export]` extra (`pip install 'keras-dst[export]'`: `ai-edge-litert`).

# %%
import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"    # quiet TensorFlow's C++ logs
os.environ.setdefault("WANDB_MODE", "offline")

import logging
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # no "Assets written" lines per export

# %% [markdown]
# ## Budget
#
# `SMALL` is a papermill parameter (the cell below is tagged `parameters`). The test suite runs
# this notebook with `SMALL = True` (scikit-learn's digits, a 64-unit MLP, seconds; the numbers
# it then prints are not meaningful): `papermill NOTEBOOK.ipynb out.ipynb -p SMALL True`. As
# stored, it runs the full budget: Fashion-MNIST and the MLP 784-1000-1000-10 of the README's
# export benchmark, 2 epochs each (several minutes on a 2-core CPU).

# %% tags=["parameters"]
SMALL = False  # True: a seconds-long smoke run

# %%
EPOCHS = 1 if SMALL else 2
HIDDEN = 64 if SMALL else 1000
SPARSITY = 0.95
BLOCK = (16, 1)
UPDATE_FREQ = 4 if SMALL else 100     # optimizer steps between RigL mask updates
CALLS = 20 if SMALL else 200          # timed calls per file (median)

# %%
import gzip
import struct
import time

import keras
import matplotlib.pyplot as plt
import numpy as np

import dst

# %% [markdown]
# ## Data
#
# Fashion-MNIST from Debian's `dataset-fashion-mnist` IDX files (or `$DST_DATA_DIR`), else
# downloaded by `keras.datasets`; digits in the small run.

# %%
def read_idx(path):
    """An array from an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist():
    folder = os.environ.get("DST_DATA_DIR", "/usr/share/datasets/fashion-mnist")
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [os.path.join(folder, n + ".gz") for n in names]
    if all(os.path.isfile(p) for p in paths):
        return [read_idx(p) for p in paths]
    (a, b), (c, d) = keras.datasets.fashion_mnist.load_data()
    return a, b, c, d


if SMALL:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype("float32"), y.astype("int32"), test_size=0.2, random_state=0)
else:
    x_train, y_train, x_test, y_test = fashion_mnist()
    x_train = (x_train.reshape(len(x_train), -1) / 255.0).astype("float32")
    x_test = (x_test.reshape(len(x_test), -1) / 255.0).astype("float32")
    y_train, y_test = y_train.astype("int32"), y_test.astype("int32")
print(x_train.shape, x_test.shape)
steps = EPOCHS * -(-len(x_train) // 128)

# %% [markdown]
# ## Train: dense, RigL unstructured, RigL with 16×1 blocks
#
# The same MLP, optimizer and steps. The sparse models get uniform per-layer sparsity
# (every kernel 95% sparse) and RigL updates every `UPDATE_FREQ` steps until 75% of training.
# With `block=(16, 1)`, `dst.sparsify` draws whole 16×1 blocks and RigL drops blocks by their
# weights' L2 norm and grows blocks by their gradient's L2 norm, so the masks stay unions of blocks.

# %%
def train(block=None, sparse=True, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((x_train.shape[1],)),
        keras.layers.Dense(HIDDEN, activation="relu", name="fc1"),
        keras.layers.Dense(HIDDEN, activation="relu", name="fc2"),
        keras.layers.Dense(10, name="logits"),
    ], name="mlp")
    callbacks = []
    if sparse:
        dst.sparsify(model, SPARSITY, "uniform", seed=seed, block=block)
        callbacks = [dst.callbacks.RigL(update_freq=UPDATE_FREQ, drop_fraction=0.3,
                                        end_step=0.75, seed=seed)]
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=128, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    return model


models = {
    "dense": train(sparse=False),
    "RigL, unstructured": train(block=None),
    "RigL, blocks 16x1": train(block=BLOCK),
}
for name, model in models.items():
    acc = model.evaluate(x_test, y_test, verbose=0)[1]
    print(f"{name:20s} sparsity {dst.sparsity(model):.3f}  test accuracy {acc:.4f}")

# %% [markdown]
# The block model's masks are unions of whole 16×1 blocks: in each column (output unit), the kept
# inputs come in runs of 16. The first 64 inputs × 32 units of `fc2`:

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, name in zip(axes, ["RigL, unstructured", "RigL, blocks 16x1"]):
    mask = dst.get_masks(models[name])["mlp/fc2/kernel"]
    ax.imshow(mask[:64, :32].T, cmap="Greys", interpolation="nearest", aspect="auto")
    ax.set_title(f"{name}: fc2 mask (part)")
    ax.set_xlabel("input")
    ax.set_ylabel("output unit")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Export with `dst.export`
#
# Float32 and int8 (int8 calibrated on 256 training images). `dst.export.load` runs a file with
# `ai-edge-litert`'s interpreter (one thread); it falls back to TFLite's built-in kernels, with a
# warning, when the default XNNPACK delegate refuses a file (unstructured int8 files).

# %%
files, runners = {}, {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # the XNNPACK fallback: `delegate` below
    for name, model in models.items():
        files[(name, "float32")] = dst.export.convert(model)
        files[(name, "int8")] = dst.export.convert(model, quantize="int8",
                                                   representative_data=x_train[:256])
    for key, content in files.items():
        runners[key] = dst.export.load(content)
        runners[key](x_test[:1000])  # runs once at a large batch size before timing

# %% [markdown]
# Latency at batch 1: warm-up calls, then rounds in which every file is called once in turn (so
# the machine's load hits all files alike), the median over the rounds.

# %%
def accuracy(runner):
    logits = np.concatenate([runner(x_test[i:i + 1000]) for i in range(0, len(x_test), 1000)])
    return float(np.mean(logits.argmax(-1) == y_test))


x1 = x_test[:1]
for runner in runners.values():
    for _ in range(10):
        runner(x1)
times = np.zeros((CALLS, len(runners)))
for i in range(CALLS):
    for j, runner in enumerate(runners.values()):
        start = time.perf_counter()
        runner(x1)
        times[i, j] = time.perf_counter() - start
latency = dict(zip(runners, 1e6 * np.median(times, axis=0)))

results = []
dense_kb, dense_us = len(files[("dense", "float32")]) / 1e3, latency[("dense", "float32")]
print(f"{'model':20s} {'format':8s} {'KB':>8s} {'smaller':>8s} {'b1 µs':>7s} {'faster':>7s} "
      f"{'acc':>6s}  delegate")
for (name, fmt), runner in runners.items():
    kb = len(files[(name, fmt)]) / 1e3
    row = dict(name=name, format=fmt, kb=kb, us=latency[(name, fmt)], acc=accuracy(runner))
    results.append(row)
    print(f"{name:20s} {fmt:8s} {kb:8.1f} {dense_kb / kb:7.1f}x {row['us']:7.0f} "
          f"{dense_us / row['us']:6.2f}x {row['acc']:6.4f}  {runner.delegate}")

# %% [markdown]
# ## Size, latency and accuracy against dense

# %%
names = list(models)
colors = {"float32": "tab:blue", "int8": "tab:orange"}
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
panels = [("kb", "file size (KB, log scale)"), ("us", "batch-1 latency (µs)"),
          ("acc", "test accuracy (%)")]
for ax, (key, title) in zip(axes, panels):
    for k, fmt in enumerate(["float32", "int8"]):
        values = [next(r[key] for r in results if r["name"] == n and r["format"] == fmt)
                  for n in names]
        values = [100 * v for v in values] if key == "acc" else values
        bars = ax.bar(np.arange(len(names)) + (k - 0.5) * 0.38, values, 0.38,
                      color=colors[fmt], label=fmt)
        ax.bar_label(bars, fmt="%.0f" if key != "acc" else "%.1f", fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_title(title)
    if key == "kb":
        ax.set_yscale("log")
    if key == "acc":
        low = min(100 * r["acc"] for r in results)
        ax.set_ylim(max(0, low - 5), 100)
axes[0].legend(fontsize=8)
fig.suptitle(f"{SPARSITY:.0%} sparse MLP vs dense, TFLite (one thread)")
fig.tight_layout()
plt.show()

# %% [markdown]
# What to read from it (the README's "Sparse deployment" section has the measured tables, with
# TF-MOT's path beside dst's):
# - **Size**: both sparse files are much smaller than dense; in int8, the 16×1 blocks are smaller
#   still, because TFLite stores one index per block instead of one per weight.
# - **Latency**: the block files are several times faster than dense at batch 1. The unstructured
#   file gains little: TFLite densifies its weights at run time (on a loaded machine the dense
#   timing is noisy, so a small gain or loss either way is not meaningful), and its int8 version
#   cannot use the XNNPACK delegate (`delegate` "none" above).
# - **Accuracy**: blocks constrain where connections can be; here they cost little against
#   unstructured masks at the same sparsity (see the README's multi-seed block-accuracy table).
#
# In the small run (digits, 64 units) the layers are too small for any of this to show.
