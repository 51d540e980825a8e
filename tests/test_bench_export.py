"""experiments.bench_export --small: dst and TF-MOT rows, sizes and ratios."""

import re

import pytest

pytestmark = [pytest.mark.tensorflow_only,  # TFLite conversion goes through TensorFlow
              pytest.mark.slow]  # an end-to-end benchmark run

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow_model_optimization")
data_lib = pytest.importorskip("experiments.data")


def test_small_benchmark_prints_dst_and_tfmot_rows(tmp_path):
    try:
        data_lib.load("fashion_mnist", max_train_samples=1, max_test_samples=1)
    except data_lib.DatasetUnavailableError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from experiments import bench_export

    out = tmp_path / "bench.md"
    text = bench_export.main(["--small", "--models", "mlp", "--masks", "blocks 16x1",
                              "--calls", "5", "--out", str(out)])
    assert out.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0:3] for r in rows] == [
        ["| dense", "-", "0"], ["| dst rigl", "blocks 16x1", "0.9"],
        ["| TF-MOT", "blocks 16x1", "0.9"]]
    # Size ratio to dense float32: 1.0 for dense, > 4 for 90% sparse files.
    ratios = [float(re.search(r"\| ([\d.]+)× \(gz", r).group(1)) for r in rows]
    assert ratios[0] == 1.0 and min(ratios[1:]) > 4, ratios


def test_tfmot_api_table_counts_the_ops_of_each_flatten():
    from experiments import bench_export

    text = bench_export.main(["--tfmot-api", "--small", "--calls", "2", "--repeats", "1"])
    rows = {r.split(" | ")[0][2:]: r.split(" | ") for r in text.splitlines()
            if r.startswith("| ") and not r.startswith("| file")}
    ops = {name: int(cells[2].split(":")[0]) for name, cells in rows.items()}
    assert ops["tf_keras Flatten only"] == 1 and ops["Keras 3 Flatten only"] == 4
    for block in ("(1, 1)", "(1, 16)", "(16, 1)"):
        # Keras 3's Flatten: SHAPE, STRIDED_SLICE, PACK, RESHAPE where tf_keras writes a RESHAPE.
        assert ops[f"dst.tfmot {block}"] == ops[f"TF-MOT {block}"] + 3
        assert ops[f"dst.tfmot {block}, reshape(-1, n)"] == ops[f"TF-MOT {block}"]
    assert "DENSIFY" not in rows["TF-MOT (16, 1)"][2]  # XNNPACK's sparse kernel
    assert "DENSIFY 2" in rows["TF-MOT (1, 16)"][2]
