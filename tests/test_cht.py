"""CHT: the Cannistraci-Hebb link scores, and the updater through the kit."""

import itertools

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dst
from dst import _select
from dst._model import dynamic_targets
from dst.testing import check_updater
from dst.updaters.cht import CHT, chain_pairs, fraction_bits, link_scores, sampling_keys

# A 4 × 4 bipartite graph, inputs i0..i3 (rows), outputs j0..j3 (columns).
GRAPH = np.array([[1, 1, 0, 0],
                  [0, 1, 1, 0],
                  [0, 1, 0, 1],
                  [0, 0, 0, 1]], dtype=bool)


def test_ch3_l3n_scores_of_a_crafted_graph_by_hand():
    # (i0, j2): paths i0-j1-i1-j2. Local community {j1, i1}.
    #   i1: deg 2, N(i1) ∩ N(i0) = {j1}: d_i 1, d_e = 2 - 1 - 1 = 0 -> 1/1
    #   j1: deg 3 (i0, i1, i2), N(j1) ∩ N(j2) = {i1}: d_e = 3 - 1 - 1 = 1 -> 1/2
    # (i0, j3): paths i0-j1-i2-j3. Community {j1, i2}.
    #   i2: deg 2, N(i2) ∩ N(i0) = {j1}: d_e 0 -> 1; j1: N(j1) ∩ N(j3) = {i2}: d_e 1 -> 1/2
    # (i3, j1): paths i3-j3-i2-j1. Community {j3, i2}.
    #   i2: N(i2) ∩ N(i3) = {j3}: d_e = 2 - 1 - 1 = 0 -> 1
    #   j3: deg 2 (i2, i3), N(j3) ∩ N(j1) = {i2}: d_e 0 -> 1
    # (i1, j3): paths i1-j1-i2-j3. i2: N(i2) ∩ N(i1) = {j1}: d_e 0 -> 1;
    #   j1: N(j1) ∩ N(j3) = {i2}: d_e 1 -> 1/2
    # (i1, j0), (i2, j0): paths i-j1-i0-j0. i0: d_e = 2 - 1 - 1 = 0 -> 1;
    #   j1: N(j1) ∩ N(j0) = {i0}: d_e 1 -> 1/2
    # (i2, j2): path i2-j1-i1-j2. i1: d_e 0 -> 1; j1: d_e 1 (i0) -> 1/2
    # (i3, j0), (i3, j2): no path of length three -> 0
    want = {(0, 2): 1.5, (0, 3): 1.5, (3, 1): 2.0, (1, 3): 1.5, (1, 0): 1.5, (2, 0): 1.5,
            (2, 2): 1.5, (3, 0): 0.0, (3, 2): 0.0}
    scores = link_scores(GRAPH)
    assert {ij: float(scores[ij]) for ij in want} == want


def test_ch2_l3n_weighs_each_term_by_one_plus_the_internal_degree():
    # i0 shares two outputs with i1: its term for (i1, j2) is (1 + 2) / (1 + 0).
    a = np.array([[1, 1, 1],
                  [1, 1, 0]], dtype=bool)
    # (i1, j2): paths i1-j0-i0-j2 and i1-j1-i0-j2. Community {j0, j1, i0}.
    #   i0: d_i = 2, d_e = 3 - 2 - 1 = 0   -> CH2 3/1, CH3 1
    #   j0: N(j0) = {i0, i1}, ∩ N(j2) = {i0}: d_i 1, d_e = 2 - 1 - 1 = 0 -> CH2 2, CH3 1
    #   j1: the same -> CH2 2, CH3 1
    assert float(link_scores(a, "ch2_l3n")[1, 2]) == 7.0
    assert float(link_scores(a, "ch3_l3n")[1, 2]) == 3.0


def test_scores_agree_on_the_host_and_in_keras_ops():
    rng = np.random.default_rng(0)
    a = rng.random((37, 23)) < 0.15
    for score in ("ch3_l3n", "ch2_l3n"):
        host = link_scores(a, score)
        graph = keras.ops.convert_to_numpy(
            link_scores(keras.ops.convert_to_tensor(a), score))
        assert host.dtype == np.float32
        np.testing.assert_array_equal(host, graph)


def brute_force(a: np.ndarray, i: int, j: int, score: str) -> float:
    """The node-based CH-L3 score of the missing link (i, j), from its paths."""
    rows, cols = a.shape
    paths = [(jj, ii) for jj in range(cols) for ii in range(rows)
             if a[i, jj] and a[ii, jj] and a[ii, j] and ii != i and jj != j]
    inputs = {ii for _, ii in paths}
    outputs = {jj for jj, _ in paths}
    total = 0.0
    for ii in inputs:
        internal = int(sum(a[ii, jj] for jj in outputs))
        external = int(a[ii].sum()) - internal - 1          # less the link to j
        total += (1 + internal if score == "ch2_l3n" else 1) / (1 + external)
    for jj in outputs:
        internal = int(sum(a[ii, jj] for ii in inputs))
        external = int(a[:, jj].sum()) - internal - 1        # less the link to i
        total += (1 + internal if score == "ch2_l3n" else 1) / (1 + external)
    return total


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 7), cols=st.integers(1, 7), density=st.floats(0.1, 0.8),
       seed=st.integers(0, 2**16), score=st.sampled_from(["ch3_l3n", "ch2_l3n"]))
