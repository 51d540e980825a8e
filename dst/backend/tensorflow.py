"""TensorFlow backend: where the sparse step runs inside `optimizer.apply`.

Keras' TensorFlow optimizer sums the gradients over replicas in
`_backend_update_step` and then, in cross-replica context, calls
`_distributed_tf_update_step(distribution, grads_and_vars, learning_rate)`.
dst runs its step right after that call: the weights are stepped, the
gradients are the all-reduced ones, and assignments made there reach every
replica. Without a strategy the same method runs under the default one.

The gradients it receives are masked (`dst.backend._hook`); the dense ones,
which RigL needs, are summed over replicas by dst when there are several.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from dst._compat import inner_optimizer
from dst.backend._hook import SparseStep, masked_gradients
from dst.backend._stateful import (
    computes_in_graph,
    guarded_update,
    hooked_train_function,
    plain_train_function,
    read_after,
    register,
    release,
    resolve_jit,
)

__all__ = ["computes_in_graph", "guarded_update", "host_call", "in_graph", "no_autograph",
           "plain_train_function", "read_after", "register", "release", "resolve_jit",
           "sparse_train_function", "step_hook", "variable_key"]

_HOOKED = "_distributed_tf_update_step"


def in_graph(model) -> bool:
    """Masks are computed in-graph under XLA (`jit_compile=True`), else on the host."""
    return bool(getattr(model, "jit_compile", False))


def sparse_train_function(model, optimizer, sparse, state):
    """The model's train function, called with `sparse` hooked into `optimizer`
    (`state` needs nothing: TF functions read and write variables by reference)."""
    return hooked_train_function(model, optimizer, sparse, step_hook)


@contextlib.contextmanager
def step_hook(optimizer, sparse: SparseStep):
    """Runs `sparse.run(step, grads)` inside each update of `optimizer` (see module)."""
    opt = inner_optimizer(optimizer)
    if _HOOKED in vars(opt):
        raise RuntimeError(
            f"Optimizer {opt.name!r} already runs a dst sparse step: two dst "
            "callbacks (or updaters) cannot drive the same optimizer at once."
        )
    original = getattr(opt, _HOOKED)
    dense: dict = {}

    def hooked(distribution, grads_and_vars, learning_rate):
        grads_and_vars = list(grads_and_vars)
        result = original(distribution, grads_and_vars, learning_rate)
        if sparse.dense:
            # Every replica stored the same all-reduced values: any one will do.
            grads = dict(dense)
        else:
            grads = {
                id(var): distribution.experimental_local_results(grad)[0]
                for grad, var in grads_and_vars
                if grad is not None
            }
        sparse.run(opt.iterations, grads)
        return result

    setattr(opt, _HOOKED, hooked)
    try:
        with masked_gradients(opt, sparse, dense, variable_key, _sum_over_replicas):
            yield
    finally:
        delattr(opt, _HOOKED)


def _sum_over_replicas(grads: list) -> list:
    """The sum over replicas (as Keras sums the gradients it applies)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return grads
    return context.all_reduce(tf.distribute.ReduceOp.SUM, grads)


def no_autograph(fn):
    """Marks `fn` as plain Python for `tf.function` (its loops are over weights)."""
    return tf.autograph.experimental.do_not_convert(fn)


def host_call(fn, inputs, dtypes):
    """Runs `fn` (numpy in, numpy out) on the host from inside the step.

    `fn` must be a pure function of its inputs: the op is stateless, so TF may
    run the host computations of several weights in parallel.
    """
    if tf.executing_eagerly():
        return fn(*[x.numpy() if hasattr(x, "numpy") else x for x in inputs])
    return tf.numpy_function(fn, list(inputs), list(dtypes), stateful=False)


def variable_key(variable) -> int:
    """The id under which `step_hook` reports a keras.Variable's gradient."""
    return id(variable.value)
