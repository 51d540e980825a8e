"""dst.summary: exact counts and FLOPs, computed by hand."""

import keras
import pytest
from keras import layers

import dst


def rows_by_path(rows):
    return {r["path"]: r for r in rows}


def quiet(model):
    return dst.summary(model, print_fn=lambda *_: None)


def test_mlp_counts_and_flops():
    model = keras.Sequential(
        [keras.Input((12,)), layers.Dense(16, name="h"), layers.Dense(3, name="out")], name="mlp")
    dst.sparsify(model, 0.75, "uniform", seed=0)
    lines = []
    rows = dst.summary(model, print_fn=lines.append)
    assert [r["path"] for r in rows] == ["mlp/h/kernel", "mlp/out/kernel", "total"]
    assert rows[0] == dict(path="mlp/h/kernel", shape=(12, 16), size=192, active=48,
                           density=0.25, dense_flops=384, sparse_flops=96)
    assert rows[1] == dict(path="mlp/out/kernel", shape=(16, 3), size=48, active=12,
                           density=0.25, dense_flops=96, sparse_flops=24)
    assert rows[2] == dict(path="total", shape=(), size=240, active=60, density=0.25,
                           dense_flops=480, sparse_flops=120)
    assert lines[0] == 'dst summary: "mlp"'
    assert any(line.startswith("mlp/h/kernel") and "384" in line for line in lines)
    assert lines[-1] == "Sparsity: 0.7500   Sparse/dense inference FLOPs: 0.2500"


def test_cnn_counts_and_flops():
    x = keras.Input((8, 8, 3))
    y = layers.Conv2D(4, 3, name="conv")(x)  # 6x6 outputs
    y = layers.DepthwiseConv2D(3, name="dw")(y)  # 4x4 outputs
    y = layers.SeparableConv2D(5, 3, padding="same", name="sep")(y)  # 4x4 outputs
    y = layers.Conv2DTranspose(2, 2, strides=2, name="convt")(y)  # 4x4 inputs
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.GlobalAveragePooling2D()(y)
    model = keras.Model(x, layers.Dense(3, name="fc")(y), name="cnn")
    dst.sparsify(model, 0.5, "uniform", seed=0)
    rows = rows_by_path(quiet(model))
    # (size, active, repeats per example); FLOPs = 2 * count * repeats.
    expected = {
        "conv/kernel": (108, 54, 36),
        "dw/kernel": (36, 18, 16),
        "sep/depthwise_kernel": (36, 18, 16),
        "sep/pointwise_kernel": (20, 10, 16),
        "convt/kernel": (40, 20, 16),
        "fc/kernel": (6, 3, 1),
    }
    assert list(rows) == [*expected, "total"]
    for path, (size, active, reps) in expected.items():
        r = rows[path]
        assert (r["size"], r["active"]) == (size, active), path
        assert (r["dense_flops"], r["sparse_flops"]) == (2 * size * reps, 2 * active * reps), path
    total = rows["total"]
    assert (total["size"], total["active"]) == (246, 123)
    assert (total["dense_flops"], total["sparse_flops"]) == (12012, 6006)
    assert total["density"] == 0.5


def test_sequence_model_flops_count_every_position_and_time_step():
    x = keras.Input((5,), dtype="int32")
    y = layers.Embedding(20, 4, name="emb")(x)
    y = layers.Dense(4, name="d")(y)  # applied at 5 positions
    y = layers.LSTM(3, name="lstm")(y)  # 5 time steps
    model = keras.Model(x, layers.Dense(2, name="fc")(y), name="seq")
    rows = rows_by_path(quiet(model))  # dense model: everything active
    assert {p: (r["size"], r["active"], r["dense_flops"]) for p, r in rows.items()} == {
        "emb/embeddings": (80, 80, 0),  # a lookup has no multiply-adds
        "d/kernel": (16, 16, 160),
        "lstm/lstm_cell/kernel": (48, 48, 480),
        "lstm/lstm_cell/recurrent_kernel": (36, 36, 360),
        "fc/kernel": (6, 6, 12),
        "total": (186, 186, 1012),
    }
    assert rows["total"]["sparse_flops"] == 1012
    assert rows["total"]["density"] == 1.0


def test_channels_first_conv_counts_spatial_positions():
    x = keras.Input((3, 6, 6))
    model = keras.Model(x, layers.Conv2D(2, 3, data_format="channels_first", name="c")(x))
    row = quiet(model)[0]
    assert (row["size"], row["dense_flops"]) == (54, 2 * 54 * 16)


def test_summary_refuses_an_unbuilt_model():
    with pytest.raises(ValueError, match=r"dst.summary needs a built model"):
        dst.summary(keras.Sequential([layers.Dense(2)], name="lazy"))


def test_attention_projections_are_counted_per_position():
    q, v = keras.Input((5, 8)), keras.Input((7, 8))
    y = keras.layers.MultiHeadAttention(2, 4, name="att")(q, v)
    model = keras.Model([q, v], y, name="m")
    rows = {r["path"]: r for r in dst.summary(model, print_fn=lambda *_: None)}
    # query/key/value kernels (8, 2, 4) and output kernel (2, 4, 8): 64 weights
    # each; query and output run at the 5 query positions, key and value at 7.
    positions = {"query": 5, "attention_output": 5, "key": 7, "value": 7}
    for name, n in positions.items():
        assert rows[f"att/{name}/kernel"]["dense_flops"] == 2 * 64 * n, name
