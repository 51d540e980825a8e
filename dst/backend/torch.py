"""PyTorch backend: Keras' torch trainer runs eagerly, so dst's step is plain
Python inside `optimizer.apply` (see `dst.backend._generic`).

Masks are computed with numpy on the host, and only at update steps: the
step count is the only value read back every step.
"""

from __future__ import annotations

from dst import _compat
from dst.backend._generic import no_autograph, step_hook, variable_key
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


def in_graph(model) -> bool:
    """The step runs eagerly: masks are computed on the host.

    Raises:
        ValueError: the model is compiled with `jit_compile=True`
            (`torch.compile`), which dst's step does not support.
    """
    if getattr(model, "jit_compile", False) is True:
        raise ValueError(
            f"Model '{model.name}' has jit_compile=True, which on the PyTorch backend "
            "runs the train step under torch.compile; dst's sparse step does not support "
            "torch.compile (it fails inside Dynamo). A model loaded from a .keras file "
            "keeps the setting it was saved with (on JAX, jit_compile='auto' is saved as "
            f"True). Set `{model.name}.jit_compile = False` (or compile with "
            "jit_compile=False, the PyTorch default) before fit; the model is unchanged."
        )
    return False


def host_call(fn, inputs, dtypes):
    """Runs `fn` on numpy copies of `inputs` (eager: a direct call)."""
    return fn(*[_compat.to_numpy(x) for x in inputs])


def sparse_train_function(model, optimizer, sparse, state):
    """The model's train function, called with `sparse` hooked into `optimizer`."""
    return hooked_train_function(model, optimizer, sparse, step_hook)
