"""The train function of a dst `fit`: the lean step between updates, the
update step where a window may hold one, chosen on the host per call."""

from __future__ import annotations

import weakref

from dst import _compat, backend


def _cached(model, slot, key, optimizer, build):
    """The program kept in `vars(model)[slot]` for `key`, else a new one kept there
    (past Keras' attribute tracking, so it goes when the model goes)."""
    cached = vars(model).get(slot)
    if cached is not None and cached[0] == key and cached[1]() is optimizer:
        return cached[2]  # (the optimizer check: ids may be reused)
    program = build()
    vars(model)[slot] = (key, weakref.ref(optimizer), program)
    return program


def _setup(model, optimizer, state) -> tuple:
    """What every program of a fit depends on besides the updater."""
    return (id(optimizer), getattr(model, "steps_per_execution", 1),
            getattr(model, "jit_compile", None), tuple(id(v) for _, vs in state for v in vs))


def _full_program(model, optimizer, updater, state):
    """The update program, reused by the fits of one updater (a callback given to
    several fits) whose schedule is the same from its origin (the schedule is
    read relative to dst's origin variable)."""
    sparse = updater.as_sparse_step()
    key = (_setup(model, optimizer, state), id(updater), updater.relative_schedule())
    return _cached(model, "_dst_update_program", key, optimizer,
                   lambda: backend.sparse_train_function(model, optimizer, sparse, state))


def _lean_program(model, optimizer, updater, state):
    """The lean program of `updater` on `model`, built once per equivalent setup.

    Between updates every updater runs the same program unless it `observes`
    (SNFS' momentum is its own), so fits of one model reuse it instead of
    tracing it again. The cache lives on the model (`vars(model)`, past
    Keras' attribute tracking), so it goes when the model goes.
    """
    sparse = updater.as_sparse_step(update=False)
    key = (_setup(model, optimizer, state), updater.state.ema, tuple(sorted(sparse.masks)),
           id(updater) if updater.observes else None)
    return _cached(model, "_dst_lean_program", key, optimizer,
                   lambda: backend.sparse_train_function(model, optimizer, sparse, state))


class SparseTrainFunction:
    """Keras' train function, with dst's step chosen on the host per call.

    Two programs share the model's state: the lean step (`Updater.lean_step`:
    masked gradients and weights, no conditional, no host read) and the
    update step (`Updater.sparse_step`, which updates the masks when the
    optimizer's own step count is an update step). A call runs up to
    `steps_per_execution` steps; it runs the update program when its window
    may hold the next update step, or one of the `grad_accumulation_n` − 1
    steps before it (whose gradients the update program accumulates), and
    the lean one otherwise. The host's count `step` never runs behind the
    optimizer's (a step the loss scaler skips does not advance the
    optimizer), so a lean call can never hold such a step; after each call
    that may hold the update step itself (and the first call) the host reads
    the optimizer's count back, once.

    `armed` is set by the callback before each call. A call that finds it
    unset comes from a `fit` this callback is not part of (an earlier `fit`
    raised before `on_train_end`): it puts back a train function that
    changes no mask.
    """

    def __init__(self, callback, optimizer, step):
        model, updater = callback.model, callback.updater
        self.callback, self.model, self.updater = callback, model, updater
        self.state = updater.state_variables()
        self.optimizer = optimizer
        self.window = max(1, int(getattr(model, "steps_per_execution", 1) or 1))
        self.lead = updater.grad_accumulation_n - 1  # steps accumulated before an update
        backend.register(model, self.state)  # also when the programs are cached
        self.lean = _lean_program(model, optimizer, updater, self.state)
        # Built now, while the model's variables hold their values (on JAX a
        # distribution reads their shardings), unless no update step is left.
        self.full = None
        if updater.schedule.next_update(step) is not None:
            self.full = _full_program(model, optimizer, updater, self.state)
        self.step = step
        self.start = step
        scale = getattr(optimizer, "dynamic_scale", None)
        self.scale = None if scale is None else read(scale, float)
        self.checked = False
        self.armed = False

    def __call__(self, *args):
        if not self.armed:
            return self._unarmed(*args)
        self.armed = False
        following = self.updater.schedule.next_update(self.step)
        if following is not None and following - self.lead < self.step + self.window:
            assert self.full is not None  # built whenever an update step is left
            result = self.full(*args)
            if following < self.step + self.window or not self.checked:
                self._read_step(result)
            else:  # only steps before the update: the host count stays at or ahead
                self.step += self.window
            return result
        result = self.lean(*args)
        if not self.checked:
            self._read_step(result)
        else:
            self.step += self.window
        return result

    def _read_step(self, result) -> None:
        """Reads the optimizer's step count (and loss scale) back: one host sync."""
        optimizer = self.optimizer
        variables = [_compat.inner_optimizer(optimizer).iterations]
        if self.scale is not None:
            variables.append(optimizer.dynamic_scale)
        values = backend.read_after(self.model, result, variables)
        self.step = int(values[0])
        if not self.checked:
            self.checked = True
            moved = self.step != self.start or (self.scale is not None
                                                and float(values[1]) != self.scale)
            if not moved:
                who = type(self.callback).__name__
                raise RuntimeError(
                    f"{who}: optimizer {optimizer.name!r} did not step during the first "
                    "batch, so dst's mask updates would never run. If your train_step "
                    "applies gradients with its own optimizer, pass it: "
                    f"{who}(..., optimizer=that_optimizer)."
                )

    def _unarmed(self, *args):
        self.model.train_function = backend.plain_train_function(
            self.model, self.updater.optimizer, self.state)
        return self.model.train_function(*args)


def read(variable, kind=int):
    """A scalar variable's value on the host."""
    return kind(_compat.to_numpy(variable))