def test_matrix_form_equals_the_scores_from_explicit_paths(rows, cols, density, seed, score):
    a = np.random.default_rng(seed).random((rows, cols)) < density
    scores = link_scores(a, score)
    step = 2.0 ** -fraction_bits(rows, cols)
    for i, j in itertools.product(range(rows), range(cols)):
        if not a[i, j]:
            want = brute_force(a, i, j, score)
            # each term is rounded to a multiple of 2^-b (half a unit each at most)
            assert abs(float(scores[i, j]) - want) <= (rows + cols) * step / 2, (i, j)


def test_fraction_bits_keep_every_sum_below_2_to_the_24():
    assert fraction_bits(12, 16) == 19
    assert fraction_bits(784, 300) == 13
    assert fraction_bits(1, 1) == 22
    for n_in, n_out in [(784, 1000), (4096, 4096), (3, 5)]:
        assert (n_in + n_out) * 2 ** fraction_bits(n_in, n_out) <= 2**24


def test_cht_grows_the_highest_scored_links():
    # One drop (the weakest link), then the best-predicted link grows.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, use_bias=False)])
    kernel = model.layers[0].kernel
    dst.sparsify(model, 0.5, "uniform", seed=0)
    mask = np.array(GRAPH)
    mask[2, 2] = mask[3, 0] = True  # GRAPH's 7 links and two weak ones: 9
    dst.set_masks(model, {kernel.path: mask})
    weights = np.where(mask, 1.0, 0.0).astype("float32")
    weights[2, 2], weights[3, 0] = 0.01, 0.02  # k = floor(0.25 · 9) = 2 drop
    kernel.assign(weights)
    model.compile("sgd", "mse")
    up = CHT(update_freq=1, drop_fraction=0.25, end_step=5, seed=0)
    up.bind(model)
    up.update(0)
    new = dst.get_masks(model)[kernel.path]
    # After the drop the graph is GRAPH: (i3, j1) scores 2.0, then six links
    # tie at 1.5 (the dropped (i2, j2) among them); one of those grows.
    grown = new & ~GRAPH
    assert grown.sum() == 2 and grown[3, 1]
    scores = link_scores(GRAPH)
    other = [ij for ij in zip(*np.nonzero(grown)) if ij != (3, 1)][0]
    assert float(scores[other]) == 1.5
    assert int(new.sum()) == int(mask.sum())


def test_cht_refuses_conv_kernels_and_bad_arguments():
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    dst.sparsify(model, 0.5, "uniform", seed=0)
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"CHT scores links of 2-D weights .* "
                                         r"'.*kernel' \(3, 3, 2, 4\)"):
        CHT(seed=0).bind(model)
    with pytest.raises(ValueError, match=r"`score` must be one of \['ch3_l3n', 'ch2_l3n'\] "
                                         r"for CHT\. Received: score='ch3_l3'"):
        CHT(score="ch3_l3")
    with pytest.raises(ValueError, match=r"Received: score='cn'"):
        link_scores(GRAPH, "cn")


def test_cht_is_registered_and_a_callback():
    assert dst.updaters.get("cht") is CHT
    assert type(dst.callbacks.get("cht", score="ch2_l3n")).__name__ == "CHT"
    assert dst.updaters.CHT is CHT


# The default CHT goes through the kit in tests/test_testing.py (every registered
# updater, with data parallelism); its options go through it here, across backends.


# -- soft regrowth -------------------------------------------------------------------
def test_sampling_keys_draw_in_proportion_to_the_scores():
    scores = np.array([[1.0, 2.0, 5.0, 0.0]], dtype=np.float32)
    first = np.zeros(4)
    for salt in range(4000):
        keys = sampling_keys(_select.NUMPY, scores, salt)
        first[int(np.argmax(keys))] += 1
    np.testing.assert_allclose(first / first.sum(), [1 / 8, 2 / 8, 5 / 8, 0], atol=0.025)
    # without replacement: two of three, as torch.multinomial(p, 2) would draw
    pairs = {}
    for salt in range(4000):
        keys = sampling_keys(_select.NUMPY, scores, salt)[0, :3]
        pair = tuple(sorted(np.argsort(keys)[1:].tolist()))
        pairs[pair] = pairs.get(pair, 0) + 1
    # P({1, 2}) = 2/8 · 5/6 + 5/8 · 2/3 = 0.625
    assert abs(pairs[(1, 2)] / 4000 - 0.625) < 0.025


