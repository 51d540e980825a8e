"""Experiment configs: load YAML, apply command-line overrides, validate.

Everything a run needs is checked here, before any data is loaded or any model
trained, and every error names the field, the bad value and the allowed values.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("digits", "teacher", "fashion_mnist", "mnist", "cifar10")
MODELS = ("mlp", "cnn", "resnet")
METHODS = ("dense", "static", "magnitude", "set", "rigl", "tfmot")
DISTRIBUTIONS = ("uniform", "erk", "er")
WANDB_MODES = ("auto", "online", "offline", "disabled")
# Methods whose layer-wise distribution is `distribution`; magnitude uses
# `magnitude_distribution` (default uniform, like TF-MOT, which prunes every
# layer to the same sparsity).
DISTRIBUTED = ("static", "set", "rigl")
IMAGE_DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10")

REQUIRED = (
    "dataset", "model", "methods", "sparsities", "seeds", "epochs",
    "batch_size", "optimizer",
)
DEFAULTS: dict[str, Any] = {
    "name": None,
    "distribution": "erk",
    "magnitude_distribution": "uniform",
    "update_freq": 100,
    "drop_fraction": 0.3,
    "drop_fraction_schedule": "cosine",
    "begin_step": 0,
    "end_step": 0.75,
    "sparse_init": False,
    "val_split": 0.0,
    "max_train_samples": None,
    "max_test_samples": None,
    "data_dir": None,
    "verbose": 2,
    "wandb": None,
}
MODEL_OPTIONS = {
    "mlp": {"hidden": [300, 100]},
    "cnn": {},
    "resnet": {"blocks": 1, "width": 16},
}
WANDB_OPTIONS = {
    "mode": "auto", "project": "keras-dst", "entity": None, "group": None,
    "tags": [], "dir": None,
}
# Sweep-style singular names (`--method rigl --sparsity 0.9 --seed 0`).
ALIASES = {"method": "methods", "sparsity": "sparsities", "seed": "seeds",
           "distributions": "distribution"}


# Which key a plain string stands for in a mapping field.
SHORTHAND = {"model": "name", "optimizer": "name", "wandb": "mode"}


class ConfigError(ValueError):
    """A config field is missing or has a value the runner cannot use."""


def load(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict:
    """Reads a YAML config, applies `overrides` and returns the checked config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Config file {str(path)!r} must hold a YAML mapping of fields, "
            f"got {type(raw).__name__}."
        )
    return validate(apply_overrides(raw, overrides or {}))


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """Returns a copy of `raw` with `overrides` set.

    Keys may be singular sweep names (`method`, `sparsity`, `seed`), which set
    a one-element list, or dotted paths into a mapping
    (`optimizer.learning_rate`, `wandb.mode`).
    """
    out = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        key = key.replace("-", "_")
        head, _, rest = key.partition(".")
        head = ALIASES.get(head, head)
        if rest:
            node = out.get(head)
            if isinstance(node, str):  # `optimizer: adam` -> {name: adam}
                node = {SHORTHAND.get(head, "name"): node}
            node = dict(node or {})
            node[rest] = value
            out[head] = node
        else:
            out[head] = value
    return out


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Parses `--key value` and `--key=value` pairs; values are read as YAML."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(
                f"Unexpected argument {arg!r}: overrides take the form "
                "--field value or --field=value (e.g. --method rigl --sparsity 0.9)."
            )
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"Override {arg!r} has no value.")
            key, text = arg[2:], args[i + 1]
            i += 2
        out[key] = yaml.safe_load(text) if text != "" else None
    return out


