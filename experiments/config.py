"""Experiment configs: a typed schema (pydantic), YAML loading, command-line overrides.

`load` reads a YAML file, applies overrides and checks everything a run needs
before any data is loaded or any model trained. Every problem is reported at
once, each with its field path (`methods.1`, `model.mlp.hidden`,
`optimizer.name`), in one `ConfigError`. The only check that needs the data
is `schedule_steps` (it needs the number of steps per epoch); the runner does
it for every run before the first one trains, `--dry-run` included.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
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
METHODS = methods_lib.NAMES
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


def _unique(items: list) -> list:
    if not items:
        raise ValueError("must not be empty")
    return list(dict.fromkeys(items))


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
    methods: Annotated[list[Literal[METHODS]], BeforeValidator(_lower_list)] = Field(
        description="methods to compare")
    sparsities: Annotated[list[Sparsity], BeforeValidator(_as_list)] = Field(
        description="target sparsities in (0, 1)")
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_as_list)] = Field(
        description="random seeds")
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
        default=["erk"], description="layer-wise distribution(s) of static, set, rigl")
    magnitude_distribution: Distributions = Field(
        default=["uniform"], description="the same for magnitude (uniform is TF-MOT's rule)")
    update_freq: PositiveInt = Field(default=100, description="steps between mask updates")
    drop_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.3, description="SET/RigL drop fraction, in (0, 1]")
    drop_fraction_schedule: str = Field(default="cosine", description="SET/RigL")
    begin_step: Step = Field(default=0, description="fraction of training or step count")
    end_step: Step = Field(default=0.75, description="fraction of training or step count")
    sparse_init: bool = Field(default=False, description="dst.sparsify(sparse_init=...)")
    grow_candidates: Literal["after_drop", "before_drop"] = Field(
        default="after_drop", description="SET/RigL: grow among connections inactive after "
                                          "the drop (the references') or before it")
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

    @field_validator("methods", "sparsities", "seeds", "distribution",
                     "magnitude_distribution")
    @classmethod
    def _no_duplicates(cls, value: list) -> list:
        return _unique(value)

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
        raise ConfigError([_problem(e) for e in err.errors()], source) from None
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(problems, source)
    out = cfg.model_dump()
    out["optimizer"] = {"name": cfg.optimizer.name, **cfg.optimizer.kwargs()}
    if out["block"] is not None and tuple(out["block"]) == (1, 1):
        out["block"] = None  # a 1x1 block is an unstructured mask
    return out


def _required(field: str) -> bool:
    return Config.model_fields[field].is_required()


def _problem(error: Mapping) -> tuple[str, str]:
    path = ".".join(str(p) for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        msg = "required field is missing"
    elif error["type"] == "extra_forbidden":
        msg = "unknown field"
        if len(error["loc"]) == 1:
            close = difflib.get_close_matches(str(error["loc"][0]), Config.model_fields, n=1)
            msg += (f" (did you mean {close[0]!r}?)" if close else "") + (
                f"; allowed fields: {', '.join(Config.model_fields)}")
    elif error["type"] not in ("value_error", "union_tag_invalid"):
        msg += f"; got {error['input']!r}"
    return path, msg


# -- checks across fields and against Keras, TF-MOT and dst -----------------------------
def _cross_checks(cfg: Config) -> list[tuple[str, str]]:
    problems = []
    if cfg.model.name in ("cnn", "resnet") and cfg.dataset not in IMAGE_DATASETS:
        problems.append(("model", f"{cfg.model.name!r} needs image data; dataset "
                                  f"{cfg.dataset!r} is a vector task. Use model 'mlp', or a "
                                  f"dataset from {', '.join(IMAGE_DATASETS)}."))
    frameworks = {methods_lib.get(m).framework for m in cfg.methods}
    tf_keras_methods = [m for m in cfg.methods if methods_lib.get(m).framework == "tf_keras"]
    if tf_keras_methods and cfg.backend != "tensorflow":
        problems.append(("backend", f"method(s) {tf_keras_methods} run on tf_keras and need "
                                    f"backend 'tensorflow'; got {cfg.backend!r}."))
    for framework in sorted(frameworks):  # "keras" first; one report is enough
        found = _check_optimizer(cfg.optimizer, framework, tf_keras_methods, cfg.lr_schedule)
        problems += found
        if found:
            break
    if cfg.export is not None:
        problems += _check_export(cfg)
    kwargs = _fake_schedule_kwargs(cfg)
    for i, method in enumerate(cfg.methods):
        problems += _check_callback(i, methods_lib.get(method), kwargs)
    return problems


def _check_export(cfg: Config) -> list[tuple[str, str]]:
    import importlib.util

    if cfg.backend != "tensorflow":
        return [("export", f"the TFLite export converts with TensorFlow and needs backend "
                           f"'tensorflow'; got {cfg.backend!r}. Drop `export`, or train "
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


def _check_optimizer(opt: Optimizer, framework: str, tf_keras_methods,
                     lr_schedule: str = "constant") -> list:
    spec = {"name": opt.name, **opt.kwargs()}
    if framework == "tf_keras":
        try:
            classes = optimizer_classes("tf_keras")
        except ImportError:
            return [("methods", f"{tf_keras_methods} need TF-MOT and tf_keras: pip install "
                                "'keras-dst[tfmot]', or drop them from `methods`.")]
        if opt.name not in classes:
            return [("optimizer.name", f"{opt.name!r} exists in Keras 3 but not in tf_keras, "
                                       f"which method(s) {tf_keras_methods} train with. "
                                       f"Use one of {', '.join(map(repr, classes))}.")]
    try:
        make_optimizer(spec, framework, lr_schedule=lr_schedule, total_steps=100)
    except (TypeError, ValueError) as err:
        where = "Keras 3" if framework == "keras" else "tf_keras"
        return [("optimizer", f"{where} {opt.name!r} rejected its arguments "
                              f"{opt.kwargs()}: {err}")]
    return []


def _fake_schedule_kwargs(cfg: Config) -> dict:
    return dict(cfg=cfg.model_dump(), sparsity=cfg.sparsities[0], seed=0, begin=1, end=2)


def _check_callback(i: int, method: methods_lib.Method, kw: dict) -> list:
    """Builds the method's dst callback once, so dst's own checks run before training."""
    if method.callback is None:
        return []
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
        ConfigError: when no update fits in training.
    """
    total = steps_per_epoch * cfg["epochs"]
    freq = cfg["update_freq"]

    def to_step(v):
        return int(round(v * total)) if isinstance(v, float) else int(v)

    begin, end = to_step(cfg["begin_step"]), min(to_step(cfg["end_step"]), total - 1)
    end = begin + (end - begin) // freq * freq
    if end <= begin:
        raise ConfigError([("update_freq", (
            f"the update schedule does not fit in training: {cfg['epochs']} "
            f"epoch(s) x {steps_per_epoch} steps = {total} steps, "
            f"begin_step={cfg['begin_step']!r}, end_step={cfg['end_step']!r}, "
            f"update_freq={freq}. Lower `update_freq` (at most "
            f"{max(1, (to_step(cfg['end_step']) - begin) // 2)} here), or train "
            "for more steps."))], cfg.get("name", "config"))
    return begin, end