def test_sampling_keys_agree_on_the_host_and_in_keras_ops():
    scores = link_scores(np.random.default_rng(3).random((30, 20)) < 0.2)
    for salt in (0, 12345, 2**32 - 1):
        graph_salt = keras.ops.convert_to_tensor(salt - 2**32 if salt >= 2**31 else salt,
                                                 "int32")
        np.testing.assert_array_equal(
            sampling_keys(_select.NUMPY, scores, salt),
            keras.ops.convert_to_numpy(sampling_keys(
                _select.OPS, keras.ops.convert_to_tensor(scores), graph_salt)))


# -- percolation ---------------------------------------------------------------------
def chain_model():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(3, use_bias=False, activation="relu", name="a")(inputs)
    x = keras.layers.Dropout(0.1)(x)
    outputs = keras.layers.Dense(2, use_bias=False, name="b")(x)
    model = keras.Model(inputs, outputs)
    dst.sparsify(model, 0.5, "uniform", seed=0)
    a, b = model.get_layer("a").kernel, model.get_layer("b").kernel
    dst.set_masks(model, {a.path: np.eye(3, dtype=bool),
                          b.path: np.array([[1, 0], [0, 1], [1, 0]], dtype=bool)})
    a.assign(np.diag([0.01, 1.0, 1.0]).astype("float32"))   # h0's only input is the weakest
    b.assign(np.array([[1.0, 0], [0, 0.9], [0.05, 0]], dtype="float32"))  # h2's only output too
    model.compile("sgd", "mse")
    return model, a, b


def test_percolation_removes_the_links_of_units_left_without_input_or_output():
    model, a, b = chain_model()
    up = CHT(percolation=True, drop_fraction=0.34, update_freq=1, end_step=5, seed=0)
    up.bind(model)
    assert up.chain == [(0, 1)]
    masks = dst.get_masks(model)
    weights = [keras.ops.convert_to_numpy(v.value) for v in (a, b)]
    planned = up.plan(_select.NUMPY, [1, 1], weights, [masks[a.path], masks[b.path]],
                      [None, None])
    # The drop takes (h0 <- x0) from a and (h2 -> o0) from b: h2 has no output
    # left, so a loses (h2 <- x2) too; h0 then has no input, so b loses (h0 -> o0).
    assert planned[0][2:] == [1, 1, 1] + [1, 1, 0]  # a: live inputs, live outputs
    assert planned[1][2:] == [0, 1, 0] + [1, 1]     # b: live inputs, live outputs
    up.update(0)
    after = dst.get_masks(model)
    assert after[a.path].sum() == 3 and after[b.path].sum() == 3  # all regrown
    assert after[a.path][1, 1] and after[b.path][1, 1]            # the kept links


def test_chain_pairs_follow_dense_layers_through_activations_only():
    model, _, _ = chain_model()
    assert chain_pairs(model, dynamic_targets(model)) == [(0, 1)]
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, name="h")(inputs)
    branch = keras.layers.Dense(2, name="p")(hidden)     # h feeds two layers:
    other = keras.layers.Dense(2, name="q")(hidden)      # its units are not one chain
    side = keras.layers.Dense(2, name="r")(keras.layers.BatchNormalization()(branch))
    model = keras.Model(inputs, [branch, other, side])
    dst.sparsify(model, 0.5, "uniform", seed=0)
    assert chain_pairs(model, dynamic_targets(model)) == []
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5),
                                   keras.layers.Activation("relu"), keras.layers.Dense(3)])
    dst.sparsify(sequential, 0.5, "uniform", seed=0)
    assert chain_pairs(sequential, dynamic_targets(sequential)) == [(0, 1)]


def test_percolation_refuses_what_it_cannot_chain():
    with pytest.raises(ValueError, match=r"needs grow_candidates='after_drop'\. "
                                         r"Received: grow_candidates='before_drop'"):
        CHT(percolation=True, grow_candidates="before_drop")
    with pytest.raises(ValueError, match=r"`percolation` must be True or False for CHT\. "
                                         r"Received: percolation=1"):
        CHT(percolation=1)
    with pytest.raises(ValueError, match=r"`soft_regrowth` must be True or False for CHT\. "
                                         r"Received: soft_regrowth='yes'"):
        CHT(soft_regrowth="yes")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    dst.sparsify(model, 0.5, "uniform", seed=0)
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"model '.*' has no such pair of kernels .*"
                                         r"Use percolation=False\."):
        CHT(percolation=True).bind(model)


@pytest.mark.slow  # two dozen short fits, and one process per backend
def test_cht_options_conform_on_every_backend():
    check_updater("cht", score="ch2_l3n", percolation=True, soft_regrowth=True,
                  drop_fraction=0.5, backends=["tensorflow", "jax", "torch"])
