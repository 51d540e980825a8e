"""Experiment configs: a typed schema (pydantic), YAML loading, command-line overrides.

`load` reads a YAML file, applies overrides and checks everything a run needs
before any data is loaded or any model trained. Every problem is reported at
once, each with its field path (`methods.1`, `model.mlp.hidden`,
`optimizer.name`), in one `ConfigError`: a field that fails the schema does
not stop the checks across fields (against Keras, TF-MOT and dst) that do not
read it. The only check that needs the data is `schedule_steps` (it needs the
number of steps per epoch); the runner does it for every run before the first
one trains, `--dry-run` included.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from experiments import methods as methods_lib

DATASETS = ("digits", "teacher", "fashion_mnist", "mnist", "cifar10")
IMAGE_DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10")
BACKENDS = ("tensorflow", "jax", "torch")
LR_SCHEDULES = ("constant", "cosine", "step")
# Sweep-style singular names (`--method rigl --sparsity 0.9 --seed 0`).
ALIASES = {"method": "methods", "sparsity": "sparsities", "seed": "seeds",
           "distributions": "distribution"}
# Which key a plain string stands for in a mapping field (`optimizer: adam`).
SHORTHAND = {"model": "name", "optimizer": "name", "wandb": "mode"}


class ConfigError(ValueError):
    """A config is unreadable, or fields are missing or have unusable values.

    Attributes:
        problems: (field path, message) pairs, one per problem; the path is ""
            for a problem with the file itself.
    """

    def __init__(self, problems: str | Sequence[tuple[str, str]], source: str = "config"):
        self.problems = [("", problems)] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1 and not self.problems[0][0]:
            text = self.problems[0][1]
        else:
            n = len(self.problems)
            text = f"{n} problem{'s' * (n != 1)} in {source}:\n" + "\n".join(
                f"  {path or '(config)'}: {msg}" for path, msg in self.problems)
        super().__init__(text)


# -- the schema ------------------------------------------------------------------
def _lower(value):
    return value.lower() if isinstance(value, str) else value


def _as_list(value):
    """A scalar stands for a one-element list (`seeds: 0`, `--sparsity 0.9`)."""
    if value is None or isinstance(value, list | tuple):
        return value
    return [value]


def _lower_list(value):
    value = _as_list(value)
    return [_lower(v) for v in value] if isinstance(value, list | tuple) else value


def _known_method(name: str) -> str:
    # Checked against the registry when the config is read, so an updater
    # registered by then (a user's, or one added to dst) is a method.
    known = methods_lib.names()
    if name not in known:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(known)}")
    return name


def _unique(items: list) -> list:
    if not items:
        raise ValueError("must not be empty")
    return list(dict.fromkeys(items))


def _distinct_seeds(value: list) -> list:
    repeated = sorted({s for s in value if value.count(s) > 1})
    if repeated:
        raise ValueError(f"must not repeat a seed (each seed is one run); got {value!r}, "
                         f"where {', '.join(map(str, repeated))} repeat(s). Give distinct "
                         "seeds, e.g. [0, 1, 2].")
    return _unique(value)


def _sparsity(value):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or math.isnan(value) or not 0.0 < value < 1.0:
        raise ValueError(f"must be a number in (0, 1), the fraction of zero weights "
                         f"(0.9 keeps 10%); got {value!r}")
    return float(value)


def _step(value):
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"must be a fraction of training in [0, 1] (e.g. 0.75) or a "
                         f"step count (integer >= 0); got {value!r}")
    if isinstance(value, float) and value > 1.0:
        raise ValueError(f"as a float is a fraction of training and must be in [0, 1]; "
                         f"give an integer for a step count; got {value!r}")
    return value


def _block(value):
    if value is None:
        return None
    ok = (isinstance(value, list | tuple) and len(value) == 2
          and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in value))
    if not ok:
        raise ValueError(f"must be two integers >= 1, a block's (inputs, outputs) over "
                         f"each kernel's last two axes (e.g. [16, 1]), or null for "
                         f"unstructured masks; got {value!r}")
    return list(value)


def _export(value):
    """`export: false` (or null) is off; `true` is the default options."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be false, true or a mapping {{quantize, batch_sizes, "
                         f"calls}}; got {value!r}")
    return value


