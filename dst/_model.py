"""Finding sparsifiable weights in a Keras 3 model and where their masks sit.

Everything that walks a model lives here, so the rest of dst works on a list
of `Target`s: one per sparsifiable weight variable.
"""

from __future__ import annotations

import dataclasses
import warnings

import keras

from dst import _compat
from dst.masking import MaskConstraint, MaskGroup

_NORMALIZATION = tuple(
    getattr(keras.layers, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "RMSNormalization",
        "SpectralNormalization",
    )
    if hasattr(keras.layers, name)
)
# Parents whose get_config re-serializes their child layers (RNN cells,
# wrapped layers), so that a child of a rebuilt parent is rebuilt from config.
_SERIALIZES_CHILDREN = (keras.layers.RNN, keras.layers.Wrapper, keras.layers.Bidirectional)
# Parents that hand one constraint attribute to several child weights and
# rebuild those children from their own config: (class, attribute, weight).
_SHARED_CARRIERS = tuple(
    (getattr(keras.layers, cls), attr, "kernel")
    for cls, attr in (("MultiHeadAttention", _compat.ATTENTION_KERNEL_CONSTRAINT),
                      ("GroupQueryAttention", "kernel_constraint"))
    if hasattr(keras.layers, cls)
)
# Attribute prefix for masks of weights without a constraint attribute, and
# for the members of a MaskGroup on their own projections.
_HOOK = "_dst_mask_"
# The prunable-weights protocol: a layer (or model) may define this method,
# returning the list of its weights that dst may mask ([] for none). It
# replaces dst's heuristics for every weight of that layer and its sublayers.
PRUNABLE_WEIGHTS = "dst_prunable_weights"
# Weights whose constraint attribute is not named after the weight.
_CARRIER_OVERRIDES = {
    (keras.layers.DepthwiseConv1D, "kernel"): "depthwise_constraint",
    (keras.layers.DepthwiseConv2D, "kernel"): "depthwise_constraint",
}


@dataclasses.dataclass
class Target:
    """One sparsifiable weight: the variable, its owning layer and path."""

    variable: keras.Variable
    layer: keras.layers.Layer
    path: str
    carrier: str  # layer attribute that holds the MaskConstraint
    in_config: bool  # True when `keras.models.load_model` rebuilds it
    group: tuple | None = None  # (parent layer, attribute, key) for a MaskGroup

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.variable.shape)

    @property
    def constraint(self) -> MaskConstraint | None:
        c = self.variable.constraint
        return c if isinstance(c, MaskConstraint) else None

    @property
    def mask_constraint(self) -> MaskConstraint:
        """The `MaskConstraint` of a target known to have one (masked targets)."""
        c = self.constraint
        if c is None:
            raise ValueError(f"dst: weight '{self.path}' has no MaskConstraint.")
        return c


def check_keras3_model(model: object, where: str, *, built: bool = True) -> None:
    """Raises a clear error for anything that is not a (built) Keras 3 model.

    `built=False` skips the build check, for readers such as `dst.get_masks`
    to which an unbuilt model is simply a model without masks.
    """
    module = type(model).__module__
    if module.startswith(("tf_keras", "tensorflow.python.keras", "keras.engine")):
        raise TypeError(
            f"{where} needs a Keras 3 model, but received a legacy tf_keras "
            f"model ({type(model).__name__} from `{module}`). dst works with "
            "Keras 3 only: `pip install 'keras>=3'`, build the model with "
            "`import keras` (not `tf_keras` or `tf.keras` with "
            "TF_USE_LEGACY_KERAS=1), and load legacy weights with "
            "`model.load_weights`."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{where} needs a keras.Model. Received: {type(model).__name__}."
        )
    if built and (not model.built or any(not layer.built for layer in _layers(model))):
        unbuilt = [layer.name for layer in _layers(model) if not layer.built]
        raise ValueError(
            f"{where} needs a built model, but model '{model.name}' is not "
            f"built (unbuilt layers: {unbuilt or [model.name]}). Call the "
            "model on a batch, or give it an `Input`, or call "
            "`model.build(input_shape)` first."
        )


def _layers(model) -> list:
    return _compat.flatten_layers(model)


