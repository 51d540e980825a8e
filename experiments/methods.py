"""The methods the experiments compare: one table, read by every other module.

Each entry says how a method trains (which framework, whether the model is
sparsified first, which dst callback drives it and with which arguments),
which layer-wise distributions it runs with, and how it looks in every figure
(one fixed colour, marker and label). Adding a method is adding a row here.
"""

from __future__ import annotations

import dataclasses
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


def _granet_kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
    # GraNet's own sparse start (0.5) and regrowth fraction (0.5).
    return dict(final_sparsity=sparsity, initial_sparsity=min(0.5, sparsity),
                begin_step=begin, end_step=end, update_freq=cfg["update_freq"],
                distribution=distribution, seed=seed)


def _srigl_kwargs(cfg, sparsity, seed, begin, end, distribution) -> dict:
    # SET's schedule; SRigL always grows "after_drop" (no grow_candidates).
    return dict(update_freq=cfg["update_freq"], drop_fraction=cfg["drop_fraction"],
                drop_fraction_schedule=cfg["drop_fraction_schedule"],
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
           distribution_field="distribution", schedule=True, kwargs=_drop_grow_kwargs),
    Method("rigl_2x", "RigL 2×", "darkred", "p", sparsify=True, callback="rigl",
           distribution_field="distribution", schedule=True, kwargs=_drop_grow_kwargs,
           budget=2),
    Method("granet", "GraNet", "tab:green", "X", callback="granet",
           distribution_field="distribution", schedule=True, sparsity_schedule="gradual",
           kwargs=_granet_kwargs),
    Method("srigl", "SRigL", "tab:purple", "*", sparsify=True, callback="srigl",
           distribution_field="distribution", schedule=True, kwargs=_srigl_kwargs),
    Method("snfs", "SNFS", "tab:brown", "h", sparsify=True, callback="snfs",
           distribution_field="distribution", schedule=True, kwargs=_drop_grow_kwargs),
)}
NAMES: tuple[str, ...] = tuple(TABLE)
# Line styles that tell the distributions of one method apart in a figure.
DISTRIBUTION_STYLES = {"erk": "-", "uniform": "--", "er": ":", "none": "-"}


def get(name: str) -> Method:
    """The table row of `name`; an unknown name lists the known ones."""
    try:
        return TABLE[name]
    except KeyError:
        raise ValueError(
            f"Unknown method {name!r}. Known methods: {', '.join(NAMES)}."
        ) from None


def order(name: str) -> int:
    """Position of `name` in the display order (unknown names last)."""
    return NAMES.index(name) if name in TABLE else len(NAMES)
