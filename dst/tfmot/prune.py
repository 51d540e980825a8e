"""`prune_low_magnitude`, `strip_pruning`, `prune_scope` and `PrunableLayer`:
TF-MOT's entry points, with dst masks in place of wrapper layers."""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import keras

from dst import _compat
from dst._model import find_targets
from dst.strip import strip
from dst.tfmot.policy import PruningPolicy
from dst.tfmot.pruning import (
    PruningMask,
    as_schedule,
    attach,
    check_block_size,
    check_m_by_n,
    check_pooling,
)
from dst.tfmot.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule

__all__ = ["PrunableLayer", "prune_low_magnitude", "prune_scope", "strip_pruning"]

# TF-MOT's registry of built-in layers: the names of the weights each prunes.
# Layers not listed that have no weights of their own are accepted as is.
_PRUNABLE = (
    ((keras.layers.SeparableConv1D, keras.layers.SeparableConv2D), ("pointwise_kernel",)),
    ((keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D), ()),
    ((keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
      keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
      keras.layers.Conv3DTranspose, keras.layers.Dense, keras.layers.EinsumDense),
     ("kernel",)),
    ((keras.layers.Embedding,), ("embeddings",)),
    ((keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN), ("kernel",
                                                                      "recurrent_kernel")),
    ((keras.layers.MultiHeadAttention,), ("kernel",)),
    ((keras.layers.BatchNormalization, keras.layers.LayerNormalization), ()),
)
_SPEC = "_dst_tfmot_spec"
_DEFAULT_SCHEDULE = ConstantSparsity(0.5, 0)  # TF-MOT's default, one shared instance  # layer attribute: (schedule, block_size, pooling, m_by_n)


class PrunableLayer(abc.ABC):
    """A mixin for your own layer: `get_prunable_weights()` names what is pruned.

    As in TF-MOT, `prune_low_magnitude` prunes exactly the weights it returns
    (the layer's own trainable weights; biases too, if you return them). A
    layer that defines `get_prunable_weights` without the mixin works too.

    Examples:
        >>> import keras, dst.tfmot as tfmot_sparsity
        >>> class Scale(keras.layers.Layer, tfmot_sparsity.PrunableLayer):
        ...     def build(self, input_shape):
        ...         self.w = self.add_weight(shape=(input_shape[-1], 4))
        ...     def call(self, x):
        ...         return x @ self.w
        ...     def get_prunable_weights(self):
        ...         return [self.w]
        >>> layer = tfmot_sparsity.prune_low_magnitude(Scale())
        >>> _ = layer(keras.ops.ones((1, 3)))
        >>> type(layer.w.constraint).__name__
        'PruningMask'
    """

    @abc.abstractmethod
    def get_prunable_weights(self) -> list:
        """The weights `prune_low_magnitude` prunes."""
        raise NotImplementedError("Must be implemented in subclasses.")

    def dst_prunable_weights(self) -> list:
        """dst's protocol (see `dst.sparsify`): the weights of `get_prunable_weights`."""
        return list(self.get_prunable_weights())