def _carrier(layer, var_name: str) -> tuple[str, bool]:
    """Which attribute of `layer` should hold the mask of weight `var_name`."""
    candidates = [
        attr for (cls, name), attr in _CARRIER_OVERRIDES.items()
        if name == var_name and isinstance(layer, cls)
    ]
    candidates.append(f"{var_name}_constraint")
    if var_name.endswith("_kernel"):
        candidates.append(var_name[: -len("_kernel")] + "_constraint")
    for attr in candidates:
        if attr in layer.__dict__:
            try:
                serialized = attr in layer.get_config()
            except Exception:  # noqa: BLE001 - layers without get_config
                serialized = False
            return attr, serialized
    return _HOOK + var_name, False


def _is_bias(var) -> bool:
    # Keras names biases "bias"; GRU (reset_after) and EinsumDense biases have
    # ndim 2 but are still biases, which stay dense.
    return var.name == "bias" or var.name.endswith("_bias")


def find_targets(model: keras.Model, *, frozen: bool = False) -> list[Target]:
    """Every trainable or masked non-bias weight with ndim >= 2 outside normalization.

    A layer that defines `dst_prunable_weights()` decides instead, for its
    own weights and those of its sublayers: exactly the weights it returns.

    A masked weight frozen afterwards (`layer.trainable = False`) stays a
    target, so that its mask is reported, saved and stripped; an unmasked
    frozen weight is not, so `dst.sparsify` leaves it dense. Each
    `MaskConstraint` found is bound to its variable (see `bind`).

    Args:
        model: a Keras 3 model.
        frozen: also return frozen weights whose `MaskConstraint` has no mask
            (`dst.strip` uses it to remove every dst object). Defaults to False.
    """
    layers = [model, *_layers(model)]
    parents: dict[int, keras.layers.Layer] = {}
    for layer in layers:
        for child in _compat.flatten_layers(layer, recursive=False):
            parents.setdefault(id(child), layer)
    # Layers that keras.models.load_model rebuilds from their config: those
    # listed by a Functional or Sequential model (a subclassed model rebuilds
    # its layers in its own __init__), and children of rebuilt wrappers/RNNs.
    from_config = {
        id(lay)
        for m in layers
        if isinstance(m, _compat.Functional | keras.Sequential)
        for lay in m.layers
    }

    def rebuilt(layer) -> bool:
        if id(layer) in from_config:
            return True
        parent = parents.get(id(layer))
        return isinstance(parent, _SERIALIZES_CHILDREN) and rebuilt(parent)

    declared, covered = _declared(layers)
    seen, targets = set(), []
    for layer in layers:
        # Created trainable, frozen since or not; and the integer kernels that
        # `model.quantize("int8")` put in place of masked weights.
        own = _compat.own_trainable_variables(layer) + _quantized_kernels(layer)
        if isinstance(layer, _NORMALIZATION) and not any(id(v) in declared for v in own):
            continue
        for var in own:
            if id(var) in seen:
                continue
            if id(var) in covered:  # under a layer that declares: its word is final
                if id(var) not in declared:
                    continue
            elif len(var.shape) < 2 or _is_bias(var):
                continue
            if isinstance(var.constraint, MaskGroup):  # as loaded: use the member
                loaded = var.constraint
                var.constraint = loaded.member_for(var.path) or loaded.inner
            masked = isinstance(var.constraint, MaskConstraint) and (
                frozen or var.constraint.mask is not None)
            if not (var.trainable or masked):
                continue
            seen.add(id(var))
            carrier, serialized = _carrier(layer, var.name)
            group = _group(parents.get(id(layer)), layer, var)
            if group is not None:
                serialized, layer_for_config = True, group[0]
            else:
                layer_for_config = layer
            targets.append(Target(var, layer, var.path, carrier,
                                  serialized and rebuilt(layer_for_config), group))
            if targets[-1].constraint is not None:
                bind(targets[-1], targets[-1].constraint)
    return targets


