"""dst.export: TFLite conversion with sparsity, and its runner."""

import builtins
import functools
import warnings

import keras
import numpy as np
import pytest

import dst

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
if keras.backend.backend() != "tensorflow":
    pytest.skip("dst.export converts through TensorFlow", allow_module_level=True)

from conftest import assert_unchanged, state  # noqa: E402

pytestmark = pytest.mark.tensorflow_only  # TFLite conversion goes through TensorFlow


@functools.cache
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype("float32"), y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@functools.cache
def trained_digits_mlp():
    """A 64-64-32-10 MLP, 80% sparse, trained 15 epochs with RigL."""
    x, y, _, _ = digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    dst.sparsify(model, 0.8, "uniform", seed=0)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=15, batch_size=64, verbose=0,
              callbacks=[dst.callbacks.RigL(update_freq=20, seed=0)])
    return model


def small_cnn():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Conv2D(8, 1, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(5)(h))
    # Non-trivial BatchNorm statistics, as after training.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            rng = np.random.default_rng(n)
            layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, size=n).astype("float32"))
    return dst.sparsify(model, 0.7, "erk", seed=1)


def relative_error(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_float32_export_matches_predict_on_digits_mlp(tmp_path):
    model = trained_digits_mlp()
    _, _, x, _ = digits()
    path = dst.export.save(model, tmp_path / "digits.tflite")
    runner = dst.export.load(path)
    assert relative_error(runner(x), model.predict(x, verbose=0)) < 1e-5
    assert relative_error(runner(x[:1]), model.predict(x[:1], verbose=0)) < 1e-5


@pytest.mark.slow  # a conv model converted
def test_float32_export_matches_predict_on_cnn():
    model = small_cnn()
    x = np.random.default_rng(0).normal(size=(16, 12, 12, 3)).astype("float32")
    runner = dst.export.load(dst.export.convert(model))
    assert relative_error(runner(x), model.predict(x, verbose=0)) < 1e-5


def test_stripped_model_exports_to_the_same_outputs():
    model = trained_digits_mlp()
    _, _, x, _ = digits()
    runner = dst.export.load(dst.export.convert(dst.strip(model)))
    assert relative_error(runner(x), model.predict(x, verbose=0)) < 1e-5


def test_sparse_file_is_smaller_than_dense():
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((256,)), keras.layers.Dense(256)])
    sparse = keras.models.clone_model(dense)
    dst.sparsify(sparse, 0.95, "uniform", seed=0)
    ratio = len(dst.export.convert(dense)) / len(dst.export.convert(sparse))
    assert ratio > 5, ratio


@pytest.mark.slow  # trains, then calibrates int8
def test_int8_accuracy_within_one_point_on_digits():
    model = trained_digits_mlp()
    x_train, _, x, y = digits()
    float_acc = np.mean(model.predict(x, verbose=0).argmax(-1) == y)
    assert float_acc > 0.9
    for data in (x_train[:256], tf.data.Dataset.from_tensor_slices(x_train[:256]).batch(32),
                 (x_train[i:i + 32] for i in range(0, 256, 32))):
        content = dst.export.convert(model, quantize="int8", representative_data=data)
        # XNNPACK refuses int8 weights stored sparse: the runner falls back, and says so.
        with pytest.warns(UserWarning, match="XNNPACK.*could not run"):
            runner = dst.export.load(content)
        assert runner.delegate == "none"
        int8_acc = np.mean(runner(x).argmax(-1) == y)
        assert abs(int8_acc - float_acc) <= 0.01, (int8_acc, float_acc)