Distribution = Literal["uniform", "erk", "er"]
Distributions = Annotated[list[Distribution], BeforeValidator(_lower_list)]
PositiveInt = Annotated[int, Field(ge=1)]
Sparsity = Annotated[float, BeforeValidator(_sparsity)]
Step = Annotated[int | float, BeforeValidator(_step)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", validate_default=True)


class MLP(_Strict):
    """LeNet-300-100-style MLP."""

    name: Literal["mlp"]
    hidden: Annotated[list[PositiveInt], Field(min_length=1)] = Field(
        default=[300, 100], description="widths of the hidden layers")


class CNN(_Strict):
    """LeNet-5-like CNN (image data only)."""

    name: Literal["cnn"]


class ResNet(_Strict):
    """CIFAR-style ResNet (image data only); blocks=1 is ResNet-8."""

    name: Literal["resnet"]
    blocks: PositiveInt = Field(default=1, description="residual blocks per stage")
    width: PositiveInt = Field(default=16, description="filters of the first stage")


class Optimizer(BaseModel):
    """A Keras optimizer: `name` plus any constructor arguments."""

    model_config = ConfigDict(strict=True, extra="allow")

    name: str

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, value):
        classes = optimizer_classes()
        if not isinstance(value, str) or value.lower() not in classes:
            raise ValueError(f"must be one of {', '.join(map(repr, classes))}; "
                             f"got {value!r}")
        return value.lower()

    def kwargs(self) -> dict:
        return dict(self.model_extra or {})


class WandbOptions(_Strict):
    """Weights & Biases options (see experiments/README.md, section W&B)."""

    mode: Annotated[Literal["auto", "online", "offline", "disabled"],
                    BeforeValidator(_lower)] = "auto"
    project: str = "keras-dst"
    entity: str | None = None
    group: str | None = Field(default=None, description="default: the experiment name")
    tags: list[str] = []
    dir: str | None = None


class ExportOptions(_Strict):
    """TFLite export of every run's final model with `dst.export` (after training)."""

    quantize: Literal[None, "float16", "dynamic", "int8"] = Field(
        default=None, description="null (float32), float16, dynamic or int8 (calibrated "
                                  "on the first 256 training examples)")
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = Field(
        default=[1, 64], description="batch sizes whose latency is measured")
    calls: PositiveInt = Field(default=100, description="timed calls per batch size "
                                                        "(median; after 10 warm-up calls)")

    @field_validator("batch_sizes")
    @classmethod
    def _no_duplicates(cls, value: list) -> list:
        return _unique(value)


def _shorthand(field):
    def convert(value):
        if value is None and field == "wandb":
            return {}
        if isinstance(value, str):
            return {SHORTHAND[field]: value.lower() if field == "model" else value}
        return value
    return BeforeValidator(convert)


Model = Annotated[MLP | CNN | ResNet, Field(discriminator="name"), _shorthand("model")]


