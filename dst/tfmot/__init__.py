"""TF-MOT's pruning API (`tfmot.sparsity.keras`) on Keras 3, on every backend.

Change the import and keep the code::

    import dst.tfmot as tfmot_sparsity   # instead of tfmot.sparsity.keras

    pruned = tfmot_sparsity.prune_low_magnitude(
        model, pruning_schedule=tfmot_sparsity.PolynomialDecay(0.5, 0.8, 0, 100))
    pruned.compile(...)
    pruned.fit(..., callbacks=[tfmot_sparsity.UpdatePruningStep()])
    final = tfmot_sparsity.strip_pruning(pruned)

The same names, arguments, defaults and pruning rule as TF-MOT, without
wrapper layers: pruned weights carry dst masks, and `UpdatePruningStep` is the
dst callback of the registered updater "tfmot_pruning" (`TFMOTPruning`). See the guide
"Coming from TF-MOT" for the differences.
"""

from __future__ import annotations

from dst.tfmot.policy import PruneForLatencyOnXNNPack, PruningPolicy
from dst.tfmot.prune import PrunableLayer, prune_low_magnitude, prune_scope, strip_pruning
from dst.tfmot.pruning import PruningMask, TFMOTPruning, UpdatePruningStep
from dst.tfmot.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from dst.tfmot.summaries import PruningSummaries

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruningMask",
    "PruningPolicy",
    "PruningSchedule",
    "PruningSummaries",
    "TFMOTPruning",
    "UpdatePruningStep",
    "prune_low_magnitude",
    "prune_scope",
    "strip_pruning",
]
