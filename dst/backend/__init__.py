"""The backend-specific pieces of dst, one small module per Keras backend.

Everything else in dst is written in `keras.ops`. A backend module provides:

- `step_hook(optimizer, sparse)`: a context manager under which the
  optimizer steps masked weights with masked gradients, and
  `sparse.run(step, grads)` (a `SparseStep`, `dst.backend._hook`) runs inside
  the optimizer's update, after the weights are stepped, with `step` the
  optimizer's iteration count before this step and `grads`
  {variable_key(variable): gradient} the dense gradients of the masked
  weights (all-reduced over replicas, unscaled, unclipped) when
  `sparse.dense`, else the masked ones the optimizer applied.
- `sparse_train_function(model, optimizer, sparse, state)`: builds the
  model's train function with `sparse` hooked into the optimizer as above;
  `state` lists (layer, variables) that the step reads and writes besides
  the weights and the optimizer (masks, ITOP records, counters).
- `read_after(model, result, variables)`: host values of optimizer
  variables after a train-function call returned `result` (one host sync).
- `register(model, state)`: registers dst's variables as model state for a
  fit where the train function threads state (JAX); `release(model, state)`
  undoes it.
- `host_call(fn, inputs, dtypes)`: runs a numpy function from inside the step.
- `no_autograph(fn)`: keeps a function plain Python when a user's compiled
  function calls it.
- `variable_key(variable)`: the key under which `step_hook` reports a
  variable's gradient.
- `in_graph(model)`: whether the step is compiled, so masks are computed with
  `keras.ops` (`dst._select.OPS`) rather than numpy on the host.
- `resolve_jit(in_graph, jit)`, `computes_in_graph(jit, value)`: whether
  masks are computed in-graph (`keras.ops`) or on the host (numpy).
- `guarded_update(pred, step, jit, update, compute, keep, write)`: runs the
  mask update where `pred` holds: `update(step)` assigning in place where a
  branch may assign (TensorFlow, PyTorch), or `write(cond(pred, compute,
  keep))` where it cannot (JAX).
- `plain_train_function(model, optimizer, state)`: a train function that
  changes no mask (a fit without dst after a failed dst fit).
"""

import keras

from dst.backend._hook import SparseStep

_BACKEND = keras.backend.backend()

if _BACKEND == "tensorflow":
    from dst.backend.tensorflow import (
        computes_in_graph,
        guarded_update,
        host_call,
        in_graph,
        no_autograph,
        plain_train_function,
        read_after,
        register,
        release,
        resolve_jit,
        sparse_train_function,
        step_hook,
        variable_key,
    )
elif _BACKEND == "jax":
    from dst.backend.jax import (
        computes_in_graph,
        guarded_update,
        host_call,
        in_graph,
        no_autograph,
        plain_train_function,
        read_after,
        register,
        release,
        resolve_jit,
        sparse_train_function,
        step_hook,
        variable_key,
    )
elif _BACKEND == "torch":
    from dst.backend.torch import (
        computes_in_graph,
        guarded_update,
        host_call,
        in_graph,
        no_autograph,
        plain_train_function,
        read_after,
        register,
        release,
        resolve_jit,
        sparse_train_function,
        step_hook,
        variable_key,
    )
else:
    raise ImportError(
        f"dst runs on Keras 3's TensorFlow, JAX and PyTorch backends; this process "
        f"runs Keras on {_BACKEND!r}. Set KERAS_BACKEND to 'tensorflow', 'jax' or "
        "'torch' before importing keras."
    )

__all__ = [
    "SparseStep",
    "computes_in_graph",
    "guarded_update",
    "host_call",
    "in_graph",
    "no_autograph",
    "plain_train_function",
    "read_after",
    "register",
    "release",
    "resolve_jit",
    "sparse_train_function",
    "step_hook",
    "variable_key",
]