class Config(_Strict):
    """One experiment: every method x distribution x sparsity x seed."""

    dataset: Annotated[Literal[DATASETS], BeforeValidator(_lower)] = Field(
        description="digits and teacher need no download")
    model: Model = Field(description="mlp (option hidden), cnn, or resnet "
                                     "(options blocks, width); a name or a mapping")
    methods: Annotated[list[Annotated[str, AfterValidator(_known_method)]],
                       BeforeValidator(_lower_list)] = Field(
        description="methods to compare: a row of experiments/methods.py or any "
                    "name registered with dst.updaters.register")
    sparsities: Annotated[list[Sparsity], BeforeValidator(_as_list)] = Field(
        description="target sparsities in (0, 1)")
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_as_list)] = Field(
        description="random seeds, all distinct")
    epochs: PositiveInt = Field(description="training epochs of every run")
    batch_size: PositiveInt = Field(description="examples per optimizer step")
    optimizer: Annotated[Optimizer, _shorthand("optimizer")] = Field(
        description="a name (adam, sgd, ...) or {name: adam, learning_rate: 0.001, ...}")
    lr_schedule: Annotated[Literal[LR_SCHEDULES], BeforeValidator(_lower)] = Field(
        default="constant", description="learning-rate decay over the run's steps: "
                                        "constant, cosine (to 0) or step (x0.1 at 50% "
                                        "and 75%)")
    backend: Annotated[Literal[BACKENDS], BeforeValidator(_lower)] = Field(
        default="tensorflow", description="Keras backend; tfmot needs tensorflow")
    name: str | None = Field(default=None, description="experiment name (W&B group, "
                                                       "default output folder); "
                                                       "None: <dataset>_<model>")
    distribution: Distributions = Field(
        default=["erk"], description="layer-wise distribution(s) of static, set, rigl, "
                                     "rigl_2x, granet, srigl, snfs")
    magnitude_distribution: Distributions = Field(
        default=["uniform"], description="the same for magnitude (uniform is TF-MOT's rule)")
    update_freq: PositiveInt = Field(default=100, description="steps between mask updates")
    drop_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.3, description="drop fraction of set, rigl, rigl_2x, srigl, snfs, "
                                 "in (0, 1]")
    drop_fraction_schedule: str = Field(
        default="cosine", description="its decay: set, rigl, rigl_2x, srigl, snfs")
    begin_step: Step = Field(default=0, description="fraction of training or step count")
    end_step: Step = Field(default=0.75, description="fraction of training or step count, "
                                                     "after begin_step")
    sparse_init: bool = Field(default=False, description="dst.sparsify(sparse_init=...)")
    grow_candidates: Literal["after_drop", "before_drop"] = Field(
        default="after_drop", description="set, rigl, rigl_2x, snfs: grow among connections "
                                          "inactive after the drop (the references') or "
                                          "before it")
    grad_accumulation_n: PositiveInt = Field(
        default=1, description="rigl, rigl_2x, granet, srigl: steps whose dense gradients "
                               "are averaged into the grow scores, at most update_freq")
    keep_dense: Literal["first", "last", "both"] | None = Field(
        default=None, description="dst.sparsify(keep_dense=...) for the dst methods "
                                  "(both: first and last); TF-MOT prunes every layer")
    block: Annotated[list[int] | None, BeforeValidator(_block)] = Field(
        default=None, description="[inputs, outputs] block masks for every sparse method "
                                  "(tfmot: block_size of its Dense layers); null: "
                                  "unstructured")
    export: Annotated[ExportOptions | None, BeforeValidator(_export)] = Field(
        default=None, description="false, or {quantize, batch_sizes, calls}: export each "
                                  "final model to TFLite and measure size and latency")
    val_split: Annotated[float, Field(ge=0.0, lt=0.5)] = Field(
        default=0.0, description="held-out fraction of the training set; 0: validate on test")
    max_train_samples: PositiveInt | None = Field(
        default=None, description="keep only the first N training examples")
    max_test_samples: PositiveInt | None = Field(
        default=None, description="keep only the first N test examples")
    data_dir: str | None = Field(default=None, description="folder with MNIST IDX files")
    verbose: Literal[0, 1, 2] = Field(default=2, description="Keras fit verbosity")
    wandb: Annotated[WandbOptions, _shorthand("wandb")] = Field(
        default_factory=WandbOptions, description="a mode (auto, online, offline, "
                                                  "disabled) or {mode, project, ...}")

    @field_validator("methods", "sparsities", "distribution", "magnitude_distribution")
    @classmethod
    def _no_duplicates(cls, value: list) -> list:
        return _unique(value)

    @field_validator("seeds")
    @classmethod
    def _no_repeated_seed(cls, value: list) -> list:
        return _distinct_seeds(value)

    @model_validator(mode="after")
    def _default_name(self):
        if self.name is None:
            self.name = f"{self.dataset}_{self.model.name}"
        return self


def field_help() -> str:
    """One line per config field: name, default (or "required") and meaning."""
    lines = []
    for name, info in Config.model_fields.items():
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                value = value.model_dump()
            default = f"default {value!r}"
        lines.append(f"  {name:<24}{default}" + (
            f"; {info.description}" if info.description else ""))
    return "\n".join(lines)


