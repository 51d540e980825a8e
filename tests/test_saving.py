"""Masks travel through .keras files (in a new process) and .weights.h5 files."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import run_python
from keras import layers

import dst


def rich_model():
    """Every weight kind whose layer config carries its constraint."""
    image = keras.Input((6, 6, 2), name="image")
    x = layers.Conv2D(4, 3, name="conv", kernel_constraint=keras.constraints.NonNeg())(image)
    x = layers.DepthwiseConv2D(3, name="dw")(x)
    x = layers.SeparableConv2D(4, 1, name="sep")(x)
    x = layers.Conv2DTranspose(3, 2, name="convt")(x)
    x = layers.Flatten()(x)
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    t = layers.Embedding(20, 4, name="emb")(tokens)
    t = layers.LSTM(4, return_sequences=True, name="lstm")(t)
    t = layers.GRU(4, return_sequences=True, name="gru")(t)
    t = layers.TimeDistributed(layers.Dense(4, name="td_dense"), name="td")(t)
    t = layers.Bidirectional(layers.SimpleRNN(2, return_sequences=True), name="bi")(t)
    t = layers.EinsumDense("abc,cd->abd", (5, 3), name="einsum")(t)
    t = layers.Conv1D(2, 2, name="conv1d")(t)
    t = layers.Flatten()(t)
    inner = keras.Sequential([keras.Input((8,)), layers.Dense(4, name="in_d")], name="inner")
    shared = layers.Dense(8, name="shared")
    y = layers.Concatenate()([x, t])
    y = inner(shared(layers.Dense(8, name="proj")(y)))
    y = layers.Dense(2, name="head")(shared(layers.Dense(8, name="proj2")(y)))
    return keras.Model([image, tokens], y, name="rich")


def rich_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (
        [rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.integers(0, 20, (n, 5))],
        rng.normal(size=(n, 2)).astype("float32"),
    )


LOAD_AND_CHECK = r"""
import json, sys
import numpy as np
import keras
import dst

