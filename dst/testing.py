"""A conformance kit for mask-update algorithms: `check_updater`.

In the spirit of Keras' layer tests: one call runs an updater, built-in or
your own, through the invariants every dst algorithm must hold, on small
models and data generated in code, and raises an `AssertionError` that names
the invariant that broke. The built-in updaters' tests call it too.

Also runnable as a script, for one backend per process (what `backends=`
uses): `python -m dst.testing MODULE:CLASS KWARGS_JSON OUT.npz` writes the
masks and weights of the cross-backend protocol run.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from dst.blocks import block_of
from dst.callbacks.base import callback_class
from dst.core import sparsify
from dst.masks import get_masks
from dst.nm import group_counts, group_floors, n_m_of
from dst.updaters import registry
from dst.updaters.base import Updater

__all__ = ["check_updater"]

#: The invariants `check_updater` runs, in order.
INVARIANTS = (
    "host path equals in-graph path, with counts as promised",
    "grown weights and optimizer slots start at their initial values",
    "masked entries are exactly 0 after fit",
    "block structure is kept",
    "N:M structure is kept",
    "steps_per_execution gives the same masks",
    "mixed precision keeps masks exact",
    "save and load keep masks and weights",
    "an interrupted run resumes exactly",
)

_STEPS_PER_EPOCH = 8  # 64 examples, batches of 8


def check_updater(updater: type[Updater] | str, /, *,
                  backends: Sequence[str] | None = None, data_parallel: bool = False,
                  **kwargs: Any) -> None:
    """Runs `updater` through the invariants every dst algorithm must hold.

    On the current Keras backend, on a 12-16-3 MLP sparsified to 0.5
    (uniform) and data generated in code, with the update schedule made
    dense (`update_freq=2`, `end_step=1.0`, `seed=0`, unless given; 1 and 2
    run the first four update steps of 16, none for an updater that never
    updates, such as `FixedMasks`):

    1. the host path (numpy) and the in-graph path (`keras.ops`) give the
       same masks and weights over several updates, and the host path's
       active counts are those `expected_active` promises;
    2. after an update, grown connections hold 0.0 and Adam's slots 0 there;
    3. after `model.fit` with the callback, every masked weight is exactly 0,
       also for a dense start when the updater prunes (`starts_dense`);
    4. on block masks (`block=(2, 2)`), every block is all on or all off,
       unless the updater sets `supports_blocks = False` (then `bind` must
       refuse block masks);
    5. on N:M masks (`n_m=(2, 4)`), on the host and in-graph paths (which
       agree) and after every step of a fit, every group of 4 consecutive
       inputs keeps at least 2 active entries, exactly 2 at sparsity 0.5;
       an updater that prunes from dense (`starts_dense`) and takes `n_m`
       runs from all-ones 2:4 masks with `final_sparsity=0.5` and must end
       exactly 2:4; one whose `supports_n_m` is False must be refused at
       `bind` with an error that names N:M; the constraint keeps its `n_m`
       through `save` and `load_model`;
    6. `steps_per_execution=4` gives the same masks as 1 (weights within
       float tolerance; not on PyTorch, where Keras refuses it);
    7. under `mixed_float16` masked weights stay exactly 0 and finite, and
       the masks change exactly when they do in float32;
    8. `model.save` then `keras.models.load_model` keeps masks and weights;
    9. a `BackupAndRestore` run interrupted after its first epoch resumes to
       the masks and weights of the uninterrupted run.

    With `backends`, the same seeded `fit` also runs once per named backend,
    each in a fresh Python process (the updater's class must be importable
    from its module), and every backend must give the masks of the first
    after every step, and weights within 1e-5. With `data_parallel`, that
    run also goes on two CPU devices in a fresh process (TensorFlow:
    `MirroredStrategy` over two logical CPUs; JAX: `DataParallel` over two
    host devices) and must give the masks of the one-device run, with
    weights within 1e-5 (PyTorch's DDP needs a process per device: refused).

    Args:
        updater: an `Updater` subclass, or a name registered with
            `dst.updaters.register`.
        backends: Keras backends to compare across ("tensorflow", "jax",
            "torch"), or None (the current backend only). Defaults to None.
        data_parallel: also check two-device data parallelism on the current
            backend. Defaults to False.
        **kwargs: the updater's constructor arguments (JSON values only with
            `backends`).

    Raises:
        AssertionError: an invariant broke, or the updater raised while it
            was checked; the message names the invariant (and the error).
        TypeError: `updater` is not an `Updater` subclass or a name, or
            `kwargs` are not its arguments.

    Examples:
        >>> import dst
        >>> dst.testing.INVARIANTS[0]
        'host path equals in-graph path, with counts as promised'
        >>> dst.testing.check_updater("set", drop_fraction=0.5)  # doctest: +SKIP
    """
    cls = _resolve(updater)
    args = _arguments(cls, kwargs)
    if data_parallel and keras.backend.backend() not in ("tensorflow", "jax"):
        raise ValueError(
            "check_updater(..., data_parallel=True) runs on TensorFlow or JAX; PyTorch's "
            f"DDP needs a process per device. This process runs {keras.backend.backend()!r}.")
    checks: list[tuple[str, Callable[[], None]]] = [
        (INVARIANTS[0], lambda: _paths_agree(cls, args)),
        (INVARIANTS[1], lambda: _grown_start_fresh(cls, args)),
        (INVARIANTS[2], lambda: _fit_masks_exact(cls, args)),
        (INVARIANTS[3], lambda: _blocks_kept(cls, args)),
        (INVARIANTS[4], lambda: _n_m_kept(cls, args)),
        (INVARIANTS[5], lambda: _steps_per_execution(cls, args)),
        (INVARIANTS[6], lambda: _mixed_precision(cls, args)),
        (INVARIANTS[7], lambda: _save_load(cls, args)),
        (INVARIANTS[8], lambda: _resume(cls, args)),
    ]
    if backends:
        checks.append(("the same masks on every backend", lambda: _across(cls, args, backends)))
    if data_parallel:
        checks.append(("two devices give the masks of one",
                       lambda: _data_parallel(cls, args)))
    for invariant, check in checks:
        try:
            check()
        except Exception as err:  # an error inside the rule breaks the invariant too
            detail = str(err) if isinstance(err, AssertionError) else \
                f"{type(err).__name__}: {err}"
            raise AssertionError(
                f"dst.testing.check_updater({cls.__name__}): {invariant}: {detail}") from err


# -- setup ------------------------------------------------------------------------
def _resolve(updater: type[Updater] | str) -> type[Updater]:
    if isinstance(updater, str):
        return registry.get(updater)
    if isinstance(updater, type) and issubclass(updater, Updater):
        return updater
    raise TypeError(
        "dst.testing.check_updater takes an Updater subclass or a registered name. "
        f"Received: {updater!r}"
    )


def _arguments(cls: type[Updater], kwargs: dict) -> dict:
    """`kwargs`, plus a dense schedule where the constructor takes one."""
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"{cls.__name__} takes no arguments {unknown}; its arguments: "
                        f"{list(params)}.")
    defaults = dict(update_freq=2, end_step=1.0, seed=0)
    return {**{k: v for k, v in defaults.items() if k in params}, **kwargs}


def _prunes(cls: type[Updater]) -> bool:
    """Whether the updater adds masks to a dense model itself (`starts_dense`)."""
    return cls.starts_dense


def _model(sparsity: float | None = 0.5, block: tuple[int, int] | None = None,
           dtype: str | None = None, n_m: tuple[int, int] | None = None) -> keras.Model:
    """The 12-16-3 MLP with weights drawn by numpy (the same on every backend)."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((12,)),
                              keras.layers.Dense(16, activation="relu", dtype=dtype,
                                                 name="hidden"),
                              keras.layers.Dense(3, dtype=dtype, name="out")],
                             name="dst_check")
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    if sparsity is not None:
        sparsify(model, sparsity, "uniform", seed=0, block=block, n_m=n_m)
    return model


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, (x[:, :3] @ rng.normal(size=(3, 3))).astype("float32")