@pytest.mark.parametrize("quantize", ["float16", "dynamic"])
def test_weight_quantized_exports_run_close_to_float(quantize):
    model = trained_digits_mlp()
    _, _, x, _ = digits()
    content = dst.export.convert(model, quantize=quantize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dynamic" runs without XNNPACK
        runner = dst.export.load(content)
    assert relative_error(runner(x), model.predict(x, verbose=0)) < 0.05


def test_export_leaves_model_unchanged_and_exports_masked_zeros():
    model = small_cnn()
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 3)).astype("float32")
    # Dense values written past the masks (set_weights): exported as zeros.
    kernel = model.layers[1].kernel
    kernel.assign(np.ones(kernel.shape, "float32"))
    before = state(model)
    runner = dst.export.load(dst.export.convert(model))
    assert_unchanged(model, before)
    model.layers[1].kernel.assign(np.where(dst.get_masks(model)[kernel.path], 1.0, 0.0))
    want = model.predict(x, verbose=0)
    assert relative_error(runner(x), want) < 1e-5


def test_wrong_quantize_is_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"`quantize` must be one of .*quantize='int4'"):
        dst.export.convert(model, quantize="int4")


def test_int8_without_representative_data_is_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="quantize='int8' needs `representative_data`"):
        dst.export.convert(model, quantize="int8")
    with pytest.raises(ValueError, match="holds no batch"):
        dst.export.convert(model, quantize="int8", representative_data=np.zeros((0, 4)))


def test_unconvertible_op_is_named():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3)(inputs)
    model = keras.Model(inputs, keras.ops.erfinv(keras.ops.tanh(h) * 0.5))
    with pytest.raises(ValueError, match=r"no built-in kernel for the TensorFlow ops \['Erfinv'\]") as info:
        dst.export.convert(model)
    assert info.value.__cause__ is not None  # TFLite's converter error, chained