# -- loading ------------------------------------------------------------------------
def load(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict:
    """Reads a YAML config, applies `overrides` and returns the checked config."""
    return validate(apply_overrides(read_yaml(path, "config file"), overrides or {}),
                    source=str(path))


def read_yaml(path: str | Path, what: str) -> dict:
    """The mapping in a YAML file; a missing file or bad YAML is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"The {what} {str(path)!r} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"The {what} {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"The {what} {str(path)!r} must hold a YAML mapping of fields, "
                          f"got {type(raw).__name__}.")
    return raw


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
        try:
            out[key] = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"Override --{key} is not a YAML value: {err}") from None
    return out


def validate(raw: Mapping[str, Any], source: str = "config") -> dict:
    """Checks every field and returns the config as a plain dict, defaults filled in.

    Raises:
        ConfigError: listing every problem, each with its field path.
    """
    # `seeds: null` (or `--seeds ""`) is a missing field, not a wrong type.
    raw = {k: v for k, v in raw.items()
           if v is not None or k not in Config.model_fields or not _required(k)}
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        problems = [_problem(e) for e in err.errors()]
        bad = {path.split(".")[0] for path, _ in problems}
        fields = _valid_fields(raw, bad)
        problems += _cross_checks(fields)
        if "optimizer" in bad:
            problems += _skipping(_check_unknown_optimizer, raw.get("optimizer"), fields)
        raise ConfigError(problems, source) from None
    out = _as_dict(cfg)
    problems = _cross_checks(_Fields(out))
    if problems:
        raise ConfigError(problems, source)
    if out["block"] is not None and tuple(out["block"]) == (1, 1):
        out["block"] = None  # a 1x1 block is an unstructured mask
    return out


def _required(field: str) -> bool:
    return Config.model_fields[field].is_required()


def _as_dict(cfg: Config) -> dict:
    out = cfg.model_dump()
    out["optimizer"] = {"name": cfg.optimizer.name, **cfg.optimizer.kwargs()}
    return out


def _problem(error: Mapping) -> tuple[str, str]:
    path = ".".join(str(p) for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        msg = "required field is missing"
    elif error["type"] == "extra_forbidden":
        msg = "unknown field" + _field_hint(error["loc"])
    elif error["type"] not in ("value_error", "union_tag_invalid"):
        msg += f"; got {error['input']!r}"
    return path, msg


def _field_hint(loc: Sequence) -> str:
    """` (did you mean 'model.mlp.hidden'?); allowed fields: ...` for unknown field `loc`."""
    schema = _schema_at(loc[:-1])
    if schema is None:
        return ""
    allowed = list(schema.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    guess = ".".join([*map(str, loc[:-1]), close[0]]) if close else ""
    return (f" (did you mean {guess!r}?)" if guess else "") + (
        f"; allowed fields: {', '.join(allowed)}")


def _schema_at(loc: Sequence) -> type[BaseModel] | None:
    """The schema class at field path `loc` (a tagged union's tag is a step: `model.mlp`)."""
    schema, steps = Config, list(loc)
    while steps:
        info = schema.model_fields.get(str(steps.pop(0)))
        if info is None:
            return None
        options = [t for t in typing.get_args(info.annotation) or (info.annotation,)
                   if isinstance(t, type) and issubclass(t, BaseModel)]
        if info.discriminator and steps:
            tag = steps.pop(0)
            options = [t for t in options if tag in typing.get_args(
                t.model_fields[info.discriminator].annotation)]
        if len(options) != 1:
            return None
        schema = options[0]
    return schema


# -- checks across fields and against Keras, TF-MOT and dst -----------------------------
class _FailedFieldError(Exception):
    """A check read a field that failed the schema; it is skipped."""


class _Fields(dict):
    """The config fields that passed the schema; reading another raises `_FailedFieldError`."""

    def __missing__(self, key):
        raise _FailedFieldError(key)


# Valid values of the required fields, standing in for those that fail the schema so
# that the other fields can be validated; no check reads a stand-in.
_STAND_INS = {"dataset": "digits", "model": "mlp", "methods": ["dense"], "sparsities": [0.5],
              "seeds": [0], "epochs": 1, "batch_size": 1, "optimizer": "sgd"}


def _valid_fields(raw: Mapping[str, Any], bad: set[str]) -> _Fields:
    """The fields of `raw` not in `bad`, validated and with defaults filled in."""
    stand_in = {k: v for k, v in raw.items() if k not in bad}
    stand_in.update({k: v for k, v in _STAND_INS.items() if k in bad})
    try:
        out = _as_dict(Config.model_validate(stand_in))
    except ValidationError:  # a required field without a stand-in: check nothing more
        return _Fields()
    return _Fields({k: v for k, v in out.items() if k not in bad})


def _skipping(check, *args) -> list[tuple[str, str]]:
    try:
        return check(*args)
    except _FailedFieldError:
        return []


def _cross_checks(cfg: _Fields) -> list[tuple[str, str]]:
    """Every check that reads only fields of `cfg` (those that passed the schema)."""
    problems = []
    for check in (_check_model, _check_backend, _check_optimizers, _check_export,
                  _check_step_order):
        problems += _skipping(check, cfg)
    for i, method in enumerate(cfg.get("methods", ())):
        problems += _skipping(_check_callback, i, methods_lib.get(method), cfg)
    return problems


def _check_model(cfg: Mapping) -> list[tuple[str, str]]:
    name = cfg["model"]["name"]
    if name in ("cnn", "resnet") and cfg["dataset"] not in IMAGE_DATASETS:
        return [("model", f"{name!r} needs image data; dataset {cfg['dataset']!r} is a vector "
                          f"task. Use model 'mlp', or a dataset from "
                          f"{', '.join(IMAGE_DATASETS)}.")]
    return []


def _tf_keras_methods(cfg: Mapping) -> list[str]:
    return [m for m in cfg["methods"] if methods_lib.get(m).framework == "tf_keras"]


def _check_backend(cfg: Mapping) -> list[tuple[str, str]]:
    tf_keras_methods = _tf_keras_methods(cfg)
    if tf_keras_methods and cfg["backend"] != "tensorflow":
        return [("backend", f"method(s) {tf_keras_methods} run on tf_keras and need "
                            f"backend 'tensorflow'; got {cfg['backend']!r}.")]
    return []


def _check_optimizers(cfg: Mapping) -> list[tuple[str, str]]:
    frameworks = {methods_lib.get(m).framework for m in cfg["methods"]}
    for framework in sorted(frameworks):  # "keras" first; one report is enough
        found = _check_optimizer(cfg["optimizer"], framework, _tf_keras_methods(cfg),
                                 cfg["lr_schedule"])
        if found:
            return found
    return []


def _check_step_order(cfg: Mapping) -> list[tuple[str, str]]:
    """begin_step before end_step, when both are fractions or both step counts."""
    if not any(methods_lib.get(m).schedule for m in cfg["methods"]):
        return []
    begin, end = cfg["begin_step"], cfg["end_step"]
    if type(begin) is type(end) and end <= begin:
        return [_step_order_problem(begin, end, begin > end)]
    return []


def _step_order_problem(begin_step, end_step, after: bool,
                        steps: str = "") -> tuple[str, str]:
    """`end_step` is not after `begin_step` (`steps`: what they resolve to, if they do)."""
    order = "begin_step is after end_step" if after else "they are the same step"
    return ("end_step", f"must be after begin_step, as mask updates run from one to the "
                        f"other; got begin_step={begin_step!r}, end_step={end_step!r}{steps}, "
                        f"so {order}. Move begin_step before end_step.")


def _check_export(cfg: Mapping) -> list[tuple[str, str]]:
    import importlib.util

    if cfg["export"] is None:
        return []
    if cfg["backend"] != "tensorflow":
        return [("export", f"the TFLite export converts with TensorFlow and needs backend "
                           f"'tensorflow'; got {cfg['backend']!r}. Drop `export`, or train "
                           "on tensorflow.")]
    missing = [m for m in ("tensorflow", "ai_edge_litert")
               if importlib.util.find_spec(m) is None]
    if missing:
        return [("export", f"needs {missing} to convert and run TFLite files: pip install "
                           "'keras-dst[export]', or drop `export`.")]
    return []


def optimizer_classes(framework: str = "keras") -> dict[str, str]:
    """Lower-case name -> class name of the optimizers of Keras 3 (or tf_keras)."""
    if framework == "keras":
        import keras as k
    else:
        import tf_keras as k
    names = {
        n for n, c in vars(k.optimizers).items()
        if inspect.isclass(c) and issubclass(c, k.optimizers.Optimizer)
        and n not in ("Optimizer", "LossScaleOptimizer", "MultiOptimizer", "OptimizerMap")
    }
    return {n.lower(): n for n in sorted(names)}


def make_optimizer(spec: Mapping[str, Any], framework: str = "keras", *,
                   lr_schedule: str = "constant", total_steps: int | None = None):
    """Builds the optimizer `{name, **kwargs}` with Keras 3 (or tf_keras).

    With `lr_schedule` other than "constant", its learning rate is the spec's
    (or the class default) decayed over `total_steps` by `learning_rate_schedule`.
    """
    if framework == "keras":
        import keras as k
    else:
        import tf_keras as k
    cls = getattr(k.optimizers, optimizer_classes(framework)[spec["name"]])
    kwargs = {a: v for a, v in spec.items() if a != "name"}
    if lr_schedule != "constant":
        if total_steps is None:
            raise ValueError(f"lr_schedule={lr_schedule!r} needs the run's total_steps.")
        initial = kwargs.get("learning_rate",
                             inspect.signature(cls).parameters["learning_rate"].default)
        kwargs["learning_rate"] = learning_rate_schedule(
            lr_schedule, float(initial), total_steps, framework)
    return cls(**kwargs)


def learning_rate_schedule(name: str, initial: float, total_steps: int,
                           framework: str = "keras"):
    """The learning rate at each optimizer step, as a Keras 3 (or tf_keras) schedule.

    "cosine": `initial * (1 + cos(pi * step / total_steps)) / 2`, 0 at the end;
    "step": `initial`, then x0.1 after 50% and x0.01 after 75% of `total_steps`
    (the RigL CIFAR setups). Both frameworks get the same formula.
    """
    if framework == "keras":
        import keras as k
    else:
        import tf_keras as k
    schedules = k.optimizers.schedules
    if name == "cosine":
        return schedules.CosineDecay(initial, decay_steps=total_steps, alpha=0.0)
    if name == "step":
        boundaries = [int(0.5 * total_steps), int(0.75 * total_steps)]
        return schedules.PiecewiseConstantDecay(
            boundaries, [initial, initial * 0.1, initial * 0.01])
    raise ValueError(f"Unknown lr_schedule {name!r}; known: {', '.join(LR_SCHEDULES)}.")


def _check_optimizer(spec: Mapping[str, Any], framework: str, tf_keras_methods,
                     lr_schedule: str = "constant") -> list:
    name, kwargs = spec["name"], {a: v for a, v in spec.items() if a != "name"}
    if framework == "tf_keras":
        try:
            classes = optimizer_classes("tf_keras")
        except ImportError:
            return [("methods", f"{tf_keras_methods} need TF-MOT and tf_keras: pip install "
                                "'keras-dst[tfmot]', or drop them from `methods`.")]
        if name not in classes:
            return [("optimizer.name", f"{name!r} exists in Keras 3 but not in tf_keras, "
                                       f"which method(s) {tf_keras_methods} train with. "
                                       f"Use one of {', '.join(map(repr, classes))}.")]
    try:
        make_optimizer(spec, framework, lr_schedule=lr_schedule, total_steps=100)
    except (TypeError, ValueError) as err:
        where = "Keras 3" if framework == "keras" else "tf_keras"
        return [("optimizer", f"{where} {name!r} rejected its arguments {kwargs}: {err}")]
    return []


def _check_unknown_optimizer(raw: Any, cfg: Mapping) -> list[tuple[str, str]]:
    """With no known optimizer name, checks the arguments every Keras 3 optimizer takes."""
    import keras

    if not isinstance(raw, Mapping):
        return []
    common = set.intersection(*(set(inspect.signature(getattr(keras.optimizers, c)).parameters)
                                for c in optimizer_classes().values())) - {"name", "kwargs"}
    given = {a: v for a, v in raw.items() if a in common}
    if not given:
        return []
    lr_schedule = cfg["lr_schedule"]
    try:
        kwargs = dict(given)
        if "learning_rate" in kwargs and lr_schedule != "constant":
            kwargs["learning_rate"] = learning_rate_schedule(
                lr_schedule, float(kwargs["learning_rate"]), total_steps=100)
        keras.optimizers.Optimizer(**kwargs)
    except (TypeError, ValueError) as err:
        return [("optimizer", f"Keras 3 rejected {given}, arguments that every optimizer "
                              f"takes (the name is unknown, so its own arguments are not "
                              f"checked): {err}")]
    return []


def _check_callback(i: int, method: methods_lib.Method, cfg: Mapping) -> list:
    """Builds the method's dst callback once, so dst's own checks run before training."""
    if method.callback is None:
        return []
    kw = dict(cfg=cfg, sparsity=cfg["sparsities"][0], seed=0, begin=1, end=2)
    import dst

    try:
        cls = dst.updaters.get(method.callback)
    except ValueError as err:
        return [(f"methods.{i}", f"{method.name!r}: this dst has no callback "
                                 f"{method.callback!r} ({err}).")]
    try:
        dst.callbacks.get(method.callback, **method.callback_kwargs(
            distribution=method.distributions(kw["cfg"])[0], **kw))
    except (TypeError, ValueError) as err:
        return [(f"methods.{i}", f"{method.name!r}: dst.callbacks.get({method.callback!r}) "
                                 f"({cls.__name__}) rejected the config: {err}")]
    return []


# -- checks that need the data -------------------------------------------------------
def check_block_fits(cfg: Mapping[str, Any], input_shape, num_classes: int) -> None:
    """Raises a ConfigError when `block` cannot apply to a kernel of the model.

    Every kernel dst sparsifies is blocked, so each must be at least as long
    as the block along its (input, output) axes.
    """
    if cfg["block"] is None:
        return
    import dst
    from experiments import models

    model = models.build(cfg["model"], input_shape, num_classes)
    try:
        dst.sparsify(model, 0.0, "uniform", block=tuple(cfg["block"]))
    except ValueError as err:
        raise ConfigError([("block", f"{err} (the runner blocks every kernel of the "
                                     f"model: use a smaller block, or another model)")],
                          cfg.get("name", "config")) from None


# -- the schedule: needs the number of steps per epoch ----------------------------------
def schedule_steps(cfg: Mapping[str, Any], steps_per_epoch: int) -> tuple[int, int]:
    """Resolves begin_step/end_step (fractions or steps) to integer steps.

    The end step is moved back onto the update grid begin + k * update_freq and
    below the last step, so that a pruning schedule that updates every
    `update_freq` steps (TF-MOT's PolynomialDecay, dst's MagnitudePruning)
    actually reaches its final sparsity.

    Raises:
        ConfigError: when begin_step is not before end_step, or no update fits
            in training.
    """
    total = steps_per_epoch * cfg["epochs"]
    freq = cfg["update_freq"]
    training = f"{cfg['epochs']} epoch(s) x {steps_per_epoch} steps = {total} steps"

    def to_step(v):
        return int(round(v * total)) if isinstance(v, float) else int(v)

    def fail(path, msg):
        raise ConfigError([(path, msg)], cfg.get("name", "config"))

    begin_step, end_step = cfg["begin_step"], cfg["end_step"]
    begin, stop = to_step(begin_step), to_step(end_step)
    if stop <= begin:
        fail(*_step_order_problem(begin_step, end_step, begin > stop,
                                  f" (steps {begin} and {stop} of {training})"))
    last = min(stop, total - 1)
    if last <= begin:
        fail("begin_step", f"must be before the last step of training; got "
                           f"begin_step={begin_step!r} (step {begin}) with {training}. "
                           "Begin earlier, or train for more steps.")
    end = begin + (last - begin) // freq * freq
    if end <= begin:
        fail("update_freq", f"the update schedule does not fit in training: {training}, "
                            f"begin_step={begin_step!r}, end_step={end_step!r}, "
                            f"update_freq={freq}. Lower `update_freq` (at most "
                            f"{max(1, (last - begin) // 2)} here), or train for more steps.")
    return begin, end