def validate(raw: Mapping[str, Any]) -> dict:
    """Checks every field and returns a normalized config with defaults filled in."""
    known = set(REQUIRED) | set(DEFAULTS)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"Unknown config field(s) {unknown}. Allowed fields: {sorted(known)}."
        )
    missing = [f for f in REQUIRED if raw.get(f) is None]
    if missing:
        raise ConfigError(
            f"Missing config field(s) {missing}. Every config needs "
            f"{list(REQUIRED)}; e.g. dataset: one of {list(DATASETS)}, "
            f"methods: a list from {list(METHODS)}."
        )
    cfg = {**DEFAULTS, **raw}
    cfg["dataset"] = _choice("dataset", cfg["dataset"], DATASETS)
    cfg["model"] = _model(cfg["model"], cfg["dataset"])
    cfg["methods"] = _unique([
        _choice("methods", m, METHODS) for m in _as_list("methods", cfg["methods"])
    ])
    cfg["sparsities"] = _unique([_sparsity(s) for s in _as_list("sparsities", cfg["sparsities"])])
    cfg["seeds"] = _unique([_int("seeds", s, 0) for s in _as_list("seeds", cfg["seeds"])])
    cfg["epochs"] = _int("epochs", cfg["epochs"], 1)
    cfg["batch_size"] = _int("batch_size", cfg["batch_size"], 1)
    cfg["optimizer"] = _optimizer(cfg["optimizer"])
    cfg["distribution"] = _unique([
        _choice("distribution", d, DISTRIBUTIONS)
        for d in _as_list("distribution", cfg["distribution"])
    ])
    cfg["magnitude_distribution"] = _unique([
        _choice("magnitude_distribution", d, DISTRIBUTIONS)
        for d in _as_list("magnitude_distribution", cfg["magnitude_distribution"])
    ])
    cfg["update_freq"] = _int("update_freq", cfg["update_freq"], 1)
    cfg["drop_fraction"] = _float("drop_fraction", cfg["drop_fraction"], 0.0, 1.0, low_open=True)
    if not isinstance(cfg["drop_fraction_schedule"], str):
        raise ConfigError(
            "`drop_fraction_schedule` must be a schedule name such as 'cosine'. "
            f"Received: drop_fraction_schedule={cfg['drop_fraction_schedule']!r}."
        )
    cfg["begin_step"] = _step("begin_step", cfg["begin_step"])
    cfg["end_step"] = _step("end_step", cfg["end_step"])
    cfg["sparse_init"] = _bool("sparse_init", cfg["sparse_init"])
    cfg["val_split"] = _float("val_split", cfg["val_split"], 0.0, 0.5, high_open=True)
    for field in ("max_train_samples", "max_test_samples"):
        if cfg[field] is not None:
            cfg[field] = _int(field, cfg[field], 1)
    if cfg["data_dir"] is not None:
        cfg["data_dir"] = str(cfg["data_dir"])
    cfg["verbose"] = _choice("verbose", cfg["verbose"], (0, 1, 2))
    cfg["wandb"] = _wandb(cfg["wandb"])
    if cfg["name"] is None:
        cfg["name"] = f"{cfg['dataset']}_{cfg['model']['name']}"
    cfg["name"] = str(cfg["name"])
    _check_dst_callbacks(cfg)
    return cfg


def schedule_steps(cfg: Mapping[str, Any], steps_per_epoch: int) -> tuple[int, int]:
    """Resolves begin_step/end_step (fractions or steps) to integer steps.

    The end step is moved back onto the update grid begin + k * update_freq and
    below the last step, so that a pruning schedule that updates every
    `update_freq` steps (TF-MOT's PolynomialDecay, dst's MagnitudePruning)
    actually reaches its final sparsity.
    """
    total = steps_per_epoch * cfg["epochs"]
    freq = cfg["update_freq"]

    def to_step(v):
        return int(round(v * total)) if isinstance(v, float) else int(v)

    begin, end = to_step(cfg["begin_step"]), min(to_step(cfg["end_step"]), total - 1)
    end = begin + (end - begin) // freq * freq
    if end <= begin:
        raise ConfigError(
            f"The update schedule does not fit in training: {cfg['epochs']} "
            f"epoch(s) x {steps_per_epoch} steps = {total} steps, "
            f"begin_step={cfg['begin_step']!r}, end_step={cfg['end_step']!r}, "
            f"update_freq={freq}. Lower `update_freq` (at most "
            f"{max(1, (to_step(cfg['end_step']) - begin) // 2)} here), or train "
            "for more steps."
        )
    return begin, end


# -- field checks --------------------------------------------------------------
def _fmt(allowed) -> str:
    return ", ".join(repr(a) for a in allowed)


def _choice(field, value, allowed):
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, bool) or key not in allowed:
        raise ConfigError(
            f"`{field}` must be one of {_fmt(allowed)}. Received: {field}={value!r}."
        )
    return key


