"""The "tflite" format's runner: a TFLite flatbuffer on `ai-edge-litert`'s interpreter.

TFLite numbers a file's input and output tensors in an order of its own (three
same-shaped heads `z_first, a_second, m_third` of a Keras model come back as
`a_second, z_first, m_third`). The file's signature names them: dst.export
names the inputs `input_0, input_1, ...` in `model.inputs` order, and Keras
names the outputs `output_0, output_1, ...` in `model.outputs` order (a dict's
keys for a dict of outputs). The runner orders both by those names.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np

__all__ = ["EXTRA", "TFLiteModel", "fits"]

EXTRA = "pip install 'keras-dst[export]'"


class TFLiteModel:
    """A TFLite flatbuffer run by `ai-edge-litert`'s interpreter on numpy batches.

    Inputs and outputs are in the exported model's order (`model.inputs`,
    `model.outputs`) for files written by `dst.export`; in other files, in
    the order of their signature's names (of their tensor order without one).
    A batch whose shape does not fit an input is refused before it reaches
    the interpreter.

    The default delegates (XNNPACK on CPU) are used when they can allocate the
    model. TFLite's XNNPACK delegate refuses some int8 and "dynamic" files (int8
    weights stored sparse, or int8 models at some batch sizes); such a file then
    runs on the built-in kernels and `delegate` is "none" (a warning says so).

    Attributes:
        delegate: "default" or "none".
        content: the flatbuffer bytes.
    """

    def __init__(self, path_or_bytes: str | os.PathLike | bytes, *,
                 num_threads: int | None = 1) -> None:
        try:
            from ai_edge_litert import interpreter as litert
        except ImportError:
            raise ImportError(
                "dst.export.load needs the `ai-edge-litert` package (TFLite's "
                f"runtime): {EXTRA}."
            ) from None
        if isinstance(path_or_bytes, bytes | bytearray):
            self.content = bytes(path_or_bytes)
        else:
            with open(path_or_bytes, "rb") as f:
                self.content = f.read()
        self._litert = litert
        self.num_threads = num_threads
        self.delegate = "default"
        self._interpreter = self._new_interpreter()
        try:
            self._interpreter.allocate_tensors()
        except RuntimeError as err:
            self._without_delegates(err, stacklevel=4)
        self._inputs, self._outputs = _ordered_details(self._interpreter)
        self._shapes: list[tuple[int, ...]] | None = [tuple(d["shape"]) for d in self._inputs]

    def __call__(self, x):
        xs = list(x) if isinstance(x, list | tuple) else [x]
        if len(xs) != len(self._inputs):
            raise ValueError(
                f"This TFLite model takes {len(self._inputs)} inputs; received {len(xs)}."
            )
        xs = [np.asarray(a, dtype=d["dtype"]) for a, d in zip(xs, self._inputs)]
        for i, (a, d) in enumerate(zip(xs, self._inputs)):
            _check_shape(a, d, "x" if len(xs) == 1 else f"x[{i}]")
        try:
            return self._run(xs)
        except RuntimeError as err:  # XNNPACK may refuse only at a new batch size
            self._without_delegates(err)
            return self._run(xs)

    def __repr__(self):
        return (f"<TFLiteModel {len(self.content)} bytes, inputs "
                f"{[tuple(d['shape_signature']) for d in self._inputs]}, "
                f"delegate={self.delegate!r}>")

    def _without_delegates(self, err, stacklevel: int = 3) -> None:
        """Falls back to the built-in kernels when XNNPACK refuses the model."""
        if self.delegate != "default":
            raise err
        resolver = self._litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.delegate = "none"
        self._interpreter = self._new_interpreter(resolver)
        self._interpreter.allocate_tensors()
        self._shapes = None
        warnings.warn(
            "dst.export.load: TFLite's default delegate (XNNPACK) could not "
            f"run this model ({str(err).strip().splitlines()[0]}); it runs on the "
            "built-in kernels. Pass experimental_op_resolver_type=OpResolverType."
            "BUILTIN_WITHOUT_DEFAULT_DELEGATES to the interpreter where you "
            "deploy it.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )

    def _new_interpreter(self, resolver=None):
        kwargs = {"model_content": self.content, "num_threads": self.num_threads}
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver
        return self._litert.Interpreter(**kwargs)

    def _run(self, xs):
        it = self._interpreter
        shapes = [a.shape for a in xs]
        if shapes != self._shapes:
            for a, d in zip(xs, self._inputs):
                it.resize_tensor_input(d["index"], a.shape)
            it.allocate_tensors()
            self._shapes = shapes
        for a, d in zip(xs, self._inputs):
            it.set_tensor(d["index"], a)
        it.invoke()
        out = [it.get_tensor(d["index"]) for d in self._outputs]
        return out[0] if len(out) == 1 else out


def _ordered_details(interpreter) -> tuple[list[dict], list[dict]]:
    """The input and output details in the order of the signature's names."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    signatures = interpreter.get_signature_list()
    if not signatures:
        return inputs, outputs
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    return (_by_name(runner.get_input_details(), inputs),
            _by_name(runner.get_output_details(), outputs))


def _by_name(named: dict[str, dict], details: list[dict]) -> list[dict]:
    """`details` ordered as `named`'s keys: `input_2` before `input_10`, other
    names (a dict's keys) sorted as `keras.tree.flatten` orders a dict."""
    by_index = {d["index"]: d for d in details}

    def key(name: str) -> tuple[int, int, str]:
        match = re.fullmatch(r"(?:input|output)_(\d+)", name)
        return (0, int(match.group(1)), "") if match else (1, 0, name)

    return [by_index[named[name]["index"]] for name in sorted(named, key=key)]


def _check_shape(array: np.ndarray, detail: dict, argument: str) -> None:
    """Refuses a batch of another rank or non-batch size than the input's."""
    want = tuple(None if s < 0 else int(s) for s in detail["shape_signature"])
    if fits(array.shape, want):
        return
    expected = (None, *want[1:]) if want else ()
    raise ValueError(
        f"`{argument}` must have shape {expected} (any batch size) for this "
        f"TFLiteModel. Received: {argument}.shape={array.shape}."
    )


def fits(shape: tuple, want: tuple) -> bool:
    """Whether `shape` has `want`'s rank and sizes (None: any; the batch: any)."""
    return len(shape) == len(want) and all(
        w is None or w == s for s, w in zip(shape[1:], want[1:]))
