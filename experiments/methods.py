"""The methods the experiments compare: one table, read by every other module.

Each entry says how a method trains (which framework, whether the model is
sparsified first, which dst callback drives it and with which arguments),
which layer-wise distributions it runs with, and how it looks in every figure
(one fixed colour, marker and label). Adding a method is adding a row here.

Every updater registered with `dst.updaters.register` that no row trains
with is a method too, by its registered name (`names`, `get`): its row is
generated (`registered_row`), so an algorithm added to dst runs here with no
row, and a row is only needed for its own colour, label or arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any


def _no_kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
    return {}


def _pruning_kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
    return dict(final_sparsity=sparsity, initial_sparsity=0.0, begin_step=begin,
                end_step=end, update_freq=cfg["update_freq"], power=3,
                distribution=distribution, seed=seed)


def _drop_grow_kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
    return dict(update_freq=cfg["update_freq"], drop_fraction=cfg["drop_fraction"],
                drop_fraction_schedule=cfg["drop_fraction_schedule"],
                grow_candidates=cfg["grow_candidates"],
                begin_step=begin, end_step=end, seed=seed)


def _rigl_kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
    return dict(_drop_grow_kwargs(cfg, sparsity, seed, begin, end, distribution),
                grad_accumulation_n=cfg["grad_accumulation_n"])


def _granet_kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
    # GraNet's own sparse start (0.5) and regrowth fraction (0.5).
    return dict(final_sparsity=sparsity, initial_sparsity=min(0.5, sparsity),
                begin_step=begin, end_step=end, update_freq=cfg["update_freq"],
                distribution=distribution, seed=seed,
                grad_accumulation_n=cfg["grad_accumulation_n"])


def _srigl_kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
    # SET's schedule; SRigL always grows "after_drop" (no grow_candidates).
    return dict(update_freq=cfg["update_freq"], drop_fraction=cfg["drop_fraction"],
                drop_fraction_schedule=cfg["drop_fraction_schedule"],
                grad_accumulation_n=cfg["grad_accumulation_n"],
                begin_step=begin, end_step=end, seed=seed)


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the method table.

    Attributes:
        name: the name used in configs, run ids and results files.
        label: the name shown in figures and tables.
        color: a matplotlib colour, the same in every figure.
        marker: a matplotlib marker, the same in every figure.
        framework: "keras" (Keras 3 with dst) or "tf_keras" (TF-MOT).
        sparsify: whether the model is `dst.sparsify`-ed before training.
        callback: the name, registered with `dst.updaters.register`, of the
            updater that drives training (`dst.callbacks.get(name, **kwargs)`
            builds its callback), or None.
        distribution_field: the config field that lists this method's
            layer-wise distributions, or None for a fixed one.
        fixed_distribution: the distribution recorded when there is no field
            ("none" for dense; "uniform" for TF-MOT, which prunes every layer
            to the same sparsity).
        schedule: whether the method uses update_freq/begin_step/end_step.
        sparsity_schedule: how its sparsity evolves during training: "dense"
            (stays 0), "constant" (at the target from the first step) or
            "gradual" (pruned from 0 to the target by end_step).
        kwargs: (cfg, sparsity, seed, begin, end, distribution) -> the
            callback's constructor arguments.
        budget: training budget as a multiple of the config's: the run trains
            `budget * epochs` epochs, and everything defined over training
            (begin_step/end_step, the learning-rate schedule) stretches with it
            (RigL_2x in the RigL paper).
    """

    name: str
    label: str
    color: str
    marker: str
    framework: str = "keras"
    sparsify: bool = False
    callback: str | None = None
    distribution_field: str | None = None
    fixed_distribution: str = "none"
    schedule: bool = False
    sparsity_schedule: str = "constant"
    kwargs: Callable[..., dict] = _no_kwargs
    budget: int = 1

    @property
    def sparse(self) -> bool:
        """Whether the method trains to a target sparsity (all but dense)."""
        return self.name != "dense"

    def distributions(self, cfg: Mapping[str, Any]) -> list[str]:
        """The layer-wise distributions this method runs with under `cfg`."""
        if self.distribution_field is None:
            return [self.fixed_distribution]
        return list(cfg[self.distribution_field])

    def callback_kwargs(self, cfg: Mapping[str, Any], sparsity: float, seed: int,
                        begin: int, end: int, distribution: str) -> dict:
        """Constructor arguments of this method's dst callback."""
        return self.kwargs(cfg, sparsity, seed, begin, end, distribution)

    def run_config(self, cfg: Mapping[str, Any]) -> dict:
        """`cfg` as this method's runs train it: epochs (and begin/end steps given
        as step counts) times `budget`; fractions of training scale by themselves."""
        out = dict(cfg)
        if self.budget != 1:
            out["epochs"] = cfg["epochs"] * self.budget
            for key in ("begin_step", "end_step"):
                if isinstance(cfg[key], int):
                    out[key] = cfg[key] * self.budget
        return out

    def display(self, distribution: str) -> str:
        """The figure label of this method with `distribution`."""
        if self.distribution_field is None:
            return self.label
        return f"{self.label}, {distribution}"