def _quantized_kernels(layer) -> list:
    """The masked weights of `layer` that Keras' `model.quantize` replaced.

    `quantize("int8")` deletes a Dense, EinsumDense or Embedding kernel and
    creates a frozen int8 variable of the same shape and path, without the
    weight's constraint; the layer's constraint attribute still holds the
    `MaskConstraint` (so its config, saving and cloning carry the mask). The
    mask is put back on the int8 variable here. Symmetric absmax quantization
    maps 0.0 to 0, so masked entries stay exactly 0 (dequantized: 0 / scale).
    "float8" keeps the float kernel and its constraint: nothing to do. Other
    modes store the weight in another layout (int4 packs two entries per
    byte; GPTQ and AWQ keep a separate quantized tensor), which a mask cannot
    follow: refused.
    """
    mode = getattr(layer, "quantization_mode", None)
    if mode is None or mode == "float8" or _compat.flatten_layers(layer):
        return []
    found = []
    for var in layer.weights:
        carrier = layer.__dict__.get(_carrier(layer, var.name)[0])
        member = (carrier.member_for(var.path) if isinstance(carrier, MaskGroup)
                  else carrier)
        if not isinstance(member, MaskConstraint) or member.mask is None:
            continue
        if mode != "int8" or tuple(var.shape) != tuple(member.mask.shape):
            raise ValueError(
                f"dst: {type(layer).__name__} '{layer.name}' was quantized with "
                f"model.quantize({mode!r}) after its weight '{var.path}' was masked. "
                "dst keeps masks on 'int8' and 'float8' quantized layers only: "
                f"{mode!r} stores the weight in another layout (int4 packs two entries "
                "per byte), which the mask cannot follow. Quantize with 'int8' or "
                "'float8', or quantize a plain copy made with dst.strip(model) before "
                "model.quantize (its zeros are kept, its masks are gone)."
            )
        var.constraint = member
        found.append(var)
    return found


def _declared(layers: list) -> tuple[set[int], set[int]]:
    """The prunable-weights protocol: (ids of the variables layers declare
    prunable with `dst_prunable_weights()`, ids of every variable of those
    layers, sublayers' included, declared or not)."""
    created_trainable = {id(v) for layer in layers
                         for v in _compat.own_trainable_variables(layer)}
    declared: set[int] = set()
    covered: set[int] = set()
    for layer in layers:
        method = getattr(layer, PRUNABLE_WEIGHTS, None)
        if method is None:
            continue
        who = f"{type(layer).__name__} '{layer.name}'"
        if not callable(method):
            raise TypeError(
                f"`{PRUNABLE_WEIGHTS}` of {who} must be a method returning a list of "
                f"the layer's keras.Variable weights. Received: {method!r}"
            )
        weights = method()
        if not isinstance(weights, list | tuple):
            raise TypeError(
                f"{who}.{PRUNABLE_WEIGHTS}() must return a list of the layer's "
                f"keras.Variable weights ([] for none). Received: "
                f"{type(weights).__name__} {_short(weights)}"
            )
        own = {id(v): v for v in layer.weights}
        for w in weights:
            if not isinstance(w, keras.Variable):
                raise TypeError(
                    f"{who}.{PRUNABLE_WEIGHTS}() must return keras.Variable weights of "
                    f"the layer. Received an item of type {type(w).__name__}: {_short(w)}"
                )
            if id(w) not in own:
                raise ValueError(
                    f"{who}.{PRUNABLE_WEIGHTS}() returned '{w.path}', which is not a "
                    f"weight of that layer. Its weights: {[v.path for v in own.values()]}."
                )
            if id(w) not in created_trainable or len(w.shape) == 0:
                raise ValueError(
                    f"{who}.{PRUNABLE_WEIGHTS}() returned '{w.path}', which dst cannot "
                    f"mask: it is {'a scalar' if len(w.shape) == 0 else 'not trainable'}. "
                    "Declare trainable weights with at least one axis."
                )
        declared.update(id(w) for w in weights)
        covered.update(own)
    return declared, covered


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _group(parent, layer, var) -> tuple | None:
    for cls, attr, name in _SHARED_CARRIERS:
        if isinstance(parent, cls) and var.name == name:
            return parent, attr, f"{layer.name}/{var.name}"
    return None


def masked_targets(model: keras.Model) -> list[Target]:
    """Targets that carry a mask (fixed ones included)."""
    return [t for t in find_targets(model) if t.constraint is not None
            and t.constraint.mask is not None]


def dynamic_targets(model: keras.Model) -> list[Target]:
    """Masked targets whose connectivity dynamic sparse training may change.

    Fixed masks (`dst.layers.SparseDense`) and frozen weights
    (`layer.trainable = False`) are left out, so updaters leave them as they are.
    """
    return [t for t in masked_targets(model)
            if not t.mask_constraint.fixed and t.variable.trainable]