path, ref, out = sys.argv[1:]
ref = np.load(ref)
model = keras.models.load_model(path)
masks = dst.get_masks(model)
records = [
    t.constraint.ever_active for t in dst._model.masked_targets(model)
]
inner = type(model.get_layer("conv").kernel.constraint.inner).__name__
rng = np.random.default_rng(1)
x = [rng.normal(size=(16, 6, 6, 2)).astype("float32"), rng.integers(0, 20, (16, 5))]
y = rng.normal(size=(16, 2)).astype("float32")
pred = model.predict(x, verbose=0)
model.fit(x, y, batch_size=8, epochs=1, verbose=0)
values = {w.path: w.numpy() for w in model.weights}
json.dump(
    dict(
        paths=list(masks),
        masks_equal=[
            bool(np.array_equal(m, ref[f"mask{i}"])) for i, m in enumerate(masks.values())
        ],
        records_equal=[
            bool(np.array_equal(r, ref[f"ever{i}"])) for i, r in enumerate(records)
        ],
        mask_dtypes=sorted({str(t.constraint.mask.dtype) for t in dst._model.masked_targets(model)}),
        pred_equal=bool(np.array_equal(pred, ref["pred"])),
        inner=inner,
        masked_nonzero=int(sum(np.count_nonzero(values[p][~m]) for p, m in masks.items())),
        sparsity=dst.sparsity(model),
        optimizer_iterations=int(model.optimizer.iterations.numpy()),
    ),
    open(out, "w"),
)
"""


@pytest.mark.slow  # a new process
def test_keras_file_restores_masks_exactly_in_a_new_process(tmp_path):
    model = rich_model()
    dst.sparsify(model, 0.7, seed=0)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(*rich_data(), batch_size=8, epochs=1, verbose=0)
    # Move one mask, so that the ITOP record differs from the mask.
    masks = dst.get_masks(model)
    new = masks["conv/kernel"].copy()
    new.ravel()[np.flatnonzero(new)[0]] = False
    new.ravel()[np.flatnonzero(~new)[0]] = True
    dst.set_masks(model, {"conv/kernel": new})
    masks = dst.get_masks(model)
    records = [t.constraint.ever_active for t in dst._model.masked_targets(model)]
    assert len(masks) == 22
    assert not np.array_equal(records[0], masks["conv/kernel"])

    x, _ = rich_data(seed=1)
    ref = {f"mask{i}": m for i, m in enumerate(masks.values())}
    ref.update({f"ever{i}": r for i, r in enumerate(records)})
    ref["pred"] = model.predict(x, verbose=0)
    np.savez(tmp_path / "ref.npz", **ref)
    model.save(tmp_path / "m.keras")

    run_python(LOAD_AND_CHECK, str(tmp_path / "m.keras"), str(tmp_path / "ref.npz"),
               str(tmp_path / "out.json"))
    got = json.loads((tmp_path / "out.json").read_text())
    # Paths lose the outer model name of nested/top-level Functional models,
    # so masks are compared in order.
    assert len(got["paths"]) == len(masks)
    assert got["masks_equal"] == [True] * len(masks)
    assert got["records_equal"] == [True] * len(masks)
    assert got["mask_dtypes"] == ["bool"]
    assert got["pred_equal"] is True
    assert got["inner"] == "NonNeg"
    assert got["optimizer_iterations"] == 4  # 2 steps before saving, 2 after
    assert got["masked_nonzero"] == 0  # training continued sparse
    assert got["sparsity"] == pytest.approx(dst.sparsity(model))


def test_mask_is_stored_packed(tmp_path):
    model = keras.Sequential([keras.Input((64,)), layers.Dense(64, name="d")], name="m")
    dst.sparsify(model, 0.5, seed=0)
    model.save_weights(tmp_path / "m.weights.h5")
    import h5py

    found = {}

    def collect(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj[()]

    with h5py.File(tmp_path / "m.weights.h5") as f:
        f.visititems(collect)
    assert sorted(found) == [
        "layers/dense/kernel_constraint/vars/ever_active",
        "layers/dense/kernel_constraint/vars/mask",
        "layers/dense/kernel_constraint/vars/shape",
        "layers/dense/vars/0",
        "layers/dense/vars/1",
    ]
    found = {name.split("/")[-1]: value for name, value in found.items()}
    assert found["mask"].dtype == np.uint8 and found["mask"].shape == (512,)  # 4096 bits
    assert found["ever_active"].shape == (512,)
    np.testing.assert_array_equal(found["shape"], [64, 64])
    np.testing.assert_array_equal(
        np.unpackbits(found["mask"]).reshape(64, 64).astype(bool),
        dst.get_masks(model)["m/d/kernel"],
    )


def mha_model(name):
    x = keras.Input((5, 6))
    y = layers.MultiHeadAttention(2, 4, name="att")(x, x)
    return keras.Model(x, layers.Dense(2, name="head")(layers.Flatten()(y)), name=name)


def test_save_weights_round_trip_into_a_model_with_other_masks(tmp_path):
    model = mha_model("a")
    dst.sparsify(model, 0.6, seed=0)
    dst.set_masks(model, {"head/kernel": np.eye(30, 2, dtype=bool)})
    masks = dst.get_masks(model)
    records = [t.constraint.ever_active for t in dst._model.masked_targets(model)]
    model.save_weights(tmp_path / "a.weights.h5")

    other = mha_model("b")
    dst.sparsify(other, 0.6, seed=123)
    assert not all(np.array_equal(a, b) for a, b in zip(
        masks.values(), dst.get_masks(other).values()))
    other.load_weights(tmp_path / "a.weights.h5")
    got = dst.get_masks(other)
    assert list(got) == list(masks)  # same paths: both are Functional
    for path in masks:
        np.testing.assert_array_equal(got[path], masks[path])
    got_records = [t.constraint.ever_active for t in dst._model.masked_targets(other)]
    for a, b in zip(records, got_records):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other.compile(keras.optimizers.SGD(0.1), "mse")
    other.fit(np.ones((8, 5, 6), "float32"), np.ones((8, 2), "float32"), verbose=0)
    values = {w.path: w.numpy() for w in other.weights}
    assert all(np.all(values[p][~m] == 0) for p, m in masks.items())


@pytest.mark.slow  # a new process
def test_load_model_restores_mha_masks_in_a_new_process(tmp_path):
    # MultiHeadAttention hands one constraint to its four projections and
    # rebuilds them from its own config: a dst.MaskGroup carries all four.
    model = mha_model("m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot restore" warning
        dst.sparsify(model, 0.6, seed=0)
    masks = dst.get_masks(model)
    assert len(masks) == 5
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(np.ones((8, 5, 6), "float32"), np.ones((8, 2), "float32"), verbose=0)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "masks.npz", **{p.replace("/", "|"): m for p, m in masks.items()})
    code = f"""