def _fit(cls: type[Updater], args: dict, model: keras.Model, *, epochs: int = 2,
         steps_per_execution: int = 1, callbacks: Sequence = (),
         optimizer: keras.optimizers.Optimizer | None = None) -> list[dict]:
    """Fits `model` with the updater's callback; returns the masks after each batch."""
    model.compile(optimizer or keras.optimizers.Adam(0.01), "mse",
                  steps_per_execution=steps_per_execution)
    log = _MaskLog()
    model.fit(*_data(), batch_size=8, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[callback_class(cls)(**args), *callbacks, log])
    return log.masks


class _MaskLog(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.masks: list[dict] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.masks.append(get_masks(self.model))


def _masked_weights_zero(model: keras.Model, where: str) -> None:
    masks = get_masks(model)
    for w in model.weights:
        if w.path in masks:
            value = keras.ops.convert_to_numpy(w.value).astype("float32")
            bad = int(np.count_nonzero(value[~masks[w.path]]))
            assert bad == 0, f"{bad} masked entries of '{w.path}' are not 0 {where}."
            assert np.isfinite(value).all(), f"'{w.path}' is not finite {where}."


def _same_masks(a: dict, b: dict, what: str) -> None:
    """The masks of two models of one architecture, in weight order (a loaded
    model's paths may lack the model's name)."""
    assert len(a) == len(b), f"{what}: {len(a)} masks vs {len(b)}"
    for (path, x), y in zip(a.items(), b.values(), strict=True):
        diff = int(np.count_nonzero(x != y))
        assert diff == 0, f"{what}: {diff} entries of the mask of '{path}' differ."


def _same_weights(a: keras.Model, b: keras.Model, what: str, atol: float = 1e-5) -> None:
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(x.value),
                                   keras.ops.convert_to_numpy(y.value), rtol=1e-4, atol=atol,
                                   err_msg=f"{what}: weight '{x.path}'")