def prune_low_magnitude(to_prune: Any,
                        pruning_schedule: PruningSchedule = _DEFAULT_SCHEDULE,
                        block_size: int | Sequence[int] = (1, 1),
                        block_pooling_type: str = "AVG",
                        pruning_policy: PruningPolicy | None = None,
                        sparsity_m_by_n: Sequence[int] | None = None,
                        **kwargs: Any) -> Any:
    """Prunes a layer, a list of layers or a model by magnitude during training.

    TF-MOT's function, without wrapper layers: each prunable weight gets a dst
    mask (all ones) when its layer is built, and `UpdatePruningStep` prunes it
    at the steps of `pruning_schedule` to its sparsity (see
    `dst.tfmot.TFMOTPruning`). A layer is changed in place and returned (so
    inside `keras.models.clone_model(model, clone_function=...)` the clone
    shares it with `model`, as TF-MOT's wrapper shares the wrapped layer); a
    Sequential or Functional model is cloned with its layers shared, and the
    clone, not compiled, is returned. Unlike TF-MOT, a subclassed model is
    accepted: its built layers are pruned in place and the model returned.

    Args:
        to_prune: a layer, a list of layers, or a model.
        pruning_schedule: a `PruningSchedule`. Defaults to
            `ConstantSparsity(0.5, 0)`.
        block_size: (height, width) of the blocks a 2-D weight is pruned in.
            Defaults to (1, 1).
        block_pooling_type: how a block's magnitude is pooled: "AVG" or
            "MAX". Defaults to "AVG".
        pruning_policy: a `PruningPolicy` choosing the layers of a model to
            prune. Defaults to None (all supported layers).
        sparsity_m_by_n: (m, n): instead of the schedule, prune m of every n
            consecutive weights along the input axis (TF-MOT's semantics: a
            Dense kernel's inputs of each unit, a Conv2D kernel's input
            channels; rank-2 and rank-4 weights only; a group that the axis
            cuts short keeps min(n − m, its length)), once, at the first
            training step; `pruning_schedule`, `block_size` and
            `block_pooling_type` are then unused. Note TF-MOT counts zeros:
            (1, 4) keeps 3 of 4, where `dst.sparsify(..., n_m=(1, 4))`
            keeps 1. Defaults to None.
        **kwargs: refused: there is no wrapper layer to pass them to.

    Returns:
        The pruned layer, list of layers, or model.

    Raises:
        ValueError: an unsupported layer or object, a bad argument
            (TF-MOT's messages), or `sparsity_m_by_n` on a weight that is not
            rank 2 or 4 (TF-MOT raises that at the first training step).
        TypeError: `kwargs` are given.

    Examples:
        >>> import keras, dst.tfmot as tfmot_sparsity
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> pruned = tfmot_sparsity.prune_low_magnitude(model)
        >>> type(pruned.layers[0].kernel.constraint).__name__
        'PruningMask'
    """
    spec = (as_schedule(pruning_schedule), check_block_size(block_size),
            check_pooling(block_pooling_type), check_m_by_n(sparsity_m_by_n))
    if kwargs:
        raise TypeError(
            f"dst.tfmot.prune_low_magnitude got keyword arguments {sorted(kwargs)}, which "
            "TF-MOT passes to its wrapper layer; dst has no wrapper layer. Give the layer "
            "its own arguments, and a Sequential model a keras.Input(shape) first."
        )
    if isinstance(to_prune, list):
        return [layer if isinstance(layer, keras.layers.InputLayer) else _prune(layer, spec)
                for layer in to_prune]
    if isinstance(to_prune, keras.Model):
        if isinstance(to_prune, keras.Sequential | _compat.Functional):
            if pruning_policy is not None:
                pruning_policy.ensure_model_supports_pruning(to_prune)
            return keras.models.clone_model(
                to_prune, recursive=True,
                clone_function=lambda layer: _maybe_prune(layer, spec, pruning_policy))
        for layer in _compat.flatten_layers(to_prune):  # subclassed: in place
            if not _compat.flatten_layers(layer, recursive=False) or _rule(layer) is not None:
                _maybe_prune(layer, spec, pruning_policy)
        return to_prune
    if isinstance(to_prune, keras.layers.Layer):
        return _prune(to_prune, spec)
    raise ValueError(
        "`prune_low_magnitude` can only prune an object of the following types: "
        "keras.models.Sequential, keras functional model, keras.layers.Layer, list of "
        f"keras.layers.Layer. You passed an object of type: {type(to_prune).__name__}."
    )