import numpy as np, keras, dst
loaded = keras.models.load_model({str(tmp_path / "m.keras")!r})
ref = {{p.replace("|", "/"): m for p, m in np.load({str(tmp_path / "masks.npz")!r}).items()}}
got = dst.get_masks(loaded)
assert sorted(got) == sorted(ref), (sorted(got), sorted(ref))
for p in ref:
    assert np.array_equal(got[p], ref[p]), p
loaded.fit(np.ones((8, 5, 6), "float32"), np.ones((8, 2), "float32"), verbose=0)
values = {{w.path: w.numpy() for w in loaded.weights}}
assert all(np.all(values[p][~m] == 0) for p, m in ref.items())
stripped = dst.strip(loaded)
assert "MaskGroup" not in str(stripped.get_config())
print("ok")
"""
    assert run_python(code).strip().endswith("ok")


def nested_model():
    inner = keras.Sequential([keras.Input((6,)), layers.Dense(5, name="d1")], name="inner")
    x = keras.Input((6,), name="x")
    return keras.Model(x, layers.Dense(3, name="out")(inner(x)), name="outer")


def test_set_masks_takes_masks_saved_before_load_model_matching_by_order(tmp_path):
    model = dst.sparsify(nested_model(), 0.5, "uniform", seed=0)
    model.save(tmp_path / "m.keras")
    saved = {k: ~m for k, m in dst.get_masks(model).items()}  # other masks, same counts
    assert list(saved) == ["inner/d1/kernel", "out/kernel"]
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert list(dst.get_masks(loaded)) == ["d1/kernel", "out/kernel"]  # the paths changed

    with pytest.warns(UserWarning, match=r"dst\.set_masks: 1 of 2 mask keys are not weight paths "
                                         r"of model 'outer' \(e\.g\. 'inner/d1/kernel'\).*"
                                         r"matched by weight order: 'inner/d1/kernel' -> "
                                         r"'d1/kernel'\.$"):
        dst.set_masks(loaded, saved)
    got = dst.get_masks(loaded)
    assert list(got) == ["d1/kernel", "out/kernel"]
    for want, have in zip(saved.values(), got.values()):
        np.testing.assert_array_equal(have, want)
    assert np.count_nonzero(loaded.get_layer("inner").get_layer("d1").kernel.numpy()[~got[
        "d1/kernel"]]) == 0

    with warnings.catch_warnings():  # the loaded model's own keys: matched by path, silently
        warnings.simplefilter("error")
        dst.set_masks(loaded, dst.get_masks(loaded))


def test_set_masks_that_match_neither_by_path_nor_by_order_is_an_error(tmp_path):
    model = dst.sparsify(nested_model(), 0.5, "uniform", seed=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    before = dst.get_masks(loaded)
    masks = dst.get_masks(model)
    with pytest.raises(ValueError, match=r"no sparsifiable weight 'inner/d1/kernel' in model "
                                         r"'outer', and the masks cannot be matched by weight "
                                         r"order either: their shapes \[\(6, 5\)\] are not "
                                         r"those of the model's masked weights \[\(6, 5\), "
                                         r"\(5, 3\)\]"):
        dst.set_masks(loaded, {"inner/d1/kernel": masks["inner/d1/kernel"]})
    swapped = {"out/kernel": masks["inner/d1/kernel"], "inner/d1/kernel": masks["out/kernel"]}
    with pytest.raises(ValueError, match=r"no sparsifiable weight 'inner/d1/kernel' in model "
                                         r"'outer', and matching the masks by weight order "
                                         r"would give the mask keyed 'out/kernel', a weight of "
                                         r"the model, to 'd1/kernel'\."):
        dst.set_masks(loaded, swapped)  # order matters: 'out/kernel' would move
    after = dst.get_masks(loaded)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_load_model_restores_group_query_attention_masks(tmp_path):
    # GroupQueryAttention, like MultiHeadAttention, hands its kernel_constraint
    # to its four projections and rebuilds them from its own config.
    x = keras.Input((5, 8))
    y = layers.GroupQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=2,
                                   name="gqa")(x, x)
    model = keras.Model(x, layers.Dense(2, name="head")(layers.Flatten()(y)), name="g")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot restore" warning
        dst.sparsify(model, 0.6, seed=0)
    masks = dst.get_masks(model)
    assert len(masks) == 5
    model.save(tmp_path / "g.keras")
    loaded = keras.models.load_model(tmp_path / "g.keras")
    got = dst.get_masks(loaded)
    assert len(got) == 5
    for (p, m), (q, n) in zip(sorted(masks.items()), sorted(got.items())):
        np.testing.assert_array_equal(m, n, err_msg=f"{p} vs {q}")


# -- a .keras file saved on one backend, trained on another ------------------------

_SAVE_ON = """
import sys, json, numpy as np, keras, dst
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(3)])
dst.sparsify(model, 0.8, seed=0)
model.compile("adam", "mse")
x = np.random.default_rng(0).normal(size=(32, 12)).astype("float32")
model.fit(x, x[:, :3], batch_size=8, verbose=0,
          callbacks=[dst.callbacks.RigL(update_freq=2, seed=0)])
