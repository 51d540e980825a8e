"""The docstring of a named callback: its updater's, with the callback's own
arguments added (`DSTCallback.__init_subclass__`)."""

from __future__ import annotations

import inspect

from dst.updaters.base import Updater


def document(cls: type, updater: type[Updater]) -> str:
    """The callback's docstring with its updater's Args section, plus its own."""
    own = inspect.cleandoc(cls.__dict__.get("__doc__") or updater.__doc__ or "")
    # The Args of the class that defines the constructor (RigL's are SET's).
    owner = next(c for c in updater.__mro__ if "__init__" in vars(c))
    args = (_section(inspect.cleandoc(owner.__doc__ or ""), "Args:")
            or _section(inspect.cleandoc(vars(owner)["__init__"].__doc__ or ""), "Args:"))
    if not args:
        args = "".join(f"    {name}: see `{updater.__qualname__}`.\n"
                       for name in inspect.signature(updater).parameters)
    args = (f"Args (those of `dst.updaters.{updater.__qualname__}`, then the callback's):\n"
            + args
            + "    optimizer: the optimizer that steps the sparse weights, when\n"
              "        `train_step` does not use `model.optimizer`. Defaults to None\n"
              "        (`model.optimizer`).\n"
              "    steps_from: what `begin_step` and an int `end_step` count from:\n"
              "        \"fit\" (the first step of this `fit`, or of the interrupted\n"
              "        run a `BackupAndRestore` resumes) or \"optimizer\" (the\n"
              "        optimizer's step 0). A float `end_step` is always a fraction\n"
              "        of this fit's steps. Defaults to \"fit\".\n"
              "    verbose: unused, kept for Keras' callback convention. Defaults to 0.\n")
    lines = own.splitlines()
    at = next((i for i, line in enumerate(lines) if line.strip() in ("Examples:", "Example:")),
              len(lines))
    head = "\n".join(lines[:at]).rstrip()
    tail = "\n".join(lines[at:])
    return f"{head}\n\n{args}\n{tail}".rstrip() + "\n"


def _section(doc: str, title: str) -> str:
    """The indented body of a Google-style docstring section, or ''."""
    lines = doc.splitlines()
    if title not in (line.strip() for line in lines):
        return ""
    start = [line.strip() for line in lines].index(title) + 1
    body = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        body.append(line)
    return "\n".join(body).rstrip() + "\n"