# -- the invariants --------------------------------------------------------------
def _bound(cls: type[Updater], args: dict, in_graph: bool) -> tuple[keras.Model, Updater]:
    model = _model(None if _prunes(cls) else 0.5)
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)
    updater = cls(**args)
    updater.prepare(model)
    updater.bind(model, total_steps=16, optimizer=optimizer, jit=False)
    updater.jit = in_graph  # the in-graph path, run eagerly (`keras.ops`)
    return model, updater


def _update_steps(updater: Updater, n: int = 4) -> list[int]:
    """The first `n` update steps of 16; none for an updater that never
    updates (`FixedMasks`), whose update checks are then empty."""
    return [t for t in range(16) if updater.is_update_step(t)][:n]


def _perturb(model: keras.Model, step: int) -> list:
    """Moves every weight (masked entries stay 0) and returns gradients, both
    drawn from `step`, so each update sees new values."""
    rng = np.random.default_rng(100 + step)
    masks = get_masks(model)
    grads = []
    for v in model.trainable_variables:
        value = keras.ops.convert_to_numpy(v.value)
        value = value + rng.normal(scale=0.1, size=value.shape).astype(value.dtype)
        if v.path in masks:
            value = np.where(masks[v.path], value, 0).astype(value.dtype)
        v.assign(value)
        grads.append(keras.ops.convert_to_tensor(
            rng.normal(size=value.shape).astype(value.dtype)))
    return grads


def _paths_agree(cls: type[Updater], args: dict) -> None:
    (host_model, host), (graph_model, graph) = (_bound(cls, args, False),
                                                _bound(cls, args, True))
    for step in _update_steps(host):
        host.update(step, _perturb(host_model, step))  # asserts the promised counts
        graph.update(step, _perturb(graph_model, step))
        _same_masks(get_masks(host_model), get_masks(graph_model),
                    f"after the update at step {step}, host vs in-graph")
        _same_weights(host_model, graph_model, f"after the update at step {step}")


