"""The backend-specific pieces of dst, one module per Keras backend.

Everything else in dst is written in `keras.ops`. A backend module provides:

- `step_hook(optimizer, fn)`: a context manager under which `fn(step, grads)`
  runs inside the optimizer's update, after the weights are stepped, with
  `step` the optimizer's iteration count before this step and `grads`
  {id(variable): gradient} the gradients the optimizer applied (all-reduced
  over replicas, unscaled, after the optimizer's clipping).
- `host_call(fn, inputs, dtypes)`: runs a numpy function from inside the
  compiled step.
- `no_autograph(fn)`: keeps a function plain Python when a user's compiled
  function calls it.
- `variable_key(variable)`: the key under which `step_hook` reports a
  variable's gradient.
"""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"dst supports the TensorFlow backend of Keras 3 (KERAS_BACKEND=tensorflow); "
        f"this process runs Keras on '{keras.backend.backend()}'. JAX and PyTorch "
        "support is planned."
    )

from dst.backend.tensorflow import (  # noqa: E402
    host_call,
    no_autograph,
    step_hook,
    variable_key,
)

__all__ = ["host_call", "no_autograph", "step_hook", "variable_key"]
