"""The docstring of a named callback: its updater's, with the callback's own
arguments added to the Args section (`DSTCallback.__init_subclass__`)."""

from __future__ import annotations

import inspect

from dst.updaters.base import Updater

_CALLBACK_ARGS = (
    "    optimizer: the optimizer that steps the sparse weights, when\n"
    "        `train_step` does not use `model.optimizer`. Defaults to None\n"
    "        (`model.optimizer`).\n"
    "    steps_from: what `begin_step` and an int `end_step` count from:\n"
    "        \"fit\" (the first step of this `fit`, or of the interrupted\n"
    "        run a `BackupAndRestore` resumes) or \"optimizer\" (the\n"
    "        optimizer's step 0). A float `end_step` is always a fraction\n"
    "        of this fit's steps. Defaults to \"fit\".\n"
    "    verbose: unused, kept for Keras' callback convention. Defaults to 0.\n"
)


def document(cls: type, updater: type[Updater]) -> str:
    """The callback's docstring: its own if it has one, else its updater's,
    with one Args section: the updater's constructor arguments, then the
    callback's own."""
    own = inspect.cleandoc(cls.__dict__.get("__doc__") or updater.__doc__ or "")
    # The Args of the class that defines the constructor (RigL's are SET's).
    owner = next(c for c in updater.__mro__ if "__init__" in vars(c))
    args = (_section(inspect.cleandoc(owner.__doc__ or ""), "Args:")
            or _section(inspect.cleandoc(vars(owner)["__init__"].__doc__ or ""), "Args:"))
    if not args:
        args = "".join(f"    {name}: see `{updater.__qualname__}`.\n"
                       for name in inspect.signature(updater).parameters)
    intro = (f"The `model.fit` callback of `dst.updaters.{updater.__qualname__}` "
             "(see `dst.callbacks.DSTCallback` for how it runs).")
    args = (f"Args (those of `dst.updaters.{updater.__qualname__}`, then the callback's):\n"
            + args + _CALLBACK_ARGS)
    lines = _without_section(own.splitlines(), "Args:")
    at = next((i for i, line in enumerate(lines) if line.strip() in ("Examples:", "Example:")),
              len(lines))
    head = "\n".join(lines[:at]).rstrip()
    tail = "\n".join(lines[at:])
    return f"{head}\n\n{intro}\n\n{args}\n{tail}".rstrip() + "\n"


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


def _without_section(lines: list[str], title: str) -> list[str]:
    """`lines` less the section `title` (its heading and indented body)."""
    if title not in (line.strip() for line in lines):
        return lines
    start = [line.strip() for line in lines].index(title)
    end = start + 1
    while end < len(lines) and (not lines[end] or lines[end].startswith(" ")):
        end += 1
    return lines[:start] + lines[end:]