def _grown_start_fresh(cls: type[Updater], args: dict) -> None:
    model, updater = _bound(cls, args, False)
    for step in _update_steps(updater):
        grads = _perturb(model, step)
        for index, _ in enumerate(updater.targets):
            for slot in updater.state.slots(index):  # Adam's m and v: nonzero everywhere
                slot.assign(keras.ops.ones(slot.shape, slot.dtype))
        before = get_masks(model)
        updater.update(step, grads)
        after = get_masks(model)
        for index, t in enumerate(updater.targets):
            grown = after[t.path] & ~before.get(t.path, np.ones_like(after[t.path]))
            for variable in [t.variable, *updater.state.slots(index)]:
                value = keras.ops.convert_to_numpy(variable.value)
                bad = int(np.count_nonzero(value[grown]))
                assert bad == 0, (f"{bad} of {int(grown.sum())} connections grown at step "
                                  f"{step} in '{variable.path}' are not 0.")
        _masked_weights_zero(model, f"after the update at step {step}")


def _fit_masks_exact(cls: type[Updater], args: dict) -> None:
    starts = [0.5] + ([None] if _prunes(cls) else [])
    for sparsity in starts:
        model = _model(sparsity)
        _fit(cls, args, model)
        _masked_weights_zero(model, f"after fit ({'dense' if sparsity is None else 'sparse'} "
                                    "start)")


def _blocks_kept(cls: type[Updater], args: dict) -> None:
    model = _model(0.5, block=(2, 2))
    if not cls.supports_blocks:
        try:
            _fit(cls, args, model, epochs=1)
        except ValueError as err:
            assert "block" in str(err), f"refused block masks without naming them: {err}"
            return
        raise AssertionError("supports_blocks is False, but block masks were not refused.")
    for masks in _fit(cls, args, model):
        for w in model.weights:
            if w.path not in masks:
                continue
            block = block_of(_constraint(w))
            assert block is not None, f"'{w.path}' lost its block constraint"
            m = masks[w.path]
            rows, cols = -(-m.shape[0] // block[0]), -(-m.shape[1] // block[1])
            for i in range(rows):
                for j in range(cols):
                    cell = m[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]]
                    assert cell.all() or not cell.any(), (
                        f"block ({i}, {j}) of '{w.path}' is partly active: {cell.tolist()}")
    _masked_weights_zero(model, "after fit with block masks")


_N_M = (2, 4)


def _n_m_setup(cls: type[Updater], args: dict) -> tuple[dict, bool]:
    """The arguments of the N:M check, and whether it starts dense (an updater
    that prunes and takes `n_m`: to 2:4, from all-ones 2:4 masks)."""
    params = inspect.signature(cls).parameters
    dense = cls.starts_dense and "n_m" in params
    if dense:
        args = {**args, "n_m": _N_M}
    if "final_sparsity" in params:
        args = {**args, "final_sparsity": 1 - _N_M[0] / _N_M[1]}
    if dense and "initial_sparsity" in params:
        args = {**args, "initial_sparsity": 0.0}
    return args, dense


def _check_n_m(masks: dict, what: str, exact: bool) -> None:
    for path, mask in masks.items():
        counts, floors = group_counts(mask, _N_M[1]), group_floors(mask.shape, _N_M)
        low = int(np.count_nonzero(counts < floors))
        assert low == 0, f"{what}: {low} groups of '{path}' keep fewer than {_N_M[0]}."
        if exact or int(mask.sum()) == int(floors.sum()):
            extra = int(np.count_nonzero(counts != floors))
            assert extra == 0, f"{what}: {extra} groups of '{path}' keep more than {_N_M[0]}."