# Display order: baselines, then pruning, then dynamic sparse training.
# Colours: matplotlib's tab10, one per method, black for the dense reference.
TABLE: dict[str, Method] = {m.name: m for m in (
    Method("dense", "dense", "black", "s", sparsity_schedule="dense"),
    Method("static", "static", "tab:gray", "v", sparsify=True,
           distribution_field="distribution"),
    Method("magnitude", "magnitude (dst)", "tab:blue", "o", callback="magnitude",
           distribution_field="magnitude_distribution", schedule=True,
           sparsity_schedule="gradual", kwargs=_pruning_kwargs),
    Method("tfmot", "magnitude (TF-MOT)", "tab:cyan", "D", framework="tf_keras",
           fixed_distribution="uniform", schedule=True, sparsity_schedule="gradual"),
    Method("set", "SET", "tab:orange", "^", sparsify=True, callback="set",
           distribution_field="distribution", schedule=True, kwargs=_drop_grow_kwargs),
    Method("rigl", "RigL", "tab:red", "P", sparsify=True, callback="rigl",
           distribution_field="distribution", schedule=True, kwargs=_rigl_kwargs),
    Method("rigl_2x", "RigL 2×", "darkred", "p", sparsify=True, callback="rigl",
           distribution_field="distribution", schedule=True, kwargs=_rigl_kwargs,
           budget=2),
    Method("granet", "GraNet", "tab:green", "X", callback="granet",
           distribution_field="distribution", schedule=True, sparsity_schedule="gradual",
           kwargs=_granet_kwargs),
    Method("srigl", "SRigL", "tab:purple", "*", sparsify=True, callback="srigl",
           distribution_field="distribution", schedule=True, kwargs=_srigl_kwargs),
    Method("snfs", "SNFS", "tab:brown", "h", sparsify=True, callback="snfs",
           distribution_field="distribution", schedule=True, kwargs=_drop_grow_kwargs),
)}
#: The table's own rows, in display order (`names()` adds registered updaters).
NAMES: tuple[str, ...] = tuple(TABLE)
# Line styles that tell the distributions of one method apart in a figure.
DISTRIBUTION_STYLES = {"erk": "-", "uniform": "--", "er": ":", "none": "-"}


# Styles of the generated rows, in turn (the table's rows use tab10).
_EXTRA_STYLES = [("tab:olive", "d"), ("tab:pink", "8"), ("goldenrod", "H"),
                 ("teal", "<"), ("slateblue", ">"), ("sienna", "1")]


def names() -> tuple[str, ...]:
    """Every method: the table's rows, then each registered dst updater that
    no row trains with (sorted), as `dst.updaters.register` named it."""
    from dst.updaters import registry

    used = {m.callback for m in TABLE.values()}
    return NAMES + tuple(n for n in registry.names() if n not in TABLE and n not in used)


def get(name: str) -> Method:
    """The row of `name`: the table's, or one generated for a registered
    updater (`registered_row`); an unknown name lists the known ones."""
    if name in TABLE:
        return TABLE[name]
    known = names()
    if name not in known:
        raise ValueError(f"Unknown method {name!r}. Known methods: {', '.join(known)}.")
    return registered_row(name, known.index(name) - len(NAMES))


def registered_row(name: str, index: int = 0) -> Method:
    """The row of an updater registered as `name` that has no row in the table.

    Its label is the class name. It trains a `dst.sparsify`-ed model at the
    target sparsity (constant), or, when the constructor takes
    `final_sparsity` (a pruning method), a dense model pruned to it
    (gradual). Its callback gets, of the config's arguments, those its
    constructor takes: final_sparsity, update_freq, drop_fraction,
    drop_fraction_schedule, grow_candidates, begin_step, end_step,
    distribution and seed.
    """
    import dst

    updater = dst.updaters.get(name)
    params = inspect.signature(updater).parameters
    prunes = "final_sparsity" in params
    color, marker = _EXTRA_STYLES[index % len(_EXTRA_STYLES)]

    def kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
        given = dict(final_sparsity=sparsity, update_freq=cfg["update_freq"],
                     drop_fraction=cfg["drop_fraction"],
                     drop_fraction_schedule=cfg["drop_fraction_schedule"],
                     grow_candidates=cfg["grow_candidates"], begin_step=begin, end_step=end,
                     distribution=distribution, seed=seed)
        return {k: v for k, v in given.items() if k in params}

    return Method(name, updater.__name__, color, marker, sparsify=not prunes, callback=name,
                  distribution_field="distribution",
                  schedule=bool({"update_freq", "begin_step", "end_step"} & set(params)),
                  sparsity_schedule="gradual" if prunes else "constant", kwargs=kwargs)


def order(name: str) -> int:
    """Position of `name` in the display order (unknown names last)."""
    known = names()
    return known.index(name) if name in known else len(known)
