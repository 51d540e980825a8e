"""CHT: drop the weakest connections, regrow where Cannistraci-Hebb link prediction points."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from dst import _select
from dst._select import Array, Kit
from dst.blocks import block_of, to_blocks
from dst.updaters.registry import register
from dst.updaters.set import SET

__all__ = ["CHT", "SCORES", "chain_pairs", "fraction_bits", "link_scores", "sampling_keys"]

#: The link-prediction rules CHT grows by (node-based, length-three paths).
SCORES = ("ch3_l3n", "ch2_l3n")


@register("cht")
class CHT(SET):
    """Cannistraci-Hebb training (Zhang et al., ICLR 2024; CHTs, 2025).

    "Epitopological learning and Cannistraci-Hebb network shape intelligence
    brain-inspired theory for ultra-sparse advantage in deep learning". Each
    2-D weight is a bipartite graph between its input and output units, with
    an edge where the mask is on. At each update step t, per weight:

    1. drop the k = floor(f(t) · n) active connections of smallest magnitude
       (n: the active count at `bind`; f(t): SET's drop-fraction schedule);
    2. score every missing link (i, j) of the graph left after the drop by
       Cannistraci-Hebb link prediction on paths of length three (`score`,
       see `link_scores`);
    3. grow the k candidates (inactive after the drop, as the reference code;
       or before it, `grow_candidates`) of highest score; candidates that no
       path of length three reaches score 0 and are drawn at random when
       fewer than k score above 0.

    With `percolation=True`, between steps 1 and 2 the links of a hidden unit
    left without input or without output are removed too, as the reference
    code's chain removal does: for Dense kernels a, b where b reads a's
    output (through activations or dropout only, `chain_pairs`), first
    backward (a loses the inputs of units with no link left in b), then
    forward (b loses the outputs of units with no input left in a); each
    weight then regrows as many links as it lost. Its drop tie-breaks are
    seeded per weight, not per step (the update is planned across weights).

    Grown weights start at 0.0 with fresh optimizer slots; each weight keeps
    its active count (asserted), as in SET.

    Only 2-D weights (Dense and EinsumDense kernels with two axes, embeddings)
    are graphs: `bind` refuses a model whose dynamic weights include a conv
    kernel. On block masks the rule runs on the grid of blocks (a block is a
    node pair's edge).

    Differences from the reference code: the node-based scores (the CHTs
    code's `CH3_L3n`, `CH2_L3n`) rather than the path-based CH3-L3 of the
    ICLR paper's C++ routine; top-k regrowth unless `soft_regrowth`, and no
    soft (sampled) removal; no correlated or small-world initial topology, no
    early stop of the evolution. See docs/algorithms/cht.md.

    Args:
        update_freq: steps between updates. Defaults to 100.
        drop_fraction: ζ, the fraction of active connections replaced, in
            (0, 1). Defaults to 0.3 (the papers').
        drop_fraction_schedule: as for `SET`. Defaults to "constant" (the
            papers' fixed ζ).
        drop_fraction_anchor: as for `SET`. Defaults to "begin".
        score: "ch3_l3n" or "ch2_l3n", see `link_scores`. Defaults to
            "ch3_l3n".
        soft_regrowth: whether to sample the grown links with probability
            proportional to their scores (CHTs' soft rule for regrowth,
            `sampling_keys`) instead of taking the top k. Defaults to False.
        percolation: whether to remove the links of units left without input
            or output (the reference's `--chain_removal`). Defaults to False.
        grow_candidates: "after_drop" or "before_drop", as for `SET`.
            Defaults to "after_drop".
        begin_step: first update step. Defaults to 0.
        end_step: last step that may update: an int, or a float in (0, 1]
            meaning that fraction of the fit's steps. Defaults to 1.0 (the
            papers evolve the topology through all of training).
        seed: seed of the tie-breaking. Defaults to None.

    Raises:
        ValueError: an argument out of range, an unknown `score`,
            `percolation` with `grow_candidates="before_drop"`; at `bind`, a
            dynamic weight that is not 2-D, or, with `percolation`, no pair
            of chained Dense kernels (whose blocks, on block masks, span the
            same units).

    Examples:
        >>> import numpy as np, keras, dst
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6)])
        >>> model = dst.sparsify(model, 0.5, "uniform", seed=0)
        >>> model.compile("sgd", "mse")
        >>> cb = dst.callbacks.CHT(update_freq=2, seed=0)
        >>> h = model.fit(np.ones((32, 8)), np.ones((32, 6)), epochs=2, verbose=0, callbacks=[cb])
        >>> round(h.history["sparsity"][-1], 2)
        0.5
    """

    def __init__(self, *, update_freq: int = 100, drop_fraction: float = 0.3,
                 drop_fraction_schedule: str | Callable[[int], float] = "constant",
                 drop_fraction_anchor: str = "begin", score: str = "ch3_l3n",
                 soft_regrowth: bool = False, percolation: bool = False,
                 grow_candidates: str = "after_drop",
                 begin_step: int = 0, end_step: int | float | None = 1.0,
                 seed: int | None = None):
        if score not in SCORES:
            raise ValueError(f"`score` must be one of {list(SCORES)} for CHT. "
                             f"Received: score={score!r}")
        for name, flag in (("soft_regrowth", soft_regrowth), ("percolation", percolation)):
            if not isinstance(flag, bool):
                raise ValueError(f"`{name}` must be True or False for CHT. "
                                 f"Received: {name}={flag!r}")
        if percolation and grow_candidates != "after_drop":
            raise ValueError(
                "CHT(percolation=True) regrows the links its percolation removes among the "
                "links inactive after the drop: it needs grow_candidates='after_drop'. "
                f"Received: grow_candidates={grow_candidates!r}")
        super().__init__(update_freq=update_freq, drop_fraction=drop_fraction,
                         drop_fraction_schedule=drop_fraction_schedule,
                         drop_fraction_anchor=drop_fraction_anchor,
                         grow_candidates=grow_candidates, begin_step=begin_step,
                         end_step=end_step, seed=seed)
        self.score = score
        self.soft_regrowth = soft_regrowth
        self.percolation = percolation
        self.chain: list[tuple[int, int]] = []

    @property
    def cross_layer(self) -> bool:
        """Percolation plans the weights of a chain together (`plan`)."""
        return self.percolation

    def _targets(self, model: keras.Model) -> list:
        targets = super()._targets(model)
        bad = [f"'{t.path}' {t.shape}" for t in targets if len(t.shape) != 2]
        if bad:
            raise ValueError(
                f"CHT scores links of 2-D weights (input units × output units); model "
                f"'{model.name}' has dynamic weights of other ranks: {', '.join(bad)}. "
                "Keep them out of dst.sparsify (`exclude=`) or make them static, or train "
                "them with SET or RigL."
            )
        if self.percolation:
            blocks = [block_of(t.constraint) or (1, 1) for t in targets]
            # Units are whole on both sides of a pair: blocks must span the same units.
            self.chain = [(a, b) for a, b in chain_pairs(model, targets)
                          if blocks[a][1] == blocks[b][0]]
            if not self.chain:
                raise ValueError(
                    f"CHT(percolation=True) needs sparse Dense layers that feed each other "
                    f"(through activations or dropout only); model '{model.name}' has no "
                    "such pair of kernels (with block masks, of blocks that span the same "
                    "units). Use percolation=False.")
        return targets

    def new_mask(self, kit: Kit, weight: Array, mask: Array, grad: Array | None, value: Any,
                 salt: Callable[[int], Any]) -> Array:
        xp = kit.xp
        after_drop = self.grow_candidates == "after_drop"
        if self.percolation:  # value: (k, drop salt, live inputs..., live outputs...)
            n_in = int(mask.shape[0])
            vector = kit.cast(value, "int32")
            kept = _kept(self, kit, weight, mask, grad, vector[0], vector[1])
            kept = xp.logical_and(kept, xp.expand_dims(vector[2:2 + n_in] > 0, 1))
            kept = xp.logical_and(kept, xp.expand_dims(vector[2 + n_in:] > 0, 0))
            k = kit.cast(kit.count(mask), "int32") - kit.cast(kit.count(kept), "int32")
        else:
            active = kit.count(mask)
            room = active if after_drop else math.prod(mask.shape) - active
            k = xp.minimum(kit.cast(value, "int32"), kit.cast(room, "int32"))
            kept = _kept(self, kit, weight, mask, grad, k, salt(0))
        candidates = xp.logical_not(kept if after_drop else mask)
        # The links are predicted on the graph left after the drop (and percolation).
        scores = link_scores(kept, self.score, kit=kit)
        if self.soft_regrowth:
            scores = sampling_keys(kit, scores, salt(2))
        grown = kit.select(scores, candidates, k, salt(1), largest=True)
        return xp.logical_or(kept, grown)

    def plan(self, kit: Kit, values: list, weights: list, masks: list, grads: list) -> list:
        """Percolation: after the drop, the links of a unit between two chained
        Dense kernels that has no input left (or no output left) are removed
        too; `new_mask` regrows as many as were removed."""
        xp = kit.xp
        salts = [_select.salt(np, self.seed, 0, i, 4) for i in range(len(weights))]
        weights, masks, grads = list(weights), list(masks), list(grads)
        for i, target in enumerate(self.targets):  # `new_mask` sees the grid of blocks
            block = block_of(target.constraint)
            if block is not None:
                weights[i] = to_blocks(xp, weights[i], block, "norm")
                masks[i] = to_blocks(xp, masks[i], block, "any")
                if grads[i] is not None:
                    grads[i] = to_blocks(xp, grads[i], block, "norm")
        kept = {i: _kept(self, kit, weights[i], masks[i], grads[i], values[i],
                         _as_salt(kit, salts[i]))
                for pair in self.chain for i in pair}
        live_in = {i: xp.ones((int(masks[i].shape[0]),), "bool") for i in range(len(weights))}
        live_out = {i: xp.ones((int(masks[i].shape[1]),), "bool") for i in range(len(weights))}
        for a, b in sorted(self.chain, reverse=True):  # backward: units with no output
            live_out[a] = _any(kit, kept[b], 1)
            kept[a] = xp.logical_and(kept[a], xp.expand_dims(live_out[a], 0))
        for a, b in sorted(self.chain):  # forward: units with no input
            live_in[b] = _any(kit, kept[a], 0)
            kept[b] = xp.logical_and(kept[b], xp.expand_dims(live_in[b], 1))
        planned = []
        for i, value in enumerate(values):
            head = [value, _as_salt(kit, salts[i])]
            if kit is _select.NUMPY:
                planned.append([int(v) for v in head] + live_in[i].astype(int).tolist()
                               + live_out[i].astype(int).tolist())
            else:
                planned.append(xp.concatenate(
                    [xp.stack([kit.cast(v, "int32") for v in head]),
                     kit.cast(live_in[i], "int32"), kit.cast(live_out[i], "int32")]))
        return planned


def chain_pairs(model: keras.Model, targets: list) -> list[tuple[int, int]]:
    """(a, b) for the Dense kernels a, b (indices in `targets`) where layer b
    reads layer a's output, through activation and dropout layers only, and
    nothing else reads it: the units between them are one set of neurons."""
    dense = {id(t.layer): i for i, t in enumerate(targets)
             if isinstance(t.layer, keras.layers.Dense) and t.variable is t.layer.kernel}
    producers: dict[int, keras.layers.Layer] = {}
    readers: dict[int, int] = {}
    for layer in model.layers:
        try:
            inputs, output = layer.input, layer.output
        except (AttributeError, ValueError):
            continue
        if not isinstance(output, list | tuple):
            producers[id(output)] = layer
        for tensor in inputs if isinstance(inputs, list | tuple) else [inputs]:
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    for tensor in model.outputs:
        readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    pairs = []
    for b in dense.values():
        tensor = targets[b].layer.input
        while readers.get(id(tensor)) == 1 and id(tensor) in producers:
            source = producers[id(tensor)]
            if id(source) in dense:
                pairs.append((dense[id(source)], b))
                break
            if not isinstance(source, _PASS_THROUGH):
                break
            tensor = source.input
    return sorted(pairs)


_PASS_THROUGH = (keras.layers.Activation, keras.layers.Dropout, keras.layers.ReLU,
                 keras.layers.LeakyReLU, keras.layers.ELU)


def _kept(updater: SET, kit: Kit, weight: Array, mask: Array, grad: Array | None, k: Any,
          salt: Any) -> Array:
    """The mask after dropping the min(k, active) lowest `drop_scores`."""
    xp = kit.xp
    k = xp.minimum(kit.cast(k, "int32"), kit.cast(kit.count(mask), "int32"))
    dropped = kit.select(updater.drop_scores(kit, weight, mask, grad), mask, k, salt)
    return xp.logical_and(mask, xp.logical_not(dropped))


def _any(kit: Kit, mask: Array, axis: int) -> Array:
    return kit.xp.sum(kit.cast(mask, "int32"), axis=axis) > 0


def _as_salt(kit: Kit, salt: int) -> Any:
    """A 32-bit salt as an int32 bit pattern: an int on the host, a tensor in-graph."""
    bits = salt - 2**32 if salt >= 2**31 else salt
    return bits if kit is _select.NUMPY else keras.ops.convert_to_tensor(bits, "int32")


def sampling_keys(kit: Kit, scores: Array, salt: Any) -> Array:
    """Keys whose k largest are a sample of k entries without replacement, each
    drawn with probability proportional to its score: score / E, with E an
    exponential draw (an exponential race). E = −log(u) is read from a table
    of 2^16 values, u = (h + 0.5) / 2^16 for h the top 16 bits of the seeded
    hash of the entry's index, so the host and every backend draw the same E;
    the key is one correctly rounded division. A score of 0 gives key 0."""
    xp = kit.xp
    shape = tuple(int(d) for d in scores.shape)
    n = math.prod(shape)
    if kit is _select.NUMPY:
        index = np.arange(n, dtype=np.uint32) ^ np.uint32(int(salt) & 0xFFFFFFFF)
        top = _select._fmix32_u32(index) >> np.uint32(16)
        draws = _EXPONENTIAL[top.astype(np.int64)]
    else:
        hashed = _select._fmix32_ops(xp.bitwise_xor(xp.arange(n, dtype="int32"), salt))
        top = xp.bitwise_and(xp.right_shift(hashed, 16), 0xFFFF)
        draws = xp.take(xp.convert_to_tensor(_EXPONENTIAL), top)
    return scores / xp.reshape(draws, shape)


#: −log(u) at the midpoints u of 2^16 equal steps of (0, 1): exponential draws.
_EXPONENTIAL = (-np.log((np.arange(2**16, dtype=np.float64) + 0.5) / 2**16)).astype(np.float32)


def fraction_bits(n_in: int, n_out: int) -> int:
    """The fixed-point bits of `link_scores`' fractional parts: the largest b
    <= 22 with (n_in + n_out) · 2^b <= 2^24."""
    return max(0, min(22, 24 - math.ceil(math.log2(n_in + n_out))))


def link_scores(adjacency: Array, score: str = "ch3_l3n", *, kit: Kit | None = None) -> Array:
    """Cannistraci-Hebb scores of the links of a bipartite graph (node-based, L3).

    `adjacency` (n_in × n_out, bool) links input unit i to output unit j. A
    missing link (i, j) is scored over the paths i - j' - i' - j of length
    three through existing links: its local community is the intermediate
    units, the i' (neighbours of j with a neighbour in common with i) and the
    j' (neighbours of i with a neighbour in common with j). An intermediate
    unit's internal degree d_i counts its links into the local community, its
    external degree d_e its other links, less the one to i or j:
    for i', d_i = |N(i') ∩ N(i)| and d_e = deg(i') − d_i − 1. Then

    - "ch3_l3n": score(i, j) = Σ over the local community of 1 / (1 + d_e);
    - "ch2_l3n": score(i, j) = Σ over the local community of (1 + d_i) / (1 + d_e).

    In matrix form (A the adjacency, C = A·Aᵀ the common neighbours of input
    units, D = Aᵀ·A of output units): score = T_in·A + A·T_outᵀ, with
    T_in[i, i'] = [C[i, i'] > 0] · w(C[i, i']) / (deg(i') − C[i, i']) and
    T_out likewise, w = 1 (CH3) or 1 + C (CH2). Each term is split into its
    integer part and its fractional part rounded to a multiple of 2^-b
    (`fraction_bits`), so both sums are sums of integers below 2^24: exact in
    float32 in any order, the same on the host and in a compiled step of every
    backend. The entries at existing links are not link scores; mask them out.

    Args:
        adjacency: the bool (n_in, n_out) graph: a numpy array or a tensor.
        score: "ch3_l3n" or "ch2_l3n". Defaults to "ch3_l3n".
        kit: `dst._select.NUMPY` or `OPS`. Defaults to None: numpy for a
            numpy array, `keras.ops` otherwise.

    Returns:
        float32 scores of shape (n_in, n_out).

    Raises:
        ValueError: an unknown `score`.

    Examples:
        >>> import numpy as np
        >>> a = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)
        >>> s = link_scores(a)
        >>> float(s[0, 2]), float(s[1, 0])   # one path each: two units of degree 2 in it
        (2.0, 2.0)
    """
    if score not in SCORES:
        raise ValueError(f"`score` must be one of {list(SCORES)} for dst.updaters.cht."
                         f"link_scores. Received: score={score!r}")
    if kit is None:
        kit = _select.NUMPY if isinstance(adjacency, np.ndarray) else _select.OPS
    xp = kit.xp
    a = kit.cast(adjacency, "float32")
    n_in, n_out = (int(d) for d in adjacency.shape)
    bits = fraction_bits(n_in, n_out)
    hi_in, lo_in = _terms(kit, xp.matmul(a, xp.transpose(a)), xp.sum(a, axis=1), score, bits)
    hi_out, lo_out = _terms(kit, xp.matmul(xp.transpose(a), a), xp.sum(a, axis=0), score, bits)
    whole = xp.matmul(hi_in, a) + xp.matmul(a, xp.transpose(hi_out))
    part = xp.matmul(lo_in, a) + xp.matmul(a, xp.transpose(lo_out))
    return whole + part * float(2.0**-bits)  # exact scaling, then one rounding


def _terms(kit: Kit, common: Array, degree: Array, score: str, bits: int) -> tuple:
    """(integer part, fraction · 2^bits) of every unit u' 's term seen from u:
    common[u, u'] = |N(u) ∩ N(u')|, degree[u'] = deg(u')."""
    xp = kit.xp
    linked = kit.cast(common > 0, "float32")
    outside = xp.maximum(xp.expand_dims(degree, 0) - common, 1.0)  # 1 + d_e
    weight = linked * (common + 1.0) if score == "ch2_l3n" else linked
    term = weight / outside
    whole = xp.floor(term)
    return whole, xp.round((term - whole) * float(2**bits))