def _n_m_kept(cls: type[Updater], args: dict) -> None:
    args, dense = _n_m_setup(cls, args)
    if not cls(**args).supports_n_m:
        try:
            _fit(cls, args, _model(0.5, n_m=_N_M), epochs=1)
        except ValueError as err:
            assert "N:M" in str(err), f"refused N:M masks without naming them: {err}"
            return
        raise AssertionError("supports_n_m is False, but N:M masks were not refused.")
    sparsity = None if dense else 0.5
    models, updaters = [], []
    for in_graph in (False, True):
        model = _model(sparsity, n_m=_N_M)
        optimizer = keras.optimizers.Adam(0.01)
        optimizer.build(model.trainable_variables)
        updater = cls(**args)
        updater.prepare(model)
        updater.bind(model, total_steps=16, optimizer=optimizer, jit=False)
        updater.jit = in_graph
        models.append(model)
        updaters.append(updater)
    for step in _update_steps(updaters[0]):
        for model, updater in zip(models, updaters):
            updater.update(step, _perturb(model, step))
        _same_masks(get_masks(models[0]), get_masks(models[1]),
                    f"N:M, after the update at step {step}, host vs in-graph")
        _check_n_m(get_masks(models[0]), f"after the update at step {step}", not dense)
    model = _model(sparsity, n_m=_N_M)
    for batch, masks in enumerate(_fit(cls, args, model)):
        _check_n_m(masks, f"after batch {batch} of fit", not dense)
    _check_n_m(get_masks(model), "at the end of fit", True)
    _masked_weights_zero(model, "after fit with N:M masks")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    _same_masks(get_masks(model), get_masks(loaded), "N:M, saved vs loaded")
    for w in loaded.weights:
        if w.path in get_masks(loaded):
            assert n_m_of(_constraint(w)) is not None, f"'{w.path}' lost its n_m on load"


def _constraint(variable: Any) -> Any:
    return getattr(variable, "constraint", None)


def _steps_per_execution(cls: type[Updater], args: dict) -> None:
    if keras.backend.backend() == "torch":
        return  # Keras refuses steps_per_execution > 1 on PyTorch
    one, four = _model(), _model()
    _fit(cls, args, one, optimizer=keras.optimizers.SGD(0.05))
    _fit(cls, args, four, steps_per_execution=4, optimizer=keras.optimizers.SGD(0.05))
    _same_masks(get_masks(one), get_masks(four), "steps_per_execution 1 vs 4")
    _same_weights(one, four, "steps_per_execution 1 vs 4", atol=1e-4)


def _mixed_precision(cls: type[Updater], args: dict) -> None:
    start = get_masks(_model())
    full = get_masks(_fit_model(cls, args, _model()))
    with _policy("mixed_float16"):
        model = _model()
        _fit(cls, args, model)
    _masked_weights_zero(model, "after a mixed_float16 fit")
    mixed = get_masks(model)
    for path in full:
        moved, moved_mixed = (not np.array_equal(full[path], start[path]),
                              not np.array_equal(mixed[path], start[path]))
        assert moved == moved_mixed, (
            f"the mask of '{path}' {'changed' if moved else 'did not change'} in float32 "
            f"but {'changed' if moved_mixed else 'did not change'} under mixed_float16.")


def _fit_model(cls: type[Updater], args: dict, model: keras.Model) -> keras.Model:
    _fit(cls, args, model)
    return model


@contextlib.contextmanager
def _policy(name: str) -> Iterator[None]:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _save_load(cls: type[Updater], args: dict) -> None:
    model = _fit_model(cls, args, _model())
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    _same_masks(get_masks(model), get_masks(loaded), "saved vs loaded")
    _same_weights(model, loaded, "saved vs loaded", atol=0.0)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0:
            raise RuntimeError("interrupted by dst.testing")


def _resume(cls: type[Updater], args: dict) -> None:
    whole = _fit_model(cls, args, _model())
    model = _model()
    with tempfile.TemporaryDirectory() as folder:
        backup = keras.callbacks.BackupAndRestore(folder)
        try:
            _fit(cls, args, model, callbacks=[backup, _Interrupt()])
        except RuntimeError as err:
            assert "interrupted by dst.testing" in str(err), err
        _fit(cls, args, model, callbacks=[keras.callbacks.BackupAndRestore(folder)])
    _same_masks(get_masks(whole), get_masks(model), "uninterrupted vs resumed")
    _same_weights(whole, model, "uninterrupted vs resumed", atol=1e-5)


# -- across backends --------------------------------------------------------------
def protocol_run(cls: type[Updater], args: dict,
                 scope: contextlib.AbstractContextManager | None = None
                 ) -> dict[str, np.ndarray]:
    """The cross-backend run: a seeded SGD `fit` of 10 steps, from numpy
    weights and data; the masks and the flat weights after every batch.
    `scope` (a distribution strategy's) holds the model's construction."""
    with scope or contextlib.nullcontext():
        return _protocol_run(cls, args)