model.save(sys.argv[1])
np.savez(sys.argv[2], *dst.get_masks(model).values())  # in layer order
"""

_CONTINUE_ON = """
import re, sys, numpy as np, keras, dst
model = keras.models.load_model(sys.argv[1])
with np.load(sys.argv[2]) as file:
    saved = [file[f"arr_{i}"] for i in range(len(file.files))]
def same_masks():
    masks = list(dst.get_masks(model).values())
    return len(masks) == len(saved) and all(map(np.array_equal, masks, saved))
x = np.random.default_rng(1).normal(size=(32, 12)).astype("float32")
def fit(callback):
    model.fit(x, x[:, :3], batch_size=8, verbose=0, callbacks=[callback])
try:
    fit(dst.callbacks.FixedMasks())
except ValueError as err:
    print("REFUSED:", err)
else:
    print("REFUSED: nothing")
assert same_masks(), "a refusal changed the masks"
exec(sys.argv[3])  # the fix
step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
fit(dst.callbacks.FixedMasks())
assert same_masks(), "the fix lost the masks"
masks = dst.get_masks(model)
for t in model.trainable_weights:
    if t.path in masks:
        assert not np.any(keras.ops.convert_to_numpy(t)[masks[t.path] == 0])
print("STEPS:", step, int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
"""


def _on(backend, code, *args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _guide_fix() -> str:
    """`compile_here` as the backends guide defines it, applied to the loaded model."""
    page = (Path(__file__).parents[1] / "docs" / "guides" / "backends.md").read_text()
    block = next(b for b in re.findall(r"^```python\n(.*?)^```$", page, re.S | re.M)
                 if "def compile_here" in b)
    definition = block[block.index("def compile_here"):block.index("\n\n\nmodel =")]
    return definition + "\ncompile_here(model, loss='mse')\n"


@pytest.mark.slow  # a process per backend
@pytest.mark.tensorflow_only  # runs the other backends itself
@pytest.mark.parametrize("target", ["jax", "tensorflow"])
def test_a_model_saved_on_pytorch_continues_elsewhere_as_the_guide_says(tmp_path, target):
    file, masks = str(tmp_path / "torch.keras"), str(tmp_path / "masks.npz")
    _on("torch", _SAVE_ON, file, masks)
    out = _on(target, _CONTINUE_ON, file, masks, _guide_fix())
    assert re.search(r"REFUSED: FixedMasks: optimizer 'adam' of model '\w+' is the torch "
                     rf"backend's Adam, which cannot step weights on {target}\. .*Compile the "
                     r"model again on this backend .*the model is unchanged\.", out), out
    assert "STEPS: 4 8" in out, out  # the optimizer's step carried over, then 4 more


@pytest.mark.slow  # a process per backend
@pytest.mark.tensorflow_only  # runs the other backends itself
def test_a_model_saved_on_jax_continues_on_pytorch_with_the_one_line_fix(tmp_path):
    file, masks = str(tmp_path / "jax.keras"), str(tmp_path / "masks.npz")
    _on("jax", _SAVE_ON, file, masks)
    out = _on("torch", _CONTINUE_ON, file, masks, "model.jit_compile = False")
    assert re.search(r"REFUSED: Model '\w+' has jit_compile=True, .*A model loaded from a "
                     r"\.keras file keeps the setting it was saved with \(on JAX, "
                     r"jit_compile='auto' is saved as True\)\. Set `\w+\.jit_compile = False`",
                     out), out
    assert "STEPS: 4 8" in out, out