def strip_pruning(model: keras.Model) -> keras.Model:
    """A plain Keras model: the pruned model without dst objects, zeros baked in.

    `dst.strip`: the result has no mask and no dst class, so it saves and
    loads without dst, and its layers have their own names (there are no
    wrappers to remove). A Sequential or Functional model is cloned; a
    subclassed model (which TF-MOT refuses) is stripped in place.

    Args:
        model: a pruned `keras.Model`.

    Returns:
        The plain model.

    Raises:
        ValueError: `model` is not a `keras.Model`.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected model to be a `keras.Model` instance but got: {model!r}")
    cloneable = isinstance(model, keras.Sequential | _compat.Functional)
    return strip(model, inplace=not cloneable)


@contextlib.contextmanager
def prune_scope() -> Iterator[None]:
    """A scope in which pruned models deserialize, as in TF-MOT.

    Not needed in dst: `import dst` registers every dst class with Keras, so
    `keras.models.load_model` loads a pruned `.keras` file inside or outside
    this scope. It maps the plain names ("PruningMask", "ConstantSparsity",
    "PolynomialDecay") for configs written without the "dst>" prefix.

    Examples:
        >>> import dst.tfmot as tfmot_sparsity
        >>> with tfmot_sparsity.prune_scope():
        ...     pass
    """
    with keras.saving.custom_object_scope({"PruningMask": PruningMask,
                                           "ConstantSparsity": ConstantSparsity,
                                           "PolynomialDecay": PolynomialDecay}):
        yield


# -- helpers -----------------------------------------------------------------------
def _maybe_prune(layer, spec, policy):
    if isinstance(layer, keras.layers.InputLayer):
        return layer
    if policy is not None and not policy.allow_pruning(layer):
        return layer
    return _prune(layer, spec)


def _rule(layer) -> tuple[str, ...] | str | None:
    """"declared" (get_prunable_weights), the names of the weights TF-MOT's
    registry prunes, or None for a layer it does not know."""
    if hasattr(layer, "get_prunable_weights"):
        return "declared"
    for classes, names in _PRUNABLE:
        if isinstance(layer, classes):
            return names
    return None


def _prune(layer, spec):
    """Marks `layer` pruned and attaches its masks now (built) or after `build`."""
    if not isinstance(layer, keras.layers.Layer):
        raise ValueError(f"Please initialize `Prune` layer with a `Layer` instance. You "
                         f"passed: {layer!r}")
    if getattr(layer, _SPEC, None) is not None:
        return layer  # already pruned: as is, as TF-MOT keeps a wrapped layer
    rule = _rule(layer)
    if rule is None and (not layer.built or layer.weights) and not _keras_layer(layer):
        raise ValueError(
            "Please initialize `Prune` with a supported layer. Layers should either be "
            "supported by the PruneRegistry (built-in keras layers) or should be a "
            "`PrunableLayer` instance, or should has a customer defined "
            f"`get_prunable_weights` method. You passed: {type(layer)}"
        )
    object.__setattr__(layer, _SPEC, spec)
    if rule == "declared" and not hasattr(layer, "dst_prunable_weights"):
        object.__setattr__(layer, "dst_prunable_weights",
                           lambda: list(layer.get_prunable_weights()))
    if layer.built:
        _attach_masks(layer)
    else:
        build = layer.build

        @functools.wraps(build)  # Keras reads the argument names of `build`
        def build_then_attach(*args, **kwargs):
            build(*args, **kwargs)
            _attach_masks(layer)

        object.__setattr__(layer, "build", build_then_attach)
    return layer


def _attach_masks(layer) -> None:
    schedule, block_size, pooling, m_by_n = getattr(layer, _SPEC)
    rule = _rule(layer)
    if rule is None:
        return  # a built-in layer TF-MOT's registry does not list: nothing to prune
    if rule == "declared":
        chosen = {id(w) for w in layer.get_prunable_weights()}
        targets = [t for t in find_targets(layer) if id(t.variable) in chosen]
    else:
        targets = [t for t in find_targets(layer) if t.variable.name in rule]
    for t in targets:
        attach(t, PruningMask(t.variable.constraint, pruning_schedule=schedule,
                              block_size=block_size, block_pooling_type=pooling,
                              sparsity_m_by_n=m_by_n))


def _keras_layer(layer) -> bool:
    """Whether `layer` is one of Keras' own layers."""
    return type(layer).__module__.startswith("keras.")