def no_masks_error(where: str, model: keras.Model) -> ValueError:
    """The error of a dst callback for a model without masks it may change.

    Names the int8 kernels of `model.quantize("int8")` when those are why:
    they are frozen integers that no optimizer updates.
    """
    frozen = [t.path for t in masked_targets(model)
              if getattr(t.layer, "quantization_mode", None) == "int8"]
    if frozen:
        return ValueError(
            f"{where}: the masked weights {frozen} of model '{model.name}' are int8 "
            "kernels of model.quantize('int8'), frozen integers that no optimizer "
            "updates, so dynamic sparse training cannot change them. Train with dst "
            "before model.quantize, quantize with 'float8' (float kernels, masks kept "
            "by every optimizer step), or fine-tune the int8 model without a dst "
            "callback (its kernels stay as they are, zeros included)."
        )
    return ValueError(
        f"{where} needs a sparsified model, but model '{model.name}' has no masks. "
        "Call dst.sparsify(model, sparsity) first."
    )


def count_active(targets: list[Target], where: str) -> list[int]:
    """Active entries of each masked target: in the mask, or non-zero anyway.

    Values written with `model.set_weights` or `variable.assign` bypass the
    mask until the next optimizer step. Such entries are counted as active,
    so the count is the weights' real density, and a warning names the
    weights and says how to zero them.
    """
    counts, stray = [], []
    for t in targets:
        mask = t.mask_constraint.numpy()
        live = mask | (_compat.to_numpy(t.variable) != 0)
        counts.append(int(live.sum()))
        if counts[-1] > int(mask.sum()):
            stray.append(t.path)
    if stray:
        warnings.warn(
            f"{where}: weights {stray} are non-zero where their mask is 0 "
            "(values written by `set_weights` or `assign` since the last "
            "optimizer step, or an EMA overwrite in a fit without a dst "
            "callback), so those entries count as active. Call "
            "`dst.set_masks(model, dst.get_masks(model))` to zero them, or "
            "train a step; with `use_ema=True` train with "
            "`dst.callbacks.FixedMasks()`.",
            UserWarning,
            stacklevel=3,
        )
    return counts


def matches(target: Target, entry: object) -> bool:
    """Whether an `exclude` / distribution-dict entry names this target."""
    if callable(entry) and not isinstance(entry, type):
        return bool(entry(target.variable))
    if isinstance(entry, type):
        return isinstance(target.layer, entry)
    if isinstance(entry, str):
        return entry in (target.path, target.layer.name) or any(
            entry == part for part in target.path.split("/")[:-1]
        )
    raise TypeError(
        "`exclude` entries must be layer names, layer classes, weight paths "
        f"or callables. Received: {entry!r} of type {type(entry).__name__}."
    )


def bind(target: Target, constraint: MaskConstraint) -> None:
    """Tells `constraint` its variable, so that loading weights zeroes it.

    A `MaskGroup` member is also hung on its own projection: Keras' saving
    walk visits the shared group right after the first projection's weights,
    but the member after its own projection's weights.
    """
    constraint.variable = target.variable
    if target.group is not None:
        object.__setattr__(target.layer, _HOOK + target.variable.name, constraint)


def install(target: Target, constraint: MaskConstraint) -> None:
    """Sets `constraint` on the variable and where the layer's config sees it."""
    target.variable.constraint = constraint
    bind(target, constraint)
    if target.group is None:
        object.__setattr__(target.layer, target.carrier, constraint)
        return
    parent, attr, key = target.group
    group = getattr(parent, attr)
    if not isinstance(group, MaskGroup):
        group = MaskGroup(inner=group)
        object.__setattr__(parent, attr, group)
    group.members[key] = constraint
    # The children hold the same object, so saving finds it at the same
    # place whichever attribute Keras' walk reaches first.
    object.__setattr__(target.layer, target.carrier, group)


def uninstall(target: Target) -> None:
    """Puts the weight's original constraint back and forgets the mask."""
    constraint = target.constraint
    inner = constraint.inner if constraint is not None else None
    target.variable.constraint = inner
    if target.group is not None:
        parent, attr, key = target.group
        group = getattr(parent, attr)
        if isinstance(group, MaskGroup):
            group.members.pop(key, None)
            inner = group.inner
            if not group.members:
                object.__setattr__(parent, attr, inner)
        target.layer.__dict__.pop(_HOOK + target.variable.name, None)
    if target.carrier.startswith(_HOOK):
        target.layer.__dict__.pop(target.carrier, None)
    else:
        object.__setattr__(target.layer, target.carrier, inner)
