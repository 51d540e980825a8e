"""Every ```python block of the documentation runs.

The blocks of one page run in order, in one namespace, in a fresh folder. A page
that needs TensorFlow says so on a line of its own: `<!-- docs-test: tensorflow_only -->`.
"""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
TENSORFLOW_ONLY = "<!-- docs-test: tensorflow_only -->"


def _pages():
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        if not BLOCK.search(text):
            continue
        marks = [pytest.mark.tensorflow_only] if TENSORFLOW_ONLY in text else []
        yield pytest.param(page, id=str(page.relative_to(DOCS)), marks=marks)


def test_every_python_block_is_at_the_start_of_a_line():
    """An indented block would escape `test_page_runs`: keep them unindented."""
    indented = [str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")
                if re.search(r"^[ \t]+```python", page.read_text(), re.M)]
    assert indented == []


@pytest.mark.slow
@pytest.mark.parametrize("page", list(_pages()))
def test_page_runs(page, tmp_path, monkeypatch):
    from dst.updaters import registry

    # A page may register an updater: keep it out of the rest of the session.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for number, block in enumerate(BLOCK.findall(page.read_text()), 1):
        code = compile(block, f"{page.relative_to(DOCS)} (block {number})", "exec")
        exec(code, scope)  # noqa: S102 - our own documentation
