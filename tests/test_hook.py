"""dst.backend._hook: what the optimizer sees, masked gradients as in the references.

RigL, SET, jaxpruner and TF-MOT mask the gradient before the optimizer, so
inactive weights add nothing to `clipnorm`/`global_clipnorm` or to the
optimizer's moment estimates. RigL's grow score still uses the dense gradient.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from conftest import data, gradients, mlp, numpy, recording

import dst


def _no_update_callback():
    # Hooked into the optimizer, but no mask changes during these steps (the
    # schedule counts from the optimizer's step 0, so a fit may end before it).
    return dst.callbacks.SET(update_freq=1, begin_step=1000, end_step=2000, seed=0,
                             steps_from="optimizer")


def _mse(y):
    return lambda out: keras.ops.mean(keras.ops.square(keras.ops.subtract(out, y)))


@pytest.mark.parametrize("clip", ["global_clipnorm", "clipnorm"])
def test_clipping_is_computed_on_the_masked_gradient(clip):
    x, y = data(32)
    model = mlp(sparsity=0.8)
    masks = {p: m for p, m in dst.get_masks(model).items()}
    before = [numpy(v) for v in model.trainable_variables]
    dense = [numpy(g) for g in gradients(model, x, _mse(y))]
    masked = [np.where(masks[v.path], g, 0) if v.path in masks else g
              for v, g in zip(model.trainable_variables, dense)]

    lr, c = 0.5, 0.05

    def stepped(grads):
        if clip == "global_clipnorm":
            norm = np.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads))
            grads = [g * min(1.0, c / norm) for g in grads]
        else:
            grads = [g * min(1.0, c / np.sqrt((g.astype("float64") ** 2).sum())) for g in grads]
        return [w - lr * g for w, g in zip(before, grads)]

    expected, if_dense = stepped(masked), stepped(dense)
    # The test can tell the two apart: clipping the dense gradient differs.
    assert max(np.abs(e - d).max() for e, d in zip(expected, if_dense)) > 1e-3

    model.compile(keras.optimizers.SGD(lr, **{clip: c}), "mse")
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
              callbacks=[_no_update_callback()])
    for v, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(numpy(v), want, atol=2e-6, err_msg=v.path)


def test_adam_moments_of_inactive_weights_stay_zero():
    x, y = data(64)
    model = mlp(sparsity=0.8)
    opt = keras.optimizers.Adam(0.01)
    model.compile(opt, "mse")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[_no_update_callback()])
    masks = dst.get_masks(model)
    checked = 0
    for v in model.trainable_variables:
        if v.path not in masks:
            continue
        for slot in (opt._momentums[opt._get_variable_index(v)],
                     opt._velocities[opt._get_variable_index(v)]):
            s = numpy(slot)
            assert np.all(s[~masks[v.path]] == 0), v.path
            assert np.any(s[masks[v.path]] != 0), v.path
            checked += 1
    assert checked == 4


def test_rigl_scores_the_dense_gradient_while_the_optimizer_sees_the_masked_one():
    x, y = data(32)
    model = mlp(sparsity=0.8)
    dense = {v.path: numpy(g) for v, g in zip(model.trainable_variables,
                                                gradients(model, x, _mse(y)))}
    model.compile(keras.optimizers.SGD(0.1, global_clipnorm=0.01), "mse")
    cb = recording("rigl", update_freq=1, end_step=0, seed=0)  # updates after step 0 only
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    paths = [t.path for t in cb.updater.targets]
    # Weights may be updated in any order: match the records by shape (distinct here).
    seen = {g.shape: g for g in cb.updater.seen}
    assert len(cb.updater.seen) == len(seen) == len(paths)
    masks = dst.get_masks(model)
    for path in paths:
        # Dense, unclipped: the tape's gradient, non-zero where inactive too.
        np.testing.assert_allclose(seen[dense[path].shape], dense[path], rtol=1e-4, atol=1e-6,
                                   err_msg=path)
        assert np.any(dense[path][~masks[path]] != 0)


def test_embedding_gradients_are_masked_too():
    # On TensorFlow an Embedding's gradient is a tf.IndexedSlices.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(20, 4),
                              keras.layers.Flatten(), keras.layers.Dense(1)])
    dst.sparsify(model, 0.5, "uniform", seed=0)
    opt = keras.optimizers.Adam(0.01)
    model.compile(opt, "mse")
    x = np.random.default_rng(0).integers(0, 20, size=(32, 5)).astype("int32")
    model.fit(x, np.ones((32, 1), "float32"), batch_size=8, verbose=0,
              callbacks=[_no_update_callback()])
    emb = model.layers[0].embeddings
    mask = dst.get_masks(model)[emb.path]
    m = numpy(opt._momentums[opt._get_variable_index(emb)])
    assert np.all(m[~mask] == 0) and np.any(m[mask] != 0)
    assert np.all(numpy(emb)[~mask] == 0)
