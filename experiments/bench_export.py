"""TFLite files from dst vs TF-MOT: size, latency and accuracy, dense to 98% sparse.

    python -m experiments.bench_export              # MLP 784-1000-1000-10 and a CNN
    python -m experiments.bench_export --small      # tiny models, a few seconds' worth

For each model (Fashion-MNIST) and each sparsity in {0, 0.9, 0.95, 0.98} with
unstructured masks and blocks (4, 1) and (16, 1): train with dst's RigL (and,
with `--methods rigl gmp`, dst's MagnitudePruning), export with
`dst.export.convert` in float32 and int8, and do the same with TF-MOT's own path
(`prune_low_magnitude` with the same `block_size` -> `strip_pruning` -> the
same converter options), side by side. Latency: one interpreter thread,
warm-up calls, then rounds in which every file is called once in turn (so
machine load hits all of them alike); the median over the rounds.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dst  # noqa: E402
from experiments import data as data_lib  # noqa: E402

MASKS = {"unstructured": None, "blocks 4x1": (4, 1), "blocks 16x1": (16, 1)}


def build(kind: str, layers, small: bool):
    """The benchmark model in `layers` (keras.layers or tf_keras.layers)."""
    if kind == "mlp":
        width = 64 if small else 1000
        return [layers.Flatten(name="flat"),
                layers.Dense(width, activation="relu", name="fc1"),
                layers.Dense(width, activation="relu", name="fc2"),
                layers.Dense(10, name="out")]
    return [layers.Conv2D(16, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(16 if small else 32, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Flatten(name="flat"),
            layers.Dense(32 if small else 128, activation="relu", name="fc1"),
            layers.Dense(10, name="out")]


DENSE_ONLY = {"mlp": (), "cnn": ("conv1",)}  # conv1 has 1 input channel: no 16x1 blocks


def keras_model(kind, small):
    return keras.Sequential([keras.Input((28, 28, 1)), *build(kind, keras.layers, small)],
                            name=kind)


def schedule(data, args) -> tuple[int, int]:
    """(update_freq, end_step): updates every 100 steps (fewer steps: 10 updates),
    ending on an update step at about 75% of training, for dst and TF-MOT alike."""
    steps = args.epochs * -(-len(data.x_train) // args.batch_size)
    freq = min(100, max(1, steps // 10))
    return freq, freq * (int(0.75 * steps) // freq)


def train_dst(kind, small, sparsity, block, method, data, args):
    keras.utils.set_random_seed(args.seed)
    model = keras_model(kind, small)
    freq, end = schedule(data, args)
    callbacks = []
    if sparsity > 0 and method == "rigl":
        dst.sparsify(model, sparsity, "uniform", seed=args.seed, block=block,
                     exclude=list(DENSE_ONLY[kind]) or None)
        callbacks = [dst.callbacks.RigL(update_freq=freq, drop_fraction=0.3, end_step=end,
                                        seed=args.seed)]
    elif sparsity > 0:
        dst.sparsify(model, 0.0, "uniform", block=block,
                     exclude=list(DENSE_ONLY[kind]) or None)
        callbacks = [dst.callbacks.MagnitudePruning(sparsity, end_step=end, update_freq=freq)]
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs,
              verbose=0, callbacks=callbacks)
    return model


def train_tfmot(kind, small, sparsity, block, data, args):
    """TF-MOT's documented path, on the same architecture in tf_keras."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf_keras.utils.set_random_seed(args.seed)
    base = tf_keras.Sequential([tf_keras.Input((28, 28, 1)),
                                *build(kind, tf_keras.layers, small)])
    freq, end = schedule(data, args)
    sparsity_api = tfmot.sparsity.keras
    decay = sparsity_api.PolynomialDecay(0.0, sparsity, 0, end, frequency=freq)

    def prune(layer):
        if not layer.get_weights() or layer.name in DENSE_ONLY[kind]:
            return layer
        # TF-MOT blocks only 2-D kernels (Dense); its conv kernels stay unstructured.
        size = block if (block and isinstance(layer, tf_keras.layers.Dense)) else (1, 1)
        return sparsity_api.prune_low_magnitude(layer, pruning_schedule=decay,
                                                block_size=size)

    model = tf_keras.models.clone_model(base, clone_function=prune)
    model.compile(tf_keras.optimizers.Adam(1e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs,
              verbose=0, callbacks=[sparsity_api.UpdatePruningStep()])
    final = sparsity_api.strip_pruning(model)

    def convert(quantize):
        converter = tf.lite.TFLiteConverter.from_keras_model(final)
        calibration = [data.x_train[i:i + 32] for i in range(0, 256, 32)]
        dst.export.configure_converter(converter, quantize, calibration)
        return converter.convert()

    return final, convert


def quiet(fn, *args, **kwargs):
    """Runs fn with the converter's and tf_keras' chatter on stdout/stderr hidden."""
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            return fn(*args, **kwargs)
        finally:
            sys.stdout.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def accuracy(predict, data, batch=1000):
    logits = np.concatenate([predict(data.x_test[i:i + batch])
                             for i in range(0, len(data.x_test), batch)])
    return float(np.mean(logits.argmax(-1) == data.y_test))


def latencies(runners, x, calls, warmup=20):
    """Median seconds per call of each runner, calls alternating between runners."""
    for r in runners:
        for _ in range(warmup):
            r(x)
    times = np.zeros((calls, len(runners)))
    for i in range(calls):
        for j, r in enumerate(runners):
            t0 = time.perf_counter()
            r(x)
            times[i, j] = time.perf_counter() - t0
    return np.median(times, axis=0)


def bench_model(kind, args, data):
    small = args.small
    rows = []
    configs = [("dense", "-", 0.0, None)]
    for sparsity in args.sparsities:
        if sparsity == 0:
            continue
        for mask_name in args.masks:
            for method in args.methods:
                configs.append((f"dst {method}", mask_name, sparsity, MASKS[mask_name]))
            if not args.no_tfmot:
                configs.append(("TF-MOT", mask_name, sparsity, MASKS[mask_name]))
    calibration = data.x_train[:256]
    for path, mask_name, sparsity, block in configs:
        t0 = time.perf_counter()
        if path == "TF-MOT":
            model, convert = quiet(train_tfmot, kind, small, sparsity, block, data, args)
            acc = accuracy(lambda x, m=model: m(x, training=False).numpy(), data)
            f32, i8 = quiet(convert, None), quiet(convert, "int8")
        else:
            method = "rigl" if path in ("dense", "dst rigl") else "gmp"
            model = train_dst(kind, small, sparsity, block, method, data, args)
            acc = accuracy(lambda x, m=model: m(x, training=False).numpy(), data)
            f32 = quiet(dst.export.convert, model)
            i8 = quiet(dst.export.convert, model, quantize="int8",
                       representative_data=calibration)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the XNNPACK fallback, recorded below
            r32, r8 = dst.export.load(f32), dst.export.load(i8)
            acc8 = accuracy(r8, data)
            accuracy(r32, data)  # every batch size used below has run once
        rows.append(dict(path=path, masks=mask_name, sparsity=sparsity, acc=acc,
                         acc8=acc8, f32=f32, i8=i8, r32=r32, r8=r8,
                         seconds=time.perf_counter() - t0))
        print(f"  {kind} {path} {mask_name} {sparsity}: acc {acc:.4f}, "
              f"{len(f32)} B, {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    runners = [r for row in rows for r in (row["r32"], row["r8"])]
    for batch in (1, 64):
        med = latencies(runners, data.x_test[:batch], args.calls)
        for i, row in enumerate(rows):
            row[f"b{batch}"], row[f"b{batch}_8"] = med[2 * i], med[2 * i + 1]
    return rows


def table(kind, rows, args) -> str:
    dense = rows[0]
    d_size, d_gz = len(dense["f32"]), gz(dense["f32"])
    head = ("| path | masks | sparsity | acc | int8 acc | f32 KB | f32 gzip KB | f32 smaller | "
            "int8 KB | int8 gzip KB | int8 smaller | b1 f32 µs | b1 f32 faster | "
            "b1 int8 µs | b1 int8 faster | b64 f32 µs | b64 f32 faster | b64 int8 µs | "
            "b64 int8 faster | int8 delegate |")
    lines = [f"### {kind}: {args.epochs} epochs, Fashion-MNIST test accuracy, ratios to dense "
             "float32 TFLite", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s8 = len(r["i8"])
        lines.append(
            f"| {r['path']} | {r['masks']} | {r['sparsity']:g} | {r['acc']:.4f} | "
            f"{r['acc8']:.4f} | {len(r['f32']) / 1e3:.1f} | {gz(r['f32']) / 1e3:.1f} | "
            f"{d_size / len(r['f32']):.1f}× (gz {d_gz / gz(r['f32']):.1f}×) | {s8 / 1e3:.1f} | "
            f"{gz(r['i8']) / 1e3:.1f} | {d_size / s8:.1f}× (gz {d_gz / gz(r['i8']):.1f}×) | "
            f"{r['b1'] * 1e6:.0f} | {dense['b1'] / r['b1']:.2f}× | {r['b1_8'] * 1e6:.0f} | "
            f"{dense['b1'] / r['b1_8']:.2f}× | {r['b64'] * 1e6:.0f} | "
            f"{dense['b64'] / r['b64']:.2f}× | {r['b64_8'] * 1e6:.0f} | "
            f"{dense['b64'] / r['b64_8']:.2f}× | {r['r8'].delegate} |")
    return "\n".join(lines)


def shapes_table(args) -> str:
    """Which block shapes TFLite runs faster: untrained MLPs with random block masks."""
    x_train = np.random.default_rng(0).random((256, 28, 28, 1)).astype("float32")
    rows = []
    for shape in [None, (1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (1, 4), (1, 16), (4, 4)]:
        keras.utils.set_random_seed(args.seed)
        model = keras_model("mlp", args.small)
        if shape is not None:
            dst.sparsify(model, args.shape_sparsity, "uniform", seed=args.seed,
                         block=shape, exclude="out")  # out: 10 units, under 16
        f32 = quiet(dst.export.convert, model)
        i8 = quiet(dst.export.convert, model, quantize="int8", representative_data=x_train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r32, r8 = dst.export.load(f32), dst.export.load(i8)
            r8(x_train[:1])
        rows.append(dict(shape=shape, f32=f32, i8=i8, r32=r32, r8=r8))
    med = latencies([r for row in rows for r in (row["r32"], row["r8"])], x_train[:1],
                    args.calls)
    dense = rows[0]
    lines = [f"### MLP, random block masks at sparsity {args.shape_sparsity:g} on fc1 and fc2 "
             "(output layer dense, untrained), "
             "batch 1, ratios to dense float32 TFLite", "",
             "| block (in, out) | f32 KB | f32 smaller | b1 f32 µs | b1 f32 faster | "
             "int8 KB | int8 smaller | b1 int8 µs | b1 int8 faster | int8 delegate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        b32, b8 = med[2 * i], med[2 * i + 1]
        lines.append(
            f"| {'dense' if r['shape'] is None else r['shape']} | {len(r['f32']) / 1e3:.1f} | "
            f"{len(dense['f32']) / len(r['f32']):.1f}× | {b32 * 1e6:.0f} | "
            f"{med[0] / b32:.2f}× | {len(r['i8']) / 1e3:.1f} | "
            f"{len(dense['f32']) / len(r['i8']):.1f}× | {b8 * 1e6:.0f} | {med[0] / b8:.2f}× | "
            f"{r['r8'].delegate} |")
    return "\n".join(lines)


def csr_table(args) -> str:
    """format="npz" (scipy CSR) vs dense Keras on the MLP: does the CSR path pay?"""
    keras.utils.set_random_seed(args.seed)
    dense = keras_model("mlp", args.small)
    sparse = keras.models.clone_model(dense)
    dst.sparsify(sparse, args.shape_sparsity, "uniform", seed=args.seed)
    csr = dst.export.load(dst.export.convert(sparse, format="npz"))
    plain = dst.strip(sparse)
    fns = {"npz (scipy CSR)": csr,
           "Keras predict": lambda x: plain.predict(x, verbose=0),
           "Keras predict_on_batch": plain.predict_on_batch,
           "Keras model(x)": lambda x: plain(x, training=False)}
    lines = [f"### MLP at sparsity {args.shape_sparsity:g} (uniform, random masks): median µs "
             "per call, ratio = Keras time / CSR time", "",
             "| batch | " + " | ".join(fns) + " | predict / CSR | predict_on_batch / CSR |",
             "|---|" + "---|" * (len(fns) + 2)]
    for batch in (1, 8, 64):
        x = np.random.default_rng(batch).random((batch, 28, 28, 1)).astype("float32")
        np.testing.assert_allclose(csr(x), plain.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
        med = latencies(list(fns.values()), x, args.calls, warmup=5)
        lines.append(f"| {batch} | " + " | ".join(f"{m * 1e6:.0f}" for m in med)
                     + f" | {med[1] / med[0]:.1f}× | {med[2] / med[0]:.1f}× |")
    return "\n".join(lines)


TFMOT_BLOCKS = [(1, 1), (1, 16), (16, 1)]


def same_pruned_pair(block, args):
    """A tf_keras MLP pruned by TF-MOT and the Keras 3 MLP with the same weights
    pruned by `dst.tfmot`, both stripped: one `prune_low_magnitude` call each with
    `ConstantSparsity(args.shape_sparsity, 0, frequency=1)` and `block_size=block`
    (the 10-unit output layer is left dense), one SGD step at learning rate 0 with
    `UpdatePruningStep`, then `strip_pruning`. Returns them with the number of
    kernel entries where the two differ: TF-MOT keeps every weight tied with the
    k-th largest magnitude, dst exactly k, so a tie at the threshold keeps one
    more weight in TF-MOT's file (asserted to be under 0.01% of the entries)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    import dst.tfmot as dst_tfmot

    theirs_api = tfmot.sparsity.keras
    tf_keras.utils.set_random_seed(args.seed)
    base = tf_keras.Sequential([tf_keras.Input((28, 28, 1)),
                                *build("mlp", tf_keras.layers, args.small)])
    ours = keras_model("mlp", args.small)
    ours.set_weights(base.get_weights())
    x = np.random.default_rng(args.seed).random((32, 28, 28, 1)).astype("float32")
    y = np.zeros((32, 10), "float32")

    def theirs_prune(layer):
        if layer.name in ("fc1", "fc2"):
            return theirs_api.prune_low_magnitude(
                layer, theirs_api.ConstantSparsity(args.shape_sparsity, 0, frequency=1),
                block_size=block)
        return layer

    theirs = tf_keras.models.clone_model(base, clone_function=theirs_prune)
    theirs.compile(tf_keras.optimizers.SGD(0.0), "mse")
    theirs.fit(x, y, batch_size=32, epochs=1, verbose=0,
               callbacks=[theirs_api.UpdatePruningStep()])
    schedule = dst_tfmot.ConstantSparsity(args.shape_sparsity, 0, frequency=1)

    def ours_prune(layer):
        if layer.name in ("fc1", "fc2"):
            return dst_tfmot.prune_low_magnitude(layer, pruning_schedule=schedule,
                                                 block_size=block)
        return layer

    pruned = keras.models.clone_model(ours, clone_function=ours_prune)
    pruned.compile(keras.optimizers.SGD(0.0), "mse")
    pruned.fit(x, y, batch_size=32, epochs=1, verbose=0,
               callbacks=[dst_tfmot.UpdatePruningStep()])
    theirs, ours = theirs_api.strip_pruning(theirs), dst_tfmot.strip_pruning(pruned)
    differ = sum(int(np.sum(a != b)) for a, b in zip(theirs.get_weights(), ours.get_weights()))
    assert differ <= 1e-4 * ours.count_params(), differ
    return theirs, ours, differ


def blocked_latencies(runners, x, rounds, rng, calls=10):
    """Seconds per call, (rounds, runners): in each round the runners take turns
    in a new random order, each making one untimed call and then `calls` timed
    calls in a row (the median is kept), as a deployed model is called. A fixed
    order, one call each, times a file by what ran before it: a runner after a
    tiny file finds its weights in cache, one after a large file does not (the
    same bytes measured 0.7x to 1.9x in two positions of one round)."""
    times = np.zeros((rounds, len(runners)))
    for i in range(rounds):
        for j in rng.permutation(len(runners)):
            runners[j](x)
            one = []
            for _ in range(calls):
                t0 = time.perf_counter()
                runners[j](x)
                one.append(time.perf_counter() - t0)
            times[i, j] = np.median(one)
    return times


def op_names(content: bytes) -> list[str]:
    """The ops of a TFLite flatbuffer, in the file's order."""
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(
        model_content=content,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return [op["op_name"] for op in interpreter._get_ops_details()]


def flat_reshape(model):
    """`model` with each Flatten replaced by one reshape to (-1, n): Keras 3's
    Flatten reads the batch size from the input's shape at run time."""
    def replace(layer):
        if isinstance(layer, keras.layers.Flatten):
            n = int(np.prod(layer.input.shape[1:]))
            return keras.layers.Lambda(lambda t: keras.ops.reshape(t, (-1, n)), name=layer.name)
        return layer

    return keras.models.clone_model(model, clone_function=replace)


def tfmot_table(args) -> str:
    """dst.tfmot vs TF-MOT after export, on the same weights and masks: size, ops
    and batch-1 latency, with the Flatten of each framework on its own."""
    import tensorflow as tf
    import tf_keras

    def tf_keras_file(model):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        dst.export.configure_converter(converter, None, [])
        return converter.convert()

    files, differ = {}, {}
    for block in TFMOT_BLOCKS:
        theirs, ours, differ[block] = quiet(same_pruned_pair, block, args)
        files[f"TF-MOT {block}"] = quiet(tf_keras_file, theirs)
        # The same bytes in a second interpreter: how much two runners of one file differ.
        files[f"TF-MOT {block} again"] = files[f"TF-MOT {block}"]
        files[f"dst.tfmot {block}"] = quiet(dst.export.convert, ours)
        files[f"dst.tfmot {block}, reshape(-1, n)"] = quiet(dst.export.convert,
                                                            flat_reshape(ours))
    files["tf_keras Flatten only"] = quiet(tf_keras_file, tf_keras.Sequential(
        [tf_keras.Input((28, 28, 1)), tf_keras.layers.Flatten()]))
    files["Keras 3 Flatten only"] = quiet(dst.export.convert, keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten()]))
    names = list(files)
    x = np.random.default_rng(args.seed).random((1, 28, 28, 1)).astype("float32")
    runs = []
    rng = np.random.default_rng(args.seed)
    for _ in range(args.repeats):  # new interpreters in every run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runners = [dst.export.load(files[n]) for n in names]
        outputs = {n: r(x) for n, r in zip(names, runners)}
        for block in TFMOT_BLOCKS:
            for n in (f"dst.tfmot {block}", f"dst.tfmot {block}, reshape(-1, n)"):
                np.testing.assert_allclose(outputs[n], outputs[f"TF-MOT {block}"],
                                           rtol=1e-4, atol=1e-4)
        runs.append(blocked_latencies(runners, x, args.calls, rng))
    runs = np.concatenate(runs)  # (rounds of every run, files)
    med = np.median(runs, axis=0)

    def reference(name):  # the TF-MOT file (or tf_keras Flatten) of the same row group
        if "Flatten" in name:
            return names.index("tf_keras Flatten only")
        block = name[name.index("("):name.index(")") + 1]
        return names.index(f"TF-MOT {block}")

    lines = [f"### MLP {'64' if args.small else '1000'}x2, {args.shape_sparsity:g} on fc1 and fc2 "
             "(one prune_low_magnitude step on the same weights; output layer dense), float32, "
             f"batch 1: {args.repeats} runs of {args.calls} rounds (10 calls in a row per file "
             "and round, files in a random order), new interpreters in each run; medians and "
             "ratios over all rounds; "
             "weights that differ between "
             f"the TF-MOT and dst.tfmot files (ties at the threshold): "
             + ", ".join(f"{b}: {n}" for b, n in differ.items()), "",
             "| file | KB | ops | b1 µs (median) | b1 time / TF-MOT's (median) | "
             "25–75th percentile |", "|---|---|---|---|---|---|"]
    for j, name in enumerate(names):
        ratios = runs[:, j] / runs[:, reference(name)]
        ops = op_names(files[name])
        counts = ", ".join(f"{op} {ops.count(op)}" for op in dict.fromkeys(ops))
        lines.append(f"| {name} | {len(files[name]) / 1e3:.1f} | {len(ops)}: {counts} | "
                     f"{med[j] * 1e6:.0f} | {np.median(ratios):.3f} | "
                     f"{np.percentile(ratios, 25):.3f}–{np.percentile(ratios, 75):.3f} |")
    return "\n".join(lines)


def gz(content: bytes) -> int:
    return len(gzip.compress(content, compresslevel=9))


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true",
                   help="tiny models, 2000 training images, 2 sparsities, 20 latency rounds")
    p.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--sparsities", nargs="+", type=float, default=None)
    p.add_argument("--masks", nargs="+", default=None, choices=list(MASKS))
    p.add_argument("--methods", nargs="+", default=["rigl"], choices=["rigl", "gmp"])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calls", type=int, default=None, help="latency rounds (>= 200)")
    p.add_argument("--no-tfmot", action="store_true", help="leave out TF-MOT's path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--shapes", action="store_true",
                   help="only the block-shape table (random masks, no training)")
    p.add_argument("--csr", action="store_true",
                   help="only the npz (scipy CSR) vs dense Keras table (random masks)")
    p.add_argument("--tfmot-api", action="store_true",
                   help="only dst.tfmot vs TF-MOT on the same weights and masks (no training)")
    p.add_argument("--repeats", type=int, default=5,
                   help="runs of the latency rounds for --tfmot-api")
    p.add_argument("--shape-sparsity", type=float, default=0.95)
    p.add_argument("--out", default=None, help="also write the tables to this file")
    args = p.parse_args(argv)
    args.sparsities = args.sparsities or ([0, 0.9] if args.small else [0, 0.9, 0.95, 0.98])
    args.masks = args.masks or (["unstructured", "blocks 16x1"] if args.small else list(MASKS))
    args.epochs = args.epochs or (1 if args.small else 2)
    args.calls = args.calls or (20 if args.small else 200)
    if not args.no_tfmot:
        try:
            import tensorflow_model_optimization  # noqa: F401
        except ImportError:
            print("TF-MOT is not installed: its path is left out.", file=sys.stderr)
            args.no_tfmot = True
    if args.shapes or args.csr or args.tfmot_api:
        tables = [shapes_table(args)] if args.shapes else []
        tables += [csr_table(args)] if args.csr else []
        tables += [tfmot_table(args)] if args.tfmot_api else []
        return _finish(tables, args, argv)
    data = data_lib.load("fashion_mnist", data_dir=args.data_dir,
                         max_train_samples=2000 if args.small else None,
                         max_test_samples=500 if args.small else None)
    tables = []
    for kind in args.models:
        tables.append(table(kind, bench_model(kind, args, data), args))
        print(tables[-1], file=sys.stderr, flush=True)  # each table as soon as it is done
    return _finish(tables, args, argv)


def _finish(tables, args, argv) -> str:
    command = "python -m experiments.bench_export " + " ".join(sys.argv[1:] if argv is None
                                                               else argv)
    text = f"`{command.strip()}`\n\n" + "\n\n".join(tables) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
