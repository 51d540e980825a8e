"""RigL with grad_accumulation_n=2 on 2 replicas (TF MirroredStrategy on 2
logical CPUs, or JAX DataParallel on 2 CPU devices; KERAS_BACKEND chooses).

One update, after step 2, whose grow score must be the mean of the global
batch gradients of steps 1 and 2 (lr 0: the weights do not move before it).
Prints JSON: the relative error of the recorded scores, and whether every
replica holds the same mask.
"""

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dst  # noqa: E402
from dst._model import dynamic_targets  # noqa: E402

BACKEND = keras.backend.backend()


def record(seen, x):
    if BACKEND == "jax":
        import jax

        jax.debug.callback(lambda a: seen.append(np.array(a)), x)
    else:
        seen.append(np.array(x))


class Rec(dst.updaters.RigL):
    def grow_scores(self, kit, weight, mask, grad):
        record(self.seen, grad)
        return super().grow_scores(kit, weight, mask, grad)


rng = np.random.default_rng(0)
x = rng.normal(size=(48, 12)).astype("float32")
y = (x[:, :3] @ rng.normal(size=(3, 3))).astype("float32")
y[::2] *= 5  # the two replicas' halves of each batch have very different gradients


def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    dst.sparsify(model, 0.8, "uniform", seed=0)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model


if BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()
    replicas = strategy.num_replicas_in_sync

    def grads_of(xb, yb, variables):
        with tf.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(yb, model(xb, training=True))
        return [g.numpy() for g in tape.gradient(loss, variables)]

    def copies(variable):
        return [np.asarray(v.numpy())
                for v in strategy.experimental_local_results(variable.value)]
else:
    import jax

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    model = build()
    replicas = len(jax.devices())

    def grads_of(xb, yb, variables):
        trainable = model.trainable_variables
        index = {id(v): i for i, v in enumerate(trainable)}

        def f(values):
            out, _ = model.stateless_call(values, [v.value for v in model.non_trainable_variables],
                                          xb, training=True)
            return keras.losses.MeanSquaredError()(yb, out)

        grads = jax.grad(f)([v.value for v in trainable])
        return [np.asarray(grads[index[id(v)]]) for v in variables]

    def copies(variable):
        return [np.asarray(s.data) for s in variable.value.addressable_shards]

targets = dynamic_targets(model)
variables = [t.variable for t in targets]
start = [t.constraint.numpy() for t in targets]
g1, g2 = (grads_of(x[16 * s:16 * s + 16], y[16 * s:16 * s + 16], variables) for s in (1, 2))
expected = [(a + b) / 2 for a, b in zip(g1, g2)]
cb = dst.callbacks.RigL(update_freq=2, begin_step=2, end_step=2, grad_accumulation_n=2,
                        drop_fraction=0.5, seed=0)
cb.updater = Rec(update_freq=2, begin_step=2, end_step=2, grad_accumulation_n=2,
                 drop_fraction=0.5, seed=0)
cb.updater.seen = []
model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
seen = {g.shape: g for g in cb.updater.seen}
out = {
    "replicas": replicas,
    "n_seen": len(cb.updater.seen),
    "rel_err": [float(np.linalg.norm(seen[w.shape] - w) / np.linalg.norm(w)) for w in expected],
    "replicas_equal": all(all(np.array_equal(c[0], o) for o in c)
                          for c in (copies(t.constraint.mask) for t in targets)),
    "changed": any(not np.array_equal(a, t.constraint.numpy()) for a, t in zip(start, targets)),
}
print(json.dumps(out))