def _protocol_run(cls: type[Updater], args: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12)).astype("float32")
    y = (x[:, :3].argmax(1)).astype("int32")
    model = keras.Sequential([keras.Input((12,)),
                              keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(3, name="out")], name="dst_protocol")
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    if not _prunes(cls):
        sparsify(model, 0.7, "uniform", seed=0)
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    record: dict[str, np.ndarray] = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            for path, mask in get_masks(self.model).items():
                record[f"{batch}:{path}"] = mask
            record[f"{batch}:weights"] = np.concatenate(
                [np.ravel(w) for w in self.model.get_weights()])

    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[callback_class(cls)(**args), Record()])
    return record


def _across(cls: type[Updater], args: dict, backends: Sequence[str]) -> None:
    runs = {backend: _in_process(cls, args, backend)[0] for backend in backends}
    first = backends[0]
    for backend in backends[1:]:
        _same_record(runs[backend], runs[first], f"{backend} vs {first}")


def _data_parallel(cls: type[Updater], args: dict) -> None:
    two, one = _in_process(cls, args, keras.backend.backend(), data_parallel=True)
    _same_record(two, one, "two devices vs one")


def _in_process(cls: type[Updater], args: dict, backend: str, data_parallel: bool = False
                ) -> list[dict[str, np.ndarray]]:
    """The protocol run(s) of `cls` in a fresh Python process on `backend`:
    [the run], or [on two devices, on one] with `data_parallel`."""
    module = sys.modules.get(cls.__module__)
    source = getattr(module, "__file__", None)
    if source is None or cls.__qualname__ != cls.__name__:
        raise TypeError(f"check_updater runs {cls.__name__} in a fresh process here: define "
                        "it at the top level of an importable module.")
    try:
        payload = json.dumps(args)
    except TypeError as err:
        raise TypeError(f"check_updater passes the arguments to a fresh process as JSON: "
                        f"{err}") from None
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(Path(source).parent), *sys.path]))
    if data_parallel and backend == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + " --xla_force_host_platform_device_count=2").strip()
    with tempfile.TemporaryDirectory() as folder:
        outs = [os.path.join(folder, f"{backend}{i}.npz") for i in range(1 + data_parallel)]
        proc = subprocess.run(
            [sys.executable, "-m", "dst.testing", f"{cls.__module__}:{cls.__name__}",
             payload, *outs], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, f"the {backend} run failed:\n{proc.stderr[-3000:]}"
        return [dict(np.load(out)) for out in outs]


def _same_record(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: other keys"
    for key, value in want.items():
        if key.endswith(":weights"):
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=f"{what}: {key}")
        else:
            diff = int(np.count_nonzero(got[key] != value))
            assert diff == 0, f"{what}: {diff} entries of mask {key} differ"


@contextlib.contextmanager
def _two_devices() -> Iterator[None]:
    """The scope of a two-device data-parallel run on this process's backend
    (entered before the backend first touches a device)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
        with strategy.scope():
            yield
        return
    import jax

    devices = jax.devices()
    assert len(devices) == 2, f"expected 2 JAX devices (XLA_FLAGS), found {len(devices)}"
    with keras.distribution.DataParallel(devices=devices).scope():
        yield


def _main(argv: list[str]) -> None:
    """`python -m dst.testing MODULE:CLASS KWARGS_JSON OUT.npz [ONE_DEVICE.npz]`:
    the protocol run; with two outputs, on two devices, then on one."""
    target, payload, *outs = argv
    module, name = target.split(":")
    cls = getattr(importlib.import_module(module), name)
    args = json.loads(payload)
    scopes = [_two_devices(), None] if len(outs) == 2 else [None]
    for out, scope in zip(outs, scopes, strict=True):
        record: dict[str, Any] = protocol_run(cls, args, scope)
        np.savez(out, **record)


if __name__ == "__main__":
    _main(sys.argv[1:])