def test_missing_runtime_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name.startswith("ai_edge_litert"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    with pytest.raises(ImportError, match=r"ai-edge-litert.*keras-dst\[export\]"):
        dst.export.load(b"")


def test_runner_takes_any_batch_size():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    runner = dst.export.load(dst.export.convert(model))
    for n in (1, 7, 2):
        x = np.random.default_rng(n).normal(size=(n, 6))  # float64 is cast
        np.testing.assert_allclose(runner(x), model.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="takes 1 inputs; received 2"):
        runner([x, x])


def three_heads():
    """Three same-shaped heads whose names sort unlike their order, 10 apart."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    heads = [keras.layers.Dense(3, name=name, bias_initializer=keras.initializers.Constant(b))(h)
             for name, b in (("z_first", 10.0), ("a_second", 20.0), ("m_third", 30.0))]
    return keras.Model(inputs, heads)


@pytest.mark.parametrize("quantize", [None, "float16", "dynamic", "int8"])
def test_outputs_come_back_in_model_outputs_order(tmp_path, quantize):
    model = three_heads()
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    kwargs = {"representative_data": x} if quantize == "int8" else {}
    path = dst.export.save(model, tmp_path / "heads.tflite", quantize=quantize, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dynamic" and int8 may run without XNNPACK
        got = dst.export.load(path)(x)
    want = model.predict(x, verbose=0)
    # TFLite's own tensor order is [a_second, z_first, m_third]: off by 10 per head.
    assert [relative_error(g, w) for g, w in zip(got, want)] == pytest.approx([0, 0, 0], abs=0.05)


def test_inputs_are_taken_in_model_inputs_order():
    inputs = [keras.Input((4,), name=name) for name in ("z_in", "a_in", "m_in")]
    h = keras.layers.Concatenate()([inputs[0], 2.0 * inputs[1], 3.0 * inputs[2]])
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    xs = [np.random.default_rng(i).normal(size=(5, 4)).astype("float32") for i in range(3)]
    got = dst.export.load(dst.export.convert(model))(xs)
    assert relative_error(got, model.predict(xs, verbose=0)) < 1e-5


def test_int8_refuses_wrongly_shaped_representative_data():
    model = small_cnn()
    before = state(model)
    data = np.zeros((8, 12, 12, 4), "float32")
    with pytest.raises(ValueError, match=r"`representative_data` must hold batches of shape "
                       r"\(None, 12, 12, 3\) .*Received: batch 0 of shape \(8, 12, 12, 4\)"):
        dst.export.convert(model, quantize="int8", representative_data=data)
    assert_unchanged(model, before)
    a, b = keras.Input((4,)), keras.Input((4,))
    two = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match=r"calibrates models with one input; model '.*' has 2"):
        dst.export.convert(two, quantize="int8", representative_data=[[np.zeros((2, 4))] * 2])


def test_runner_refuses_a_wrongly_shaped_input_without_a_delegate_warning():
    runner = dst.export.load(dst.export.convert(small_cnn()))
    x = np.zeros((2, 12, 12, 3), "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not XNNPACK's fallback warning first
        with pytest.raises(ValueError, match=r"`x` must have shape \(None, 12, 12, 3\) "
                           r".*Received: x.shape=\(2, 12, 12, 4\)"):
            runner(np.zeros((2, 12, 12, 4)))
        with pytest.raises(ValueError, match=r"Received: x.shape=\(2, 12, 12\)"):
            runner(x[..., 0])
    assert runner.delegate == "default"
    assert runner(x).shape == (2, 5)


def rnn_classifier(unroll):
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((10,), dtype="int32"), keras.layers.Embedding(50, 8),
                             keras.layers.LSTM(6, unroll=unroll, name="encoder"),
                             keras.layers.Dense(2)])


@pytest.mark.slow  # converts an RNN twice
def test_rnn_loop_names_the_op_the_layer_and_unroll():
    with pytest.raises(ValueError, match=r"ops \['TensorListReserve'\] .*recurrent layers "
                       r"'encoder' \(LSTM\)\. Build them with `unroll=True`") as info:
        dst.export.convert(rnn_classifier(unroll=False))
    assert "SELECT_TF_OPS" in str(info.value.__cause__)  # TFLite's own error, chained
    model = rnn_classifier(unroll=True)  # the way out the message names
    x = np.random.default_rng(0).integers(0, 50, size=(4, 10))
    runner = dst.export.load(dst.export.convert(model))
    assert relative_error(runner(x), model.predict(x, verbose=0)) < 1e-5


def test_npz_csr_export_matches_predict(tmp_path):
    pytest.importorskip("scipy")
    model = trained_digits_mlp()
    _, _, x, _ = digits()
    path = dst.export.save(model, tmp_path / "digits.npz", format="npz")
    runner = dst.export.load(path)
    assert isinstance(runner, dst.export.CSRModel)
    assert relative_error(runner(x), model.predict(x, verbose=0)) < 1e-5
    masks = dst.get_masks(model)
    stored = sum(int(m.sum()) for m in masks.values())
    assert sum(layer[0].nnz for layer in runner._layers if layer) <= stored


def test_npz_refuses_what_it_cannot_run():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"supports keras.Sequential models"):
        dst.export.convert(model, format="npz")
    seq = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match=r"cannot run layer 'conv2d.*' \(Conv2D\)"):
        dst.export.convert(seq, format="npz")
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="elu")])
    with pytest.raises(ValueError, match=r"cannot run activation 'elu'"):
        dst.export.convert(seq, format="npz")
    with pytest.raises(ValueError, match="`quantize` and `representative_data` don't apply"):
        dst.export.convert(seq, format="npz", quantize="int8")
    with pytest.raises(ValueError, match=r"`format` must be one of \['tflite', 'npz'\]"):
        dst.export.convert(seq, format="onnx")


@pytest.mark.slow  # trains, then converts twice
def test_the_export_guide_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "export.md").read_text()
    block = re.search(r"## TFLite\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fit's and the XNNPACK fallback's
        exec(compile(block, "docs/guides/export.md", "exec"), scope)  # noqa: S102 - our docs
    assert scope["logits"].shape == (64, 10)
    model, x = scope["model"], scope["x"][:64]
    got = dst.export.load(tmp_path / "model.tflite")(x)
    assert relative_error(got, model.predict(x, verbose=0)) < 1e-5
