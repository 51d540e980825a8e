"""`PruningPolicy` and `PruneForLatencyOnXNNPack`: which layers of a model to prune."""

from __future__ import annotations

import abc

import keras

__all__ = ["PruneForLatencyOnXNNPack", "PruningPolicy"]


class PruningPolicy(abc.ABC):
    """Chooses the layers `prune_low_magnitude` prunes in a model, as in TF-MOT.

    Subclass it: `allow_pruning(layer)` says whether a layer is pruned;
    `ensure_model_supports_pruning(model)` raises a ValueError for a model the
    policy does not support.
    """

    @abc.abstractmethod
    def allow_pruning(self, layer: keras.layers.Layer) -> bool:
        """Whether `layer` is pruned."""
        raise NotImplementedError

    @abc.abstractmethod
    def ensure_model_supports_pruning(self, model: keras.Model) -> None:
        """Raises a ValueError if `model` holds layers the policy does not support."""
        raise NotImplementedError


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prunes only the 1x1 Conv2D layers, the ones XNNPACK's sparse inference runs.

    "Fast Sparse ConvNets" (Elsen et al. 2019). `allow_pruning` is TF-MOT's.
    TF-MOT's model check (a 3x3 stride-2 Conv2D after a ZeroPadding2D opens
    every input branch, a GlobalAveragePooling2D closes every output branch,
    and only layers XNNPACK supports lie between) walks tf_keras' private
    graph of nodes; dst does not port it: `ensure_model_supports_pruning`
    raises NotImplementedError, so `prune_low_magnitude(model,
    pruning_policy=PruneForLatencyOnXNNPack())` does too. Prune the 1x1
    convolutions with a `clone_function` that calls `allow_pruning`.

    Examples:
        >>> import keras, dst.tfmot as tfmot_sparsity
        >>> policy = tfmot_sparsity.PruneForLatencyOnXNNPack()
        >>> policy.allow_pruning(keras.layers.Conv2D(8, 1)), policy.allow_pruning(
        ...     keras.layers.Conv2D(8, 3))
        (True, False)
    """

    def allow_pruning(self, layer: keras.layers.Layer) -> bool:
        """Whether `layer` is a Conv2D with a 1x1 kernel."""
        return isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)

    def ensure_model_supports_pruning(self, model: keras.Model) -> None:
        raise NotImplementedError(
            "PruneForLatencyOnXNNPack.ensure_model_supports_pruning is not implemented in "
            "dst.tfmot: TF-MOT's check walks tf_keras' private layer graph. Prune the 1x1 "
            "Conv2D layers with keras.models.clone_model(model, clone_function=lambda l: "
            "prune_low_magnitude(l) if policy.allow_pruning(l) else l)."
        )