def _as_list(field, value) -> list:
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise ConfigError(f"`{field}` must not be empty.")
    return list(items)


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def _int(field, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(
            f"`{field}` must be an integer >= {low}. Received: {field}={value!r}."
        )
    return int(value)


def _float(field, value, low, high, *, low_open=False, high_open=False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(
            f"`{field}` must be a number in {lo}{low}, {high}{hi}. "
            f"Received: {field}={value!r}."
        )
    return float(value)


def _bool(field, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"`{field}` must be true or false. Received: {field}={value!r}.")
    return value


def _sparsity(value) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0.0 < value < 1.0 or math.isnan(value):
        raise ConfigError(
            "`sparsities` must hold numbers in (0, 1), the fraction of zero "
            f"weights (0.9 keeps 10%). Received: sparsities entry {value!r}."
        )
    return float(value)


def _step(field, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(
            f"`{field}` must be a fraction of training in [0, 1] (e.g. 0.75) or "
            f"a step count (integer >= 0). Received: {field}={value!r}."
        )
    if isinstance(value, float) and value > 1.0:
        raise ConfigError(
            f"`{field}` as a float is a fraction of training and must be in "
            f"[0, 1]; give an integer for a step count. Received: {field}={value!r}."
        )
    return value


def _model(value, dataset) -> dict:
    spec = {"name": value} if isinstance(value, str) else value
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(
            f"`model` must be one of {_fmt(MODELS)} or a mapping with `name` and "
            f"options. Received: model={value!r}."
        )
    name = _choice("model", spec["name"], MODELS)
    options = dict(MODEL_OPTIONS[name])
    extra = sorted(set(spec) - {"name"} - set(options))
    if extra:
        raise ConfigError(
            f"Unknown option(s) {extra} for model {name!r}. Allowed options: "
            f"{sorted(options) or 'none'}."
        )
    options.update({k: v for k, v in spec.items() if k != "name"})
    if name == "mlp":
        hidden = options["hidden"]
        if not isinstance(hidden, list) or not hidden or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
        ):
            raise ConfigError(
                "`model.hidden` must be a list of positive layer widths, e.g. "
                f"[300, 100]. Received: hidden={hidden!r}."
            )
    if name == "resnet":
        options["blocks"] = _int("model.blocks", options["blocks"], 1)
        options["width"] = _int("model.width", options["width"], 1)
    if name in ("cnn", "resnet") and dataset not in IMAGE_DATASETS:
        raise ConfigError(
            f"`model` {name!r} needs image data; dataset {dataset!r} is a "
            f"vector task. Use model 'mlp', or a dataset from {_fmt(IMAGE_DATASETS)}."
        )
    return {"name": name, **options}


def optimizer_classes() -> dict[str, str]:
    """Lower-case name -> class name of optimizers both Keras 3 and tf_keras have."""
    import keras

    names = {
        n for n, c in vars(keras.optimizers).items()
        if inspect.isclass(c) and issubclass(c, keras.optimizers.Optimizer)
        and n not in ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")
    }
    return {n.lower(): n for n in sorted(names)}


def _optimizer(value) -> dict:
    spec = {"name": value} if isinstance(value, str) else value
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            "`optimizer` must be a name (e.g. adam) or a mapping with `name` and "
            f"constructor arguments. Received: optimizer={value!r}."
        )
    classes = optimizer_classes()
    if spec["name"].lower() not in classes:
        raise ConfigError(
            f"`optimizer` must be one of {_fmt(classes)}. Received: "
            f"optimizer name {spec['name']!r}."
        )
    name = spec["name"].lower()
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    import keras

    try:
        getattr(keras.optimizers, classes[name])(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`optimizer` {name!r} rejected its arguments {kwargs}: {err}") from err
    return {"name": name, **kwargs}


def _wandb(value) -> dict:
    spec = {"mode": value} if isinstance(value, str) else dict(value or {})
    extra = sorted(set(spec) - set(WANDB_OPTIONS))
    if extra:
        raise ConfigError(
            f"Unknown `wandb` option(s) {extra}. Allowed options: {sorted(WANDB_OPTIONS)}."
        )
    out = {**WANDB_OPTIONS, **spec}
    out["mode"] = _choice("wandb.mode", out["mode"], WANDB_MODES)
    return out


def _check_dst_callbacks(cfg) -> None:
    """Builds each dst callback once, so dst's own checks run before training."""
    needed = [m for m in cfg["methods"] if m in ("magnitude", "set", "rigl")]
    if not needed:
        return
    import dst

    for method in needed:
        try:
            cls = dst.callbacks.get(method)
        except AttributeError as err:
            raise ConfigError(
                f"`methods` includes {method!r}, but this dst has no callbacks "
                f"({err}). Upgrade keras-dst or drop {method!r}."
            ) from err
        try:
            cls(**callback_kwargs(cfg, method, cfg["sparsities"][0], 0, 1, 2))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"dst.callbacks.{cls.__name__} rejected the config: {err}") from err


def callback_kwargs(cfg, method, sparsity, seed, begin, end, distribution=None) -> dict:
    """Constructor arguments of the dst callback for `method`."""
    if method == "magnitude":
        return dict(final_sparsity=sparsity, initial_sparsity=0.0, begin_step=begin,
                    end_step=end, update_freq=cfg["update_freq"], power=3,
                    distribution=distribution or cfg["magnitude_distribution"][0],
                    seed=seed)
    return dict(update_freq=cfg["update_freq"], drop_fraction=cfg["drop_fraction"],
                drop_fraction_schedule=cfg["drop_fraction_schedule"],
                begin_step=begin, end_step=end, seed=seed)
