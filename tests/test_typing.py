"""Every public function and constructor of dst is fully annotated (mypy checks the rest in CI)."""

import inspect

import pytest

import dst
import dst.blocks
import dst.distributions
import dst.export
import dst.schedules

MODULES = [dst, dst.updaters, dst.callbacks, dst.layers, dst.distributions, dst.schedules,
           dst.export, dst.blocks]


def _public_callables():
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and obj.__module__.startswith("dst"):
                if "__init__" in vars(obj):
                    yield f"{module.__name__}.{name}.__init__", obj.__init__
                for attr, value in vars(obj).items():
                    if not attr.startswith("_") and inspect.isfunction(value):
                        yield f"{module.__name__}.{name}.{attr}", value
            elif inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj


def test_public_callables_are_fully_annotated():
    unannotated = []
    for label, fn in _public_callables():
        sig = inspect.signature(fn)
        params = [p.name for p in sig.parameters.values()
                  if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        no_return = (sig.return_annotation is inspect.Signature.empty
                     and fn.__name__ != "__init__")
        if params or no_return:
            unannotated.append((label, params, "no return type" if no_return else ""))
    assert not unannotated, unannotated


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_names_exist(module):
    assert all(hasattr(module, name) for name in module.__all__)
