"""Keras' `model.quantize` on sparse models: zeros stay zeros, masks keep meaning.

"int8" replaces each kernel by a frozen int8 variable and a scale; dst puts the
mask back on it. "float8" keeps the float kernel and its mask constraint.
"int4" packs two entries per byte: dst refuses to follow the mask there.
"""

import warnings

import keras
import numpy as np
import pytest

import dst


def sparse_model(seed=0, bias=False):
    """Dense and EinsumDense, without biases by default: calling a layer on the
    identity then returns its dequantized kernel."""
    x = keras.Input((8,))
    y = keras.layers.Dense(16, use_bias=bias, name="fc")(x)
    y = keras.layers.EinsumDense("ab,bc->ac", output_shape=6, name="ed",
                                 bias_axes="c" if bias else None)(y)
    return dst.sparsify(keras.Model(x, y, name="m"), 0.75, "uniform", seed=seed)


def quantize(model, mode, config=None):
    with warnings.catch_warnings():  # "InputLayer does not have a `quantize` method"
        warnings.simplefilter("ignore", UserWarning)
        model.quantize(mode, config=config)
    return model


def dequantized(model, name):
    """The kernel of layer `name` as its forward pass uses it (identity rows in:
    absmax input quantization of a one-hot row is exact)."""
    layer = model.get_layer(name)
    n = int(layer.input.shape[-1])
    return keras.ops.convert_to_numpy(layer(np.eye(n, dtype="float32")))


def data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8)).astype("float32"), rng.normal(size=(n, 6)).astype("float32")


def assert_zeros_kept(model, masks):
    for name in ("fc", "ed"):
        kernel, mask = dequantized(model, name), masks[f"{name}/kernel"]
        assert np.all(kernel[~mask] == 0.0), name
        assert np.count_nonzero(kernel[mask]) >= 0.9 * mask.sum(), name


def test_int8_keeps_masks_and_exact_zeros():
    model = sparse_model()
    masks = dst.get_masks(model)
    quantize(model, "int8")
    assert {v.path: v.dtype for v in model.weights if v.name == "kernel"} == {
        "fc/kernel": "int8", "ed/kernel": "int8"}
    got = dst.get_masks(model)
    assert got.keys() == masks.keys()
    for path in masks:
        np.testing.assert_array_equal(got[path], masks[path])
    assert dst.sparsity(model) == 0.75
    assert [r["active"] for r in dst.summary(model, print_fn=lambda *a: None)] == [32, 24, 56]
    assert_zeros_kept(model, masks)


def test_int8_after_dst_training_keeps_the_trained_masks():
    model = sparse_model()
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x, y = data()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[dst.callbacks.SET(update_freq=2, seed=0)])
    masks = dst.get_masks(model)
    quantize(model, "int8")
    assert all(np.array_equal(dst.get_masks(model)[p], masks[p]) for p in masks)
    assert_zeros_kept(model, masks)


def test_int8_save_load_clone_and_strip(tmp_path):
    model = quantize(sparse_model(), "int8")
    masks = dst.get_masks(model)
    x, _ = data(4)
    want = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    clone = keras.models.clone_model(model)
    for other in (loaded, clone):
        assert all(np.array_equal(dst.get_masks(other)[p], masks[p]) for p in masks)
        assert dst.sparsity(other) == 0.75
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), want)
    plain = dst.strip(model)
    assert dst.get_masks(plain) == {}
    assert plain.get_layer("fc").quantization_mode == "int8"
    np.testing.assert_array_equal(plain.predict(x, verbose=0), want)
    assert_zeros_kept(plain, masks)
    assert dst.get_masks(model).keys() == masks.keys()  # the model itself stays sparse


def test_int8_fine_tuning_without_dst_keeps_the_frozen_kernel():
    model = quantize(sparse_model(bias=True), "int8")
    before = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(*data(), batch_size=4, epochs=1, verbose=0)
    for v in model.weights:
        same = np.array_equal(keras.ops.convert_to_numpy(v), before[v.path])
        assert same == (v.name != "bias"), v.path  # only the biases train
    assert dst.sparsity(model) == 0.75


@pytest.mark.parametrize("callback", [dst.callbacks.FixedMasks, dst.callbacks.SET])
def test_int8_refuses_dst_callbacks(callback):
    model = quantize(sparse_model(), "int8")
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match=r"weights \['fc/kernel', 'ed/kernel'\] of model "
                       r"'m' are int8 kernels of model.quantize\('int8'\), frozen"):
        model.fit(*data(), epochs=1, verbose=0, callbacks=[callback()])


def test_float8_training_keeps_masked_entries_zero(tmp_path):
    model = quantize(sparse_model(), "float8")
    # Keras' torch trainer refuses steps_per_execution > 1.
    spe = 1 if keras.backend.backend() == "torch" else 2
    model.compile(keras.optimizers.Adam(0.01), "mse", steps_per_execution=spe)
    x, y = data()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[dst.callbacks.SET(update_freq=2, seed=0)])
    masks = dst.get_masks(model)
    assert dst.sparsity(model) == 0.75
    for v in model.weights:
        if v.name == "kernel":
            assert np.all(keras.ops.convert_to_numpy(v)[~masks[v.path]] == 0.0), v.path
    assert_zeros_kept(model, masks)
    want = model.predict(x[:4], verbose=0)
    np.testing.assert_array_equal(dst.strip(model).predict(x[:4], verbose=0), want)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert all(np.array_equal(dst.get_masks(loaded)[p], masks[p]) for p in masks)


def test_int4_on_a_masked_model_is_refused_by_name():
    model = quantize(sparse_model(), "int4")
    for reader in (dst.get_masks, dst.sparsity, dst.strip):
        with pytest.raises(ValueError, match=r"Dense 'fc' was quantized with "
                           r"model.quantize\('int4'\) after its weight 'fc/kernel' was "
                           r"masked. .* dst.strip\(model\) before model.quantize"):
            reader(model)


@pytest.mark.parametrize("block_size", [None, 4])
def test_int4_of_a_stripped_model_keeps_zeros(block_size):
    from keras.quantizers import Int4QuantizationConfig

    model = sparse_model()
    masks = dst.get_masks(model)
    plain = quantize(dst.strip(model), "int4", Int4QuantizationConfig(block_size=block_size))
    assert_zeros_kept(plain, masks)


@pytest.mark.parametrize("mode", ["int8", "float8"])
def test_export_refuses_keras_quantized_layers(mode):
    model = quantize(sparse_model(), mode)
    with pytest.raises(ValueError, match=r"dst.export cannot convert layers quantized by "
                       rf"Keras' model.quantize: \{{'fc': '{mode}', 'ed': '{mode}'\}} of "
                       r"model 'm' .* dst.export.convert\(model, quantize='int8'"):
        dst.export.convert(model, format="npz")


def test_int8_embedding_under_mixed_bfloat16_keeps_masks_and_zeros():
    x = keras.Input((5,), dtype="int32")
    y = keras.layers.Embedding(20, 8, name="emb", dtype="mixed_bfloat16")(x)
    y = keras.layers.Dense(4, name="fc", dtype="mixed_bfloat16")(y)
    model = dst.sparsify(keras.Model(x, y), 0.75, "uniform", seed=0)
    masks = dst.get_masks(model)
    quantize(model, "int8")
    assert model.get_layer("emb").embeddings.dtype == "int8"
    assert all(np.array_equal(dst.get_masks(model)[p], masks[p]) for p in masks)
    rows = model.get_layer("emb")(np.arange(20)[None])[0]
    rows = keras.ops.convert_to_numpy(keras.ops.cast(rows, "float32"))
    assert np.all(rows[~masks["emb/embeddings"]] == 0.0)
    assert np.count_nonzero(rows[masks["emb/embeddings"]]) >= 0.9 * masks["emb/embeddings"].sum()
